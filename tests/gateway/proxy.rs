//! Proxying: headers, request ids, errors, streaming and memory, limits.

use crate::support;

use support::*;

fn public(upstream: &str, extra_limits: &str) -> String {
    Config::new()
        .section_toml("limits", extra_limits)
        .plan("p", |p| {
            p.upstream(upstream)
                .access_all()
                .integration("open", |i| {
                    i.path("/open/*").methods(["GET", "POST", "PUT"]).auth("none")
                })
                .integration("exact", |i| i.path("/exact").methods(["POST"]).auth("none"))
        })
        .to_toml()
}

#[tokio::test]
async fn forwards_with_forwarded_headers_and_without_hop_by_hop() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&public(&up.url(), "")).await;
    let resp = client()
        .post(gw.url("/open/a/b?x=1&y=%20"))
        .header("connection", "x-conn-hop")
        .header("x-conn-hop", "1")
        .header("keep-alive", "timeout=1")
        .header("te", "deflate, trailers")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-forwarded-for", "10.9.8.7")
        .header("x-portcullis-user", "admin")
        .header("x-portcullis-roles", "root")
        .header("X-Portcullis-Anything", "spoof")
        .header("x-kept", "kept")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-upstream"], "yes");
    // Response hop-by-hop headers are gone too.
    assert!(resp.headers().get("x-resp-hop").is_none());
    assert!(resp.headers().get("keep-alive").is_none());
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    let seen = up.last();
    assert_eq!(seen.uri, "/open/a/b?x=1&y=%20");
    assert_eq!(seen.body_len, 5);
    let h = &seen.headers;
    for gone in [
        "x-conn-hop",
        "keep-alive",
        "proxy-authorization",
        "x-portcullis-user",
        "x-portcullis-roles",
        "x-portcullis-anything",
    ] {
        assert!(h.get(gone).is_none(), "{gone} must not reach the upstream");
    }
    assert_eq!(h["x-kept"], "kept");
    // TE is hop-by-hop; only `trailers` goes on (the gateway passes trailers back).
    assert_eq!(h["te"], "trailers");
    assert_eq!(h["x-forwarded-for"], "10.9.8.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], gw.addr.to_string().as_str());
    assert_eq!(h["host"], up.addr.to_string().as_str());
    assert_eq!(h["x-request-id"], id.as_str());
    assert_eq!(h["x-portcullis-auth-method"], "none");
    assert_eq!(h["x-portcullis-plan"], "p");
    assert_eq!(h["x-portcullis-integration"], "open");
    gw.stop().await;
}

#[tokio::test]
async fn request_id_is_kept_if_sent_and_replaced_if_unsafe() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&public(&up.url(), "")).await;
    let resp = client()
        .get(gw.url("/open/x"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "abc-123");
    assert_eq!(up.last().headers["x-request-id"], "abc-123");
    let resp = client()
        .get(gw.url("/open/x"))
        .header("x-request-id", "a b\"c")
        .send()
        .await
        .unwrap();
    assert_ne!(resp.headers()["x-request-id"], "a b\"c");
    // Errors carry it as well.
    let resp = client()
        .get(gw.url("/nowhere"))
        .header("x-request-id", "err-1")
        .send()
        .await
        .unwrap();
    assert_eq!(error_body(resp, 404).await["request_id"], "err-1");
    gw.stop().await;
}

