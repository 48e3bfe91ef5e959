#!/usr/bin/env python3
"""Measures what the reach features cost, pinned like benches/pinned.py:

    python3 benches/reach.py [--secs 3] [--reps 3] [--out FILE]

1. Tracing: the small GET through Portcullis (auth = "none", one worker on core 0) with
   and without `[tracing] otlp_endpoint` (every request sampled, protobuf; the same in
   JSON; a tenth of new traces sampled), a collector answering 200 on core 1; CPU µs per
   request from /proc (all the gateway's threads, the export thread included), medians of
   the repetitions, and the ratio. REACH_THREADS=1 also prints each thread's CPU ticks.
2. WebSocket echo: messages per second over 16 connections, directly to a `websockets`
   echo server and through Portcullis (`upgrades = ["websocket"]`), and Portcullis's CPU
   µs per message. The client and the server are Python (the venv `.ci/run` makes), on
   core 1: the direct figure is their own ceiling.

Everything listens on 127.0.0.1; the script ends only the processes it started.
"""
import argparse
import asyncio
import http.server
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pinned  # noqa: E402  (helpers: ports, pinning, /proc CPU, wrk)

PY = os.environ.get("PORTCULLIS_PYTHON", os.path.join(pinned.ROOT, "target/ci-venv/bin/python"))


def collector(port):
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as collectors answer

        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(200)
            # An empty ExportTraceServiceResponse, in the request's encoding.
            body = b"{}" if self.headers.get("content-type") == "application/json" else b""
            self.send_response(200)
            self.send_header("content-type", self.headers.get("content-type", "application/x-protobuf"))
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    s = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
    threading.Thread(target=s.serve_forever, daemon=True).start()
    return s


WS_CLIENT = r"""
import asyncio, sys, time
from websockets.asyncio.client import connect
url, secs = sys.argv[1], float(sys.argv[2])
async def one(stop, counts):
    async with connect(url, ping_interval=None) as ws:
        await ws.recv()  # the server's greeting
        n = 0
        while time.monotonic() < stop:
            await ws.send("x" * 64)
            await ws.recv()
            n += 1
        counts.append(n)
async def main():
    counts = []
    stop = time.monotonic() + secs
    await asyncio.gather(*(one(stop, counts) for _ in range(16)))
    print(sum(counts))
asyncio.run(main())
"""


def ws_run(url, secs, pid=None):
    before = pinned.cpu_ticks(pid) if pid else 0
    out = subprocess.run(["taskset", "-c", "1", PY, "-c", WS_CLIENT, url, str(secs)],
                         capture_output=True, text=True, timeout=secs + 60)
    n = int(out.stdout.strip() or 0)
    cpu = (pinned.cpu_ticks(pid) - before) / pinned.TICK * 1e6 / max(n, 1) if pid else 0.0
    return n / secs, cpu


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--secs", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out")
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "portcullis"], cwd=pinned.ROOT, check=True)
    portcullis = os.path.join(pinned.ROOT, "target/release/portcullis")
    work = tempfile.mkdtemp(prefix="portcullis-reach-")
    try:
        return run(args, work, portcullis)
    finally:
        pinned.stop_all()


