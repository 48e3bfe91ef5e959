//! gRPC through the gateway with a real gRPC client and server (PyPI `grpcio`): inbound
//! HTTP/2 by prior knowledge, `upstream = "h2c://..."`, trailers back to the client, and
//! refusals answered the gRPC way (HTTP 200, `grpc-status`, `grpc-message`).
//!
//! Without grpcio the test prints SKIPPED (it fails under PORTCULLIS_REQUIRE_INTEROP=1,
//! as `.ci/run` sets after installing it in its venv).

use crate::support;

use std::process::Command;

use support::*;

fn script() -> String {
    format!("{}/tests/interop/grpc_peer.py", env!("CARGO_MANIFEST_DIR"))
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
    let Some(py) = python_with("grpc", "grpcio") else {
        return;
    };
    let s = Peer::start(&py, "grpc_peer.py");
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
