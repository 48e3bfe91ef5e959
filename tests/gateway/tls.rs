//! TLS termination (rustls, rcgen certificates made here), HTTP/2 by ALPN, and the
//! connection limits: slow headers, handshake timeout, max_connections.

use crate::support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn tls_config(cert: &Cert, limits: &str) -> String {
    let tls = table([
        ("cert", cert.cert_path.display().to_string().into()),
        ("key", cert.key_path.display().to_string().into()),
    ]);
    plain(limits).section("listen", |s| s.set("tls", tls)).to_toml()
}

#[tokio::test]
async fn http2_and_http1_over_tls_reach_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let cert = self_signed(dir.path(), "server");
    let gw = Gateway::start_in(dir, &tls_config(&cert, "")).await;
    let url = format!("https://localhost:{}/open/h2?x=1", gw.addr.port());
    let resp = tls_client(&cert).post(&url).body("abc").send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2, "ALPN picks h2");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-request-id").is_some());
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["path"], "/open/h2");
    assert_eq!(v["body_length"], 3);
    assert_eq!(v["headers"]["x-forwarded-proto"], "https");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    assert!(gw.metric("portcullis_tls_certificate_expiry_timestamp_seconds").await > now);

    let h1 = reqwest::Client::builder()
        .http1_only()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let resp = h1.get(&url).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.status(), 200);

    // Errors over HTTP/2 are the same JSON.
    let resp = tls_client(&cert)
        .get(format!("https://localhost:{}/missing", gw.addr.port()))
        .send()
        .await
        .unwrap();
    error_body(resp, 404).await;
    gw.stop().await;
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_certificate_fails_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let cert = self_signed(dir.path(), "server");
    let other = self_signed(dir.path(), "other");
    let gw = Gateway::start_in(dir, &tls_config(&cert, "")).await;
    let url = format!("https://localhost:{}/open/x", gw.addr.port());
    assert!(tls_client(&other).get(&url).send().await.is_err());
    // Plain HTTP on the TLS port is not served either.
    let out = raw(gw.addr, b"GET /open/x HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(!out.contains("200 OK"));
    assert!(
        eventually(PATIENCE, || gw
            .metric_at_least("portcullis_tls_handshake_failures_total", 2.0))
        .await
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_stalled_tls_handshake_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let cert = self_signed(dir.path(), "server");
    let gw = Gateway::start_in(dir, &tls_config(&cert, "header_read_timeout = \"300ms\"")).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = [0u8; 16];
    // Nothing else would close it: the idle timeout is far longer than the wait.
    let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
        .await
        .expect("server closes");
    assert!(matches!(n, Ok(0)), "closed with FIN, nothing sent: {n:?}");
    gw.stop().await;
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_cut_off() {
    let gw = Gateway::start(&tls_config_plain("header_read_timeout = \"500ms\"")).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /open/x HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // Trickle for up to PATIENCE; the default idle timeout (far longer) never applies
    // while a head is being read.
    let started = std::time::Instant::now();
    let mut closed = false;
    for i in 0.. {
        if started.elapsed() > PATIENCE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.write_all(format!("X-Trickle-{i}: y\r\n").as_bytes()).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 512];
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
            match r {
                Ok(0) | Err(_) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    // hyper may answer 408 before closing.
                    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"));
                    closed = true;
                    break;
                }
            }
        }
    }
    assert!(closed, "connection still open after {PATIENCE:?} of trickling");
    gw.stop().await;
}

fn tls_config_plain(limits: &str) -> String {
    plain(limits).to_toml()
}

/// The echo upstream on `/open/*`, with `limits` (TOML lines of `[limits]`).
fn plain(limits: &str) -> Config {
    Config::new().section_toml("limits", limits).plan("p", |p| {
        p.upstream("builtin:echo")
            .access_all()
            .integration("open", |i| i.path("/open/*").methods(["GET", "POST"]).auth("none"))
    })
}

