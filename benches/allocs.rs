//! Heap allocations per request on the gateway's side, for each authentication path.
//!
//! `cargo bench --bench allocs`. The gateway runs on its own thread with a current-thread
//! runtime; a counting global allocator counts only what that thread allocates, so the
//! client and the upstream (on other threads) are not in the figures. Each scenario warms
//! up (pooled upstream connection, filled caches), then sends `N` keep-alive requests and
//! reports allocations and bytes per request. Each runs three times: with 5 request
//! headers; with 20 more of standard names (the gateway's own count does not grow with
//! the headers it forwards); with 20 more of custom names (`x-extra-N`: hyper's parser
//! copies each name it does not know into its own allocation, one per header, before the
//! gateway sees it). README.md quotes the table.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

struct Counting;

thread_local! {
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

fn note(size: usize) {
    if COUNTED.with(Cell::get) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(size as u64, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counting only
// reads a thread-local `Cell` (const-initialised, no destructor) and bumps two atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size());
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note(l.size());
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        note(new);
        unsafe { System.realloc(p, l, new) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const N: u64 = 2000;

/// Standard request header names the gateway forwards untouched.
const STANDARD: [&str; 20] = [
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "cache-control",
    "pragma",
    "referer",
    "origin",
    "if-none-match",
    "if-modified-since",
    "dnt",
    "from",
    "content-language",
    "if-match",
    "if-unmodified-since",
    "if-range",
    "upgrade-insecure-requests",
    "access-control-request-method",
    "access-control-request-headers",
    "x-dns-prefetch-control",
    "cookie",
];
const WARMUP: u64 = 200;

fn sha(s: &str) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(s.as_bytes())))
}

fn basic(user: &str, secret: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"))
    )
}

async fn upstream() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// Starts the gateway on its own counted thread and returns its address.
fn gateway(toml: String) -> std::net::SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        COUNTED.with(|c| c.set(true));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let cfg = portcullis::config::parse(Path::new("allocs.toml"), &toml)
                .unwrap()
                .config;
            let bound = portcullis::server::Bound::bind(&cfg).unwrap();
            tx.send(bound.inbound_addr()).unwrap();
            let state = portcullis::state::State::new(cfg).unwrap();
            let (_trigger, sd) = portcullis::server::shutdown::channel();
            portcullis::run::run(state, bound, sd).await;
        });
    });
    rx.recv().unwrap()
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs it once quickly.
    let quick = !std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let up = rt.block_on(upstream());
    let pw = portcullis::auth::basic::hash_password("alloc-bench-pw").unwrap();
    let toml = format!(
        r#"
[listen]
address = "127.0.0.1:0"
[runtime]
worker_threads = 1
[lockout]
max_failures = 1000000
[[users]]
name = "alice"
roles = ["rest"]
password_hash = "{pw}"
[oauth]
mode = "builtin"
[[oauth.clients]]
client_id = "c1"
client_secret_hash = "{client}"
[[plans]]
name = "p"
upstream = "http://{up}"
access = {{ all = true }}
[[plans.integrations]]
name = "none"
path = "/none"
methods = ["GET"]
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
[[api_keys]]
key = "k1"
secret_hash = "{key}"
user = "alice"
integration = "p/apikey"
"#,
        client = sha("alloc-bench-client-secret"),
        key = sha("alloc-bench-key-secret"),
    );
    let gw = gateway(toml);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();

    let token = rt.block_on(async {
        let req = hyper::Request::post(format!("http://{gw}/oauth/token"))
            .header("authorization", basic("c1", "alloc-bench-client-secret"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from_static(b"grant_type=client_credentials")))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "token endpoint");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["access_token"].as_str().unwrap().to_string()
    });

    let scenarios = [
        ("none", "/none", None),
        ("basic (cached)", "/basic", Some(basic("alice", "alloc-bench-pw"))),
        ("api_key", "/apikey", Some(basic("k1", "alloc-bench-key-secret"))),
        ("jwt (builtin issuer)", "/jwt", Some(format!("Bearer {token}"))),
    ];
    let (n, warm) = if quick { (50, 20) } else { (N, WARMUP) };
    println!("| path | allocs/req | bytes/req | +20 standard headers | +20 custom headers |");
    println!("|---|---:|---:|---:|---:|");
    for (name, path, auth) in scenarios {
        let mut row = Vec::new();
        for extra in [0usize, 1, 2] {
            let send = |count: u64| {
                let client = client.clone();
                let auth = auth.clone();
                rt.block_on(async move {
                    for _ in 0..count {
                        let mut b = hyper::Request::get(format!("http://{gw}{path}"))
                            .header("user-agent", "alloc-bench/1")
                            .header("accept", "application/json")
                            .header("x-request-id", "3f1c2d4e-0000-4000-8000-000000000001");
                        if let Some(a) = &auth {
                            b = b.header("authorization", a.as_str());
                        }
                        for (i, name) in STANDARD.iter().enumerate() {
                            match extra {
                                1 => b = b.header(*name, "some-value-that-is-forwarded"),
                                2 => b = b.header(format!("x-extra-{i}"), "some-value-that-is-forwarded"),
                                _ => break,
                            }
                        }
                        let resp = client.request(b.body(Full::new(Bytes::new())).unwrap()).await.unwrap();
                        assert_eq!(resp.status(), 200, "{name}");
                        resp.into_body().collect().await.unwrap();
                    }
                })
            };
            send(warm);
            let (a0, b0) = (ALLOCS.load(Ordering::SeqCst), BYTES.load(Ordering::SeqCst));
            send(n);
            let (a1, b1) = (ALLOCS.load(Ordering::SeqCst), BYTES.load(Ordering::SeqCst));
            row.push(((a1 - a0) as f64 / n as f64, (b1 - b0) as f64 / n as f64));
        }
        println!(
            "| {name} | {:.1} | {:.0} | {:.1} | {:.1} |",
            row[0].0, row[0].1, row[1].0, row[2].0
        );
    }
}
