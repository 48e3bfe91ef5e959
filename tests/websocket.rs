//! WebSocket through the gateway with a real server and client (PyPI `websockets`): an
//! authorized upgrade on an integration with `upgrades = ["websocket"]` becomes a tunnel
//! carrying the principal headers and not the credentials; a refused one never reaches
//! the server; without `upgrades` the Upgrade header is dropped; an idle tunnel is closed
//! after `upgrade_idle_timeout`.
//!
//! Without `websockets` the test prints SKIPPED (it fails under
//! PORTCULLIS_REQUIRE_INTEROP=1, as `.ci/run` sets after installing it in its venv).

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use support::*;

fn python() -> Option<String> {
    let python = std::env::var("PORTCULLIS_PYTHON").unwrap_or_else(|_| "python3".into());
    let have = Command::new(&python)
        .args(["-c", "import websockets"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert!(
            std::env::var_os("PORTCULLIS_REQUIRE_INTEROP").is_none(),
            "PORTCULLIS_REQUIRE_INTEROP is set but {python} cannot import websockets"
        );
        skipped(&format!("{python} lacks websockets (pip install websockets)"));
        return None;
    }
    Some(python)
}

fn script() -> String {
    format!("{}/tests/interop/ws_peer.py", env!("CARGO_MANIFEST_DIR"))
}

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server(python: &str) -> Server {
    let mut child = Command::new(python)
        .args([&script(), "server"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    Server {
        port: line.trim().parse().expect("the WebSocket server's port"),
        child,
    }
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
    let Some(py) = python() else { return };
    let s = server(&py);
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
