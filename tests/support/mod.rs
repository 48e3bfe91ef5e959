//! Shared test support: a gateway started from a TOML string on 127.0.0.1:0 (in process,
//! or as the real binary), a recording upstream, rcgen certificates, clients.
#![allow(dead_code)]

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use portcullis::server::{shutdown, Bound};
use portcullis::state::State;

mod builder;
#[allow(unused_imports)]
pub use builder::{all, roles, rule, table, Config, Integration, Plan, Table, User, ASSERTION_KEY};

// === gateway in process ===

pub struct Gateway {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    /// The `[forward_auth]` listener, when configured.
    pub forward_auth: Option<SocketAddr>,
    pub state: Arc<State>,
    trigger: shutdown::Trigger,
    task: tokio::task::JoinHandle<()>,
    pub dir: tempfile::TempDir,
}

/// Replaces `{dir}` in a TOML template with a temp dir path (for cert and secret files).
pub fn write_config(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.join("portcullis.toml");
    std::fs::write(&path, toml.replace("{dir}", &dir.display().to_string())).unwrap();
    path
}

impl Gateway {
    pub async fn start(toml: &str) -> Gateway {
        Self::start_in(tempfile::tempdir().unwrap(), toml).await
    }

    pub async fn start_in(dir: tempfile::TempDir, toml: &str) -> Gateway {
        let path = write_config(dir.path(), toml);
        let loaded = match portcullis::config::load(&path) {
            Ok(l) => l,
            Err(e) => panic!("test config refused:\n{e}"),
        };
        let bound = Bound::bind(&loaded.config).unwrap();
        let addr = bound.inbound_addr();
        let admin = bound.admin_addr();
        let forward_auth = bound.forward_auth_addr();
        let state = State::start(loaded.config).await.unwrap();
        let (trigger, sd) = shutdown::channel();
        let task = tokio::spawn(portcullis::run::run(state.clone(), bound, sd));
        Gateway {
            addr,
            admin,
            forward_auth,
            state,
            trigger,
            task,
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin.expect("admin listener configured"), path)
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(self.admin_url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one sample line (`name{labels}`), or 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }

    /// Whether `series` has reached `at_least` (for [`eventually`]).
    pub async fn metric_at_least(&self, series: &str, at_least: f64) -> bool {
        self.metric(series).await >= at_least
    }

    pub async fn stop(self) {
        self.trigger.fire();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("gateway stops")
            .unwrap();
    }
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// A minimal config around `extra` (TOML text), with an admin listener, all on port 0:
/// [`Config::new`] with `extra` merged in.
pub fn config(extra: &str) -> String {
    Config::new().toml(extra).to_toml()
}

// === the real binary ===

pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub logs: Arc<Mutex<Vec<String>>>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_portcullis")
}

impl Process {
    /// Starts `portcullis serve --log-format json` and waits for its listening lines.
    pub fn start(config: &Path, env: &[(&str, &str)]) -> Process {
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--log-format", "json", "--config"])
            .arg(config)
            .env("PORTCULLIS_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["message"] == "listening" {
                        let _ = tx.send((
                            v["listener"].as_str().unwrap_or("").to_string(),
                            v["address"].as_str().unwrap_or("").to_string(),
                        ));
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let mut addr = None;
        let mut admin = None;
        let deadline = std::time::Instant::now() + PATIENCE;
        while addr.is_none() || (admin.is_none() && std::fs::read_to_string(config).unwrap().contains("[admin]")) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok((l, a)) if l == "inbound" => addr = Some(a.parse().unwrap()),
                Ok((l, a)) if l == "admin" => admin = Some(a.parse().unwrap()),
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    let out = child.wait_with_output().unwrap();
                    panic!("gateway did not start: {}", String::from_utf8_lossy(&out.stderr));
                }
            }
        }
        Process {
            child,
            addr: addr.unwrap(),
            admin,
            logs,
        }
    }

    /// Peak resident set size so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .map(|v| v.trim().trim_end_matches("kB").trim().parse().unwrap())
            .unwrap()
    }

    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .map(|v| v.trim().trim_end_matches("kB").trim().parse().unwrap())
            .unwrap()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args(["-s", sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// The logs once `f` holds of them (the log writer is asynchronous), or a panic
    /// after [`PATIENCE`].
    pub async fn logs_when(&self, f: impl Fn(&str) -> bool) -> String {
        let ok = eventually(PATIENCE, || {
            let logs = self.logs();
            let holds = f(&logs);
            async move { holds }
        })
        .await;
        let logs = self.logs();
        assert!(ok, "the logs never showed what was expected:\n{logs}");
        logs
    }
}

/// How long a test waits for something that must happen: far longer than it takes on
/// any machine, so only a real failure reaches it. Tests wait for events, never for time.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Waits until `f` holds, checking every 50 ms, up to `limit`; says whether it did.
pub async fn eventually<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// === recording upstream ===

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: http::HeaderMap,
    pub body_len: u64,
    pub complete: bool,
    /// Trailer fields received after the body, if any.
    pub trailers: Option<http::HeaderMap>,
}

