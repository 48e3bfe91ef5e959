#!/usr/bin/env bash
# Checks deploy/: YAML and JSON parse, Prometheus config and rules pass promtool, and the
# example configs (deploy/portcullis.toml and the ConfigMap's) pass `portcullis check`.
# Usage: deploy/check.sh PATH-TO-PORTCULLIS-BINARY
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$1"
py="${PORTCULLIS_PYTHON:-python3}"

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

# With real values in their place, both example configs pass.
head -c 48 /dev/urandom | base64 | tr -d '\n' > "$secrets/assertion-key"
printf 'ci-servicenow-password' > "$secrets/servicenow-password"
keygen=$("$bin" keygen --user servicenow --integration incidents/servicenow)
password_hash=$(printf 'ci-password-0123456789' | "$bin" hash-password)
key=$(sed -n 's/^key = "\(.*\)"$/\1/p' <<<"$keygen" | head -1)
hash=$(sed -n 's/^secret_hash = "\(.*\)"$/\1/p' <<<"$keygen" | head -1)
for cfg in deploy/portcullis.toml deploy/container/portcullis.toml target/deploy-configmap.toml; do
  in_pod "$cfg" | sed "s#REPLACE-WITH-KEYGEN-KEY#$key#; s#REPLACE-WITH-KEYGEN-SECRET-HASH#$hash#; s#REPLACE-WITH-HASH-PASSWORD-OUTPUT#$password_hash#" > target/deploy-check.toml
  "$bin" check --config target/deploy-check.toml
done

# Kubernetes: every object of the kustomize base passes `kubernetes-validate --strict`
# for the oldest (1.29: native sidecars) and the newest version the README names;
# rendered by `kubectl kustomize` where kubectl is installed, else file by file.
kv="$(dirname "$py")/kubernetes-validate"
command -v "$kv" >/dev/null 2>&1 || kv=kubernetes-validate
if command -v "$kv" >/dev/null 2>&1; then
  objects=target/deploy-kubernetes.yaml
  if command -v kubectl >/dev/null 2>&1; then
    kubectl kustomize deploy/kubernetes > "$objects"
  else
    "$py" - <<'PY' > "$objects"
import pathlib, yaml
base = pathlib.Path("deploy/kubernetes")
k = yaml.safe_load((base / "kustomization.yaml").read_text())
print("\n---\n".join((base / r).read_text() for r in k["resources"]))
PY
  fi
  for version in 1.29.0 1.37.0; do
    "$kv" --strict --quiet -k "$version" "$objects"
  done
  [ "$(ls deploy/kubernetes | grep -v -x -F -f <("$py" -c 'import yaml; print("\n".join(yaml.safe_load(open("deploy/kubernetes/kustomization.yaml"))["resources"]))') | grep -v -x kustomization.yaml)" = "" ] \
    || { echo "deploy/kubernetes holds a file the kustomization does not list"; exit 1; }
  echo "kubernetes ok: deploy/kubernetes (1.29 and 1.37)"
elif [ "${PORTCULLIS_REQUIRE_TOOLS:-}" = 1 ]; then
  echo "kubernetes-validate is missing (pip install kubernetes-validate)"; exit 1
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
