//! The attack suite: each test tries one class of bypass against the real server, with
//! raw HTTP/1.1 bytes, hand-framed HTTP/2 and hyper's HTTP/2 client, and asserts both the
//! answer the attacker got and what the recording upstream did and did not receive.

use crate::support;

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use ring::signature::KeyPair;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Spellings of the identity headers that CGI-style upstreams read as the real ones.
const UNDERSCORED_IDENTITY: [&str; 5] = [
    "x_portcullis_user",
    "x-portcullis_user",
    "x_portcullis_roles",
    "x-portcullis_roles",
    "x_portcullis-assertion",
];

/// Users, two plans and an API key; `extra` (TOML text) merged in.
fn cfg(upstream: &str, extra: &str) -> String {
    base(upstream).toml(extra).to_toml()
}

fn base(upstream: &str) -> Config {
    let pw = |name: &str| argon2_hash(&format!("{name}-pw"));
    let rest = || roles(["rest"]);
    Config::new()
        .section("lockout", |s| {
            s.set("max_failures", 3).set("window", "1h").set("duration", "1h")
        })
        .user("alice", |u| {
            u.roles(["rest"])
                .password_hash(&pw("alice"))
                .set("url_key_hash", sha256_hex(ALICE_URL_KEY))
        })
        .user("mallory", |u| u.roles(["guest"]).password_hash(&pw("mallory")))
        .plan("p", |p| {
            p.upstream(upstream)
                .access(rest())
                .integration("public", |i| {
                    i.path("/public/*").methods(["GET", "POST"]).auth("none").senders_all()
                })
                .integration("secret", |i| {
                    i.path("/secret/*")
                        .methods(["GET", "POST", "PUT", "DELETE", "PATCH"])
                        .auths(["basic", "url_key"])
                        .senders(rest())
                })
                .integration("key", |i| {
                    i.path("/key")
                        .methods(["GET"])
                        .auths(["api_key", "url_key"])
                        .senders(rest())
                })
        })
        .plan("legacy", |p| {
            p.upstream(upstream)
                .access(rest())
                .set("underscores_in_headers", true)
                .integration("cgi", |i| i.path("/cgi").methods(["GET"]).auth("basic").senders(rest()))
        })
        .api_key("k_alice", &sha256_hex(ALICE_KEY_SECRET), "alice", "p/key")
}

/// [`cfg`] behind ingresses at `proxies` (`[listen] trusted_proxies`).
fn behind(upstream: &str, proxies: &str) -> String {
    base(upstream)
        .section_toml("listen", &format!("trusted_proxies = {proxies}"))
        .to_toml()
}