#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Opens `/gate/` requests (see [`Upstream::open_gate`]).
    gate: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen().pop().expect("upstream saw a request")
    }

    /// Lets every `/gate/` request, waiting or still to come, be answered.
    pub fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    /// Starts an HTTP/1.1 upstream on 127.0.0.1:0. Paths:
    /// `/download/N` streams N bytes; `/slow/MS` answers after MS milliseconds;
    /// `/gate/...` answers once the test calls [`Upstream::open_gate`];
    /// anything else reads the body (counting, not keeping it) and answers JSON.
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let rec = seen.clone();
        let (gate, opened) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let rec = rec.clone();
                let opened = opened.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| respond(req, rec.clone(), opened.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            seen,
            gate: Arc::new(gate),
        }
    }
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

async fn respond(
    req: Request<Incoming>,
    rec: Arc<Mutex<Vec<Seen>>>,
    mut opened: tokio::sync::watch::Receiver<bool>,
) -> Result<Response<UpBody>, Infallible> {
    let path = req.uri().path().to_string();
    let index = {
        let mut v = rec.lock().unwrap();
        v.push(Seen {
            method: req.method().to_string(),
            uri: req.uri().to_string(),
            headers: req.headers().clone(),
            body_len: 0,
            complete: false,
            trailers: None,
        });
        v.len() - 1
    };
    if let Some((_, n)) = path.rsplit_once("/download/") {
        let n: u64 = n.parse().unwrap();
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let stream = futures_stream(n, chunk);
        let mut resp = Response::new(StreamBody::new(stream).boxed());
        resp.headers_mut().insert("content-length", n.into());
        return Ok(resp);
    }
    if let Some((_, ms)) = path.rsplit_once("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
    }
    if path.contains("/gate/") {
        let _ = opened.wait_for(|open| *open).await;
    }
    let mut body = req.into_body();
    let mut n = 0u64;
    let mut complete = true;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                n += f.data_ref().map_or(0, |d| d.len() as u64);
                if let Ok(t) = f.into_trailers() {
                    trailers = Some(t);
                }
            }
            Err(_) => {
                complete = false;
                break;
            }
        }
    }
    {
        let mut v = rec.lock().unwrap();
        v[index].body_len = n;
        v[index].complete = complete;
        v[index].trailers = trailers;
    }
    let json = serde_json::json!({"body_length": n}).to_string();
    let mut resp = Response::new(Full::new(Bytes::from(json)).map_err(|e: Infallible| match e {}).boxed());
    let h = resp.headers_mut();
    h.insert("content-type", "application/json".parse().unwrap());
    h.insert("x-upstream", "yes".parse().unwrap());
    h.insert("connection", "x-resp-hop".parse().unwrap());
    h.insert("x-resp-hop", "secret-hop".parse().unwrap());
    h.insert("keep-alive", "timeout=5".parse().unwrap());
    Ok(resp)
}

fn futures_stream(
    total: u64,
    chunk: Bytes,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send + Sync + 'static {
    futures_util::stream::unfold(total, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let n = left.min(chunk.len() as u64) as usize;
            Some((Ok(Frame::data(chunk.slice(..n))), left - n as u64))
        }
    })
}

