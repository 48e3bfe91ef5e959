//! The admin page (checked in headless Chromium), `/status`, `/refusals`, and `/metrics`
//! validated by `promtool check metrics`.
//!
//! `.ci/run` installs Debian's `chromium` and `prometheus` (promtool) and sets
//! PORTCULLIS_REQUIRE_TOOLS=1, which turns a missing tool into a failure.

mod support;

use std::process::{Command, Stdio};

use support::*;

fn tool(name: &str) -> Option<String> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if found.is_none() {
        assert!(
            std::env::var_os("PORTCULLIS_REQUIRE_TOOLS").is_none(),
            "PORTCULLIS_REQUIRE_TOOLS is set but `{name}` is missing"
        );
        skipped(&format!("`{name}` is not installed"));
    }
    found
}

async fn with_refusals() -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let gw = Gateway::start(&auth_config(&up.url(), "max_failures = 100")).await;
    let c = client();
    c.get(gw.url("/basic"))
        .header("authorization", basic("alice", "typo"))
        .header("x-request-id", "req-admin-1")
        .send()
        .await
        .unwrap();
    c.get(gw.url("/basic"))
        .header("authorization", basic("dave", "dave-pw"))
        .send()
        .await
        .unwrap();
    c.get(gw.url("/basic"))
        .header("authorization", basic("alice", "alice-pw"))
        .send()
        .await
        .unwrap();
    c.post(gw.url(&format!("/url?apiKey={ALICE_URL_KEY}x")))
        .send()
        .await
        .unwrap();
    (up, gw)
}

#[tokio::test]
async fn status_and_refusals_are_json_without_secrets() {
    let (_up, gw) = with_refusals().await;
    let refusals: serde_json::Value = client()
        .get(gw.admin_url("/refusals"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let list = refusals.as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["reason"], "bad_password");
    assert_eq!(list[0]["request_id"], "req-admin-1");
    assert_eq!(list[0]["integration"], "inc/basic");
    assert_eq!(list[0]["client_ip"], "127.0.0.1");
    assert_eq!(list[1]["reason"], "no_plan_access");
    assert_eq!(list[1]["principal"], "dave");
    assert_eq!(list[2]["reason"], "bad_url_key");
    let status: serde_json::Value = client()
        .get(gw.admin_url("/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let basic = &status["plans"][0]["integrations"][0];
    assert_eq!(basic["name"], "basic");
    assert_eq!(basic["requests"]["allowed"], 1);
    assert_eq!(basic["requests"]["unauthenticated"], 1);
    assert_eq!(basic["requests"]["forbidden"], 1);
    assert_eq!(status["last_reload"]["ok"], true);
    let page = client()
        .get(gw.admin_url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for text in [status.to_string(), refusals.to_string(), page] {
        for secret in [ALICE_URL_KEY, "typo", "alice-pw", "dave-pw", "$argon2id", "sha256:"] {
            assert!(!text.contains(secret), "`{secret}` shown by the admin listener");
        }
    }
    gw.stop().await;
}

#[tokio::test]
async fn the_admin_page_shows_a_refusal_reason_in_chromium() {
    let Some(chromium) = tool("chromium") else { return };
    let (_up, gw) = with_refusals().await;
    let profile = tempfile::tempdir().unwrap();
    let url = gw.admin_url("/");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--virtual-time-budget=2000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("--dump-dom")
            .arg(url)
            .stderr(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(dom.contains("Last refusals"), "page rendered:\n{dom}");
    assert!(
        dom.contains("bad_password") && dom.contains("req-admin-1"),
        "refusal visible:\n{dom}"
    );
    assert!(dom.contains("no_plan_access"));
    gw.stop().await;
}

#[tokio::test]
async fn metrics_pass_promtool() {
    let Some(promtool) = tool("promtool") else { return };
    let (_up, gw) = with_refusals().await;
    let text = gw.metrics().await;
    for name in [
        "portcullis_requests_total",
        "portcullis_auth_failures_total",
        "portcullis_request_duration_seconds",
        "portcullis_upstream_duration_seconds",
        "portcullis_cache_requests_total",
        "portcullis_cache_entries",
        "portcullis_config_reloads_total",
        "portcullis_config_last_reload_success_timestamp_seconds",
        "portcullis_connections_active",
        "portcullis_tls_handshake_failures_total",
        "portcullis_tls_certificate_expiry_timestamp_seconds",
    ] {
        assert!(text.contains(&format!("# TYPE {name}")), "{name} missing");
    }
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    gw.stop().await;
}
