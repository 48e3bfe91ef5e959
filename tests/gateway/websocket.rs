//! WebSocket through the gateway with a real server and client (PyPI `websockets`): an
//! authorized upgrade on an integration with `upgrades = ["websocket"]` becomes a tunnel
//! carrying the principal headers and not the credentials; a refused one never reaches
//! the server; without `upgrades` the Upgrade header is dropped; an idle tunnel is closed
//! after `upgrade_idle_timeout`.
//!
//! Without `websockets` the test prints SKIPPED (it fails under
//! PORTCULLIS_REQUIRE_INTEROP=1, as `.ci/run` sets after installing it in its venv).

use crate::support;

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

/// Alice (role `ws`) and two integrations of the WebSocket server on `port`: `/feed`
/// with `upgrades = ["websocket"]`, `/plain` without; `limits` goes in `[limits]`.
fn feeds(port: u16, limits: &str) -> String {
    let ws = || roles(["ws"]);
    Config::new()
        .section_toml("limits", limits)
        .user("alice", |u| u.roles(["ws"]).password_hash(&argon2_hash("alice-pw")))
        .plan("live", |p| {
            p.upstream(&format!("http://127.0.0.1:{port}"))
                .access_all()
                .integration("feed", |i| {
                    i.path("/feed")
                        .methods(["GET"])
                        .auth("basic")
                        .senders(ws())
                        .set("upgrades", vec!["websocket"])
                })
                .integration("plain", |i| {
                    i.path("/plain").methods(["GET"]).auth("basic").senders(ws())
                })
        })
        .to_toml()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_pass_only_when_authorized_and_allowed() {
    let Some(py) = python_with("websockets", "websockets") else {
        return;
    };
    let s = Peer::start(&py, "ws_peer.py");
    let gw = Gateway::start(&feeds(s.port, r#"upgrade_idle_timeout = "1s""#)).await;
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
    // (The peer answers a plain GET on its WebSocket path 426 Upgrade Required.)
    assert_eq!(plain["status"], 426, "{plain}");

    // An idle tunnel is closed after upgrade_idle_timeout.
    let idle = call(&py, url("/feed"), Some(basic("alice", "alice-pw")), true).await;
    assert_eq!(idle["status"], 101, "{idle}");
    assert_eq!(idle["closed"], true, "{idle}");
    gw.stop().await;
}

/// An upgraded connection keeps its place in `max_connections` for as long as the tunnel
/// lives: authorized upgrades cannot be used to hold unbounded sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_tunnel_counts_against_max_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(py) = python_with("websockets", "websockets") else {
        return;
    };
    let s = Peer::start(&py, "ws_peer.py");
    let gw = Gateway::start(&config(&format!(
        r#"
[limits]
max_connections = 1

[[plans]]
name = "live"
upstream = "http://127.0.0.1:{port}"
access = {{ all = true }}

[[plans.integrations]]
name = "feed"
path = "/feed"
methods = ["GET"]
auth = "none"
upgrades = ["websocket"]
"#,
        port = s.port
    )))
    .await;
    let mut tunnel = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tunnel
        .write_all(
            b"GET /feed HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(tunnel.read(&mut b).await.unwrap(), 1, "closed during the handshake");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // The tunnel is open: a second connection is over the limit and closed at accept.
    let refused = raw(gw.addr, b"GET /feed HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n").await;
    assert!(refused.is_empty(), "a second connection was served: {refused}");
    assert!(
        gw.metric_at_least(r#"portcullis_connections_rejected_total{listener="inbound"}"#, 1.0)
            .await
    );
    drop(tunnel);
    // Once the tunnel is gone its place is free again.
    let served = eventually(PATIENCE, || async {
        raw(
            gw.addr,
            b"GET /nowhere HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
        )
        .await
        .starts_with("HTTP/1.1 404")
    })
    .await;
    assert!(served);
    drop(s);
    gw.stop().await;
}

/// RFC 8441: a WebSocket over HTTP/2 (an extended CONNECT with `:protocol` websocket,
/// sent by hyper's HTTP/2 client, spoken by tungstenite) is routed, authenticated and
/// authorized as the GET it stands for, and reaches the HTTP/1.1 server (`websockets`)
/// as an upgrade with the principal headers and without the credentials. Each tunnel
/// takes a place in `max_connections` (it holds an upstream socket of its own), so
/// streams cannot multiply sockets past it. Refusals are the usual statuses; an
/// integration without `upgrades`, or another protocol, is 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_over_http2_extended_connect() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::Message;

    let Some(py) = python_with("websockets", "websockets") else {
        return;
    };
    let s = Peer::start(&py, "ws_peer.py");
    let gw = Gateway::start(&feeds(s.port, "max_connections = 2")).await;
    // One HTTP/2 connection by prior knowledge carries every attempt.
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let connect = |path: &str, protocol: &'static str, auth: Option<String>| {
        let mut req = hyper::Request::builder()
            .method(hyper::Method::CONNECT)
            .uri(format!("http://{}{path}", gw.addr))
            .header("sec-websocket-version", "13");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let mut req = req.body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
        req.extensions_mut().insert(hyper::ext::Protocol::from_static(protocol));
        req
    };

    let mut resp = h2
        .send_request(connect("/feed", "websocket", Some(basic("alice", "alice-pw"))))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.headers());
    assert!(
        resp.headers().get("sec-websocket-accept").is_none(),
        "no HTTP/1.1 handshake leaks"
    );
    let stream = hyper::upgrade::on(&mut resp).await.unwrap();
    let mut ws =
        tokio_tungstenite::WebSocketStream::from_raw_socket(hyper_util::rt::TokioIo::new(stream), Role::Client, None)
            .await;
    let first = ws.next().await.unwrap().unwrap();
    let first: serde_json::Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(first["user"], "alice");
    assert!(first["authorization"].is_null(), "the credential went no further");
    assert_eq!(first["path"], "/feed");
    ws.send(Message::text("ping")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("ping"));

    // The connection and the open tunnel hold both places: another tunnel is refused
    // before anything reaches the server, until the first one closes.
    let full = h2
        .send_request(connect("/feed", "websocket", Some(basic("alice", "alice-pw"))))
        .await
        .unwrap();
    assert_eq!(full.status(), 503);
    ws.close(None).await.unwrap();
    assert!(
        matches!(ws.next().await, Some(Ok(Message::Close(_)))),
        "the server's close came back through the tunnel"
    );
    drop(ws);
    let reopened = eventually(PATIENCE, || {
        let mut h2 = h2.clone();
        let req = connect("/feed", "websocket", Some(basic("alice", "alice-pw")));
        async move { h2.send_request(req).await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    assert!(reopened, "the closed tunnel's place was given back");

    for (path, protocol, auth, status) in [
        ("/feed", "websocket", None, 401),
        ("/feed", "websocket", Some(basic("alice", "nope")), 401),
        ("/plain", "websocket", Some(basic("alice", "alice-pw")), 400),
        ("/feed", "bytestream", Some(basic("alice", "alice-pw")), 400),
        ("/nowhere", "websocket", Some(basic("alice", "alice-pw")), 404),
    ] {
        let resp = h2.send_request(connect(path, protocol, auth.clone())).await.unwrap();
        assert_eq!(resp.status(), status, "{path} {protocol} {auth:?}");
        assert!(resp.headers().contains_key("x-request-id"), "the gateway answered");
    }
    drop(h2);
    gw.stop().await;
}