fn status_of(out: &str) -> u16 {
    out.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

async fn h1(addr: SocketAddr, head: &str) -> u16 {
    status_of(&raw(addr, head.as_bytes()).await)
}

/// An HTTP/2 connection through hyper's client (prior knowledge, cleartext).
async fn h2(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(http2_client_executor(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn h2_status(
    send: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    req: http::Request<Full<Bytes>>,
) -> u16 {
    send.ready().await.unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}

// === hand-framed HTTP/2, for what a well-behaved client library refuses to send ===

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    let len = payload.len() as u32;
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK literal header field without indexing, new name, no Huffman coding.
fn hpack(name: &str, value: &str) -> Vec<u8> {
    assert!(name.len() < 127 && value.len() < 127);
    let mut b = vec![0x00, name.len() as u8];
    b.extend_from_slice(name.as_bytes());
    b.push(value.len() as u8);
    b.extend_from_slice(value.as_bytes());
    b
}

#[derive(Debug, PartialEq, Eq)]
enum H2Answer {
    /// A HEADERS frame came back for the stream: a response, with its status when the
    /// block starts with an indexed `:status` of HPACK's static table (200, 204, 206,
    /// 304, 400, 404, 500).
    Response(Option<u16>),
    /// The stream was reset with this error code.
    Reset(u32),
    /// The connection was ended with this error code.
    GoAway(u32),
    Closed,
}

/// Sends one request on stream 1 with exactly these header fields and reads until the
/// server answers the stream.
async fn h2_raw(addr: SocketAddr, fields: &[(&str, &str)]) -> H2Answer {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[]));
    let block: Vec<u8> = fields.iter().flat_map(|(n, v)| hpack(n, v)).collect();
    out.extend(h2_frame(0x1, 0x4 | 0x1, 1, &block));
    s.write_all(&out).await.unwrap();
    let read = async {
        loop {
            let mut head = [0u8; 9];
            if s.read_exact(&mut head).await.is_err() {
                return H2Answer::Closed;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            if s.read_exact(&mut payload).await.is_err() {
                return H2Answer::Closed;
            }
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            match head[3] {
                0x1 if stream == 1 => return H2Answer::Response(indexed_status(&payload)),
                0x3 if stream == 1 => return H2Answer::Reset(u32::from_be_bytes(payload[..4].try_into().unwrap())),
                0x7 => return H2Answer::GoAway(u32::from_be_bytes(payload[4..8].try_into().unwrap())),
                0x4 if head[4] & 0x1 == 0 => {
                    // Acknowledge the server's SETTINGS.
                    let _ = s.write_all(&h2_frame(0x4, 0x1, 0, &[])).await;
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(PATIENCE, read).await.expect("the server answers")
}

/// The status of a response header block that starts with an indexed static `:status`.
fn indexed_status(block: &[u8]) -> Option<u16> {
    let statuses = [200, 204, 206, 304, 400, 404, 500];
    let first = *block.first()?;
    (first & 0x80 != 0)
        .then(|| usize::from(first & 0x7f))
        .and_then(|i| i.checked_sub(8))
        .and_then(|i| statuses.get(i).copied())
}

fn pseudo<'a>(method: &'a str, path: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        (":method", method),
        (":scheme", "http"),
        (":path", path),
        (":authority", "gw"),
    ]
}

// === 1. identity headers in every spelling, and routing overrides ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_identity_headers_never_reach_the_upstream() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&cfg(&up.url(), "")).await;
    let alice = basic("alice", "alice-pw");
    let spoofs = "X-Portcullis-User: admin\r\nX_Portcullis_User: admin\r\nx-portcullis_roles: root\r\n\
                  X_PORTCULLIS_ROLES: root\r\nX-PORTCULLIS-AUTH-METHOD: none\r\nX_Portcullis-Assertion: forged\r\n\
                  X_Custom: 1\r\nX-Original-URL: /secret/x\r\nX-Rewrite-URL: /secret/x\r\nX-Forwarded-Uri: /secret/x\r\n\
                  X-HTTP-Method-Override: DELETE\r\nX-Method-Override: DELETE\r\nX-HTTP-Method: DELETE\r\n\
                  X-Real-IP: 10.0.0.1\r\nForwarded: for=10.0.0.1;host=admin\r\nTrue-Client-IP: 10.0.0.1\r\n";
    // On a public route, and on an authenticated one.
    for (path, auth) in [
        ("/public/x", String::new()),
        ("/secret/x", format!("Authorization: {alice}\r\n")),
    ] {
        let head = format!("GET {path} HTTP/1.1\r\nHost: gw\r\n{auth}{spoofs}Connection: close\r\n\r\n");
        assert_eq!(h1(gw.addr, &head).await, 200, "{path}");
        let seen = up.last();
        for (name, _) in seen.headers.iter() {
            let n = name.as_str();
            assert!(!n.contains('_'), "{path}: `{n}` was forwarded");
            for banned in [
                "x-original-url",
                "x-rewrite-url",
                "x-forwarded-uri",
                "x-http-method-override",
                "x-method-override",
                "x-http-method",
                "x-real-ip",
                "forwarded",
                "true-client-ip",
            ] {
                assert_ne!(n, banned, "{path}");
            }
        }
        let user = seen
            .headers
            .get("x-portcullis-user")
            .map(|v| v.to_str().unwrap().to_string());
        if path == "/public/x" {
            assert_eq!(user, None);
            assert_eq!(seen.headers["x-portcullis-auth-method"], "none");
            assert!(seen.headers.get("x-portcullis-roles").is_none());
        } else {
            assert_eq!(user.as_deref(), Some("alice"));
            assert_eq!(seen.headers["x-portcullis-roles"], "rest");
            assert_ne!(seen.headers["x-portcullis-assertion"], "forged");
        }
        assert_eq!(seen.method, "GET");
    }
    // A plan that opts in to underscores gets `X_Custom`, but never the X-Portcullis family.
    let head = format!("GET /cgi HTTP/1.1\r\nHost: gw\r\nAuthorization: {alice}\r\n{spoofs}Connection: close\r\n\r\n");
    assert_eq!(h1(gw.addr, &head).await, 200);
    let seen = up.last();
    assert_eq!(seen.headers["x_custom"], "1");
    for n in UNDERSCORED_IDENTITY {
        assert!(seen.headers.get(n).is_none(), "{n}");
    }
    assert_eq!(seen.headers["x-portcullis-user"], "alice");

    // HTTP/2: lowercase underscored names (legal there) are dropped as well.
    let before = up.seen().len();
    let mut fields = pseudo("GET", "/public/h2");
    fields.extend([
        ("x_portcullis_user", "admin"),
        ("x-portcullis-user", "admin"),
        ("x-original-url", "/secret/x"),
    ]);
    assert_eq!(h2_raw(gw.addr, &fields).await, H2Answer::Response(Some(200)));
    let seen = up.last();
    assert_eq!(up.seen().len(), before + 1);
    assert!(seen.headers.get("x_portcullis_user").is_none());
    assert!(seen.headers.get("x-portcullis-user").is_none());
    assert!(seen.headers.get("x-original-url").is_none());
    // Upper-case names are malformed in HTTP/2: the stream is refused, nothing forwarded.
    let mut fields = pseudo("GET", "/public/h2");
    fields.push(("X-Portcullis-User", "admin"));
    // (h2 treats a malformed field block as a connection error: GOAWAY PROTOCOL_ERROR.)
    assert_eq!(h2_raw(gw.addr, &fields).await, H2Answer::GoAway(1));
    assert_eq!(up.seen().len(), before + 1);
    gw.stop().await;
}

#[tokio::test]
async fn spoofed_headers_in_trailers_are_not_forwarded() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&cfg(&up.url(), "")).await;
    // HTTP/1.1 chunked trailers.
    let head = "POST /public/t HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nTrailer: X-Portcullis-User\r\n\
                Connection: close\r\n\r\n5\r\nhello\r\n0\r\nX-Portcullis-User: admin\r\nX-Original-URL: /secret/x\r\n\r\n";
    assert_eq!(h1(gw.addr, head).await, 200);
    let seen = up.last();
    assert_eq!(seen.body_len, 5);
    assert!(seen.trailers.is_none(), "{:?}", seen.trailers);
    assert!(seen.headers.get("x-portcullis-user").is_none());
    // HTTP/2 trailers.
    let frames = vec![
        Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"hello"))),
        Ok(Frame::trailers({
            let mut t = http::HeaderMap::new();
            t.insert("x-portcullis-user", "admin".parse().unwrap());
            t
        })),
    ];
    let req = http::Request::post("http://gw/public/t2")
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut s2, conn) = hyper::client::conn::http2::handshake(http2_client_executor(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = s2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up.last();
    assert_eq!(seen.uri, "/public/t2");
    assert!(seen.trailers.is_none());
    gw.stop().await;
}

// === 2. paths ===

#[tokio::test]
async fn path_tricks_never_route_around_authentication() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&cfg(&up.url(), "")).await;
    let tricks = [
        "/public/..;/secret/x",
        "/public/..%3B/secret/x",
        "/public/..%3b/secret/x",
        "/public;x=1/../secret/x",
        "/public/.;/secret/x",
        "/public/%2e%2e/secret/x",
        "/public/%2e%2e%2fsecret/x",
        "/public/..%5csecret/x",
        "/public/%252e%252e/secret/x",
        "/public/%c0%ae%c0%ae/secret/x",
        "/public//../secret/x",
        "//secret/x",
        "/SECRET/x",
        "/Secret/x",
        "/public/%00/../secret/x",
    ];
    for path in tricks {
        for method in ["GET", "POST"] {
            let status = h1(
                gw.addr,
                &format!("{method} {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"),
            )
            .await;
            assert!(status == 400, "{method} {path}: {status}");
        }
        // The same over HTTP/2.
        let answer = h2_raw(gw.addr, &pseudo("GET", path)).await;
        assert_eq!(answer, H2Answer::Response(Some(400)), "{path}");
    }
    // An encoded letter is the letter: `/%73ecret` is the secret integration.
    assert_eq!(
        h1(
            gw.addr,
            "GET /%73ecret/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
        )
        .await,
        401
    );
    // Absolute-form routes by its path, whatever its authority says.
    assert_eq!(
        h1(
            gw.addr,
            "GET http://public/secret/x HTTP/1.1\r\nHost: public\r\nConnection: close\r\n\r\n"
        )
        .await,
        401
    );
    assert!(
        up.seen().is_empty(),
        "{:?}",
        up.seen().iter().map(|s| &s.uri).collect::<Vec<_>>()
    );
    // HTTP/2 with a :authority and a Host that disagree is refused (400), never routed by
    // either name.
    let mut fields = pseudo("GET", "/secret/x");
    fields.push(("host", "public"));
    assert_eq!(h2_raw(gw.addr, &fields).await, H2Answer::Response(Some(400)));
    assert!(up.seen().is_empty());
    gw.stop().await;
}

// === 3. one credential per request ===

