//! The admin page (checked in headless Chromium), `/status`, `/refusals`, `/metrics`
//! validated by `promtool check metrics`, and the Host rule against DNS rebinding.
//!
//! `.ci/run` installs Debian's `chromium` and `prometheus` (promtool) and sets
//! PORTCULLIS_REQUIRE_TOOLS=1, which turns a missing tool into a failure.

use crate::support;

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
        "portcullis_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
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

/// A fresh gateway, before any request: which build runs, the process collector's
/// metrics, and every series of a known label set at 0 (a dashboard shows 0, not
/// "No data"), including those of the config's own caches and routes.
#[tokio::test]
async fn a_fresh_gateway_exports_build_info_process_metrics_and_zeros() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&auth_config(&up.url(), "max_failures = 100")).await;
    let text = gw.metrics().await;
    let build = portcullis::metrics::build::LONG_VERSION;
    let (version, rest) = build.split_once(" (commit ").unwrap();
    let commit = rest.split(',').next().unwrap();
    let rustc = rest.rsplit("rustc ").next().unwrap().trim_end_matches(')');
    let info = format!("portcullis_build_info{{commit=\"{commit}\",rustc=\"{rustc}\",version=\"{version}\"}} 1");
    assert!(text.lines().any(|l| l == info), "no `{info}` in:\n{text}");
    assert_eq!(text.matches("\nportcullis_build_info{").count(), 1);
    for name in [
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_max_fds",
        "process_virtual_memory_bytes",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
    ] {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        if name != "process_cpu_seconds_total" {
            assert!(metric_value(&text, name) > 0.0, "{name} is 0");
        }
    }
    let zero = |series: String| {
        assert!(
            text.lines().any(|l| l == format!("{series} 0")),
            "`{series} 0` missing:\n{text}"
        );
    };
    for outcome in ["success", "failure"] {
        zero(format!("portcullis_config_reloads_total{{outcome=\"{outcome}\"}}"));
    }
    for listener in ["inbound", "admin", "egress", "forward_auth"] {
        zero(format!(
            "portcullis_connections_rejected_total{{listener=\"{listener}\"}}"
        ));
        for reason in ["headers_too_large", "uri_too_long", "malformed_request"] {
            zero(format!(
                "portcullis_malformed_requests_total{{listener=\"{listener}\",reason=\"{reason}\"}}"
            ));
        }
    }
    for outcome in [
        "allowed",
        "unauthenticated",
        "forbidden",
        "locked_out",
        "bad_request",
        "upstream_error",
        "client_closed",
        "auth_unavailable",
    ] {
        zero(format!(
            "portcullis_requests_total{{auth_method=\"\",integration=\"\",outcome=\"{outcome}\",plan=\"\"}}"
        ));
    }
    for op in [
        "lockout",
        "refresh",
        "revoke",
        "agree",
        "egress",
        "publish",
        "subscribe",
    ] {
        zero(format!("portcullis_shared_errors_total{{op=\"{op}\"}}"));
    }
    for kind in ["refresh", "family", "revocation", "event", "agreed", "egress"] {
        zero(format!("portcullis_shared_integrity_failures_total{{kind=\"{kind}\"}}"));
    }
    for (table, limit) in [
        ("revocations", "total"),
        ("revocations", "per_client"),
        ("lockout", "total"),
        ("lockout", "per_client"),
        ("revocations_mirror", "total"),
        ("remote_locks", "total"),
    ] {
        zero(format!(
            "portcullis_table_full_total{{limit=\"{limit}\",table=\"{table}\"}}"
        ));
    }
    for series in [
        "portcullis_tls_handshake_failures_total",
        "portcullis_hash_overloaded_total",
        "portcullis_client_closed_total",
        "portcullis_h2_reset_abuse_total",
        // The config's own: the basic credential cache and a route's histogram.
        "portcullis_cache_requests_total{cache=\"basic\",result=\"hit\"}",
        "portcullis_cache_requests_total{cache=\"basic\",result=\"miss\"}",
        "portcullis_request_duration_seconds_count{integration=\"basic\",plan=\"inc\"}",
    ] {
        zero(series.to_string());
    }
    gw.stop().await;
}

// === the Host rule (DNS rebinding) ===

/// The status line's code and the body of a raw HTTP/1.x exchange (`Connection: close`).
async fn raw_status(admin: std::net::SocketAddr, head: &str) -> (u16, String) {
    let text = raw(admin, head.as_bytes()).await;
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    (code, body)
}

