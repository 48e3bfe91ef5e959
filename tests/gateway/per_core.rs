//! `[runtime] model = "per_core"`: inbound workers, each a single-threaded runtime with
//! its own socket on the listen address and its own upstream pool, behave as one gateway:
//! every connection is served whichever worker the kernel gives it to, the lockout table,
//! `max_connections`, metrics and reloads are shared, and a shutdown drains them all.

use crate::support;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn per_core(upstream: &str, password: &str) -> String {
    base(upstream, password, 2, &["GET"]).to_toml()
}

/// Per-core workers, a capped listener and one user svc on one Basic route.
fn base(upstream: &str, password: &str, workers: i64, methods: &[&str]) -> Config {
    Config::new()
        .section("runtime", |s| s.set("model", "per_core").set("worker_threads", workers))
        .section("limits", |s| s.set("max_connections", 6).set("drain_delay", "0s"))
        .section("lockout", |s| {
            s.set("max_failures", 3).set("window", "1h").set("duration", "1h")
        })
        .user("svc", |u| u.roles(["rest"]).password_hash(&argon2_hash(password)))
        .plan("p", |p| {
            p.upstream(upstream)
                .access_all()
                .integration("i", |i| i.path("/i/*").methods(methods.iter().copied()).auth("basic"))
        })
}

/// One request on a connection of its own, kept open: the status and the stream.
async fn on_new_connection(addr: std::net::SocketAddr, user: &str, pw: &str) -> (u16, TcpStream) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET /i/x HTTP/1.1\r\nHost: gw\r\nAuthorization: {}\r\n\r\n",
        basic(user, pw)
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(PATIENCE, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&got);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_core_workers_serve_as_one_gateway() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &per_core(&up.url(), "svc-pw"));
    let p = Process::start(&path, &[]);
    let admin = p.admin.unwrap();
    let metric = |series: &'static str| async move {
        let text = client()
            .get(format!("http://{admin}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metric_value(&text, series)
    };
    // Two worker threads (thread names are cut to 15 bytes).
    let pid = p.child.id();
    let workers = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
            .filter(|name| name.starts_with("portcullis-work"))
            .count()
    };
    assert!(
        eventually(PATIENCE, || {
            let n = workers();
            async move { n == 2 }
        })
        .await
    );

    // Every connection is served, whichever worker takes it, with the principal headers.
    for _ in 0..12 {
        let (status, _) = on_new_connection(p.addr, "svc", "svc-pw").await;
        assert_eq!(status, 200);
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 12);
    assert!(seen.iter().all(|s| s.headers["x-portcullis-user"] == "svc"));
    assert!(!seen.iter().any(|s| s.headers.contains_key("authorization")));

    // One lockout table: three failures on three connections lock the pair out on
    // every worker.
    for _ in 0..3 {
        assert_eq!(on_new_connection(p.addr, "svc", "wrong").await.0, 401);
    }
    for _ in 0..4 {
        assert_eq!(on_new_connection(p.addr, "svc", "svc-pw").await.0, 429);
    }
    let failures = metric(r#"portcullis_auth_failures_total{auth_method="basic",reason="bad_password"}"#).await;
    assert_eq!(failures, 3.0);

    // One max_connections for the listener: six held connections, the seventh is closed
    // at accept, whichever worker it lands on.
    let mut held = Vec::new();
    for _ in 0..6 {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(b"GET /nowhere HTTP/1.1\r\nHost: gw\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 404"));
        held.push(s);
    }
    let ok = eventually(PATIENCE, || async {
        metric(r#"portcullis_connections_active{listener="inbound"}"#).await == 6.0
    })
    .await;
    assert!(ok, "six connections in the shared count");
    // The seventh is closed at accept, before it could send anything: an orderly close
    // (a request written first could turn it into a reset, depending on timing).
    let mut extra = TcpStream::connect(p.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(PATIENCE, extra.read(&mut buf))
        .await
        .expect("closed, not hanging");
    assert!(
        matches!(r, Ok(0)),
        "a seventh connection was not closed at accept: {r:?}"
    );
    assert_eq!(
        metric(r#"portcullis_connections_rejected_total{listener="inbound"}"#).await,
        1.0
    );
    drop(held);

    // A reload reaches every worker: the new user's password works on new connections.
    let rotated = per_core(&up.url(), "svc-pw").replace("name = \"svc\"", "name = \"svc2\"");
    std::fs::write(&path, rotated).unwrap();
    p.signal("HUP");
    let reloaded = eventually(PATIENCE, || async {
        metric(r#"portcullis_config_reloads_total{outcome="success"}"#).await >= 1.0
    })
    .await;
    assert!(reloaded);
    for _ in 0..6 {
        let (status, _) = on_new_connection(p.addr, "svc2", "svc-pw").await;
        assert_eq!(status, 200);
    }

    // Shutdown drains every worker and the process exits cleanly.
    p.signal("TERM");
    let mut child = p;
    let exited = eventually(PATIENCE, || {
        let done = child.child.try_wait().unwrap().is_some();
        async move { done }
    })
    .await;
    assert!(exited, "the gateway did not exit after SIGTERM");
    let status = child.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// An HTTP/1.1 upstream that counts the connections it accepts; `keep_alive = false`
/// closes each connection after its response.
async fn counting_upstream(keep_alive: bool) -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let n = http_body_util::BodyExt::collect(req.into_body())
                        .await
                        .map(|b| b.to_bytes().len())
                        .unwrap_or(0);
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from(format!("read {n}")),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(keep_alive)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, accepted)
}

/// The real binary on `config`, with the directory holding the file.
fn start(config: &str) -> (tempfile::TempDir, Process) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), config);
    let p = Process::start(&path, &[]);
    (dir, p)
}

