"""Checks of deploy/ that need to read the manifests (run by deploy/check.sh).

  check_manifests.py kubernetes RENDERED.yaml OUT_PREFIX
      RENDERED is `kubectl kustomize DIR` of the base or an overlay. Writes the config of
      its ConfigMap to OUT_PREFIX.toml and, for each environment variable the Portcullis
      container takes from a Secret, `export NAME=VALUE` lines with the Secret's shipped
      (placeholder) values to OUT_PREFIX.placeholders.env. Fails when what is applied does
      not hold together: a secret the config reads from the environment or from a file
      that the pod does not give it, a Secret or ConfigMap key referenced but not shipped,
      several replicas without a [shared] Redis, or without a PodDisruptionBudget.

  check_manifests.py same-config BASE.toml OVERLAY.toml
      The overlay's config is the base's with a [shared] table: nothing else differs.

  check_manifests.py listed KUSTOMIZATION_DIR -
      Every file of the folder is a resource or a patch its kustomization.yaml names.

  check_manifests.py compose COMPOSE.yaml OUT_DIR
      Every file or folder compose.yaml builds from or mounts exists, every image has a
      pinned tag, and the Prometheus service's mounts are laid out in OUT_DIR/prometheus/
      as the container sees them (for promtool). Prints the Portcullis service's
      environment as `export` lines on stdout.
"""

import pathlib
import shlex
import shutil
import sys
import tomllib

import yaml

PORTCULLIS_CONTAINER = "portcullis"


def fail(message):
    sys.exit(f"check_manifests: {message}")


def secret_refs(value, path=""):
    """Every `{ env = ... }` and `{ file = ... }` secret in a parsed config, with its key."""
    if isinstance(value, dict):
        if set(value) == {"env"} and isinstance(value["env"], str):
            yield path, "env", value["env"]
            return
        if set(value) == {"file"} and isinstance(value["file"], str):
            yield path, "file", value["file"]
            return
        for k, v in value.items():
            yield from secret_refs(v, f"{path}.{k}" if path else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from secret_refs(v, f"{path}[{i}]")


def object_keys(obj):
    return set((obj.get("data") or {})) | set((obj.get("stringData") or {}))


def kubernetes(rendered, out_prefix):
    objects = [d for d in yaml.safe_load_all(pathlib.Path(rendered).read_text()) if d]
    by_kind = {}
    for o in objects:
        by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
    deployments = list(by_kind.get("Deployment", {}).values())
    if len(deployments) != 1:
        fail(f"{rendered}: expected one Deployment, found {len(deployments)}")
    deployment = deployments[0]
    pod = deployment["spec"]["template"]["spec"]
    containers = pod.get("initContainers", []) + pod.get("containers", [])
    sidecar = next((c for c in containers if c["name"] == PORTCULLIS_CONTAINER), None)
    if sidecar is None:
        fail(f"{rendered}: no container named {PORTCULLIS_CONTAINER}")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}

    def keys_of(kind, name, what):
        obj = by_kind.get(kind, {}).get(name)
        if obj is None:
            fail(f"{rendered}: {what} names the {kind} `{name}`, which is not applied")
        return obj, object_keys(obj)

    # The config file the container is told to read, from the ConfigMap mounted there.
    args = sidecar.get("args", [])
    if "--config" not in args[:-1]:
        fail(f"{rendered}: the {PORTCULLIS_CONTAINER} container's args name no --config")
    config_path = args[args.index("--config") + 1]
    mounts = sorted(sidecar.get("volumeMounts", []), key=lambda m: -len(m["mountPath"]))

    def mounted(path, what):
        for m in mounts:
            prefix = m["mountPath"].rstrip("/") + "/"
            if path.startswith(prefix):
                volume = volumes.get(m["name"])
                if volume is None:
                    fail(f"{rendered}: mount {m['name']} has no volume")
                if "configMap" in volume:
                    obj, keys = keys_of("ConfigMap", volume["configMap"]["name"], what)
                elif "secret" in volume:
                    obj, keys = keys_of("Secret", volume["secret"]["secretName"], what)
                else:
                    fail(f"{rendered}: {what} `{path}` is on a volume that is no ConfigMap or Secret")
                key = path[len(prefix):]
                if key not in keys:
                    fail(f"{rendered}: {what} `{path}`: {obj['kind']} `{obj['metadata']['name']}` has no key `{key}`")
                return obj, key
        fail(f"{rendered}: {what} `{path}` is on no volume of the {PORTCULLIS_CONTAINER} container")

    config_map, config_key = mounted(config_path, "--config")
    text = config_map["data"][config_key]
    config = tomllib.loads(text)
    pathlib.Path(f"{out_prefix}.toml").write_text(text)

    env = {}
    for e in sidecar.get("env", []):
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if ref is not None:
            secret, keys = keys_of("Secret", ref["name"], f"env {e['name']}")
            if ref["key"] not in keys:
                fail(f"{rendered}: env {e['name']}: Secret `{ref['name']}` has no key `{ref['key']}`")
            value = (secret.get("stringData") or {}).get(ref["key"])
            if value is None:
                fail(f"{rendered}: env {e['name']}: ship placeholders as stringData, not data")
            env[e["name"]] = value
        elif "value" in e:
            env[e["name"]] = None
    for key, kind, where in secret_refs(config):
        if kind == "env" and where not in env:
            fail(f"{rendered}: {key} reads ${where}, which the {PORTCULLIS_CONTAINER} container does not set")
        if kind == "file":
            mounted(where, key)
    with open(f"{out_prefix}.placeholders.env", "w") as f:
        for name, value in sorted(env.items()):
            if value is not None:
                f.write(f"export {name}={shlex.quote(value)}\n")

    # Several replicas share their state or they do not hold together.
    replicas = deployment["spec"].get("replicas", 1)
    if replicas > 1:
        if config.get("shared", {}).get("backend") != "redis":
            fail(f"{rendered}: {replicas} replicas without [shared] backend = \"redis\"")
        selector = deployment["spec"]["selector"]["matchLabels"]
        budgets = [
            p for p in by_kind.get("PodDisruptionBudget", {}).values()
            if p["spec"]["selector"].get("matchLabels") == selector
        ]
        if len(budgets) != 1:
            fail(f"{rendered}: {replicas} replicas need one PodDisruptionBudget selecting them")
    print(f"kubernetes ok: {rendered} ({len(objects)} objects, {replicas} replicas)")


