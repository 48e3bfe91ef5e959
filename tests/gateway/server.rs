//! The process: admin endpoints, graceful shutdown on SIGTERM, and the demo config.

use crate::support;

use support::*;

fn cfg(upstream: &str) -> String {
    base(upstream).to_toml()
}

/// An open and a locked route on `upstream`, a 10 s shutdown timeout.
fn base(upstream: &str) -> Config {
    Config::new()
        .section("limits", |s| s.set("shutdown_timeout", "10s"))
        .plan("p", |p| {
            p.upstream(upstream)
                .access_all()
                .integration("open", |i| i.path("/open/*").methods(["GET"]).auth("none"))
                .integration("locked", |i| i.path("/locked").methods(["GET"]).auth("basic"))
        })
}

#[tokio::test]
async fn admin_endpoints_answer() {
    let gw = Gateway::start(&cfg("builtin:echo")).await;
    let c = client();
    let r = c.get(gw.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    c.get(gw.url("/open/x")).send().await.unwrap();
    let m = gw.metrics().await;
    for name in [
        "portcullis_requests_total",
        "portcullis_request_duration_seconds_bucket",
        "portcullis_upstream_duration_seconds_bucket",
        "portcullis_connections_active",
        "portcullis_tls_handshake_failures_total",
        "portcullis_config_reloads_total",
        "portcullis_config_last_reload_success_timestamp_seconds",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics");
    }
    error_body(c.get(gw.admin_url("/nope")).send().await.unwrap(), 404).await;
    error_body(c.post(gw.admin_url("/metrics")).send().await.unwrap(), 405).await;
    gw.stop().await;
}

#[tokio::test]
async fn nothing_reaches_an_upstream_without_authentication() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&cfg(&up.url())).await;
    let r = client().get(gw.url("/locked")).send().await.unwrap();
    assert_401(r, MISSING).await;
    assert!(up.seen().is_empty());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_requests_in_flight_finish_then_exits_0() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    // No drain delay: the listener closes at once (the delay has a test of its own below),
    // while the request stays in flight until the test opens the gate.
    let config = base(&up.url()).section("limits", |s| s.set("drain_delay", "0s"));
    let path = write_config(dir.path(), &config.to_toml());
    let mut gw = Process::start(&path, &[]);
    let url = format!("http://{}/open/gate/x", gw.addr);
    let inflight = tokio::spawn(async move { client().get(url).send().await.map(|r| r.status().as_u16()) });
    // The request is in flight once the upstream has it.
    assert!(
        eventually(PATIENCE, || {
            let seen = !up.seen().is_empty();
            async move { seen }
        })
        .await
    );
    gw.signal("TERM");
    // New connections are refused once the listener is closed.
    let addr = gw.addr;
    assert!(
        eventually(PATIENCE, || async move {
            tokio::net::TcpStream::connect(addr).await.is_err()
        })
        .await,
        "still accepting after SIGTERM"
    );
    // Only now may the upstream answer: the request was in flight all along.
    up.open_gate();
    assert_eq!(inflight.await.unwrap().unwrap(), 200, "the request in flight finished");
    let status = tokio::task::spawn_blocking(move || gw.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn the_demo_config_serves_the_echo_upstream_over_tls() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().unwrap();
    // The shipped config, on ephemeral ports.
    let text = std::fs::read_to_string(format!("{root}/config/portcullis.toml"))
        .unwrap()
        .replace("127.0.0.1:8443", "127.0.0.1:0")
        .replace("127.0.0.1:9901", "127.0.0.1:0")
        .replace("127.0.0.1:9902", "127.0.0.1:0")
        .replace("config/tls/", &format!("{root}/config/tls/"));
    let path = write_config(dir.path(), &text);
    let gw = Process::start(&path, &[]);
    let pem = std::fs::read(format!("{root}/config/tls/server.crt")).unwrap();
    let c = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let base = format!("https://localhost:{}", gw.addr.port());
    let r = c.get(format!("{base}/incidents/status")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("{base}/incidents/jira/issue-1"))
        .basic_auth("jira-integration", Some("jira-demo-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["headers"]["x-portcullis-user"], "jira-integration");
    let r = c
        .post(format!("{base}/incidents/servicenow"))
        .basic_auth("pk_demo_servicenow", Some("demo-secret-9b1f4e7a2c6d8035"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(format!(
            "{base}/incidents/webhook?apiKey=demo-url-key-alice-7f3a9c2e51b84d06"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c.post(format!("{base}/incidents/servicenow")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let token: serde_json::Value = c
        .post(format!("{base}/oauth/token"))
        .basic_auth("demo-client", Some("demo-client-secret-4d2e9a71"))
        .form(&[
            ("grant_type", "password"),
            ("username", "jira-integration"),
            ("password", "jira-demo-password"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = c
        .get(format!("{base}/incidents/events"))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_stdout_never_stalls_requests() {
    // Logs are written by a background writer that drops lines when stdout is full.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &cfg("builtin:echo").replace(
            "[listen]\naddress = \"127.0.0.1:0\"",
            &format!("[listen]\naddress = \"127.0.0.1:{port}\""),
        ),
    );
    let mut child = std::process::Command::new(bin())
        .args(["serve", "--config"])
        .arg(&path)
        .env("PORTCULLIS_LOG", "info")
        .stdout(std::process::Stdio::piped()) // never read
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let c = client();
    let url = format!("http://127.0.0.1:{port}/open/x");
    let up = eventually(PATIENCE, || {
        let (c, url) = (c.clone(), url.clone());
        async move { c.get(&url).send().await.is_ok() }
    })
    .await;
    assert!(up, "gateway did not start");
    // Each request logs a line of a few hundred bytes: far more than a pipe holds.
    for i in 0..3000 {
        let r = tokio::time::timeout(PATIENCE, c.get(&url).send()).await;
        assert!(
            matches!(&r, Ok(Ok(resp)) if resp.status() == 200),
            "request {i} stalled or failed"
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `portcullis health` against a running process: 0 while it answers, 1 once it is gone.
fn health(admin: std::net::SocketAddr, ready: bool) -> i32 {
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["health", "--admin", &admin.to_string()]);
    if ready {
        cmd.arg("--ready");
    }
    cmd.output().unwrap().status.code().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_first_turns_readyz_503_while_serving_then_drains() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &base(&up.url())
            .section("limits", |s| s.set("drain_delay", "1h"))
            .to_toml(),
    );
    let mut gw = Process::start(&path, &[]);
    let admin = gw.admin.unwrap();
    assert_eq!(
        tokio::task::spawn_blocking(move || health(admin, true)).await.unwrap(),
        0
    );
    gw.signal("TERM");
    // Not ready any more...
    let ready_503 = eventually(PATIENCE, || async move {
        client()
            .get(format!("http://{admin}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 503)
    })
    .await;
    assert!(ready_503, "/readyz never answered 503 after SIGTERM");
    assert_eq!(
        tokio::task::spawn_blocking(move || health(admin, true)).await.unwrap(),
        1
    );
    // ...but still alive and serving during the drain delay.
    assert_eq!(
        tokio::task::spawn_blocking(move || health(admin, false)).await.unwrap(),
        0
    );
    let r = client().get(format!("http://{}/open/x", gw.addr)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // A second signal cuts the delay short; the process exits cleanly.
    gw.signal("TERM");
    let status = tokio::task::spawn_blocking(move || gw.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        tokio::task::spawn_blocking(move || health(admin, false)).await.unwrap(),
        1
    );
}