/// `GET path` through the gateway as `user`, on a new client connection.
async fn get_as(p: &Process, path: &str, user: &str, pw: &str) -> reqwest::Response {
    client()
        .get(format!("http://{}{path}", p.addr))
        .header("authorization", basic(user, pw))
        .send()
        .await
        .unwrap()
}

fn one_worker(upstream: &str) -> String {
    base(upstream, "svc-pw", 1, &["GET"]).to_toml()
}

/// A worker's upstream connections live in its own pool and are reused, request after
/// request; bodies stream both ways; an upstream that closes after each answer costs a
/// new connection each time, never a failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_upstream_connections_are_pooled_and_reused() {
    for keep_alive in [true, false] {
        let (up, accepted) = counting_upstream(keep_alive).await;
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(dir.path(), &one_worker(&format!("http://{up}")));
        let p = Process::start(&path, &[]);
        let c = client();
        for i in 0..20 {
            let body = vec![b'x'; if i % 2 == 0 { 0 } else { 256 * 1024 }];
            let len = body.len();
            let r = c
                .get(format!("http://{}/i/x", p.addr))
                .header("authorization", basic("svc", "svc-pw"))
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "request {i}");
            assert_eq!(r.text().await.unwrap(), format!("read {len}"));
        }
        let n = accepted.load(std::sync::atomic::Ordering::SeqCst);
        if keep_alive {
            assert_eq!(n, 1, "twenty sequential requests reuse one upstream connection");
        } else {
            assert_eq!(n, 20);
        }
    }
}

/// A raw TCP upstream on 127.0.0.1: `on_head` is called with each request head (the
/// bytes up to the blank line) read off a connection and the connection itself, and
/// returns whether to read the next head. No body is read: its bytes are read as heads.
async fn raw_upstream<F>(on_head: F) -> std::net::SocketAddr
where
    F: Fn(String, &mut TcpStream) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>>
        + Send
        + Sync
        + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let on_head = std::sync::Arc::new(on_head);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let on_head = on_head.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let end = loop {
                        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&got[..end]).to_string();
                    got.drain(..end);
                    if !on_head(head, &mut stream).await {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// An upstream that reads each request head, counts it, and closes without answering.
async fn hanging_up_upstream() -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let heads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = heads.clone();
    let addr = raw_upstream(move |_, _| {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async { false })
    })
    .await;
    (addr, heads)
}

