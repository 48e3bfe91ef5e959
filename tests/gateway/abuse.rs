//! Staying up and small under abuse: argon2 floods on a bounded pool, stalled and
//! trickled bodies, reset HTTP/2 streams, rapid resets, and a mixed soak. Each test says
//! what happened (statuses, log lines, metrics, peak RSS), never how fast.

use crate::support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn cfg(upstream: &str, limits: &str, auth: &str) -> String {
    Config::new()
        .section_toml("limits", limits)
        .section_toml("auth", auth)
        .section("lockout", |s| s.set("max_failures", 1000000))
        .user("svc", |u| u.roles(["rest"]).password_hash(&argon2_hash("svc-pw")))
        .plan("p", |p| {
            p.upstream(upstream)
                .access_roles(["rest"])
                .integration("open", |i| {
                    i.path("/open/*").methods(["GET", "POST"]).auth("none").senders_all()
                })
                .integration("login", |i| {
                    i.path("/login/*")
                        .methods(["GET", "POST"])
                        .auth("basic")
                        .senders_roles(["rest"])
                })
        })
        .to_toml()
}

fn status_of(out: &str) -> u16 {
    out.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Reads until the server closes the connection; returns what it said.
async fn read_to_close(s: &mut tokio::net::TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut out))
        .await
        .expect("the server closes the connection");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_stalled_chunked_body_is_cut_with_408() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&cfg(
        &up.url(),
        "body_read_timeout = \"300ms\"\nrequest_timeout = \"1h\"",
        "",
    ))
    .await;
    for path in ["/open/x", "/login/x"] {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let auth = basic("svc", "svc-pw");
        s.write_all(
            format!("POST {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: {auth}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        // ...and then nothing: the body is cut at body_read_timeout.
        let out = read_to_close(&mut s).await;
        assert_eq!(status_of(&out), 408, "{path}: {out}");
    }
    // Nothing complete ever reached the upstream.
    assert!(up.seen().iter().all(|s| !s.complete), "{:?}", up.seen());
    assert_eq!(
        gw.metric(r#"portcullis_requests_total{auth_method="none",integration="open",outcome="bad_request",plan="p"}"#)
            .await,
        1.0
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_trickled_body_is_cut_at_request_timeout() {
    let up = Upstream::start().await;
    // Each byte comes well within body_read_timeout, but the whole request may not take
    // longer than request_timeout.
    let gw = Gateway::start(&cfg(
        &up.url(),
        "body_read_timeout = \"1h\"\nrequest_timeout = \"1s\"",
        "",
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /open/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    // One byte every 50 ms, until the answer starts: a byte sent after it would meet a
    // closed socket, and its reset could discard the answer before the test reads it.
    let mut first = Vec::new();
    let trickle = async {
        let mut buf = [0u8; 4096];
        for _ in 0..10_000 {
            if s.write_all(b"x").await.is_err() {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await {
                Err(_) => {}
                Ok(Ok(n)) => {
                    first.extend_from_slice(&buf[..n]);
                    break;
                }
                Ok(Err(_)) => break,
            }
        }
    };
    let _ = tokio::time::timeout(PATIENCE, trickle).await;
    let out = String::from_utf8_lossy(&first).into_owned() + &read_to_close(&mut s).await;
    assert_eq!(status_of(&out), 408, "{out}");
    assert!(up.seen().iter().all(|s| !s.complete));
    gw.stop().await;
}

#[tokio::test]
async fn a_stalled_http2_body_is_cut_and_the_stream_answered_408() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&cfg(
        &up.url(),
        "body_read_timeout = \"300ms\"\nrequest_timeout = \"1h\"",
        "",
    ))
    .await;
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(http2_client_executor(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    // A body stream that sends one chunk and then never ends.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>>(1);
    tx.send(Ok(hyper::body::Frame::data(Bytes::from_static(b"hello"))))
        .await
        .unwrap();
    let body = http_body_util::StreamBody::new(tokio_stream_from(rx));
    let req = http::Request::post("http://gw/open/h2").body(body).unwrap();
    let resp = tokio::time::timeout(PATIENCE, send.send_request(req))
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(resp.status(), 408);
    drop(tx);
    gw.stop().await;
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A request whose HTTP/2 stream is reset while the upstream works is still logged once
/// (status 499, outcome client_closed), counted, and no longer holds its connection open
/// past idle_timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_stream_is_accounted_for_and_idle_timeout_still_applies() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &cfg(&up.url(), "idle_timeout = \"500ms\"", ""));
    let gw = Process::start(&path, &[]);
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    let mut block = Vec::new();
    for (n, v) in [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/open/slow/60000"),
        (":authority", "gw"),
        ("x-request-id", "reset-me-1"),
    ] {
        block.extend(hpack(n, v));
    }
    out.extend(frame(0x1, 0x5, 1, &block));
    s.write_all(&out).await.unwrap();
    // Once the upstream has the request, the client gives up on it.
    assert!(
        eventually(PATIENCE, || {
            let up = up.clone();
            async move { !up.seen().is_empty() }
        })
        .await
    );
    s.write_all(&frame(0x3, 0, 1, &8u32.to_be_bytes())).await.unwrap();
    let logs = gw.logs_when(|l| l.contains("reset-me-1")).await;
    let line = logs.lines().find(|l| l.contains("reset-me-1")).unwrap();
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["status"], 499, "{line}");
    assert_eq!(v["reason"], "client_closed", "{line}");
    assert_eq!(logs.matches("reset-me-1").count(), 1);
    // With nothing in flight any more, the idle connection is closed.
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, s.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the connection ignored idle_timeout after the reset");
    let metrics = reqwest::get(format!("http://{}/metrics", gw.admin.unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(metric_value(&metrics, "portcullis_client_closed_total"), 1.0);
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn hpack(name: &str, value: &str) -> Vec<u8> {
    let mut b = vec![0x00, name.len() as u8];
    b.extend_from_slice(name.as_bytes());
    b.push(value.len() as u8);
    b.extend_from_slice(value.as_bytes());
    b
}

/// Streams opened and reset at once, over and over (CVE-2023-44487): the connection is
/// closed once it passes its budget, and the upstream sees no more than that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_closes_the_connection() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&cfg(&up.url(), "h2_max_pending_resets = 10", "")).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    s.write_all(&out).await.unwrap();
    let mut block = Vec::new();
    for (n, v) in [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/open/slow/60000"),
        (":authority", "gw"),
    ] {
        block.extend(hpack(n, v));
    }
    let mut closed = false;
    for i in 0..5000u32 {
        let id = 1 + 2 * i;
        let mut burst = frame(0x1, 0x5, id, &block);
        burst.extend(frame(0x3, 0, id, &8u32.to_be_bytes()));
        if s.write_all(&burst).await.is_err() {
            closed = true;
            break;
        }
    }
    if !closed {
        // The server may still be reading what was sent: wait for it to hang up.
        let mut buf = vec![0u8; 65536];
        let r = tokio::time::timeout(PATIENCE, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        closed = r.is_ok();
    }
    assert!(closed, "5000 reset streams did not end the connection");
    // Far fewer than 5000 requests were started.
    assert!(up.seen().len() < 1000, "{}", up.seen().len());
    gw.stop().await;
}

/// Asserts that `p` counted exactly `refused` unknown-user refusals and `overloaded`
/// refusals of a full hash queue: what the bad logins' 401s and 503s said they were.
async fn assert_counted(p: &Process, refused: f64, overloaded: f64) {
    let admin = p.admin.expect("admin listener");
    let counted = eventually(PATIENCE, || async {
        let m = reqwest::get(format!("http://{admin}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metric_value(&m, &failures("unknown_user", "basic")) == refused
            && metric_value(&m, "portcullis_hash_overloaded_total") == overloaded
    })
    .await;
    assert!(
        counted,
        "{refused} refused and {overloaded} overloaded answers, counted otherwise"
    );
}

async fn flood(addr: SocketAddr, n: usize, prefix: &str) -> Vec<(u16, bool)> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let head = format!(
                "GET /login/x HTTP/1.1\r\nHost: gw\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
                basic(&format!("{prefix}-{i}"), "wrong")
            );
            tokio::spawn(async move {
                let out = raw(addr, head.as_bytes()).await;
                (status_of(&out), out.to_ascii_lowercase().contains("retry-after:"))
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Parallel bad logins of unknown users: every one is answered 401 or 503 (overloaded,
/// with Retry-After), and the process stays within the pool's memory bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_login_flood_stays_within_the_pool_bound() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &cfg(
            &up.url(),
            "",
            "hash_workers = 2\nhash_queue = 16\nhash_queue_timeout = \"2s\"",
        ),
    );
    let gw = Process::start(&path, &[]);
    let base = gw.rss_kib();
    // Which requests find the queue full depends on timing; what each answer means does
    // not: every 401 is a refused unknown user, every 503 an overloaded pool (with
    // Retry-After), and the gateway's counters say exactly that many of each.
    let (mut refused, mut overloaded) = (0.0, 0.0);
    for round in 0..2 {
        let answers = flood(gw.addr, 200, &format!("nobody{round}")).await;
        for (status, retry) in &answers {
            match status {
                401 => refused += 1.0,
                503 => {
                    assert!(retry, "503 without Retry-After");
                    overloaded += 1.0;
                }
                other => panic!("{other}: {answers:?}"),
            }
        }
    }
    assert_counted(&gw, refused, overloaded).await;
    let peak = gw.peak_rss_kib();
    // Two workers of 19 MiB each, plus the base and room for 200 connections.
    let bound = base + 2 * 19 * 1024 + 40 * 1024;
    assert!(peak < bound, "peak {peak} KiB over {bound} KiB (base {base} KiB)");
    // The right password still passes afterwards.
    let out = raw(
        gw.addr,
        format!(
            "GET /login/x HTTP/1.1\r\nHost: gw\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
            basic("svc", "svc-pw")
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status_of(&out), 200, "{out}");
}

/// A bounded soak: good and bad logins, stalled bodies, reset streams and a reload, all
/// at once. Good requests never fail, every request is logged exactly once, and the peak
/// RSS stays under a stated bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_mixed_traffic_with_a_reload() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = cfg(
        &up.url(),
        "body_read_timeout = \"500ms\"",
        "hash_workers = 2\nhash_queue = 16",
    );
    let path = write_config(dir.path(), &text);
    let gw = Process::start(&path, &[]);
    let addr = gw.addr;
    let rounds = 20;
    let mut ids = Vec::new();
    let refused = std::sync::Arc::new(AtomicU64::new(0));
    let overloaded = std::sync::Arc::new(AtomicU64::new(0));
    for round in 0..rounds {
        let mut tasks = Vec::new();
        // Good requests, cached Basic, over keep-alive reqwest.
        for i in 0..10 {
            let id = format!("good-{round}-{i}");
            ids.push(id.clone());
            tasks.push(tokio::spawn(async move {
                let r = client()
                    .get(format!("http://{addr}/login/ok"))
                    .header("authorization", basic("svc", "svc-pw"))
                    .header("x-request-id", &id)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{id}");
            }));
        }
        // Bad logins.
        for i in 0..10 {
            let id = format!("bad-{round}-{i}");
            ids.push(id.clone());
            let (refused, overloaded) = (refused.clone(), overloaded.clone());
            tasks.push(tokio::spawn(async move {
                let head = format!(
                    "GET /login/x HTTP/1.1\r\nHost: gw\r\nX-Request-Id: {id}\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
                    basic(&format!("ghost-{id}"), "nope")
                );
                let out = raw(addr, head.as_bytes()).await;
                // Refused, or refused unverified when the hash queue is full: which one
                // depends on timing; the counters below pin each to its cause.
                match status_of(&out) {
                    401 => refused.fetch_add(1, Ordering::Relaxed),
                    503 => overloaded.fetch_add(1, Ordering::Relaxed),
                    _ => panic!("{out}"),
                };
            }));
        }
        // A slow client whose body stalls.
        let id = format!("slow-{round}");
        ids.push(id.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("POST /open/x HTTP/1.1\r\nHost: gw\r\nX-Request-Id: {id}\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
            let out = read_to_close(&mut s).await;
            assert_eq!(status_of(&out), 408, "{out}");
        }));
        for t in tasks {
            t.await.unwrap();
        }
        if round == rounds / 2 {
            std::fs::write(&path, text.replace("max_failures = 1000000", "max_failures = 999999")).unwrap();
            gw.signal("HUP");
        }
    }
    // HTTP/2 through the same process, for good measure.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(http2_client_executor(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    for i in 0..20 {
        let id = format!("h2-{i}");
        ids.push(id.clone());
        let req = http::Request::get(format!("http://{addr}/login/h2"))
            .header("authorization", basic("svc", "svc-pw"))
            .header("x-request-id", &id)
            .body(Full::new(Bytes::new()))
            .unwrap();
        send.ready().await.unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let _ = resp.into_body().collect().await;
    }
    let logs = gw
        .logs_when(|l| ids.iter().all(|id| l.contains(&format!("\"request_id\":\"{id}\""))))
        .await;
    for id in &ids {
        let n = logs.matches(&format!("\"request_id\":\"{id}\"")).count();
        assert_eq!(n, 1, "{id} logged {n} times");
    }
    assert!(logs.contains("config reloaded"), "the reload did not happen");
    let (refused, overloaded) = (
        refused.load(Ordering::Relaxed) as f64,
        overloaded.load(Ordering::Relaxed) as f64,
    );
    assert_counted(&gw, refused, overloaded).await;
    let peak = gw.peak_rss_kib();
    assert!(peak < 160 * 1024, "peak RSS {peak} KiB");
}

/// A loopback upstream that accepts one connection, says when a request head has
/// arrived, and never answers (the socket stays open until the test ends).
async fn silent_upstream() -> (String, tokio::sync::oneshot::Receiver<()>, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        let mut tx = Some(tx);
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
            }
        }
        std::future::pending::<()>().await;
    });
    (url, rx, task)
}

/// A client that goes away in the middle of its request body, whatever the framing, is
/// finished once as 499 `client_closed`: never as the upstream's fault (502) nor as a
/// bad request, and `portcullis_client_closed_total` counts it.
#[tokio::test]
async fn a_client_that_leaves_mid_body_is_client_closed_not_an_upstream_error() {
    for body in [
        "Content-Length: 1000\r\n\r\nhello",
        "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    ] {
        let (url, head_arrived, upstream) = silent_upstream().await;
        // No body limit: the body streams at once, so the upstream sees the head.
        let gw = Gateway::start(&cfg(&url, "max_body_bytes = 0", "")).await;
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(format!("POST /open/x HTTP/1.1\r\nHost: x\r\n{body}").as_bytes())
            .await
            .unwrap();
        head_arrived.await.unwrap();
        drop(s);
        let finished = eventually(PATIENCE, || async {
            gw.metric("portcullis_client_closed_total").await >= 1.0
        })
        .await;
        assert!(finished, "{body}: {}", gw.metrics().await);
        let m = gw.metrics().await;
        let series = |outcome: &str| {
            format!(
                r#"portcullis_requests_total{{auth_method="none",integration="open",outcome="{outcome}",plan="p"}}"#
            )
        };
        assert_eq!(metric_value(&m, &series("client_closed")), 1.0, "{body}");
        assert_eq!(metric_value(&m, &series("upstream_error")), 0.0, "{body}");
        assert_eq!(metric_value(&m, &series("bad_request")), 0.0, "{body}");
        assert_eq!(metric_value(&m, "portcullis_client_closed_total"), 1.0, "{body}");
        gw.stop().await;
        upstream.abort();
    }
}