/// A web page whose DNS name an attacker points at the admin address (DNS rebinding)
/// reaches the listener with its own name in `Host`: refused on every endpoint, with the
/// contract's JSON; every ambiguous or missing authority is refused too; IP literals of
/// the listener and `localhost` pass, so probes, Prometheus and `portcullis health` work.
#[tokio::test]
async fn the_admin_listener_answers_only_its_own_address_or_localhost() {
    let (_up, gw) = with_refusals().await;
    let admin = gw.admin.unwrap();
    let port = admin.port();
    let get = |target: &str, fields: &str| format!("GET {target} HTTP/1.1\r\n{fields}Connection: close\r\n\r\n");

    for host in [
        format!("rebind.attacker.test:{port}"),
        "rebind.attacker.test".to_string(),
        format!("localhost.attacker.test:{port}"),
        format!("127.0.0.1.nip.io:{port}"),
        format!("localhost.:{port}"),
        format!("0x7f000001:{port}"),
        format!("2130706433:{port}"),
        format!("10.1.2.3:{port}"),
        format!("192.168.0.1:{port}"),
    ] {
        for path in ["/refusals", "/status", "/", "/metrics", "/healthz"] {
            let (code, body) = raw_status(admin, &get(path, &format!("Host: {host}\r\n"))).await;
            assert_eq!(code, 421, "Host {host} {path}: {body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["code"], 421, "{body}");
            assert!(v["request_id"].is_string() && v["message"].is_string(), "{body}");
            assert!(!body.contains("alice") && !body.contains("bad_password"), "{body}");
        }
    }
    for (what, head) in [
        ("no Host", get("/refusals", "")),
        ("no Host, HTTP/1.0", "GET /refusals HTTP/1.0\r\n\r\n".to_string()),
        (
            "two Host fields",
            get(
                "/refusals",
                &format!("Host: 127.0.0.1:{port}\r\nHost: 127.0.0.1:{port}\r\n"),
            ),
        ),
        (
            "absolute-form target naming another authority",
            get(
                "http://rebind.attacker.test/refusals",
                &format!("Host: 127.0.0.1:{port}\r\n"),
            ),
        ),
        (
            "absolute-form target, Host naming another authority",
            get(
                &format!("http://127.0.0.1:{port}/refusals"),
                "Host: rebind.attacker.test\r\n",
            ),
        ),
        (
            "user info",
            get("/refusals", &format!("Host: user@127.0.0.1:{port}\r\n")),
        ),
        ("bad port", get("/refusals", "Host: 127.0.0.1:http\r\n")),
        ("empty Host", get("/refusals", "Host: \r\n")),
    ] {
        let (code, body) = raw_status(admin, &head).await;
        assert_eq!(code, 400, "{what}: {body}");
        assert!(!body.contains("bad_password"), "{what}: {body}");
    }
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("LOCALHOST:{port}"),
        "localhost".to_string(),
        // Loopback bind: any loopback address (a port forward changes the port).
        "127.0.0.1:1".to_string(),
        format!("127.0.0.2:{port}"),
        format!("[::1]:{port}"),
    ] {
        let (code, body) = raw_status(admin, &get("/refusals", &format!("Host: {host}\r\n"))).await;
        assert_eq!(code, 200, "Host {host}: {body}");
        assert!(body.contains("bad_password"), "{body}");
    }
    let (code, _) = raw_status(
        admin,
        &get(
            &format!("http://127.0.0.1:{port}/healthz"),
            &format!("Host: 127.0.0.1:{port}\r\n"),
        ),
    )
    .await;
    assert_eq!(code, 200, "absolute-form naming the listener itself");

    // HTTP/2 (prior knowledge): the :authority is what is checked.
    let h2 = |uri: String, host: Option<String>| async move {
        let tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(http2_client_executor(), hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut req = http::Request::get(uri);
        if let Some(h) = host {
            req = req.header("host", h);
        }
        let req = req.body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
        send.send_request(req).await.unwrap().status().as_u16()
    };
    assert_eq!(
        h2(format!("http://rebind.attacker.test:{port}/refusals"), None).await,
        421
    );
    assert_eq!(h2(format!("http://127.0.0.1:{port}/refusals"), None).await, 200);
    assert_eq!(h2(format!("http://localhost:{port}/refusals"), None).await, 200);
    assert_eq!(
        h2(
            format!("http://127.0.0.1:{port}/refusals"),
            Some("rebind.attacker.test".into())
        )
        .await,
        400,
        ":authority and Host disagree"
    );
    gw.stop().await;
}