#[tokio::test]
async fn max_connections_is_a_hard_cap() {
    let gw = Gateway::start(&tls_config_plain("max_connections = 2")).await;
    let req = b"GET /open/x HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut a = TcpStream::connect(gw.addr).await.unwrap();
    let mut b = TcpStream::connect(gw.addr).await.unwrap();
    for s in [&mut a, &mut b] {
        s.write_all(req).await.unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    }
    // The third is closed at accept, before it could send anything: an orderly close
    // (a request written first could turn it into a reset, depending on timing).
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(PATIENCE, c.read(&mut buf))
        .await
        .expect("closed, not hanging");
    assert!(matches!(r, Ok(0)), "third connection was not closed at accept: {r:?}");
    assert_eq!(
        gw.metric(r#"portcullis_connections_rejected_total{listener="inbound"}"#)
            .await,
        1.0
    );
    assert_eq!(
        gw.metric(r#"portcullis_connections_active{listener="inbound"}"#).await,
        2.0
    );
    // Once one leaves, a new connection is served.
    drop(a);
    let addr = gw.addr;
    let served = eventually(PATIENCE, || async move {
        raw(addr, b"GET /open/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 200")
    })
    .await;
    assert!(served, "a freed connection slot was never reused");
    drop(b);
    gw.stop().await;
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let gw = Gateway::start(&tls_config_plain(
        "idle_timeout = \"300ms\"\nheader_read_timeout = \"10s\"",
    ))
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /open/x HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let r = tokio::time::timeout(PATIENCE, s.read(&mut buf))
        .await
        .expect("idle connection closed");
    assert!(matches!(r, Ok(0)), "closed with FIN, nothing sent: {r:?}");
    gw.stop().await;
}

#[tokio::test]
async fn an_http_1_0_client_offering_only_its_alpn_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let cert = self_signed(dir.path(), "server");
    let gw = Gateway::start_in(dir, &tls_config(&cert, "")).await;
    let mut roots = rustls::RootCertStore::empty();
    {
        use rustls_pki_types::pem::PemObject;
        roots
            .add(rustls_pki_types::CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap())
            .unwrap();
    }
    let mut cfg =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.0".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let mut tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("handshake");
    tls.write_all(b"GET /open/old HTTP/1.0\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, tls.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    gw.stop().await;
}

#[tokio::test]
async fn an_http2_body_without_length_over_the_limit_is_413() {
    let dir = tempfile::tempdir().unwrap();
    let cert = self_signed(dir.path(), "server");
    let up = Upstream::start().await;
    let toml = tls_config(&cert, "max_body_bytes = 50000").replace("builtin:echo", &up.url());
    let gw = Gateway::start_in(dir, &toml).await;
    let url = format!("https://localhost:{}/open/h2", gw.addr.port());
    let resp = tls_client(&cert)
        .post(&url)
        .body(streamed_body(200_000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    error_body(resp, 413).await;
    assert!(up.seen().is_empty());
    let resp = tls_client(&cert)
        .post(&url)
        .body(streamed_body(50_000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.last().body_len, 50_000);
    gw.stop().await;
}

#[tokio::test]
async fn keep_alive_outlives_header_read_timeout_until_idle_timeout() {
    // idle_timeout is far longer than header_read_timeout, and than any stall of a slow
    // machine between two requests.
    let gw = Gateway::start(&tls_config_plain(
        "header_read_timeout = \"250ms\"\nidle_timeout = \"5s\"",
    ))
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = vec![0u8; 4096];
    for _ in 0..2 {
        s.write_all(b"GET /open/x HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        // Idle for over three times header_read_timeout: the connection is still usable.
        // A wait for something not to happen needs the server's time to pass (its
        // per-core workers run runtimes of their own): under a second, on purpose.
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    // Past idle_timeout it is closed.
    let r = tokio::time::timeout(PATIENCE, s.read(&mut buf))
        .await
        .expect("closed at idle_timeout");
    assert!(matches!(r, Ok(0)), "closed with FIN, nothing sent: {r:?}");
    gw.stop().await;

    // A connection that never sends a head is closed at header_read_timeout, long before
    // an idle_timeout that is longer than the test waits.
    let gw = Gateway::start(&tls_config_plain(
        "header_read_timeout = \"300ms\"\nidle_timeout = \"1h\"",
    ))
    .await;
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    let r = tokio::time::timeout(PATIENCE, silent.read(&mut buf))
        .await
        .expect("silent connection closed at header_read_timeout");
    assert!(matches!(r, Ok(0)), "closed with FIN, nothing sent: {r:?}");
    gw.stop().await;
}
