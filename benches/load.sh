#!/usr/bin/env bash
# Load comparison on loopback: one origin (nginx returning a small body), reached
#   1. directly,
#   2. through nginx as a reverse proxy,
#   3. through Portcullis with auth = "none",
#   4. through Portcullis with an API key (the full pipeline: auth, authz, assertion),
# all measured with wrk in the same run, so the ratios are comparable. Envoy is not in
# Debian's archive and cannot be fetched here, so it is left out (say so in reports).
#
# Usage: bash benches/load.sh [seconds per run, default 10] [connections, default 64]
# WORKERS=N (default 1) runs the proxying nginx with N worker processes (`reuseport`, as
# nginx's docs advise for several workers) and Portcullis with N per-core workers; the
# origin is a separate nginx with one worker. Nothing is pinned: every process shares
# the machine's cores, as a sidecar does.
# Needs: nginx, wrk (apt-get install nginx-light wrk). Talks to 127.0.0.1 only, stops by
# itself, and kills only the processes it started.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
conns="${2:-64}"
workers="${WORKERS:-1}"
for t in nginx wrk; do
  command -v "$t" >/dev/null || { echo "missing $t: apt-get install -y nginx-light wrk" >&2; exit 1; }
done
cargo build --release --quiet --bin portcullis
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
origin=$(free_port); proxy=$(free_port); gw=$(free_port)

cat > "$work/origin.conf" <<NGINX
daemon off;
worker_processes 1;
pid $work/origin.pid;
error_log $work/origin-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$origin;
    keepalive_requests 1000000;
    location / { return 200 "ok\n"; }
  }
}
NGINX
cat > "$work/nginx.conf" <<NGINX
daemon off;
worker_processes $workers;
pid $work/nginx.pid;
error_log $work/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream origin { server 127.0.0.1:$origin; keepalive 128; }
  server {
    listen 127.0.0.1:$proxy reuseport;
    keepalive_requests 1000000;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$remote_addr;
    }
  }
}
NGINX
nginx -c "$work/origin.conf" -p "$work" &
pids+=($!)
nginx -c "$work/nginx.conf" -p "$work" &
pids+=($!)

secret="load-test-secret-0123456789abcdef"
hash="sha256:$(printf '%s' "$secret" | sha256sum | cut -d' ' -f1)"
cat > "$work/portcullis.toml" <<TOML
[listen]
address = "127.0.0.1:$gw"
[runtime]
worker_threads = $workers
[[users]]
name = "load"
roles = ["rest"]
[[plans]]
name = "p"
upstream = "http://127.0.0.1:$origin"
access = { all = true }
[[plans.integrations]]
name = "open"
path = "/open"
methods = ["GET"]
auth = "none"
[[plans.integrations]]
name = "key"
path = "/key"
methods = ["GET"]
auth = "api_key"
[[api_keys]]
key = "k1"
secret_hash = "$hash"
user = "load"
integration = "p/key"
TOML
PORTCULLIS_LOG=warn target/release/portcullis serve --config "$work/portcullis.toml" >"$work/portcullis.log" 2>&1 &
pids+=($!)

for port in $origin $proxy $gw; do
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
done
auth="Authorization: Basic $(printf 'k1:%s' "$secret" | base64 -w0)"
curl -fsS "http://127.0.0.1:$gw/key" -H "$auth" >/dev/null

run() { # name url [header]
  local out
  if [ -n "${3:-}" ]; then
    out=$(wrk -t2 -c"$conns" -d"${secs}s" --latency -H "$3" "$2")
  else
    out=$(wrk -t2 -c"$conns" -d"${secs}s" --latency "$2")
  fi
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  printf '%-34s %12s req/s   p50 %8s   p99 %8s\n' "$1" "$rps" "$p50" "$p99"
  echo "$rps" > "$work/$1.rps"
}
echo "wrk -t2 -c$conns -d${secs}s on $(nproc) cores, $workers proxy worker(s), $(date -u +%F)"
run origin-direct "http://127.0.0.1:$origin/open"
run nginx-proxy "http://127.0.0.1:$proxy/open"
run portcullis-none "http://127.0.0.1:$gw/open"
run portcullis-api-key "http://127.0.0.1:$gw/key" "$auth"
ng=$(cat "$work/nginx-proxy.rps")
for n in portcullis-none portcullis-api-key; do
  awk -v a="$(cat "$work/$n.rps")" -v b="$ng" -v n="$n" 'BEGIN { printf "%s / nginx-proxy throughput: %.2f\n", n, a / b }'
done