def same_config(base, overlay):
    a = tomllib.loads(pathlib.Path(base).read_text())
    b = tomllib.loads(pathlib.Path(overlay).read_text())
    if "shared" not in b:
        fail(f"{overlay}: no [shared] table")
    b.pop("shared")
    a.pop("shared", None)
    if a != b:
        changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        fail(f"{overlay} differs from {base} beyond [shared]: {', '.join(changed)}")


def listed(directory, _unused):
    """Every file of a kustomization's folder is a resource or a patch it names."""
    here = pathlib.Path(directory)
    k = yaml.safe_load((here / "kustomization.yaml").read_text())
    names = {"kustomization.yaml"}
    names |= {r for r in k.get("resources", []) if (here / r).is_file()}
    names |= {p["path"] for p in k.get("patches", []) if "path" in p}
    extra = sorted(p.name for p in here.iterdir() if p.name not in names)
    if extra:
        fail(f"{directory} holds files its kustomization.yaml does not name: {', '.join(extra)}")


def grafana_mounts(compose_file, here, service):
    """Each dashboard provider's folder gets at least one dashboard mounted into it."""
    binds = [v.split(":")[:2] for v in service.get("volumes", []) if isinstance(v, str)]
    targets = [pathlib.PurePosixPath(t) for _, t in binds]
    for key, value in (service.get("environment") or {}).items():
        if key.endswith("_PATH") and pathlib.PurePosixPath(str(value)) not in targets:
            fail(f"{compose_file}: Grafana's {key} names {value}, which nothing mounts")
    for source, target in binds:
        if not target.startswith("/etc/grafana/provisioning/dashboards/"):
            continue
        for provider in yaml.safe_load((here / source).read_text()).get("providers", []):
            folder = pathlib.PurePosixPath(provider["options"]["path"])
            if not any(t.parent == folder and t.suffix == ".json" for t in targets):
                fail(f"{compose_file}: Grafana provider {provider['name']} reads {folder}, where no dashboard is mounted")


def compose(compose_file, out_dir):
    path = pathlib.Path(compose_file)
    here = path.parent
    spec = yaml.safe_load(path.read_text())
    named_volumes = set(spec.get("volumes") or {})
    env = {}
    for name, service in spec["services"].items():
        build = service.get("build")
        if build is not None:
            context = here / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = context / ("Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile"))
            for p in (context, dockerfile):
                if not p.exists():
                    fail(f"{compose_file}: service {name} builds from {p}, which does not exist")
        else:
            image = service.get("image", "")
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            if not tag or tag == "latest":
                fail(f"{compose_file}: service {name}: image `{image}` has no pinned tag")
        env_files = service.get("env_file", [])
        for f in [env_files] if isinstance(env_files, (str, dict)) else env_files:
            if not (here / (f if isinstance(f, str) else f["path"])).exists():
                fail(f"{compose_file}: service {name}: env_file {f} does not exist")
        for v in service.get("volumes", []):
            if isinstance(v, str):
                source, _, rest = v.partition(":")
                target = rest.partition(":")[0]
                bind = source.startswith((".", "/", "~"))
            else:
                source, target = v.get("source", ""), v.get("target", "")
                bind = v.get("type") == "bind"
            if bind:
                if not (here / source).exists():
                    fail(f"{compose_file}: service {name} mounts {source}, which does not exist")
                if name == "prometheus":
                    dest = pathlib.Path(out_dir) / "prometheus" / pathlib.Path(target).name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(here / source, dest)
            elif source and source not in named_volumes:
                fail(f"{compose_file}: service {name} mounts the volume {source}, which is not declared")
        if name == "grafana":
            grafana_mounts(compose_file, here, service)
        if name == PORTCULLIS_CONTAINER:
            env = service.get("environment") or {}
            if isinstance(env, list):
                env = dict(e.partition("=")[::2] for e in env)
    for top in ("configs", "secrets"):
        for key, item in (spec.get(top) or {}).items():
            if "file" in item and not (here / item["file"]).exists():
                fail(f"{compose_file}: {top}.{key} names {item['file']}, which does not exist")
    for k, v in sorted(env.items()):
        print(f"export {k}={shlex.quote(str(v))}")


def main(argv):
    commands = {"kubernetes": kubernetes, "same-config": same_config, "compose": compose, "listed": listed}
    if len(argv) != 4 or argv[1] not in commands:
        fail(__doc__)
    commands[argv[1]](*argv[2:])


if __name__ == "__main__":
    main(sys.argv)