#[tokio::test]
async fn repeated_or_conflicting_credentials_are_refused_on_every_method() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&cfg(&up.url(), "")).await;
    let good = basic("alice", "alice-pw");
    let bad = basic("mallory", "wrong");
    for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
        for (first, second) in [(&good, &bad), (&bad, &good), (&good, &good)] {
            let head = format!(
                "{method} /secret/x HTTP/1.1\r\nHost: gw\r\nAuthorization: {first}\r\nAuthorization: {second}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let status = h1(gw.addr, &head).await;
            assert_eq!(status, 401, "{method}");
        }
        // A header credential and a URL key together.
        let head = format!(
            "{method} /secret/x?apiKey={ALICE_URL_KEY} HTTP/1.1\r\nHost: gw\r\nAuthorization: {bad}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(h1(gw.addr, &head).await, 401, "{method}");
        // Two different URL keys, however the name is encoded.
        for q in [
            format!("apiKey={ALICE_URL_KEY}&apiKey=other"),
            format!("apiKey=other&api%4Bey={ALICE_URL_KEY}"),
            format!("apiKey={ALICE_URL_KEY}&apiKey="),
        ] {
            let head = format!(
                "{method} /secret/x?{q} HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            assert_eq!(h1(gw.addr, &head).await, 401, "{method} {q}");
        }
    }
    // The API key route: a key in the header and a URL key in the query.
    let head = format!(
        "GET /key?apiKey={ALICE_URL_KEY} HTTP/1.1\r\nHost: gw\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        basic("k_alice", ALICE_KEY_SECRET)
    );
    assert_eq!(h1(gw.addr, &head).await, 401);
    // HTTP/2: two authorization fields.
    let mut send = h2(gw.addr).await;
    let mut req = http::Request::get("http://gw/secret/x")
        .body(Full::new(Bytes::new()))
        .unwrap();
    req.headers_mut().append("authorization", good.parse().unwrap());
    req.headers_mut().append("authorization", bad.parse().unwrap());
    assert_eq!(h2_status(&mut send, req).await, 401);
    assert!(up.seen().is_empty());
    // Each alone still works.
    let mut req = http::Request::get("http://gw/secret/x")
        .body(Full::new(Bytes::new()))
        .unwrap();
    req.headers_mut().append("authorization", good.parse().unwrap());
    assert_eq!(h2_status(&mut send, req).await, 200);
    gw.stop().await;
}

#[tokio::test]
async fn malformed_credentials_are_refused() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&cfg(&up.url(), "")).await;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    for value in [
        "Basic".to_string(),
        "Basic ".to_string(),
        "Basic !!!!".to_string(),
        format!("Basic {}", b64("alice")),
        format!("Basic {}", b64(":alice-pw")),
        format!("Basic {}==", b64("alice:alice-pw")),
        format!("Basic{}", b64("alice:alice-pw")),
        format!("Basic  {}x", b64("alice:alice-pw")),
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(b"alice:\xff\xfe")
        ),
        format!("Basic {}", b64("alice\u{0}:alice-pw")),
        format!("Bearer {}", b64("alice:alice-pw")),
        format!("Digest {}", b64("alice:alice-pw")),
    ] {
        let head = format!("GET /secret/x HTTP/1.1\r\nHost: gw\r\nAuthorization: {value}\r\nConnection: close\r\n\r\n");
        let status = h1(gw.addr, &head).await;
        assert_eq!(status, 401, "{value}");
    }
    // A valid user whose roles fail the rules is 403, never 200.
    let head = format!(
        "GET /secret/x HTTP/1.1\r\nHost: gw\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        basic("mallory", "mallory-pw")
    );
    assert_eq!(h1(gw.addr, &head).await, 403);
    assert!(up.seen().is_empty());
    gw.stop().await;
}

// === smuggling ===

#[tokio::test]
async fn request_smuggling_is_refused_or_reframed() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&cfg(&up.url(), "")).await;
    let smuggled = "GET /secret/x HTTP/1.1\r\nHost: gw\r\n\r\n";
    let cases = [
        // CL.TE and TE.CL.
        format!(
            "POST /public/a HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /public/a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nContent-Length: 60\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        // Duplicate and conflicting Content-Length.
        format!("POST /public/a HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\nContent-Length: 40\r\n\r\n{smuggled}"),
        format!("POST /public/a HTTP/1.1\r\nHost: gw\r\nContent-Length: 0, 40\r\n\r\n{smuggled}"),
        format!("POST /public/a HTTP/1.1\r\nHost: gw\r\nContent-Length: +0\r\n\r\n{smuggled}"),
        // Obfuscated Transfer-Encoding.
        format!("POST /public/a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("POST /public/a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("POST /public/a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("POST /public/a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("POST /public/a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("POST /public/a HTTP/1.1\r\nHost: gw\r\nFoo: bar\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        // A bare LF and a NUL in the head.
        format!("POST /public/a HTTP/1.1\nHost: gw\nContent-Length: 0\n\n{smuggled}"),
        format!("POST /public/a HTTP/1.1\r\nHost: gw\r\nX-A: a\0b\r\nContent-Length: 0\r\n\r\n{smuggled}"),
    ];
    for case in &cases {
        let out = raw(gw.addr, case.as_bytes()).await;
        // Whatever the answer, the second request inside the first never authenticates
        // around the gateway: the upstream never sees /secret.
        assert!(
            !up.seen().iter().any(|s| s.uri.contains("secret")),
            "smuggled through:\n{case:?}\n{out}"
        );
        // A pipelined request that was read as a request got 401, never 200.
        let statuses: Vec<u16> = out
            .match_indices("HTTP/1.1 ")
            .map(|(i, _)| status_of(&out[i..]))
            .collect();
        assert!(statuses.len() <= 2, "{case:?}: {out}");
        if statuses.len() == 2 {
            assert_eq!(statuses[1], 401, "{case:?}: {out}");
        }
    }
    gw.stop().await;
}

// === 4. JWT header and claim tricks ===

struct Issuer {
    pair: ring::signature::Ed25519KeyPair,
}

impl Issuer {
    fn new() -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .unwrap()
            .as_ref()
            .to_vec();
        Issuer {
            pair: ring::signature::Ed25519KeyPair::from_pkcs8(&pkcs8).unwrap(),
        }
    }

    fn jwks(&self) -> String {
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.pair.public_key().as_ref());
        serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "ed-1", "x": x}]}).to_string()
    }

    /// A token with exactly this header and these claims, signed with the issuer's key.
    fn token(&self, header: serde_json::Value, claims: serde_json::Value) -> String {
        let b64 = |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let input = format!("{}.{}", b64(&header), b64(&claims));
        let sig = self.pair.sign(input.as_bytes());
        format!(
            "{input}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig.as_ref())
        )
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A gateway validating `idp`'s tokens in jwt mode (JWKS file), with one bearer route.
async fn jwt_gateway(up: &Upstream, idp: &Issuer, leeway: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), idp.jwks()).unwrap();
    let config = base(&up.url())
        .section("oauth", |s| {
            s.set("mode", "jwt")
                .set("issuer", "https://idp.test")
                .set("audience", "portcullis")
                .set("jwks_file", dir.path().join("jwks.json").display().to_string())
                .set("leeway", leeway)
                .set("username_claim", "sub")
        })
        .plan("api", |p| {
            p.upstream(&up.url()).access_all().integration("bearer", |i| {
                i.path("/bearer").methods(["GET"]).auth("oauth").senders_all()
            })
        });
    Gateway::start_in(dir, &config.to_toml()).await
}