#[tokio::test]
async fn not_found_and_method_not_allowed_are_json() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&public(&up.url(), "")).await;
    error_body(client().get(gw.url("/nope")).send().await.unwrap(), 404).await;
    error_body(client().get(gw.url("/exact/more")).send().await.unwrap(), 404).await;
    error_body(client().get(gw.url("/openx")).send().await.unwrap(), 404).await;
    let resp = client().get(gw.url("/exact")).send().await.unwrap();
    assert_eq!(resp.headers()["allow"], "POST");
    error_body(resp, 405).await;
    error_body(client().delete(gw.url("/open/a")).send().await.unwrap(), 405).await;
    assert!(up.seen().is_empty());
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"portcullis_requests_total{auth_method="",integration="",outcome="bad_request",plan=""}"#
        ),
        5.0
    );
    gw.stop().await;
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_is_504() {
    // A port with nothing listening: bind, note it, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = Gateway::start(&public(&format!("http://{dead}"), "")).await;
    let v = error_body(client().get(gw.url("/open/x")).send().await.unwrap(), 502).await;
    assert_eq!(v["reason"], "Bad Gateway");
    gw.stop().await;

    let up = Upstream::start().await;
    let gw = Gateway::start(&public(&up.url(), "request_timeout = \"1s\"")).await;
    error_body(client().get(gw.url("/open/slow/3000")).send().await.unwrap(), 504).await;
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"portcullis_requests_total{auth_method="none",integration="open",outcome="upstream_error",plan="p"}"#
        ),
        1.0
    );
    gw.stop().await;
}

#[tokio::test]
async fn declared_body_over_limit_is_413_and_never_forwarded() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&public(&up.url(), "max_body_bytes = 1024")).await;
    let resp = client()
        .post(gw.url("/open/x"))
        .body(vec![b'a'; 2048])
        .send()
        .await
        .unwrap();
    error_body(resp, 413).await;
    // At the limit passes.
    let resp = client()
        .post(gw.url("/open/x"))
        .body(vec![b'a'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_len, 1024);
    gw.stop().await;
}

#[tokio::test]
async fn streamed_body_over_limit_is_413_and_never_forwarded() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&public(&up.url(), "max_body_bytes = 100000")).await;
    let resp = client()
        .post(gw.url("/open/x"))
        .body(streamed_body(300_000))
        .send()
        .await
        .unwrap();
    error_body(resp, 413).await;
    assert!(
        up.seen().is_empty(),
        "nothing of an over-limit body reaches the upstream"
    );
    let resp = client()
        .post(gw.url("/open/x"))
        .body(streamed_body(100_000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.last().body_len, 100_000);
    gw.stop().await;
}

#[tokio::test]
async fn long_streamed_body_over_limit_is_cut_and_413() {
    // Past the spooling window the body streams; it is cut when it passes the limit and
    // the upstream never receives it complete.
    let up = Upstream::start().await;
    let limit = 3 * 1024 * 1024;
    let gw = Gateway::start(&public(&up.url(), &format!("max_body_bytes = {limit}"))).await;
    let resp = client()
        .put(gw.url("/open/x"))
        .body(streamed_body(8 * 1024 * 1024))
        .send()
        .await;
    if let Ok(resp) = resp {
        error_body(resp, 413).await;
    }
    for s in up.seen() {
        assert!(!s.complete, "the upstream must never get the whole over-limit body");
        assert!(s.body_len <= limit);
    }
    gw.stop().await;
}

#[tokio::test]
async fn oversized_headers_are_431() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&public(&up.url(), "max_header_bytes = 2048")).await;
    let resp = client()
        .get(gw.url("/open/x"))
        .header("x-big", "a".repeat(4000))
        .send()
        .await
        .unwrap();
    error_body(resp, 431).await;
    // Far past the limit hyper refuses the head itself, still with 431.
    let resp = client()
        .get(gw.url("/open/x"))
        .header("x-big", "a".repeat(100_000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 431);
    assert!(up.seen().is_empty());
    gw.stop().await;
}