/// A body of `total` bytes sent in 64 KiB chunks without a Content-Length.
pub fn streamed_body(total: u64) -> reqwest::Body {
    let chunk = Bytes::from(vec![b'y'; 64 * 1024]);
    let s = futures_util::stream::unfold(total, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let n = left.min(chunk.len() as u64) as usize;
            Some((Ok::<_, std::io::Error>(chunk.slice(..n)), left - n as u64))
        }
    });
    reqwest::Body::wrap_stream(s)
}

// === certificates ===

pub struct Cert {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// A self-signed certificate for localhost and 127.0.0.1, written into `dir` as
/// `NAME.crt` and `NAME.key`.
pub fn self_signed(dir: &Path, name: &str) -> Cert {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let cert_pem = ck.cert.pem();
    let key_pem = ck.key_pair.serialize_pem();
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, &cert_pem).unwrap();
    std::fs::write(&key_path, &key_pem).unwrap();
    Cert {
        cert_pem,
        key_pem,
        cert_path,
        key_path,
    }
}

// === clients ===

/// A client that never follows redirects and has no connection pool surprises.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap()
}

/// A TLS client trusting exactly `cert`.
pub fn tls_client(cert: &Cert) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert_pem.as_bytes()).unwrap())
        .build()
        .unwrap()
}

/// Sends raw bytes and returns everything read until the server closes or 10 s pass.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The JSON body of a response, asserting the contract's error shape.
pub async fn error_body(resp: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(resp.status().as_u16(), status, "status");
    let id = resp
        .headers()
        .get("x-request-id")
        .expect("X-Request-Id on every response")
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["code"], status);
    assert_eq!(v["request_id"], id.as_str());
    assert!(v["reason"].is_string() && v["message"].is_string());
    v
}

pub fn basic(user: &str, secret: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"))
    )
}

pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(s.as_bytes())))
}

/// argon2id hash with small parameters, so tests stay fast.
pub fn argon2_hash(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(1024, 1, 1, None).unwrap();
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = SaltString::encode_b64(b"portcullis-test-salt").unwrap();
    a.hash_password(password.as_bytes(), &salt).unwrap().to_string()
}

pub fn http2_client_executor() -> TokioExecutor {
    TokioExecutor::new()
}

// === the authentication fixture ===

pub const ALICE_URL_KEY: &str = "alice-url-key-4f1c9e2ab7d35608";
pub const CAROL_URL_KEY: &str = "carol-url-key-0a9b8c7d6e5f4321";
pub const ALICE_KEY_SECRET: &str = "alice-key-secret-9f8e7d6c5b4a";
pub const CAROL_KEY_SECRET: &str = "carol-key-secret-1a2b3c4d5e6f";