#[tokio::test]
async fn jwt_header_and_claim_tricks_are_refused() {
    let up = Upstream::start().await;
    let idp = Issuer::new();
    let gw = jwt_gateway(&up, &idp, "30s").await;
    let now = unix_now();
    let header = serde_json::json!({"alg": "EdDSA", "kid": "ed-1", "typ": "JWT"});
    let good = serde_json::json!({"iss": "https://idp.test", "aud": "portcullis", "sub": "alice", "exp": now + 300, "iat": now});
    let with = |k: &str, v: serde_json::Value| {
        let mut c = good.clone();
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v;
        }
        c
    };
    let hdr = |k: &str, v: serde_json::Value| {
        let mut h = header.clone();
        h[k] = v;
        h
    };
    let get = |token: String| {
        let addr = gw.addr;
        async move {
            h1(
                addr,
                &format!(
                    "GET /bearer HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
                ),
            )
            .await
        }
    };
    assert_eq!(get(idp.token(header.clone(), good.clone())).await, 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-portcullis-user"], "alice");
    // Bearer tokens are consumed by the gateway: not forwarded by default.
    assert!(seen.headers.get("authorization").is_none());
    let before = up.seen().len();
    let cases: Vec<(&str, String)> = vec![
        (
            "no iss",
            idp.token(header.clone(), with("iss", serde_json::Value::Null)),
        ),
        (
            "wrong iss",
            idp.token(header.clone(), with("iss", "https://evil.test".into())),
        ),
        (
            "iss array",
            idp.token(
                header.clone(),
                with("iss", serde_json::json!(["https://idp.test", "x"])),
            ),
        ),
        ("iss number", idp.token(header.clone(), with("iss", 7.into()))),
        (
            "no aud",
            idp.token(header.clone(), with("aud", serde_json::Value::Null)),
        ),
        ("wrong aud", idp.token(header.clone(), with("aud", "other".into()))),
        ("aud number", idp.token(header.clone(), with("aud", 1.into()))),
        (
            "no exp",
            idp.token(header.clone(), with("exp", serde_json::Value::Null)),
        ),
        ("expired", idp.token(header.clone(), with("exp", (now - 3600).into()))),
        (
            "exp string",
            idp.token(header.clone(), with("exp", (now + 300).to_string().into())),
        ),
        (
            "exp float",
            idp.token(header.clone(), with("exp", serde_json::json!(now as f64 + 300.5))),
        ),
        (
            "nbf future",
            idp.token(header.clone(), with("nbf", (now + 3600).into())),
        ),
        (
            "nbf string",
            idp.token(header.clone(), with("nbf", (now + 3600).to_string().into())),
        ),
        (
            "iat future",
            idp.token(header.clone(), with("iat", (now + 3600).into())),
        ),
        ("iat string", idp.token(header.clone(), with("iat", "yesterday".into()))),
        (
            "no sub",
            idp.token(header.clone(), with("sub", serde_json::Value::Null)),
        ),
        ("crit", idp.token(hdr("crit", serde_json::json!(["exp"])), good.clone())),
        ("b64 false", idp.token(hdr("b64", false.into()), good.clone())),
        (
            "jku",
            idp.token(hdr("jku", "https://evil.test/jwks".into()), good.clone()),
        ),
        (
            "x5u",
            idp.token(hdr("x5u", "https://evil.test/cert".into()), good.clone()),
        ),
        ("x5c", idp.token(hdr("x5c", serde_json::json!(["MIIB"])), good.clone())),
        (
            "jwk",
            idp.token(hdr("jwk", serde_json::json!({"kty": "OKP"})), good.clone()),
        ),
        ("alg none", {
            let t = idp.token(hdr("alg", "none".into()), good.clone());
            format!("{}.", t.rsplit_once('.').unwrap().0)
        }),
        ("alg HS256", idp.token(hdr("alg", "HS256".into()), good.clone())),
        ("unknown kid", idp.token(hdr("kid", "ed-2".into()), good.clone())),
        ("tampered payload", {
            let t = idp.token(header.clone(), good.clone());
            let parts: Vec<&str> = t.split('.').collect();
            let evil = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(with("sub", "admin".into()).to_string());
            format!("{}.{}.{}", parts[0], evil, parts[2])
        }),
        ("signature stripped", {
            let t = idp.token(header.clone(), good.clone());
            format!("{}.", t.rsplit_once('.').unwrap().0)
        }),
        (
            "two tokens",
            format!(
                "{} {}",
                idp.token(header.clone(), good.clone()),
                idp.token(header.clone(), good.clone())
            ),
        ),
        ("garbage", "a.b.c".into()),
    ];
    for (name, token) in cases {
        assert_eq!(get(token).await, 401, "{name}");
    }
    assert_eq!(up.seen().len(), before, "a refused token reached the upstream");
    gw.stop().await;
}

// === 5. bearer tokens are not forwarded, unless asked ===

fn builtin_extra(upstream: &str, extra_oauth: &str) -> String {
    let rest = || roles(["rest"]);
    Config::bare()
        .section("oauth", |s| {
            s.set("mode", "builtin")
                .set("access_token_ttl", "5m")
                .set("refresh_token_ttl", "1h")
                .merge_toml(extra_oauth)
                .entry("clients", |c| {
                    c.set("client_id", "snow")
                        .set("client_secret_hash", sha256_hex("snow-secret"))
                })
        })
        .plan("api", |p| {
            p.upstream(upstream)
                .access(rest())
                .integration("bearer", |i| {
                    i.path("/bearer").methods(["GET"]).auth("oauth").senders(rest())
                })
                .integration("raw", |i| {
                    i.path("/raw")
                        .methods(["GET"])
                        .auth("oauth")
                        .senders(rest())
                        .set("forward_token", true)
                })
        })
        .to_toml()
}