/// A request the upstream received is never sent again: an upstream that hangs up
/// after reading it gives the client a 502 `upstream_error`, and the upstream saw it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_upstream_read_is_not_retried() {
    let (up, heads) = hanging_up_upstream().await;
    let (_dir, p) = start(&one_worker(&format!("http://{up}")));
    let r = get_as(&p, "/i/x", "svc", "svc-pw").await;
    error_body(r, 502).await;
    p.logs_when(|l| l.contains(r#""reason":"upstream_error""#)).await;
    assert_eq!(heads.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// Per-core sockets share their address by SO_REUSEPORT, which another process of the
/// same user could join: a second gateway on an address a first one serves (either
/// model) is refused at start, and the first keeps every connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gateway_cannot_join_the_address_of_the_first() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &one_worker(&up.url()));
    let first = Process::start(&path, &[]);
    for model in ["per_core", "shared"] {
        let taken = std::fs::read_to_string(&path)
            .unwrap()
            .replace("model = \"per_core\"", &format!("model = \"{model}\""))
            .replace("127.0.0.1:0", &first.addr.to_string());
        assert!(taken.contains(&first.addr.to_string()), "{taken}");
        let second_path = dir.path().join(format!("second-{model}.toml"));
        std::fs::write(&second_path, taken).unwrap();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(bin())
                .args(["serve", "--config"])
                .arg(&second_path)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            !out.status.success(),
            "{model}: a second gateway started on a taken address"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cannot bind inbound listener"), "{model}: {err}");
    }
    let r = client()
        .get(format!("http://{}/i/x", first.addr))
        .header("authorization", basic("svc", "svc-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// An upstream that answers every request with its response followed at once by a
/// second, unsolicited one (`smuggled`), on a connection it keeps open.
async fn lying_upstream() -> std::net::SocketAddr {
    raw_upstream(|_, stream| {
        Box::pin(async move {
            let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirstHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled";
            stream.write_all(answer).await.is_ok()
        })
    })
    .await
}

/// A pooled connection is never handed on with a response nobody asked for: whatever
/// an upstream sends after its answer, the next request, another user's included, gets
/// its own answer, never the unsolicited one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_an_upstream_sends_after_its_answer_reach_no_one() {
    let up = lying_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = base(&format!("http://{up}"), "svc-pw", 1, &["GET"])
        .user("other", |u| u.roles(["rest"]).password_hash(&argon2_hash("other-pw")))
        .to_toml();
    let path = write_config(dir.path(), &config);
    let p = Process::start(&path, &[]);
    // A fresh client each time: a new client connection, the same upstream pool.
    for i in 0..12 {
        let (user, pw) = if i % 2 == 0 {
            ("svc", "svc-pw")
        } else {
            ("other", "other-pw")
        };
        let r = client()
            .get(format!("http://{}/i/{i}", p.addr))
            .header("authorization", basic(user, pw))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        assert!(
            !body.contains("smuggled"),
            "request {i} ({user}) got the unsolicited answer"
        );
        assert!(status == 200 && body == "first", "request {i}: {status} {body}");
    }
}

/// An upstream that parses requests one after another without reading any body (so a
/// body's bytes are read as the next request), answers each with its request line,
/// answers as HTTP/1.0 with keep-alive when `http10`, and hangs up, unanswered, on a
/// request for `/i/smuggled`. Every request line it parsed is recorded.
async fn careless_upstream(http10: bool) -> (std::net::SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let addr = raw_upstream(move |head, stream| {
        let line = head.lines().next().unwrap_or("").to_string();
        log.lock().unwrap().push(line.clone());
        Box::pin(async move {
            if line.contains("/i/smuggled") {
                return false;
            }
            let answer = format!(
                "{} 200 OK\r\n{}Content-Length: {}\r\n\r\n{line}",
                if http10 { "HTTP/1.0" } else { "HTTP/1.1" },
                if http10 { "Connection: keep-alive\r\n" } else { "" },
                line.len()
            );
            stream.write_all(answer.as_bytes()).await.is_ok()
        })
    })
    .await;
    (addr, seen)
}

fn two_users(upstream: &str) -> String {
    base(upstream, "svc-pw", 1, &["GET", "POST"])
        .user("other", |u| u.roles(["rest"]).password_hash(&argon2_hash("other-pw")))
        .to_toml()
}

/// An upstream that answers before it has read a request's body leaves the rest of the
/// body to write: it is written on that request's connection, which is pooled only
/// after, never in front of the next client's request. Here the rest of one user's body
/// is itself a request (for an upstream that does not read bodies); the next user still
/// gets the answer to his own request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_the_upstream_answered_early_is_never_sent_ahead_of_another_request() {
    let (up, seen) = careless_upstream(false).await;
    let (_dir, p) = start(&two_users(&format!("http://{up}")));
    let tail = b"GET /i/smuggled HTTP/1.1\r\nHost: up\r\nX-Portcullis-User: other\r\n\r\n".to_vec();
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let head = format!(
        "POST /i/a HTTP/1.1\r\nHost: gw\r\nAuthorization: {}\r\nContent-Length: {}\r\n\r\n",
        basic("svc", "svc-pw"),
        20 + tail.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&[b'P'; 20]).await.unwrap();
    // The upstream answers from the head; the client reads that answer in full.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"\r\n\r\nPOST /i/a HTTP/1.1") {
        match tokio::time::timeout(PATIENCE, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            other => panic!("no early answer: {other:?} {}", String::from_utf8_lossy(&got)),
        }
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    // Then the rest of the body, then another user's request.
    s.write_all(&tail).await.unwrap();
    let r = get_as(&p, "/i/mine", "other", "other-pw").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "GET /i/mine HTTP/1.1");
    drop(s);
    assert!(seen.lock().unwrap().iter().any(|l| l == "GET /i/mine HTTP/1.1"));
}

/// After an HTTP/1.0 answer a connection is not reused: the next request, another
/// user's chunked upload included, goes out as HTTP/1.1 on a connection of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_answer_does_not_downgrade_the_next_request() {
    let (up, seen) = careless_upstream(true).await;
    let (_dir, p) = start(&two_users(&format!("http://{up}")));
    let c = client();
    let r = c
        .get(format!("http://{}/i/first", p.addr))
        .header("authorization", basic("svc", "svc-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "GET /i/first HTTP/1.1");
    let chunks = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"x"))]);
    let r = client()
        .post(format!("http://{}/i/upload", p.addr))
        .header("authorization", basic("other", "other-pw"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "POST /i/upload HTTP/1.1");
    // (The upstream reads no body: the chunks it reads as lines of their own.)
    let seen = seen.lock().unwrap();
    assert!(seen.iter().any(|l| l == "POST /i/upload HTTP/1.1"), "{seen:?}");
    assert!(!seen.iter().any(|l| l.ends_with("HTTP/1.0")), "{seen:?}");
}

/// An upstream answer framed by `Transfer-Encoding: chunked` that also says
/// `Content-Length: 5` is forwarded whole: the length goes with the coding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_with_both_framings_is_forwarded_whole() {
    let up = raw_upstream(|_, stream| {
        Box::pin(async move {
            let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nf\r\nthe whole body.\r\n0\r\n\r\n";
            stream.write_all(answer).await.is_ok()
        })
    })
    .await;
    let (_dir, p) = start(&one_worker(&format!("http://{up}")));
    let r = get_as(&p, "/i/x", "svc", "svc-pw").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("content-length").is_none(), "{:?}", r.headers());
    assert_eq!(r.text().await.unwrap(), "the whole body.");
}