/// Users, a plan and one integration per method, with a short lockout.
///
/// alice (rest, sender; url key; api keys k_alice for /key, k_multi for /multi),
/// bob (expired password), carol (disabled; url key; key k_carol), dave (no plan
/// access), erin (plan access but not a sender of /restricted), nopass (no password).
pub fn auth_config(upstream: &str, lockout: &str) -> String {
    let pw = |name: &str| argon2_hash(&format!("{name}-pw"));
    let senders = || roles(["sender"]);
    Config::new()
        .section_toml("lockout", lockout)
        .user("alice", |u| {
            u.roles(["rest", "sender"])
                .password_hash(&pw("alice"))
                .set("url_key_hash", sha256_hex(ALICE_URL_KEY))
        })
        .user("bob", |u| {
            u.roles(["rest", "sender"])
                .password_hash(&pw("bob"))
                .set("password_expires_at", "2020-01-01T00:00:00Z")
        })
        .user("carol", |u| {
            u.roles(["rest", "sender"])
                .password_hash(&pw("carol"))
                .set("disabled", true)
                .set("url_key_hash", sha256_hex(CAROL_URL_KEY))
        })
        .user("dave", |u| u.roles(["other", "sender"]).password_hash(&pw("dave")))
        .user("erin", |u| u.roles(["rest"]).password_hash(&pw("erin")))
        .user("nopass", |u| u.roles(["rest"]))
        .plan("inc", |p| {
            p.upstream(upstream)
                .access_roles(["rest"])
                .integration("basic", |i| {
                    i.path("/basic")
                        .methods(["GET", "POST"])
                        .auth("basic")
                        .senders(senders())
                })
                .integration("key", |i| {
                    i.path("/key").methods(["POST"]).auth("api_key").senders(senders())
                })
                .integration("key2", |i| {
                    i.path("/key2").methods(["POST"]).auth("api_key").senders(senders())
                })
                .integration("url", |i| {
                    i.path("/url").methods(["POST"]).auth("url_key").senders(senders())
                })
                .integration("multi", |i| {
                    i.path("/multi")
                        .methods(["GET"])
                        .auths(["basic", "api_key"])
                        .senders(senders())
                })
                .integration("restricted", |i| {
                    i.path("/restricted")
                        .methods(["GET"])
                        .auth("basic")
                        .senders(rule(r#"{ roles = ["sender"], users = ["nobody"] }"#))
                })
                .integration("bearer", |i| i.path("/bearer").methods(["GET"]).auth("oauth"))
        })
        .api_key("k_alice", &sha256_hex(ALICE_KEY_SECRET), "alice", "inc/key")
        .api_key("k_multi", &sha256_hex(ALICE_KEY_SECRET), "alice", "inc/multi")
        .api_key("k_carol", &sha256_hex(CAROL_KEY_SECRET), "carol", "inc/key")
        .to_toml()
}

/// Asserts a 401 with the contract's message and a challenge.
pub async fn assert_401(resp: reqwest::Response, message: &str) {
    assert!(
        resp.headers().get("www-authenticate").is_some(),
        "401 carries WWW-Authenticate"
    );
    let v = error_body(resp, 401).await;
    assert_eq!(v["reason"], "Unauthorized");
    assert_eq!(v["message"], message);
}

pub const MISSING: &str = "Required to provide Auth information";
pub const REJECTED: &str = "User is not authenticated";
pub const FORBIDDEN: &str =
    "UNAUTHORIZED_ACCESS_ERROR: User does not have the permission to access this service/functionality.";

pub fn failures(reason: &str, method: &str) -> String {
    format!(r#"portcullis_auth_failures_total{{auth_method="{method}",reason="{reason}"}}"#)
}

/// Says on the test runner's own output that a test could not run, and why: written to the
/// process's stdout directly, past libtest's capture, so `cargo test` shows the line
/// (`SKIPPED: reason`) instead of a silent `ok`.
pub fn skipped(reason: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "SKIPPED: {reason}");
    let _ = out.flush();
}

// === interoperability peers and listeners of the real binary ===

/// The Python that `PORTCULLIS_PYTHON` names (else `python3`), when it can import
/// `module`; else `None` after printing SKIPPED (a failure under
/// PORTCULLIS_REQUIRE_INTEROP, which `.ci/run` sets once it installed `pip`).
#[allow(dead_code)]
pub fn python_with(module: &str, pip: &str) -> Option<String> {
    let python = std::env::var("PORTCULLIS_PYTHON").unwrap_or_else(|_| "python3".into());
    let have = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert!(
            std::env::var_os("PORTCULLIS_REQUIRE_INTEROP").is_none(),
            "PORTCULLIS_REQUIRE_INTEROP is set but {python} cannot import {module}"
        );
        skipped(&format!("{python} lacks {module} (pip install {pip})"));
        return None;
    }
    Some(python)
}

/// A peer process from `tests/interop/SCRIPT server` that prints its port first and
/// runs until its stdin closes; killed when dropped.
#[allow(dead_code)]
pub struct Peer {
    child: Child,
    pub port: u16,
}

#[allow(dead_code)]
impl Peer {
    pub fn start(python: &str, script: &str) -> Peer {
        let path = format!("{}/tests/interop/{script}", env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new(python)
            .args([&path, "server"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        Peer {
            port: line
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{script} printed no port: {line:?}")),
            child,
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address a listener of a real process announced (`listening` log line), once it
/// has (the log is written asynchronously).
#[allow(dead_code)]
pub async fn listening_addr(p: &Process, listener: &str) -> SocketAddr {
    let logs = p
        .logs_when(|l| l.contains(&format!("\"listener\":\"{listener}\"")))
        .await;
    logs.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "listening" && v["listener"] == listener)
        .and_then(|v| v["address"].as_str().and_then(|a| a.parse().ok()))
        .unwrap_or_else(|| panic!("no listening line for {listener}"))
}