async fn token_request(gw: &Gateway, form: &str) -> (u16, serde_json::Value) {
    let resp = client()
        .post(gw.url("/oauth/token"))
        .basic_auth("snow", Some("snow-secret"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

async fn bearer(gw: &Gateway, path: &str, token: &str) -> u16 {
    client()
        .get(gw.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn bearer_tokens_are_consumed_unless_forward_token() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&cfg(&up.url(), &builtin_extra(&up.url(), ""))).await;
    let (status, doc) = token_request(&gw, "grant_type=password&username=alice&password=alice-pw").await;
    assert_eq!(status, 200, "{doc}");
    let access = doc["access_token"].as_str().unwrap().to_string();
    assert_eq!(bearer(&gw, "/bearer", &access).await, 200);
    assert!(up.last().headers.get("authorization").is_none());
    assert_eq!(bearer(&gw, "/raw", &access).await, 200);
    assert_eq!(up.last().headers["authorization"], format!("Bearer {access}").as_str());
    gw.stop().await;
}

// === 6. the lockout budget holds under concurrency ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_never_exceed_the_lockout_budget() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&cfg(&up.url(), "")).await;
    // Forty different wrong passwords at once, on forty HTTP/1.1 connections.
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let addr = gw.addr;
            tokio::spawn(async move {
                let head = format!(
                    "GET /secret/x HTTP/1.1\r\nHost: gw\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
                    basic("alice", &format!("guess-{i}"))
                );
                h1(addr, &head).await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let verified = statuses.iter().filter(|s| **s == 401).count();
    let throttled = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(verified, 3, "{statuses:?}");
    assert_eq!(throttled, 37, "{statuses:?}");
    assert_eq!(gw.metric(&failures("bad_password", "basic")).await, 3.0);
    // The right password is locked out too.
    let head = format!(
        "GET /secret/x HTTP/1.1\r\nHost: gw\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        basic("alice", "alice-pw")
    );
    assert_eq!(h1(gw.addr, &head).await, 429);

    // Forty HTTP/2 streams on one connection, for another user.
    let send = h2(gw.addr).await;
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let mut send = send.clone();
            tokio::spawn(async move {
                let req = http::Request::get("http://gw/secret/x")
                    .header("authorization", basic("mallory", &format!("guess-{i}")))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                h2_status(&mut send, req).await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 3, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 37, "{statuses:?}");
    // URL keys: guesses from one address are counted the same way.
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let addr = gw.addr;
            tokio::spawn(async move {
                h1(
                    addr,
                    &format!("GET /key?apiKey=guess-{i} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"),
                )
                .await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 3, "{statuses:?}");
    assert!(up.seen().is_empty());
    gw.stop().await;
}

/// The three channels that verify alice's password: a Basic route, the password grant,
/// and a forward-auth subrequest carrying Basic.
#[derive(Debug, Clone, Copy)]
enum Channel {
    Basic,
    Grant,
    ForwardAuth,
}

/// One password for alice on `channel`, on its own connection: the status, and whether
/// the answer says the password was wrong (401 on a route or forward-auth, 400
/// `invalid_grant` at the token endpoint; alice exists and has a password, so these are
/// `bad_password`, which the metric counts by reason).
async fn guess(gw: &Gateway, channel: Channel, password: String) -> (u16, bool) {
    let c = client();
    let req = match channel {
        Channel::Basic => c
            .get(gw.url("/secret/x"))
            .header("authorization", basic("alice", &password)),
        Channel::ForwardAuth => c
            .get(format!(
                "http://{}/",
                gw.forward_auth.expect("[forward_auth] configured")
            ))
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-uri", "/secret/x")
            .header("x-forwarded-host", "app.example")
            .header("x-forwarded-proto", "https")
            .header("authorization", basic("alice", &password)),
        Channel::Grant => c
            .post(gw.url("/oauth/token"))
            .basic_auth("snow", Some("snow-secret"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("grant_type=password&username=alice&password={password}")),
    };
    let resp = req.header("connection", "close").send().await.unwrap();
    let status = resp.status().as_u16();
    let doc: serde_json::Value = resp.json().await.unwrap_or_default();
    let wrong = match channel {
        Channel::Basic | Channel::ForwardAuth => status == 401,
        Channel::Grant => status == 400 && doc["error"] == "invalid_grant",
    };
    (status, wrong)
}

/// All `guesses` at once, each a (channel, password).
async fn at_once(gw: &Arc<Gateway>, guesses: Vec<(Channel, String)>) -> Vec<(Channel, u16, bool)> {
    let tasks: Vec<_> = guesses
        .into_iter()
        .map(|(channel, pw)| {
            let gw = gw.clone();
            tokio::spawn(async move {
                let (s, wrong) = guess(&gw, channel, pw).await;
                (channel, s, wrong)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers
}

/// The password of guess `i` on channel `c`.
type Guesses = fn(usize, usize) -> String;

/// Basic, the password grant and forward-auth's Basic verify the same password under the
/// same lockout: guesses on all of them at once share one budget per (user, client
/// address), so at most `max_failures` are answered "wrong password" per window whatever
/// the mix: distinct guesses per channel, or the same guesses on every channel (which
/// share an argon2 run, and must each still take a place in the budget), fresh or right
/// after a lock ends. The rest are 429, and so is the right password once locked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_guesses_on_every_password_channel_share_one_budget() {
    let up = Upstream::start().await;
    let config = base(&up.url())
        .section_toml("listen", r#"trusted_proxies = ["127.0.0.1/32"]"#)
        .section("forward_auth", |s| {
            s.set("address", "127.0.0.1:0").set("ingress", "traefik")
        })
        .toml(&builtin_extra(&up.url(), ""))
        .to_toml();
    let gw = Arc::new(Gateway::start(&config).await);
    let channels = [Channel::Basic, Channel::Grant, Channel::ForwardAuth];
    let wrong_metric = |m: &str| {
        ["basic", "oauth"]
            .iter()
            .map(|method| metric_value(m, &failures("bad_password", method)))
            .sum::<f64>()
    };
    let rounds: [(&str, Guesses); 3] = [
        ("the same four guesses on every channel", |_, i| format!("guess-{i}")),
        ("distinct guesses per channel", |c, i| format!("guess-{c}-{i}")),
        ("the same guess on every request", |_, _| "guess".to_string()),
    ];
    for (n, (round, password)) in rounds.iter().enumerate() {
        let guesses = channels
            .iter()
            .enumerate()
            .flat_map(|(c, ch)| (0..4).map(move |i| (*ch, password(c, i))))
            .collect();
        let answers = at_once(&gw, guesses).await;
        let wrong = answers.iter().filter(|(_, _, w)| *w).count();
        let throttled = answers.iter().filter(|(_, s, _)| *s == 429).count();
        assert_eq!(wrong, 3, "{round}: {answers:?}");
        assert_eq!(throttled, 9, "{round}: {answers:?}");
        let counted = wrong_metric(&gw.metrics().await);
        assert_eq!(counted, 3.0 * (n + 1) as f64, "{round}: portcullis_auth_failures_total");
        // Locked on every channel, even with the right password.
        for ch in channels {
            assert_eq!(guess(&gw, ch, "alice-pw".into()).await.0, 429, "{round}: {ch:?}");
        }
        // The lock ends (the gateway's clock moves past the hour): a new window.
        gw.state.clock().advance(std::time::Duration::from_secs(3601));
    }
    for ch in channels {
        assert_ne!(guess(&gw, ch, "alice-pw".into()).await.0, 429, "the lock ends: {ch:?}");
    }
    assert_eq!(
        up.seen().len(),
        1,
        "only the right password, on the Basic route, reached the upstream"
    );
    Arc::into_inner(gw).unwrap().stop().await;
}

// === 7. tokens do not outlive their user ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_end_with_their_user_and_refresh_reuse_is_atomic() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&cfg(&up.url(), &builtin_extra(&up.url(), ""))).await;
    let path = gw.dir.path().join("portcullis.toml");
    let (_, doc) = token_request(&gw, "grant_type=password&username=alice&password=alice-pw").await;
    let access = doc["access_token"].as_str().unwrap().to_string();
    let refresh = doc["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(bearer(&gw, "/bearer", &access).await, 200);

    // Two uses of one refresh token at once: exactly one wins, and the family is revoked.
    let form = format!("grant_type=refresh_token&refresh_token={refresh}");
    let (a, b) = tokio::join!(token_request(&gw, &form), token_request(&gw, &form));
    let winners: Vec<&serde_json::Value> = [&a, &b]
        .into_iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, d)| d)
        .collect();
    assert_eq!(winners.len(), 1, "{a:?} {b:?}");
    let rotated = winners[0]["refresh_token"].as_str().unwrap().to_string();
    // A third use is a reuse: the family, including the rotated token, is revoked.
    assert_eq!(token_request(&gw, &form).await.0, 400);
    let (status, doc) = token_request(&gw, &format!("grant_type=refresh_token&refresh_token={rotated}")).await;
    assert_eq!(status, 400, "{doc}");

    // A fresh sign-in, then the user is removed from the config.
    let (_, doc) = token_request(&gw, "grant_type=password&username=alice&password=alice-pw").await;
    let access = doc["access_token"].as_str().unwrap().to_string();
    let refresh = doc["refresh_token"].as_str().unwrap().to_string();
    let text = std::fs::read_to_string(&path).unwrap();
    let without_alice = text.replace("\"alice\"", "\"alice-gone\"");
    std::fs::write(&path, without_alice).unwrap();
    portcullis::reload::reload(&gw.state, &path, "test").unwrap();
    let before = up.seen().len();
    assert_eq!(bearer(&gw, "/bearer", &access).await, 401);
    assert_eq!(up.seen().len(), before);
    let (status, doc) = token_request(&gw, &format!("grant_type=refresh_token&refresh_token={refresh}")).await;
    assert_eq!(status, 400, "{doc}");
    assert_eq!(doc["error"], "invalid_grant");
    gw.stop().await;
}

#[tokio::test]
async fn a_refresh_family_ends_at_its_absolute_lifetime() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&cfg(
        &up.url(),
        &builtin_extra(&up.url(), "refresh_token_max_lifetime = \"5s\""),
    ))
    .await;
    let (_, doc) = token_request(&gw, "grant_type=password&username=alice&password=alice-pw").await;
    let refresh = doc["refresh_token"].as_str().unwrap().to_string();
    // Rotation works within the lifetime...
    let (status, doc) = token_request(&gw, &format!("grant_type=refresh_token&refresh_token={refresh}")).await;
    assert_eq!(status, 200, "{doc}");
    let rotated = doc["refresh_token"].as_str().unwrap().to_string();
    // ...and not past it, however recently the token was rotated.
    // The gateway's clock moves past the family's 5 s, without waiting for them.
    gw.state.clock().advance(std::time::Duration::from_secs(6));
    let (status, doc) = token_request(&gw, &format!("grant_type=refresh_token&refresh_token={rotated}")).await;
    assert_eq!(status, 400, "{doc}");
    gw.stop().await;
}

#[tokio::test]
async fn token_endpoint_refusals_are_counted_logged_and_shown() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&cfg(&up.url(), &builtin_extra(&up.url(), ""))).await;
    let resp = client()
        .post(gw.url("/oauth/token"))
        .basic_auth("snow", Some("wrong-secret"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().contains_key("x-request-id"));
    let doc: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(doc["error"], "invalid_client");
    let (status, doc) = token_request(&gw, "grant_type=password&username=alice&password=nope").await;
    assert_eq!(status, 400);
    assert_eq!(doc["error"], "invalid_grant");
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"portcullis_requests_total{auth_method="oauth",integration="oauth_token",outcome="unauthenticated",plan="portcullis"}"#
        ),
        2.0
    );
    assert_eq!(metric_value(&m, &failures("bad_client_credentials", "oauth")), 1.0);
    assert_eq!(metric_value(&m, &failures("bad_password", "oauth")), 1.0);
    let refusals: serde_json::Value = client()
        .get(gw.admin_url("/refusals"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let reasons: Vec<&str> = refusals
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons.contains(&"bad_client_credentials") && reasons.contains(&"bad_password"),
        "{reasons:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn cached_jwt_decisions_never_outlive_the_token_or_the_user() {
    let up = Upstream::start().await;
    let idp = Issuer::new();
    let gw = jwt_gateway(&up, &idp, "0s").await;
    let path = gw.dir.path().join("portcullis.toml");
    let now = unix_now();
    let header = serde_json::json!({"alg": "EdDSA", "kid": "ed-1"});
    let token = |sub: &str, exp: i64| {
        idp.token(
            header.clone(),
            serde_json::json!({"iss": "https://idp.test", "aud": "portcullis", "sub": sub, "exp": exp, "iat": now}),
        )
    };
    let get = |t: String| {
        let url = gw.url("/bearer");
        async move { client().get(url).bearer_auth(t).send().await.unwrap().status().as_u16() }
    };
    // A token that expires in five seconds is served from the cache until then, not after.
    let short = token("alice", now + 5);
    assert_eq!(get(short.clone()).await, 200);
    assert_eq!(get(short.clone()).await, 200);
    // Wait for the refusal, not for time: the cache's own ttl is 60 s, so a decision
    // that outlived the token would still be served when the 30 s bound is reached.
    let refused = eventually(std::time::Duration::from_secs(30), || {
        let status = get(short.clone());
        async move { status.await == 401 }
    })
    .await;
    assert!(refused, "a cached decision outlived its token");
    assert_eq!(get(short).await, 401);
    // A cached token of a user disabled by a reload is refused at once.
    let long = token("mallory", now + 3600);
    assert_eq!(get(long.clone()).await, 200);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replacen("name = \"mallory\"", "name = \"mallory\"\ndisabled = true", 1),
    )
    .unwrap();
    portcullis::reload::reload(&gw.state, &path, "test").unwrap();
    assert_eq!(get(long).await, 401);
    gw.stop().await;
}

/// Behind an ingress: only a trusted peer's X-Forwarded-For names the client, taken as the
/// rightmost hop that is not itself a trusted proxy; lockout, the log and the admin page
/// use it. From any other peer the header names nobody.
#[tokio::test]
async fn the_client_behind_a_trusted_proxy_is_the_rightmost_untrusted_hop() {
    let up = Upstream::start().await;
    let trusted = behind(&up.url(), r#"["127.0.0.0/8", "10.0.0.0/8"]"#);
    let gw = Gateway::start(&trusted).await;
    let guess = |xff: &'static str, pw: &'static str| {
        let url = gw.url("/secret/x");
        async move {
            client()
                .get(url)
                .header("authorization", basic("alice", pw))
                .header("x-forwarded-for", xff)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // 198.51.100.7 (spoofing 203.0.113.9 on the left, behind an inner proxy 10.1.1.1)
    // uses its three failures...
    for _ in 0..3 {
        assert_eq!(guess("203.0.113.9, 198.51.100.7, 10.1.1.1", "wrong").await, 401);
    }
    assert_eq!(guess("198.51.100.7", "alice-pw").await, 429);
    // ...which do not lock out another client behind the same ingress, nor the spoofed one.
    assert_eq!(guess("198.51.100.8", "alice-pw").await, 200);
    assert_eq!(guess("203.0.113.9", "alice-pw").await, 200);
    let refusals: serde_json::Value = client()
        .get(gw.admin_url("/refusals"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        refusals
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["client_ip"] == "198.51.100.7"),
        "{refusals}"
    );
    gw.stop().await;

    // Without trusted_proxies, the header names nobody: all guesses count for the peer.
    let gw = Gateway::start(&cfg(&up.url(), "")).await;
    for (i, xff) in ["1.1.1.1", "2.2.2.2", "3.3.3.3"].into_iter().enumerate() {
        let r = client()
            .get(gw.url("/secret/x"))
            .header("authorization", basic("alice", "wrong"))
            .header("x-forwarded-for", xff)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "guess {i}");
    }
    let r = client()
        .get(gw.url("/secret/x"))
        .header("authorization", basic("alice", "alice-pw"))
        .header("x-forwarded-for", "4.4.4.4")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    gw.stop().await;
}

// === upgrades ===

/// A service that answers every request head with `answer(head)` and, after a `101`,
/// writes `after` (what an h2c server would start speaking); the heads it read are kept.
async fn lying_service(
    answer: fn(&str) -> String,
    after: &'static [u8],
) -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let rec = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let rec = rec.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
                rec.lock().unwrap().push(head.clone());
                let resp = answer(&head);
                let _ = s.write_all(resp.as_bytes()).await;
                if resp.starts_with("HTTP/1.1 101") {
                    let _ = s.write_all(after).await;
                }
                // Hold the connection until the gateway lets go.
                let _ = s.read(&mut chunk).await;
            });
        }
    });
    (addr, heads)
}

/// The `Sec-WebSocket-Key` of a request head.
fn ws_key(head: &str) -> String {
    head.lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 section 4.2.2).
fn ws_accept(key: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

fn ws_config(upstream: &str) -> String {
    Config::new()
        .user("alice", |u| u.roles(["rest"]).password_hash(&argon2_hash("alice-pw")))
        .plan("live", |p| {
            p.upstream(upstream)
                .access_all()
                .integration("feed", |i| {
                    i.path("/feed")
                        .methods(["GET"])
                        .auth("basic")
                        .set("upgrades", vec!["websocket"])
                })
                .integration("plain", |i| i.path("/plain").methods(["GET"]).auth("basic"))
        })
        .to_toml()
}

/// RFC 6455's sample key and the accept it calls for.
const CLIENT_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const CLIENT_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Sends `head` and reads until the response head is complete; the connection stays.
async fn head_of(addr: SocketAddr, head: &str) -> (String, tokio::net::TcpStream) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(PATIENCE, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    (String::from_utf8_lossy(&buf).into_owned(), s)
}

fn upgrade_request(path: &str, upgrade_lines: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: {auth}\r\n{upgrade_lines}\
         Sec-WebSocket-Key: {CLIENT_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        auth = basic("alice", "alice-pw"),
    )
}

/// `Upgrade: h2c, websocket` (or two Upgrade lines) with `HTTP2-Settings`: the service is
/// asked for `websocket` only, with the gateway's own key, and never sees HTTP2-Settings;
/// the client gets a 101 of the gateway's own answering its key.
#[tokio::test]
async fn an_upgrade_asks_the_service_for_websocket_only() {
    let (svc, heads) = lying_service(
        |head| {
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {}\r\n\r\n",
                ws_accept(&ws_key(head))
            )
        },
        b"",
    )
    .await;
    let gw = Gateway::start(&ws_config(&format!("http://{svc}"))).await;
    for offer in [
        "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c, websocket\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
        "Connection: Upgrade\r\nUpgrade: h2c\r\nUpgrade: websocket\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
        "Connection: keep-alive, Upgrade\r\nUpgrade: websocket, h2c\r\n",
    ] {
        heads.lock().unwrap().clear();
        let (resp, _conn) = head_of(gw.addr, &upgrade_request("/feed", offer)).await;
        assert_eq!(status_of(&resp), 101, "{resp}");
        let lower = resp.to_ascii_lowercase();
        assert!(lower.contains(&format!("sec-websocket-accept: {}", CLIENT_ACCEPT.to_ascii_lowercase())), "{resp}");
        assert!(lower.contains("upgrade: websocket\r\n"), "{resp}");
        let head = heads.lock().unwrap().first().cloned().expect("the service saw the upgrade");
        let lower = head.to_ascii_lowercase();
        assert!(!lower.contains("h2c"), "{head}");
        assert!(!lower.contains("http2-settings"), "{head}");
        assert_eq!(lower.matches("\r\nupgrade:").count(), 1, "{head}");
        assert!(lower.contains("\r\nupgrade: websocket\r\n"), "{head}");
        assert!(lower.contains("\r\nconnection: upgrade\r\n"), "{head}");
        let key = ws_key(&head);
        assert!(!key.is_empty() && key != CLIENT_KEY, "the client's key went to the service: {head}");
        assert!(lower.contains("x-portcullis-user: alice"), "{head}");
        assert!(!lower.contains("authorization"), "{head}");
    }
    // A client that offers only h2c gets no upgrade at all: the service sees a plain GET.
    heads.lock().unwrap().clear();
    let _ = head_of(
        gw.addr,
        &upgrade_request(
            "/plain",
            "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
        ),
    )
    .await;
    let head = heads.lock().unwrap().first().cloned().unwrap_or_default();
    let lower = head.to_ascii_lowercase();
    assert!(
        !lower.contains("upgrade") && !lower.contains("http2-settings"),
        "{head}"
    );
    // A malformed handshake from the client never reaches the service.
    heads.lock().unwrap().clear();
    for bad in [
        upgrade_request("/feed", "Connection: Upgrade\r\nUpgrade: websocket\r\n").replace(CLIENT_KEY, "c2hvcnQ="),
        upgrade_request("/feed", "Connection: Upgrade\r\nUpgrade: websocket\r\n").replace("Version: 13", "Version: 8"),
        upgrade_request(
            "/feed",
            &format!("Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: {CLIENT_KEY}\r\n"),
        ),
    ] {
        let (resp, _) = head_of(gw.addr, &bad).await;
        assert_eq!(status_of(&resp), 400, "{bad}\n{resp}");
    }
    assert!(heads.lock().unwrap().is_empty());
    gw.stop().await;
}

/// A service that switches to anything but WebSocket with our key (h2c, a wrong or
/// missing accept, two Upgrade lines, a non-101) gets no tunnel: the client gets a 502
/// `upgrade_refused`, its connection closes, and not a byte of the other protocol
/// reaches it. A 101 to a request that asked for no upgrade is refused the same way.
#[tokio::test]
async fn a_service_that_switches_to_anything_else_gets_no_tunnel() {
    fn accept(head: &str) -> String {
        ws_accept(&ws_key(head))
    }
    let answers: [fn(&str) -> String; 6] = [
        |h| {
            format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n", accept(h))
        },
        |_| {
            format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {CLIENT_ACCEPT}\r\n\r\n")
        },
        |_| "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n".to_string(),
        |h| {
            format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nUpgrade: h2c\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n", accept(h))
        },
        |h| {
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                accept(h)
            )
        },
        |_| "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_string(),
    ];
    for (i, answer) in answers.into_iter().enumerate() {
        let (svc, heads) = lying_service(answer, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nH2C-SECRET").await;
        let gw = Gateway::start(&ws_config(&format!("http://{svc}"))).await;
        let out = raw(
            gw.addr,
            upgrade_request("/feed", "Connection: Upgrade\r\nUpgrade: websocket\r\n").as_bytes(),
        )
        .await;
        // raw() returns once the gateway closes the connection.
        assert_eq!(status_of(&out), 502, "answer {i}: {out}");
        assert!(out.contains("\"code\":502"), "answer {i}: {out}");
        assert!(
            !out.contains("H2C-SECRET") && !out.contains("PRI *"),
            "answer {i}: {out}"
        );
        assert!(
            out.to_ascii_lowercase().contains("connection: close"),
            "answer {i}: {out}"
        );
        assert_eq!(heads.lock().unwrap().len(), 1);
        gw.stop().await;
    }
    // No upgrade asked, a 101 anyway: refused, nothing relayed.
    let (svc, _) = lying_service(
        |_| "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n".to_string(),
        b"H2C-SECRET",
    )
    .await;
    let gw = Gateway::start(&ws_config(&format!("http://{svc}"))).await;
    let (resp, _c) = head_of(
        gw.addr,
        &format!(
            "GET /plain HTTP/1.1\r\nHost: gw\r\nAuthorization: {}\r\n\r\n",
            basic("alice", "alice-pw")
        ),
    )
    .await;
    assert_eq!(status_of(&resp), 502, "{resp}");
    assert!(!resp.contains("H2C-SECRET"));
    let log = gw.metrics().await;
    assert!(
        metric_value(&log, "portcullis_requests_total{auth_method=\"basic\",integration=\"plain\",outcome=\"upstream_error\",plan=\"live\"}") >= 1.0,
        "{log}"
    );
    gw.stop().await;
}

// === client address, plan access, refusals the parser writes ===

/// HAProxy's `option forwardfor` adds its own `X-Forwarded-For` line after the client's:
/// every line counts, in order, so a client's own line cannot rotate its address past
/// the lockout, and the upstream reads the joined list.
#[tokio::test]
async fn every_forwarded_for_line_counts() {
    let up = Upstream::start().await;
    let trusted = behind(&up.url(), r#"["127.0.0.0/8"]"#);
    let gw = Gateway::start(&trusted).await;
    let guess = |own: String, pw: &'static str| {
        let addr = gw.addr;
        async move {
            let head = format!(
                "GET /secret/x HTTP/1.1\r\nHost: gw\r\nAuthorization: {}\r\n\
                 X-Forwarded-For: {own}\r\nX-Forwarded-For: 198.51.100.7\r\nConnection: close\r\n\r\n",
                basic("alice", pw)
            );
            h1(addr, &head).await
        }
    };
    for i in 0..3 {
        assert_eq!(guess(format!("203.0.113.{i}"), "wrong").await, 401);
    }
    // A fresh address of the client's own in every try: still the same client.
    assert_eq!(guess("203.0.113.200".into(), "alice-pw").await, 429);
    // Another spelling of the client's address is the same address.
    for spelling in [
        "::ffff:198.51.100.7",
        "::ffff:c633:6407",
        "[::ffff:198.51.100.7]:4711",
        "[::ffff:198.51.100.7]",
        "::ffff:198.51.100.7%eth0",
        "198.51.100.7:4711",
    ] {
        let head = format!(
            "GET /secret/x HTTP/1.1\r\nHost: gw\r\nAuthorization: {}\r\n\
             X-Forwarded-For: {spelling}\r\nConnection: close\r\n\r\n",
            basic("alice", "alice-pw")
        );
        assert_eq!(h1(gw.addr, &head).await, 429, "{spelling}");
    }
    assert_eq!(guess("203.0.113.201, 10.9.9.9".into(), "alice-pw").await, 429);
    // The proxy's line names the client; another client behind it is not locked out.
    let other = "GET /public/x HTTP/1.1\r\nHost: gw\r\nX-Forwarded-For: 1.2.3.4\r\n\
                 X-Forwarded-For: 198.51.100.8\r\nConnection: close\r\n\r\n";
    assert_eq!(h1(gw.addr, other).await, 200);
    let seen = up.last();
    let xff: Vec<_> = seen.headers.get_all("x-forwarded-for").iter().collect();
    assert_eq!(xff.len(), 1, "{xff:?}");
    assert_eq!(xff[0], "1.2.3.4, 198.51.100.8, 127.0.0.1");
    gw.stop().await;
}

/// A plan without an `access` rule admits nobody (fail closed); `{ all = true }` admits
/// every authenticated principal.
#[tokio::test]
async fn a_plan_without_an_access_rule_admits_nobody() {
    let up = Upstream::start().await;
    let without = cfg(&up.url(), "").replacen("access = { roles = [\"rest\"] }\n", "", 1);
    assert!(
        !without.contains("name = \"p\"\nupstream = \"http://127.0.0.1") || without.matches("access =").count() == 1
    );
    let gw = Gateway::start(&without).await;
    let r = client()
        .get(gw.url("/secret/x"))
        .header("authorization", basic("alice", "alice-pw"))
        .send()
        .await
        .unwrap();
    error_body(r, 403).await;
    assert!(up.seen().is_empty());
    let refusals = client()
        .get(gw.admin_url("/refusals"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(refusals.contains("no_plan_access"), "{refusals}");
    gw.stop().await;
    let open = cfg(&up.url(), "").replacen("access = { roles = [\"rest\"] }\n", "access = { all = true }\n", 1);
    let gw = Gateway::start(&open).await;
    let r = client()
        .get(gw.url("/secret/x"))
        .header("authorization", basic("mallory", "mallory-pw"))
        .send()
        .await
        .unwrap();
    // mallory passes the plan, then the integration's senders rule stops her.
    error_body(r, 403).await;
    let r = client()
        .get(gw.url("/secret/x"))
        .header("authorization", basic("alice", "alice-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    gw.stop().await;
}

/// More header fields than `max_headers`: the gateway's own 431 with the JSON body and
/// X-Request-Id, logged and counted; past what the parser holds, the parser's 431 is
/// still counted with its reason. A malformed head is counted the same way.
#[tokio::test]
async fn refusals_of_the_parser_are_counted_and_the_gateways_carry_the_json_body() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&cfg(&up.url(), "[limits]\nmax_headers = 20\n")).await;
    let many = |n: usize| {
        let mut h = String::from("GET /public/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n");
        for i in 0..n {
            h.push_str(&format!("X-Filler-{i}: v\r\n"));
        }
        h + "\r\n"
    };
    let out = raw(gw.addr, many(25).as_bytes()).await;
    assert_eq!(status_of(&out), 431, "{out}");
    assert!(out.to_ascii_lowercase().contains("x-request-id:"), "{out}");
    assert!(out.contains("\"code\":431"), "{out}");
    let out = raw(gw.addr, many(39).as_bytes()).await;
    assert_eq!(status_of(&out), 431, "{out}");
    assert!(out.contains("\"code\":431"), "{out}");
    // Past twice the limit, the parser answers itself: still counted and logged.
    let out = raw(gw.addr, many(300).as_bytes()).await;
    assert_eq!(status_of(&out), 431, "{out}");
    let series = "portcullis_malformed_requests_total{listener=\"inbound\",reason=\"headers_too_large\"}";
    assert!(
        eventually(PATIENCE, || gw.metric_at_least(series, 1.0)).await,
        "{}",
        gw.metrics().await
    );
    // A request target over the parser's 64 KiB: 414, counted as uri_too_long.
    let long = format!("GET /public/{} HTTP/1.1\r\nHost: gw\r\n\r\n", "a".repeat(70 * 1024));
    let out = raw(gw.addr, long.as_bytes()).await;
    assert_eq!(status_of(&out), 414, "{out}");
    let series = "portcullis_malformed_requests_total{listener=\"inbound\",reason=\"uri_too_long\"}";
    assert!(
        eventually(PATIENCE, || gw.metric_at_least(series, 1.0)).await,
        "{}",
        gw.metrics().await
    );
    let out = raw(gw.addr, b"GET /public/x HTTP/1.1\r\nHost: gw\r\nBad Header: x\r\n\r\n").await;
    assert_eq!(status_of(&out), 400, "{out}");
    let series = "portcullis_malformed_requests_total{listener=\"inbound\",reason=\"malformed_request\"}";
    assert!(
        eventually(PATIENCE, || gw.metric_at_least(series, 1.0)).await,
        "{}",
        gw.metrics().await
    );
    assert!(up.seen().is_empty());
    gw.stop().await;
}

/// The egress port's callers get the same head limits as inbound clients: more fields
/// than `max_headers` is the gateway's 431 with the JSON body, never passed on.
#[tokio::test]
async fn egress_callers_get_the_head_limits_too() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &config(&format!(
            r#"
[limits]
max_headers = 20

[egress]
address = "127.0.0.1:0"

[[endpoints]]
name = "api"
base_url = "{up}"
auth = {{ type = "basic", username = "svc", password = "svc-pw" }}

[[plans]]
name = "p"
upstream = "builtin:echo"
[[plans.integrations]]
name = "open"
path = "/open"
methods = ["GET"]
auth = "none"
"#,
            up = up.url()
        )),
    );
    let p = Process::start(&path, &[]);
    let egress = listening_addr(&p, "egress").await;
    let mut head = String::from("GET /api/x HTTP/1.1\r\nHost: egress\r\nConnection: close\r\n");
    for i in 0..30 {
        head.push_str(&format!("X-Filler-{i}: v\r\n"));
    }
    head.push_str("\r\n");
    let out = raw(egress, head.as_bytes()).await;
    assert_eq!(status_of(&out), 431, "{out}");
    assert!(out.contains("\"code\":431"), "{out}");
    assert!(up.seen().is_empty());
}

/// RFC 9112 section 3.2: an HTTP/1.1 request without `Host`, with two, with one that is
/// not `host[:port]`, or whose target names another authority (HTTP/2: `:authority`) is a
/// 400, so the `X-Forwarded-Host` an upstream builds links from is the authority the
/// client addressed.
#[tokio::test]
async fn a_request_with_two_hosts_or_none_is_refused() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&cfg(&up.url(), "")).await;
    for head in [
        "GET /public/x HTTP/1.1\r\nHost: gw\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        "GET /public/x HTTP/1.1\r\nConnection: close\r\n\r\n",
    ] {
        let out = raw(gw.addr, head.as_bytes()).await;
        assert_eq!(status_of(&out), 400, "{out}");
        assert!(out.contains("\"code\":400"), "{out}");
    }
    // A Host that is not host[:port], or an absolute-form target naming another
    // authority than the Host: never copied into the upstream's X-Forwarded-Host.
    for host in [
        "a.example, b.example",
        "u@a.example",
        "a.example:99999",
        "a .example",
        "a.example/x",
    ] {
        let head = format!("GET /public/x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        assert_eq!(h1(gw.addr, &head).await, 400, "{host}");
    }
    let other = "GET http://evil.example/public/x HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n";
    assert_eq!(h1(gw.addr, other).await, 400);
    // HTTP/2: `:authority` and `host` that disagree.
    let mut fields = pseudo("GET", "/public/x");
    fields.push(("host", "evil.example"));
    assert_eq!(h2_raw(gw.addr, &fields).await, H2Answer::Response(Some(400)));
    assert!(up.seen().is_empty());
    // The same authority in both places is one request.
    let same = "GET http://a.example/public/x HTTP/1.1\r\nHost: A.example\r\nConnection: close\r\n\r\n";
    assert_eq!(h1(gw.addr, same).await, 200);
    assert_eq!(up.last().headers["x-forwarded-host"], "A.example");
    // HTTP/1.0 has no Host requirement.
    assert_eq!(h1(gw.addr, "GET /public/x HTTP/1.0\r\n\r\n").await, 200);
    gw.stop().await;
}