/// `max_headers` bounds the number of header fields on every protocol: at the limit the
/// request passes, one more is 431 and never reaches the upstream.
#[tokio::test]
async fn too_many_header_fields_are_431_on_http1_and_http2() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&public(&up.url(), "max_headers = 20")).await;
    // HTTP/1.1, raw: Host plus n-1 more fields.
    let head = |n: usize| {
        let mut r = String::from("GET /open/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n");
        for i in 0..n - 2 {
            r.push_str(&format!("X-F{i}: v\r\n"));
        }
        r.push_str("\r\n");
        r
    };
    let ok = raw(gw.addr, head(20).as_bytes()).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let refused = raw(gw.addr, head(21).as_bytes()).await;
    assert!(refused.starts_with("HTTP/1.1 431"), "{refused}");
    assert_eq!(up.seen().len(), 1);
    // HTTP/2 (prior knowledge): the same limit, checked by the gateway.
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(http2_client_executor(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    for (n, status) in [(20usize, 200u16), (21, 431)] {
        let mut b = http::Request::get("http://gw/open/h2");
        for i in 0..n {
            b = b.header(format!("x-f{i}"), "v");
        }
        let resp = send
            .send_request(b.body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{n} fields over HTTP/2");
    }
    assert_eq!(up.seen().len(), 2);
    gw.stop().await;
}

#[tokio::test]
async fn echo_upstream_describes_the_request() {
    let gw = Gateway::start(&public("builtin:echo", "")).await;
    let resp = client()
        .post(gw.url("/open/e?q=1"))
        .header("x-a", "b")
        .body("12345")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/open/e");
    assert_eq!(v["query"], "q=1");
    assert_eq!(v["headers"]["x-a"], "b");
    assert_eq!(v["body_length"], 5);
    gw.stop().await;
}

/// 64 MiB up and 64 MiB down through the real binary, whose resident memory must not
/// grow by anything near the body size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_with_flat_memory() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &public(&up.url(), "max_body_bytes = 0\nrequest_timeout = \"60s\""),
    );
    let gw = Process::start(&cfg, &[]);
    let c = client();
    let base = format!("http://{}", gw.addr);
    // Warm up: pools, buffers, allocator arenas.
    c.post(format!("{base}/open/warm"))
        .body(streamed_body(1 << 20))
        .send()
        .await
        .unwrap();
    let before = gw.rss_kib();
    const SIZE: u64 = 64 * 1024 * 1024;
    let resp = c
        .put(format!("{base}/open/up"))
        .body(streamed_body(SIZE))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.last().body_len, SIZE);
    let after_up = gw.rss_kib();
    let mut resp = c.get(format!("{base}/open/download/{SIZE}")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut got = 0u64;
    let mut peak = after_up;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        got += chunk.len() as u64;
        if got % (8 << 20) < chunk.len() as u64 {
            peak = peak.max(gw.rss_kib());
        }
    }
    assert_eq!(got, SIZE);
    let after_down = gw.rss_kib().max(peak);
    eprintln!("gateway RSS KiB: before {before}, after upload {after_up}, peak during download {after_down}");
    // Buffering either body would add 65536 KiB.
    assert!(
        after_up < before + 16 * 1024,
        "upload grew RSS from {before} to {after_up} KiB"
    );
    assert!(
        after_down < before + 16 * 1024,
        "download grew RSS from {before} to {after_down} KiB"
    );
}

/// W3C Trace Context: the upstream joins the client's trace (same trace id and flags, a
/// new span id, `tracestate` kept); without a valid `traceparent` it gets a new trace.
#[tokio::test]
async fn the_upstream_joins_the_callers_trace() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&public(&up.url(), "")).await;
    let resp = client()
        .get(gw.url("/open/t"))
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .header("tracestate", "congo=t61rcWkgMzE")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = up.last().headers;
    let tp = h["traceparent"].to_str().unwrap().to_string();
    assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{tp}");
    assert!(tp.ends_with("-01"), "{tp}");
    assert_ne!(&tp[36..52], "00f067aa0ba902b7", "a new span id for the hop");
    assert_eq!(h["tracestate"], "congo=t61rcWkgMzE");
    for sent in [None, Some("00-zzzz-bad-01")] {
        let mut r = client().get(gw.url("/open/t")).header("tracestate", "x=y");
        if let Some(s) = sent {
            r = r.header("traceparent", s);
        }
        assert_eq!(r.send().await.unwrap().status(), 200);
        let h = up.last().headers;
        let tp = h["traceparent"].to_str().unwrap();
        assert_eq!(tp.len(), 55, "{tp}");
        assert!(tp.starts_with("00-") && tp.ends_with("-00"), "{tp}");
        assert!(
            !h.contains_key("tracestate"),
            "a tracestate without its traceparent is dropped"
        );
    }
    gw.stop().await;
}