def run(args, work, portcullis):
    # This script hosts the collector: it runs on core 1 with the clients and upstreams.
    os.sched_setaffinity(0, {1})
    lines = [f"Reach costs, {args.reps} runs of {args.secs:g} s each (medians); Portcullis on core 0 with one "
             "worker, clients, upstreams and the collector on core 1.", ""]
    # The upstream of the small GET: nginx on core 1, as in pinned.py.
    up = pinned.free_port()
    open(f"{work}/up.conf", "w").write(
        f"worker_processes 1; daemon off; pid {work}/up.pid; error_log {work}/up.err;\n"
        f"events {{ worker_connections 4096; }}\nhttp {{ access_log off; client_body_temp_path {work}; "
        f"proxy_temp_path {work}; fastcgi_temp_path {work}; uwsgi_temp_path {work}; scgi_temp_path {work};\n"
        f"server {{ listen 127.0.0.1:{up}; keepalive_requests 1000000; location / {{ return 200 'ok'; }} }} }}\n")
    nginx = "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else "nginx"
    pinned.start([nginx, "-c", f"{work}/up.conf", "-p", work], 1)
    col = pinned.free_port()
    collector(col)
    ws = subprocess.Popen(["taskset", "-c", "1", PY, os.path.join(pinned.ROOT, "tests/interop/ws_peer.py"), "server"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    pinned.PROCS.append(ws)
    ws_port = int(ws.stdout.readline().strip())
    pinned.wait_port(up)

    # All three gateways run side by side and the repetitions interleave, so that a
    # noisy stretch of the shared machine falls on every configuration alike.
    results, gateways = {}, {}
    otlp = f'[tracing]\notlp_endpoint = "http://127.0.0.1:{col}"\n'
    for name, tracing in [("off", ""), ("on", otlp), ("json", otlp + 'protocol = "http/json"\n'),
                          ("tenth", otlp + "sample_ratio = 0.1\n")]:
        port = pinned.free_port()
        conf = f"""
[listen]
address = "127.0.0.1:{port}"
[runtime]
worker_threads = 1
{tracing}
[[plans]]
name = "b"
upstream = "http://127.0.0.1:{up}"
access = {{ all = true }}
[[plans.integrations]]
name = "none"
path = "/none"
methods = ["GET"]
auth = "none"
[[plans]]
name = "w"
upstream = "http://127.0.0.1:{ws_port}"
access = {{ all = true }}
[[plans.integrations]]
name = "ws"
path = "/ws"
methods = ["GET"]
auth = "none"
upgrades = ["websocket"]
"""
        open(f"{work}/{name}.toml", "w").write(conf)
        p = pinned.start([portcullis, "serve", "--config", f"{work}/{name}.toml"], 0,
                         env=dict(os.environ, PORTCULLIS_LOG="error"))
        pinned.wait_port(port)
        gateways[name] = (p, port)
        pinned.wrk(f"http://127.0.0.1:{port}/none", 1, [])
        results[name] = []
    for _ in range(args.reps):
        for name, (p, port) in gateways.items():
            results[name].append(pinned.measure(p.pid, f"http://127.0.0.1:{port}/none", args.secs, []))
    if os.environ.get("REACH_THREADS"):
        for name, (p, _) in gateways.items():
            for t in sorted(os.listdir(f"/proc/{p.pid}/task")):
                f = open(f"/proc/{p.pid}/task/{t}/stat").read().rsplit(")", 1)[1].split()
                print(name, open(f"/proc/{p.pid}/task/{t}/comm").read().strip(), int(f[11]) + int(f[12]))
    p, port = gateways["off"]
    ws_run(f"ws://127.0.0.1:{port}/ws", 1, p.pid)
    results["ws_gw"] = [ws_run(f"ws://127.0.0.1:{port}/ws", args.secs, p.pid) for _ in range(args.reps)]
    for p, _ in gateways.values():
        p.terminate()
        p.wait(timeout=60)
    results["ws_direct"] = [ws_run(f"ws://127.0.0.1:{ws_port}/", args.secs) for _ in range(args.reps)]

    med = lambda runs, k: statistics.median(r[k] for r in runs)
    off_cpu, on_cpu, json_cpu, tenth_cpu = (med(results[k], "cpu_us") for k in ("off", "on", "json", "tenth"))
    lines += ["| small GET | req/s | CPU µs/req | vs tracing off |", "|---|---:|---:|---:|",
              f"| tracing off | {med(results['off'], 'rps'):.0f} | {off_cpu:.1f} | 1.00 |",
              f"| tracing on, every request (OTLP protobuf) | {med(results['on'], 'rps'):.0f} | {on_cpu:.1f} "
              f"| {on_cpu / off_cpu:.2f} |",
              f"| tracing on, every request (OTLP JSON) | {med(results['json'], 'rps'):.0f} | {json_cpu:.1f} "
              f"| {json_cpu / off_cpu:.2f} |",
              f"| tracing on, `sample_ratio = 0.1` (protobuf) | {med(results['tenth'], 'rps'):.0f} | {tenth_cpu:.1f} "
              f"| {tenth_cpu / off_cpu:.2f} |",
              ""]
    d = statistics.median(r[0] for r in results["ws_direct"])
    g = statistics.median(r[0] for r in results["ws_gw"])
    gc = statistics.median(r[1] for r in results["ws_gw"])
    lines += ["| WebSocket echo, 16 connections | messages/s | vs direct | Portcullis CPU µs/message |",
              "|---|---:|---:|---:|",
              f"| direct | {d:.0f} | 1.00 | |",
              f"| through Portcullis | {g:.0f} | {g / d:.2f} | {gc:.1f} |"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        open(args.out, "w").write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
