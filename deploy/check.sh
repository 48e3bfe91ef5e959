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

# The certificate paths exist only in the pod: point them at the demo pair for the check.
export PORTCULLIS_ASSERTION_KEY="ci-assertion-key-0123456789abcdef" SNOW_PASSWORD="ci-placeholder"
for cfg in deploy/portcullis.toml target/deploy-configmap.toml; do
  sed "s#/etc/portcullis/tls/tls.crt#config/tls/server.crt#; s#/etc/portcullis/tls/tls.key#config/tls/server.key#" \
    "$cfg" > target/deploy-check.toml
  "$bin" check --config target/deploy-check.toml
done
echo "deploy/ ok"
