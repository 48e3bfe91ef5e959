//! gRPC through the gateway with a real gRPC client and server (PyPI `grpcio`): inbound
//! HTTP/2 by prior knowledge, `upstream = "h2c://..."`, trailers back to the client, and
//! refusals answered the gRPC way (HTTP 200, `grpc-status`, `grpc-message`).
//!
//! Without grpcio the test prints SKIPPED (it fails under PORTCULLIS_REQUIRE_INTEROP=1,
//! as `.ci/run` sets after installing it in its venv).

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use support::*;

fn python() -> Option<String> {
    let python = std::env::var("PORTCULLIS_PYTHON").unwrap_or_else(|_| "python3".into());
    let have = Command::new(&python)
        .args(["-c", "import grpc"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert!(
            std::env::var_os("PORTCULLIS_REQUIRE_INTEROP").is_none(),
            "PORTCULLIS_REQUIRE_INTEROP is set but {python} cannot import grpc"
        );
        skipped(&format!("{python} lacks grpcio (pip install grpcio)"));
        return None;
    }
    Some(python)
}

fn script() -> String {
    format!("{}/tests/interop/grpc_peer.py", env!("CARGO_MANIFEST_DIR"))
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
        port: line.trim().parse().expect("the gRPC server's port"),
        child,
    }
}

fn call(python: &str, addr: std::net::SocketAddr, auth: Option<&str>) -> serde_json::Value {
    let mut cmd = Command::new(python);
    cmd.args([&script(), "call", &addr.to_string()]);
    if let Some(a) = auth {
        cmd.arg(a);
    }
    let out = cmd.output().unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("client output: {}", String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_are_authenticated_and_refused_the_grpc_way() {
    let Some(py) = python() else { return };
    let s = server(&py);
    let gw = Gateway::start(&config(&format!(
        r#"
[[users]]
name = "alice"
roles = ["rpc"]
password_hash = "{alice}"

[[users]]
name = "bob"
roles = ["other"]
password_hash = "{bob}"

[[plans]]
name = "rpc"
upstream = "h2c://127.0.0.1:{port}"
access = {{ all = true }}

[[plans.integrations]]
name = "echo"
path = "/demo.Echo/*"
methods = ["POST"]
auth = "basic"
senders = {{ roles = ["rpc"] }}
"#,
        alice = argon2_hash("alice-pw"),
        bob = argon2_hash("bob-pw"),
        port = s.port
    )))
    .await;
    let (addr, py2) = (gw.addr, py.clone());
    let call_as = move |auth: Option<String>| {
        let py = py2.clone();
        tokio::task::spawn_blocking(move || call(&py, addr, auth.as_deref()))
    };

    let ok = call_as(Some(basic("alice", "alice-pw"))).await.unwrap();
    assert_eq!(ok["code"], 0, "{ok}");
    assert_eq!(ok["reply"]["user"], "alice");
    assert_eq!(ok["reply"]["roles"], "rpc");
    assert_eq!(ok["reply"]["got"], "hello");
    assert!(ok["reply"]["authorization"].is_null(), "the credential went no further");
    assert_eq!(ok["trailing"]["x-demo-trailer"], "kept", "trailers pass back");

    let none = call_as(None).await.unwrap();
    assert_eq!(none["code"], 16, "UNAUTHENTICATED: {none}");
    assert_eq!(none["details"], "Required to provide Auth information");
    let wrong = call_as(Some(basic("alice", "nope"))).await.unwrap();
    assert_eq!(wrong["code"], 16, "{wrong}");
    let bob = call_as(Some(basic("bob", "bob-pw"))).await.unwrap();
    assert_eq!(bob["code"], 7, "PERMISSION_DENIED: {bob}");
    // The refusals are logged and counted with the HTTP status they stand for.
    assert!(
        gw.metric_at_least(
            r#"portcullis_requests_total{auth_method="basic",integration="echo",outcome="unauthenticated",plan="rpc"}"#,
            2.0
        )
        .await
    );
    drop(s);
    gw.stop().await;
}
