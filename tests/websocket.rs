//! WebSocket through the gateway with a real server and client (PyPI `websockets`): an
//! authorized upgrade on an integration with `upgrades = ["websocket"]` becomes a tunnel
//! carrying the principal headers and not the credentials; a refused one never reaches
//! the server; without `upgrades` the Upgrade header is dropped; an idle tunnel is closed
//! after `upgrade_idle_timeout`.
//!
//! Without `websockets` the test prints SKIPPED (it fails under
//! PORTCULLIS_REQUIRE_INTEROP=1, as `.ci/run` sets after installing it in its venv).

mod support;

use std::process::Command;

use support::*;

fn script() -> String {
    format!("{}/tests/interop/ws_peer.py", env!("CARGO_MANIFEST_DIR"))
}

async fn call(python: &str, url: String, auth: Option<String>, wait_close: bool) -> serde_json::Value {
    let python = python.to_string();
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(&python);
        cmd.args([&script(), "call", &url]);
        if let Some(a) = auth {
            cmd.arg(a);
        }
        if wait_close {
            cmd.arg("--wait-close");
        }
        let out = cmd.output().unwrap();
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("client output: {}", String::from_utf8_lossy(&out.stderr)))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_pass_only_when_authorized_and_allowed() {
    let Some(py) = python_with("websockets", "websockets") else {
        return;
    };
    let s = Peer::start(&py, "ws_peer.py");
    let gw = Gateway::start(&config(&format!(
        r#"
[limits]
upgrade_idle_timeout = "1s"

[[users]]
name = "alice"
roles = ["ws"]
password_hash = "{alice}"

[[plans]]
name = "live"
upstream = "http://127.0.0.1:{port}"
access = {{ all = true }}

[[plans.integrations]]
name = "feed"
path = "/feed"
methods = ["GET"]
auth = "basic"
senders = {{ roles = ["ws"] }}
upgrades = ["websocket"]

[[plans.integrations]]
name = "plain"
path = "/plain"
methods = ["GET"]
auth = "basic"
senders = {{ roles = ["ws"] }}
"#,
        alice = argon2_hash("alice-pw"),
        port = s.port
    )))
    .await;
    let url = |path: &str| format!("ws://{}{path}", gw.addr);

    let ok = call(&py, url("/feed"), Some(basic("alice", "alice-pw")), false).await;
    assert_eq!(ok["status"], 101, "{ok}");
    assert_eq!(ok["first"]["user"], "alice");
    assert!(ok["first"]["authorization"].is_null(), "the credential went no further");
    assert_eq!(ok["echo"], "ping");

    let none = call(&py, url("/feed"), None, false).await;
    assert_eq!(none["status"], 401, "{none}");
    let wrong = call(&py, url("/feed"), Some(basic("alice", "nope")), false).await;
    assert_eq!(wrong["status"], 401, "{wrong}");
    // No `upgrades` on the integration: the Upgrade header is dropped, so the server
    // sees a plain GET and the handshake fails.
    let plain = call(&py, url("/plain"), Some(basic("alice", "alice-pw")), false).await;
    assert_ne!(plain["status"], 101, "{plain}");

    // An idle tunnel is closed after upgrade_idle_timeout.
    let idle = call(&py, url("/feed"), Some(basic("alice", "alice-pw")), true).await;
    assert_eq!(idle["status"], 101, "{idle}");
    assert_eq!(idle["closed"], true, "{idle}");
    gw.stop().await;
}
