//! Egress: endpoints signed per type, initiators and callers, TLS trust, the CLI.

use crate::support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use portcullis::auth::Principal;
use portcullis::config::AuthMethod;
use support::*;

// === targets ===

#[derive(Clone, Debug)]
pub(crate) struct Req {
    method: String,
    uri: String,
    headers: http::HeaderMap,
    body: Bytes,
}

pub(crate) type Respond = Arc<dyn Fn(&Req) -> (u16, Vec<(&'static str, String)>, String) + Send + Sync>;

pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    seen: Arc<Mutex<Vec<Req>>>,
}

impl Target {
    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
    fn last(&self) -> Req {
        self.seen.lock().unwrap().last().cloned().expect("target saw a request")
    }
}

/// A target on 127.0.0.1, plain or TLS with `cert`, answering with `respond`.
pub(crate) async fn target(tls: Option<(String, String)>, respond: Respond) -> Target {
    target_with(tls, &[&rustls::version::TLS13, &rustls::version::TLS12], respond).await
}

/// A target speaking only the given TLS versions.
async fn target_with(
    tls: Option<(String, String)>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    respond: Respond,
) -> Target {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Req>>> = Arc::default();
    let rec = seen.clone();
    let acceptor = tls.map(|(cert, key)| {
        use rustls_pki_types::pem::PemObject;
        let certs = vec![rustls_pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
    });
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else { return };
            let rec = rec.clone();
            let respond = respond.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let rec = rec.clone();
                    let respond = respond.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let r = Req {
                            method: parts.method.to_string(),
                            uri: parts.uri.to_string(),
                            headers: parts.headers,
                            body,
                        };
                        let (status, headers, text) = respond(&r);
                        rec.lock().unwrap().push(r);
                        let mut resp = hyper::Response::new(Full::new(Bytes::from(text)));
                        *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        for (k, v) in headers {
                            resp.headers_mut().insert(k, v.parse().unwrap());
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let b = hyper::server::conn::http1::Builder::new();
                match acceptor {
                    Some(a) => {
                        if let Ok(tls) = a.accept(s).await {
                            let _ = b.serve_connection(TokioIo::new(tls), svc).await;
                        }
                    }
                    None => {
                        let _ = b.serve_connection(TokioIo::new(s), svc).await;
                    }
                }
            });
        }
    });
    Target { addr, seen }
}

pub(crate) fn ok() -> Respond {
    Arc::new(|_| (200, vec![], "target-ok".into()))
}

fn cert_for(names: &[&str], expired: bool) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn sha256_der(pem: &str) -> String {
    use rustls_pki_types::pem::PemObject;
    use sha2::Digest;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    hex::encode(sha2::Sha256::digest(der.as_ref()))
}

fn egress_config(endpoints: &str) -> String {
    Config::new()
        .section("egress", |s| s.set("address", "127.0.0.1:0"))
        .plan("p", |p| {
            p.upstream("builtin:echo")
                .integration("open", |i| i.path("/open").methods(["GET"]).auth("none"))
        })
        .toml(endpoints)
        .to_toml()
}

pub(crate) struct Egress {
    pub(crate) gw: Gateway,
    addr: SocketAddr,
}

impl Egress {
    pub(crate) async fn start(endpoints: &str) -> Egress {
        let toml = egress_config(endpoints);
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(dir.path(), &toml);
        let cfg = portcullis::config::load(&path).unwrap().config;
        // Bind the egress port through the same path the binary uses.
        let bound = portcullis::server::Bound::bind(&cfg).unwrap();
        let addr = bound.egress_addr().unwrap();
        drop(bound);
        let gw = Gateway::start_in(
            dir,
            &toml.replace(
                "[egress]\naddress = \"127.0.0.1:0\"",
                &format!("[egress]\naddress = \"{addr}\""),
            ),
        )
        .await;
        Egress { gw, addr }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn assertion(&self, user: &str, roles: &[&str]) -> String {
        let p = Principal::new(
            Arc::from(user),
            Arc::from(roles.iter().map(|r| r.to_string()).collect::<Vec<_>>()),
            AuthMethod::Basic,
            None,
        );
        self.gw.state.gateway().signer().sign(&p, "p", "open").unwrap()
    }
}

async fn message(resp: reqwest::Response, status: u16) -> String {
    error_body(resp, status).await["message"].as_str().unwrap().to_string()
}

// === TLS trust ===

#[tokio::test]
async fn self_signed_targets_are_trusted_only_when_allowed_named_and_valid() {
    let good = cert_for(&["localhost", "127.0.0.1"], false);
    let wrong_name = cert_for(&["other.test"], false);
    let expired = cert_for(&["localhost", "127.0.0.1"], true);
    let t_good = target(Some(good.clone()), ok()).await;
    let t_wrong = target(Some(wrong_name), ok()).await;
    let t_expired = target(Some(expired), ok()).await;
    let pin = sha256_der(&good.0);
    let eg = Egress::start(&format!(
        r#"
[[endpoints]]
name = "good"
base_url = "https://localhost:{}"
trust_self_signed = true

[[endpoints]]
name = "untrusted"
base_url = "https://localhost:{}"

[[endpoints]]
name = "wrongname"
base_url = "https://localhost:{}"
trust_self_signed = true

[[endpoints]]
name = "expired"
base_url = "https://localhost:{}"
trust_self_signed = true

[[endpoints]]
name = "pinned"
base_url = "https://localhost:{}"
trust_self_signed = true
pin_sha256 = "{pin}"

[[endpoints]]
name = "mispinned"
base_url = "https://localhost:{}"
trust_self_signed = true
pin_sha256 = "{}"
"#,
        t_good.addr.port(),
        t_good.addr.port(),
        t_wrong.addr.port(),
        t_expired.addr.port(),
        t_good.addr.port(),
        t_good.addr.port(),
        "ab".repeat(32)
    ))
    .await;
    let c = client();
    let resp = c.get(eg.url("/good/x?y=1")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "target-ok");
    assert_eq!(t_good.last().uri, "/x?y=1");
    assert_eq!(c.get(eg.url("/pinned/x")).send().await.unwrap().status(), 200);
    let m = message(c.get(eg.url("/untrusted/x")).send().await.unwrap(), 502).await;
    assert!(m.contains("does not trust self-signed"), "{m}");
    let m = message(c.get(eg.url("/wrongname/x")).send().await.unwrap(), 502).await;
    assert!(m.contains("name mismatch") && m.contains("other.test"), "{m}");
    let m = message(c.get(eg.url("/expired/x")).send().await.unwrap(), 502).await;
    assert!(m.to_lowercase().contains("expired"), "{m}");
    let m = message(c.get(eg.url("/mispinned/x")).send().await.unwrap(), 502).await;
    assert!(m.contains("pin_sha256"), "{m}");
    assert_eq!(t_wrong.count() + t_expired.count(), 0);
    error_body(c.get(eg.url("/nope/x")).send().await.unwrap(), 404).await;
    let metrics = eg.gw.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            r#"portcullis_egress_requests_total{endpoint="good",status="200"}"#
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            r#"portcullis_egress_requests_total{endpoint="expired",status="502"}"#
        ),
        1.0
    );
    eg.gw.stop().await;
}

// === self-signed certificates as `openssl` makes them ===

/// Runs `openssl` in `dir`; panics with its output when it fails.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command line is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read_pair(dir: &std::path::Path, name: &str) -> (String, String) {
    (
        std::fs::read_to_string(dir.join(format!("{name}.crt"))).unwrap(),
        std::fs::read_to_string(dir.join(format!("{name}.key"))).unwrap(),
    )
}

/// `openssl req -x509`: CA:TRUE, as people make them; `san` empty for Common Name only.
fn openssl_self_signed(dir: &std::path::Path, name: &str, key: &[&str], cn: &str, san: &str) -> (String, String) {
    let (crt, k) = (format!("{name}.crt"), format!("{name}.key"));
    let subj = format!("/CN={cn}");
    let mut args = vec![
        "req", "-x509", "-nodes", "-days", "30", "-subj", &subj, "-keyout", &k, "-out", &crt,
    ];
    args.extend_from_slice(key);
    let ext = format!("subjectAltName={san}");
    if !san.is_empty() {
        args.extend_from_slice(&["-addext", &ext]);
    }
    openssl(dir, &args);
    read_pair(dir, name)
}

/// A self-signed certificate with explicit dates, through `openssl ca -selfsign`.
fn openssl_dated(dir: &std::path::Path, name: &str, start: &str, end: &str) -> (String, String) {
    let ca_dir = dir.join(format!("{name}-ca"));
    std::fs::create_dir_all(&ca_dir).unwrap();
    std::fs::write(ca_dir.join("index.txt"), "").unwrap();
    std::fs::write(ca_dir.join("serial"), "01\n").unwrap();
    let d = ca_dir.display();
    std::fs::write(
        ca_dir.join("ca.cnf"),
        format!(
            "[ca]\ndefault_ca = d\n[d]\ndatabase = {d}/index.txt\nnew_certs_dir = {d}\nserial = {d}/serial\ndefault_md = sha256\npolicy = p\nunique_subject = no\ncopy_extensions = copy\n[p]\ncommonName = supplied\n"
        ),
    )
    .unwrap();
    let (key, csr, crt) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"));
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ],
    );
    let cnf = format!("{d}/ca.cnf");
    openssl(
        dir,
        &[
            "ca",
            "-selfsign",
            "-batch",
            "-notext",
            "-config",
            &cnf,
            "-keyfile",
            &key,
            "-in",
            &csr,
            "-startdate",
            start,
            "-enddate",
            end,
            "-out",
            &crt,
        ],
    );
    read_pair(dir, name)
}

#[tokio::test]
async fn self_signed_certificates_made_by_openssl_are_trusted_by_name_and_date() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rsa = ["-newkey", "rsa:2048"];
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];
    let rsa_san = openssl_self_signed(d, "rsa-san", &rsa, "localhost", "DNS:localhost,IP:127.0.0.1");
    let ec_cn = openssl_self_signed(d, "ec-cn", &ec, "localhost", "");
    let rsa_cn_wrong = openssl_self_signed(d, "rsa-cn-wrong", &rsa, "other.test", "");
    let ec_san_wrong = openssl_self_signed(d, "ec-san-wrong", &ec, "localhost", "DNS:other.test");
    let expired = openssl_dated(d, "expired", "20200101000000Z", "20210101000000Z");
    let future = openssl_dated(d, "future", "20990101000000Z", "21000101000000Z");
    // A leaf signed by a CA nobody trusts.
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/CN=Private CA",
            "-newkey",
            "rsa:2048",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-new",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-newkey",
            "rsa:2048",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
        ],
    );
    std::fs::write(d.join("leaf.ext"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            "leaf.ext",
            "-out",
            "leaf.crt",
        ],
    );
    let leaf = read_pair(d, "leaf");

    let tls13 = [&rustls::version::TLS13];
    let tls12 = [&rustls::version::TLS12];
    let t = [
        ("rsa13", target_with(Some(rsa_san.clone()), &tls13, ok()).await),
        ("rsa12", target_with(Some(rsa_san.clone()), &tls12, ok()).await),
        ("ec13", target_with(Some(ec_cn.clone()), &tls13, ok()).await),
        ("ec12", target_with(Some(ec_cn.clone()), &tls12, ok()).await),
        ("cnwrong", target(Some(rsa_cn_wrong), ok()).await),
        ("sanwrong", target(Some(ec_san_wrong), ok()).await),
        ("expired", target(Some(expired), ok()).await),
        ("future", target(Some(future), ok()).await),
        ("leaf", target(Some(leaf), ok()).await),
    ];
    let mut endpoints = String::new();
    for (name, tgt) in &t {
        endpoints += &format!(
            "[[endpoints]]\nname = \"{name}\"\nbase_url = \"https://localhost:{}\"\ntrust_self_signed = true\n\n",
            tgt.addr.port()
        );
    }
    // By IP address, matched against the IP subjectAltName.
    endpoints += &format!(
        "[[endpoints]]\nname = \"byip\"\nbase_url = \"https://127.0.0.1:{}\"\ntrust_self_signed = true\n\n",
        t[0].1.addr.port()
    );
    // Pinned, with and without trust_self_signed; and a wrong pin.
    let pin = sha256_der(&ec_cn.0);
    endpoints += &format!(
        "[[endpoints]]\nname = \"pinned\"\nbase_url = \"https://localhost:{0}\"\npin_sha256 = \"{pin}\"\n\n\
         [[endpoints]]\nname = \"pinned-trusting\"\nbase_url = \"https://localhost:{0}\"\ntrust_self_signed = true\npin_sha256 = \"{pin}\"\n\n\
         [[endpoints]]\nname = \"mispinned\"\nbase_url = \"https://localhost:{1}\"\npin_sha256 = \"{pin}\"\n\n\
         [[endpoints]]\nname = \"untrusting\"\nbase_url = \"https://localhost:{0}\"\n\n",
        t[2].1.addr.port(),
        t[0].1.addr.port()
    );
    let eg = Egress::start(&endpoints).await;
    let c = client();
    for name in ["rsa13", "rsa12", "ec13", "ec12", "byip", "pinned", "pinned-trusting"] {
        let resp = c.get(eg.url(&format!("/{name}/x"))).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{name}: {}", resp.text().await.unwrap());
    }
    for (name, cause) in [
        ("cnwrong", "name mismatch"),
        ("sanwrong", "name mismatch"),
        ("expired", "expired"),
        ("future", "not yet valid"),
        ("leaf", "not self-signed"),
        ("mispinned", "pin_sha256"),
        ("untrusting", "does not trust self-signed"),
    ] {
        let m = message(c.get(eg.url(&format!("/{name}/x"))).send().await.unwrap(), 502).await;
        assert!(m.contains(cause), "{name}: {m}");
    }
    let m = message(c.get(eg.url("/cnwrong/x")).send().await.unwrap(), 502).await;
    assert!(m.contains("other.test") && m.contains("Common Names"), "{m}");
    let m = message(c.get(eg.url("/sanwrong/x")).send().await.unwrap(), 502).await;
    assert!(m.contains("other.test") && m.contains("subjectAltNames"), "{m}");
    for (name, tgt) in &t[4..] {
        assert_eq!(tgt.count(), 0, "{name} was sent a request");
    }
    eg.gw.stop().await;
}

// === basic ===

fn basic_target(user: &'static str, pass: &'static str) -> Respond {
    Arc::new(move |r| {
        let want = basic(user, pass);
        match r.headers.get("authorization") {
            Some(v) if v.to_str().unwrap() == want => (200, vec![], format!("hello {user}")),
            _ => (
                401,
                vec![("www-authenticate", "Basic realm=\"target\"".into())],
                "who are you".into(),
            ),
        }
    })
}

#[tokio::test]
async fn basic_preemptive_and_on_challenge() {
    let t = target(None, basic_target("svc", "svc-pw")).await;
    let eg = Egress::start(&format!(
        r#"
[[endpoints]]
name = "pre"
base_url = "http://{a}/api"
auth = {{ type = "basic", username = "svc", password = "svc-pw", preemptive = true }}

[[endpoints]]
name = "lazy"
base_url = "http://{a}/api"
auth = {{ type = "basic", username = "svc", password = "svc-pw", preemptive = false }}

[[endpoints]]
name = "wrong"
base_url = "http://{a}/api"
auth = {{ type = "basic", username = "svc", password = "nope", preemptive = false }}
"#,
        a = t.addr
    ))
    .await;
    let c = client();
    let resp = c
        .post(eg.url("/pre/items"))
        .header("authorization", "Bearer caller-own")
        .header("connection", "x-egress-hop")
        .header("x-egress-hop", "1")
        .header("x-portcullis-user", "spoof")
        .body("b1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(t.count(), 1, "preemptive: one request");
    let last = t.last();
    assert_eq!(last.uri, "/api/items");
    assert_eq!(
        last.headers["authorization"],
        basic("svc", "svc-pw").as_str(),
        "the caller's Authorization is replaced"
    );
    assert!(
        last.headers.get("x-egress-hop").is_none(),
        "hop-by-hop headers are not forwarded"
    );
    assert!(
        last.headers.get("x-portcullis-user").is_none(),
        "identity headers are not forwarded"
    );

    let resp = c.post(eg.url("/lazy/items")).body("payload-2").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = t.seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        3,
        "on challenge: a first request without credentials, then the replay"
    );
    assert!(seen[1].headers.get("authorization").is_none());
    assert_eq!(seen[2].headers["authorization"], basic("svc", "svc-pw").as_str());
    assert_eq!(
        (seen[1].body.as_ref(), seen[2].body.as_ref()),
        (&b"payload-2"[..], &b"payload-2"[..])
    );

    // Wrong credentials: the target's 401 comes back, after one replay.
    let resp = c.get(eg.url("/wrong/x")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(t.count(), 5);

    // A body too large to replay gets a clear error.
    let big = vec![b'z'; 2 * 1024 * 1024];
    let m = message(c.post(eg.url("/lazy/items")).body(big).send().await.unwrap(), 502).await;
    assert!(m.contains("was not kept"), "{m}");
    eg.gw.stop().await;
}

// === oauth2 ===

struct TokenServer {
    addr: SocketAddr,
    fetches: Arc<AtomicUsize>,
}

async fn token_server(fail: bool) -> TokenServer {
    let fetches = Arc::new(AtomicUsize::new(0));
    let f = fetches.clone();
    let t = target(
        None,
        Arc::new(move |r| {
            let form: std::collections::HashMap<String, String> =
                url::form_urlencoded::parse(&r.body).into_owned().collect();
            if fail {
                return (
                    400,
                    vec![("content-type", "application/json".into())],
                    r#"{"error":"invalid_client","error_description":"client secret expired"}"#.into(),
                );
            }
            assert_eq!(
                r.headers["authorization"],
                basic("egress-client", "egress-secret").as_str()
            );
            let grant = form.get("grant_type").cloned().unwrap_or_default();
            if grant == "password" {
                assert_eq!(form.get("username").map(String::as_str), Some("svc-user"));
                assert_eq!(form.get("password").map(String::as_str), Some("svc-user-pw"));
            }
            std::thread::sleep(Duration::from_millis(100));
            let n = f.fetch_add(1, Ordering::SeqCst) + 1;
            (
                200,
                vec![("content-type", "application/json".into())],
                format!(r#"{{"access_token":"tok-{n}","token_type":"Bearer","expires_in":3600}}"#),
            )
        }),
    )
    .await;
    TokenServer { addr: t.addr, fetches }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_tokens_are_fetched_once_refreshed_on_401_and_errors_reach_the_caller() {
    let tokens = token_server(false).await;
    // The target accepts only the newest token.
    let valid = Arc::new(Mutex::new(String::from("tok-1")));
    let v = valid.clone();
    let t = target(
        None,
        Arc::new(move |r| {
            let want = format!("Bearer {}", v.lock().unwrap());
            if r.headers
                .get("authorization")
                .is_some_and(|h| h.to_str().unwrap() == want)
            {
                (200, vec![], "ok".into())
            } else {
                (
                    401,
                    vec![("www-authenticate", "Bearer error=\"invalid_token\"".into())],
                    "expired".into(),
                )
            }
        }),
    )
    .await;
    let broken = token_server(true).await;
    let eg = Egress::start(&format!(
        r#"
[[endpoints]]
name = "api"
base_url = "http://{t}"
auth = {{ type = "oauth2", grant = "client_credentials", token_url = "http://{tok}/token", client_id = "egress-client", client_secret = "egress-secret", scopes = ["read"] }}

[[endpoints]]
name = "pw"
base_url = "http://{t}"
auth = {{ type = "oauth2", grant = "password", token_url = "http://{tok}/token", client_id = "egress-client", client_secret = "egress-secret", username = "svc-user", password = "svc-user-pw" }}

[[endpoints]]
name = "broken"
base_url = "http://{t}"
auth = {{ type = "oauth2", grant = "client_credentials", token_url = "http://{bad}/token", client_id = "egress-client", client_secret = "egress-secret" }}
"#,
        t = t.addr,
        tok = tokens.addr,
        bad = broken.addr
    ))
    .await;
    let mut calls = Vec::new();
    for _ in 0..50 {
        let url = eg.url("/api/items");
        calls.push(tokio::spawn(async move {
            client().get(url).send().await.unwrap().status().as_u16()
        }));
    }
    for c in calls {
        assert_eq!(c.await.unwrap(), 200);
    }
    assert_eq!(
        tokens.fetches.load(Ordering::SeqCst),
        1,
        "50 concurrent calls, one token fetch"
    );
    assert_eq!(t.count(), 50);

    // The target stops accepting tok-1: one refetch, one replay, with the body.
    *valid.lock().unwrap() = "tok-2".into();
    let resp = client().post(eg.url("/api/items")).body("again").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(tokens.fetches.load(Ordering::SeqCst), 2);
    assert_eq!(t.count(), 52);
    assert_eq!(t.last().body.as_ref(), b"again");
    assert_eq!(t.last().headers["authorization"], "Bearer tok-2");

    // The password grant has its own token.
    *valid.lock().unwrap() = "tok-3".into();
    assert_eq!(client().get(eg.url("/pw/x")).send().await.unwrap().status(), 200);

    // A token server error reaches the caller, with its RFC 6749 error.
    let m = message(client().get(eg.url("/broken/x")).send().await.unwrap(), 502).await;
    assert!(
        m.contains("invalid_client") && m.contains("client secret expired"),
        "{m}"
    );
    let metrics = eg.gw.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            r#"portcullis_egress_token_fetches_total{endpoint="api",outcome="success"}"#
        ),
        2.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            r#"portcullis_egress_token_fetches_total{endpoint="broken",outcome="failure"}"#
        ),
        1.0
    );
    eg.gw.stop().await;
}

// === initiators ===

#[tokio::test]
async fn callers_rule_and_principal_forwarding() {
    let t = target(None, ok()).await;
    let eg = Egress::start(&format!(
        r#"
[[endpoints]]
name = "ops"
base_url = "http://{a}"
callers = {{ roles = ["ops"] }}

[[endpoints]]
name = "asuser"
base_url = "http://{a}"
auth = {{ type = "principal" }}

[[endpoints]]
name = "open"
base_url = "http://{a}"
"#,
        a = t.addr
    ))
    .await;
    let c = client();
    let call = |ep: &str, assertion: Option<String>| {
        let mut r = c.get(eg.url(&format!("/{ep}/x")));
        if let Some(a) = assertion {
            r = r.header("x-portcullis-assertion", a);
        }
        r.send()
    };
    let ops = eg.assertion("alice", &["ops"]);
    assert_eq!(call("ops", Some(ops.clone())).await.unwrap().status(), 200);
    assert!(
        t.last().headers.get("x-portcullis-assertion").is_none(),
        "identity headers do not leak"
    );
    assert_eq!(
        message(call("ops", Some(eg.assertion("bob", &["dev"]))).await.unwrap(), 403).await,
        FORBIDDEN
    );
    assert_eq!(message(call("ops", None).await.unwrap(), 403).await, FORBIDDEN);
    // Forged: signed with another key.
    let claims = serde_json::json!({"iss": "portcullis", "sub": "alice", "roles": ["ops"], "auth_method": "basic",
        "plan": "p", "integration": "open", "iat": 0, "exp": 4102444800u64, "jti": "x"});
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-assertion-key-not-the-key"),
    )
    .unwrap();
    assert_eq!(call("ops", Some(forged.clone())).await.unwrap().status(), 403);
    // Expired: the right key, but past exp.
    let mut old = claims.clone();
    old["exp"] = 1_000_000.into();
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &old,
        &jsonwebtoken::EncodingKey::from_secret(ASSERTION_KEY.as_bytes()),
    )
    .unwrap();
    assert_eq!(call("ops", Some(expired.clone())).await.unwrap().status(), 403);
    // An invalid assertion is refused even where no callers rule applies.
    assert_eq!(call("open", Some(forged)).await.unwrap().status(), 403);
    assert_eq!(call("open", None).await.unwrap().status(), 200);
    // principal: the verified assertion goes to the target.
    assert_eq!(call("asuser", Some(ops.clone())).await.unwrap().status(), 200);
    assert_eq!(t.last().headers["x-portcullis-assertion"], ops.as_str());
    assert_eq!(call("asuser", None).await.unwrap().status(), 403);
    // Two assertions, in either order, valid or not, are refused: none is picked.
    let bob = eg.assertion("bob", &["dev"]);
    for (first, second) in [(&ops, &bob), (&bob, &ops), (&ops, &ops)] {
        for ep in ["ops", "asuser", "open"] {
            let resp = c
                .get(eg.url(&format!("/{ep}/x")))
                .header("x-portcullis-assertion", first.as_str())
                .header("x-portcullis-assertion", second.as_str())
                .send()
                .await
                .unwrap();
            assert_eq!(message(resp, 403).await, FORBIDDEN, "{ep}");
        }
    }
    let m = eg.gw.metrics().await;
    assert_eq!(
        metric_value(&m, r#"portcullis_egress_requests_total{endpoint="ops",status="403"}"#),
        7.0
    );
    eg.gw.stop().await;
}

// === RFC 9421 signatures, verified independently here ===

/// Parses `sig1=("a" "b");created=1;keyid="k";alg="x"` and `sig1=:B64:`, rebuilds the
/// signature base from the request as received, and checks the signature and digest.
fn verify(r: &Req, check: &dyn Fn(&[u8], &[u8]) -> bool) -> Result<(), String> {
    let input = r
        .headers
        .get("signature-input")
        .ok_or("no Signature-Input")?
        .to_str()
        .unwrap();
    let sig = r.headers.get("signature").ok_or("no Signature")?.to_str().unwrap();
    let params = input.strip_prefix("sig1=").ok_or("label")?;
    let list_end = params.find(')').ok_or("list")?;
    let names: Vec<&str> = params[1..list_end].split(' ').map(|s| s.trim_matches('"')).collect();
    let sig_b64 = sig
        .strip_prefix("sig1=:")
        .and_then(|s| s.strip_suffix(':'))
        .ok_or("sig")?;
    let sig_bytes = base64::engine::general_purpose::STANDARD
        .decode(sig_b64)
        .map_err(|e| e.to_string())?;
    let host = r.headers["host"].to_str().unwrap();
    let mut base = String::new();
    for n in &names {
        let v = match *n {
            "@method" => r.method.clone(),
            "@target-uri" => format!("http://{host}{}", r.uri),
            "@authority" => host.to_string(),
            "@path" => r.uri.split('?').next().unwrap().to_string(),
            "@query" => format!("?{}", r.uri.split_once('?').map_or("", |x| x.1)),
            h => r
                .headers
                .get(h)
                .ok_or(format!("missing {h}"))?
                .to_str()
                .unwrap()
                .to_string(),
        };
        base.push_str(&format!("\"{n}\": {v}\n"));
    }
    base.push_str(&format!("\"@signature-params\": {params}"));
    if !check(base.as_bytes(), &sig_bytes) {
        return Err("signature does not verify".into());
    }
    if names.contains(&"content-digest") {
        use sha2::Digest;
        let want = format!(
            "sha-256=:{}:",
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&r.body))
        );
        if r.headers["content-digest"].to_str().unwrap() != want {
            return Err("content-digest does not match the body".into());
        }
    }
    Ok(())
}

/// Verifies a captured request with the http-message-signatures package from PyPI
/// (tests/interop/verify_signature.py). `None` when Python or the package is missing,
/// which PORTCULLIS_REQUIRE_INTEROP (set by .ci/run) turns into a failure.
fn python_verify(r: &Req, key_id: &str, alg: &str, key: &str) -> Option<Result<String, String>> {
    use std::io::Write;
    let python = std::env::var("PORTCULLIS_PYTHON").unwrap_or_else(|_| "python3".into());
    let have = Command::new(&python)
        .args(["-c", "import http_message_signatures"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert!(
            std::env::var_os("PORTCULLIS_REQUIRE_INTEROP").is_none(),
            "PORTCULLIS_REQUIRE_INTEROP is set but {python} lacks http-message-signatures"
        );
        skipped(&format!(
            "{python} lacks http-message-signatures (pip install http-message-signatures)"
        ));
        return None;
    }
    let host = r.headers["host"].to_str().unwrap();
    let headers: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap().to_string()))
        .collect();
    let input = serde_json::json!({
        "method": r.method,
        "url": format!("http://{host}{}", r.uri),
        "headers": headers,
        "body_b64": base64::engine::general_purpose::STANDARD.encode(&r.body),
        "key_id": key_id,
        "alg": alg,
        "key": key,
    });
    let script = format!("{}/tests/interop/verify_signature.py", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(&python)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Some(if out.status.success() { Ok(text) } else { Err(text) })
}

#[tokio::test]
async fn signatures_verify_independently_and_tampering_is_caught() {
    const HMAC_KEY: &str = "hmac-egress-key-0123456789abcdef";
    let hmac_check = |base: &[u8], sig: &[u8]| {
        use hmac::Mac;
        let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(HMAC_KEY.as_bytes()).unwrap();
        m.update(base);
        m.verify_slice(sig).is_ok()
    };
    let verdicts: Arc<Mutex<Vec<Result<(), String>>>> = Arc::default();
    let v2 = verdicts.clone();
    let t = target(
        None,
        Arc::new(move |r| {
            let v = verify(r, &hmac_check);
            let status = if v.is_ok() { 200 } else { 401 };
            v2.lock().unwrap().push(v);
            (status, vec![], String::new())
        }),
    )
    .await;
    // Ed25519: a key made here; the target side checks with the public key.
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref())
    );
    let public = {
        use ring::signature::KeyPair;
        ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .unwrap()
            .public_key()
            .as_ref()
            .to_vec()
    };
    let ed_public = public.clone();
    let ed_t = target(
        None,
        Arc::new(move |r| {
            let check = |base: &[u8], sig: &[u8]| {
                ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public)
                    .verify(base, sig)
                    .is_ok()
            };
            (if verify(r, &check).is_ok() { 200 } else { 401 }, vec![], String::new())
        }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ed.pem"), &pem).unwrap();
    let eg = Egress::start(&format!(
        r#"
[[endpoints]]
name = "hmac"
base_url = "http://{a}/base"
auth = {{ type = "signature", key_id = "k-hmac", algorithm = "hmac-sha256", key = "{HMAC_KEY}", components = ["@method", "@target-uri", "@authority", "@path", "@query", "content-type", "content-digest"] }}

[[endpoints]]
name = "ed"
base_url = "http://{b}"
auth = {{ type = "signature", key_id = "k-ed", algorithm = "ed25519", key = {{ file = "{pem}" }}, components = ["@method", "@target-uri", "content-digest"] }}
"#,
        a = t.addr,
        b = ed_t.addr,
        pem = dir.path().join("ed.pem").display()
    ))
    .await;
    let c = client();
    let resp = c
        .post(eg.url("/hmac/orders?id=7"))
        .header("content-type", "application/json")
        .body(r#"{"hello": "world"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{:?}", verdicts.lock().unwrap());
    let signed = t.last();
    assert!(signed.headers["signature-input"]
        .to_str()
        .unwrap()
        .contains(r#"keyid="k-hmac";alg="hmac-sha256""#));
    assert_eq!(
        signed.headers["content-digest"],
        "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
    );
    assert_eq!(
        c.post(eg.url("/ed/x")).body("ed body").send().await.unwrap().status(),
        200
    );

    // The same requests pass the http-message-signatures package from PyPI.
    let ed_pub_pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD
            .encode([&hex::decode("302a300506032b6570032100").unwrap()[..], &ed_public[..]].concat())
    );
    if let Some(v) = python_verify(&signed, "k-hmac", "hmac-sha256", HMAC_KEY) {
        let covered = v.expect("http-message-signatures accepts the hmac-sha256 signature");
        assert!(covered.contains("content-digest"), "{covered}");
        let ed = python_verify(&ed_t.last(), "k-ed", "ed25519", &ed_pub_pem).unwrap();
        assert!(
            ed.is_ok(),
            "http-message-signatures accepts the ed25519 signature: {ed:?}"
        );
        let mut forged = signed.clone();
        forged.body = Bytes::from_static(b"{\"hello\": \"mallory\"}");
        assert!(python_verify(&forged, "k-hmac", "hmac-sha256", HMAC_KEY)
            .unwrap()
            .is_err());
        let mut forged = signed.clone();
        forged.method = "PUT".into();
        assert!(python_verify(&forged, "k-hmac", "hmac-sha256", HMAC_KEY)
            .unwrap()
            .is_err());
    }

    // Tampering, replayed straight at the target: another body, another method.
    let mut tampered = signed.clone();
    tampered.body = Bytes::from_static(b"{\"hello\": \"mallory\"}");
    assert!(verify(&tampered, &hmac_check).unwrap_err().contains("content-digest"));
    let mut tampered = signed.clone();
    tampered.method = "DELETE".into();
    assert!(verify(&tampered, &hmac_check).is_err());
    let mut tampered = signed;
    tampered.uri = "/base/orders?id=8".into();
    assert!(verify(&tampered, &hmac_check).is_err());

    // A covered header the caller did not send cannot be signed: a clear 400.
    let resp = c.post(eg.url("/hmac/orders")).body("x").send().await.unwrap();
    let m = message(resp, 400).await;
    assert!(m.contains("content-type"), "{m}");
    eg.gw.stop().await;
}

// === CLI ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_test_reports_success_failure_and_the_fingerprint() {
    let cert = cert_for(&["localhost"], false);
    let fp = sha256_der(&cert.0);
    let t = target(Some(cert), basic_target("svc", "svc-pw")).await;
    let tokens = token_server(true).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &format!(
            r#"
[listen]
address = "127.0.0.1:0"

[[endpoints]]
name = "works"
base_url = "https://localhost:{p}/"
trust_self_signed = true
auth = {{ type = "basic", username = "svc", password = "svc-pw" }}

[[endpoints]]
name = "fails"
base_url = "https://localhost:{p}/"
trust_self_signed = true
auth = {{ type = "basic", username = "svc", password = "wrong" }}

[[endpoints]]
name = "token"
base_url = "https://localhost:{p}/"
auth = {{ type = "oauth2", grant = "client_credentials", token_url = "http://{tok}/token", client_id = "egress-client", client_secret = "s" }}
"#,
            p = t.addr.port(),
            tok = tokens.addr
        ),
    );
    let run = move |name: &str| {
        let out = Command::new(bin())
            .args(["endpoint", "test", name, "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = tokio::task::spawn_blocking({
        let run = run.clone();
        move || run("works")
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("OK") && out.contains("200"), "{out}");
    assert!(
        out.contains(&fp),
        "the fingerprint is printed so it can be pinned: {out}"
    );
    // What the certificate is, so the operator can decide on trust or a pin.
    for what in [
        "subject:",
        "subjectAltNames: localhost",
        "valid:",
        "(self-signed)",
        "sha256:",
    ] {
        assert!(out.contains(what), "`{what}` missing: {out}");
    }
    let (code, out) = tokio::task::spawn_blocking({
        let run = run.clone();
        move || run("fails")
    })
    .await
    .unwrap();
    assert_eq!(code, 1);
    assert!(out.contains("401") && out.contains("who are you"), "{out}");
    let (code, out) = tokio::task::spawn_blocking(move || run("token")).await.unwrap();
    assert_eq!(code, 1);
    assert!(out.contains("invalid_client"), "{out}");
}

#[test]
fn export_leaves_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sig.key"), "file-secret-signature-key-value").unwrap();
    let secrets = [
        "literal-assertion-key-0123456789ab",
        "endpoint-basic-password-value",
        "oauth-client-secret-value",
        "egress-oauth-user-password",
        "file-secret-signature-key-value",
        &argon2_hash("user-password"),
        &sha256_hex("api-secret"),
        &sha256_hex("url-key"),
        &sha256_hex("client-secret"),
    ];
    let toml = format!(
        r#"
[listen]
address = "127.0.0.1:0"

[assertion]
key = "{assertion}"

[[users]]
name = "u"
roles = ["r"]
password_hash = "{pw}"
url_key_hash = "{urlkey}"

[[plans]]
name = "p"
upstream = "builtin:echo"
access = {{ all = true }}

[[plans.integrations]]
name = "i"
path = "/i"
methods = ["GET"]
auth = "api_key"

[[api_keys]]
key = "k1"
secret_hash = "{api}"
user = "u"
integration = "p/i"

[oauth]
mode = "introspection"
introspection_url = "https://idp.test/introspect"
client_id = "pc"
client_secret = "{oauth_secret}"

[[endpoints]]
name = "b"
base_url = "https://b.test"
trust_self_signed = true
auth = {{ type = "basic", username = "svc", password = "{basic_pw}" }}

[[endpoints]]
name = "o"
base_url = "https://o.test"
auth = {{ type = "oauth2", grant = "password", token_url = "https://o.test/token", client_id = "c", client_secret = "{oauth_secret}", username = "u", password = "{egress_pw}" }}

[[endpoints]]
name = "s"
base_url = "https://s.test"
auth = {{ type = "signature", key_id = "k", algorithm = "hmac-sha256", key = {{ file = "{{dir}}/sig.key" }} }}
"#,
        assertion = secrets[0],
        basic_pw = secrets[1],
        oauth_secret = secrets[2],
        egress_pw = secrets[3],
        pw = secrets[5],
        api = secrets[6],
        urlkey = secrets[7],
    );
    let path = write_config(dir.path(), &toml);
    let out = Command::new(bin())
        .args(["export", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    for s in secrets {
        assert!(!text.contains(s), "`{s}` is in the export:\n{text}");
    }
    for word in ["token_url", "client_secret", "password", "oauth2", "sig.key"] {
        assert!(
            !text.contains(word) || word == "password" && !text.contains("password ="),
            "`{word}` in:\n{text}"
        );
    }
    let v: toml::Value = toml::from_str(&text).unwrap();
    for e in v["endpoints"].as_array().unwrap() {
        assert_eq!(e["auth"]["type"].as_str(), Some("none"));
        assert_eq!(e["auth"].as_table().unwrap().len(), 1);
        assert_eq!(e["trust_self_signed"].as_bool(), Some(false));
    }
    // Still a config that `check` understands (with secrets gone, only hashes are missing).
    assert_eq!(v["users"][0]["name"].as_str(), Some("u"));
}

/// A local caller cannot aim the egress port elsewhere: the target is always the
/// endpoint's `base_url` plus the path, whatever `Host` or absolute-form target it
/// sends, and the inbound path rules hold for the egress path.
#[tokio::test]
async fn callers_cannot_name_another_host_or_bend_the_path() {
    let t = target(None, basic_target("svc", "svc-pw")).await;
    let eg = Egress::start(&format!(
        r#"
[[endpoints]]
name = "pre"
base_url = "http://{a}/api"
auth = {{ type = "basic", username = "svc", password = "svc-pw", preemptive = true }}
"#,
        a = t.addr
    ))
    .await;
    let status = |out: &str| out.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
    for head in [
        "GET /pre/items HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n".to_string(),
        "GET http://evil.example/pre/items HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n".to_string(),
    ] {
        let out = raw(eg.addr, head.as_bytes()).await;
        assert_eq!(status(&out), 200, "{out}");
        let last = t.last();
        assert_eq!(last.uri, "/api/items");
        assert_eq!(last.headers["host"], t.addr.to_string().as_str());
    }
    let before = t.count();
    for path in [
        "/pre/../items",
        "/pre/%2e%2e/items",
        "/pre/a%2fb",
        "/pre//items",
        "/pre/x;y",
    ] {
        let head = format!("GET {path} HTTP/1.1\r\nHost: egress\r\nConnection: close\r\n\r\n");
        let out = raw(eg.addr, head.as_bytes()).await;
        assert_eq!(status(&out), 400, "{path}: {out}");
    }
    assert_eq!(t.count(), before, "a bent path reached the target");
}

/// The caller's request body on the egress port is timed as inbound: one that stalls
/// past `body_read_timeout` is a 408, held (a Basic challenge may need it again) or
/// streamed; a caller that leaves in the middle of its body is finished once as 499.
#[tokio::test]
async fn caller_bodies_are_timed_and_a_caller_that_leaves_is_499() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A target that accepts, reads and never answers.
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let t = target.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = target.accept().await {
            open.push(s);
        }
    });
    let eg = Egress::start(&format!(
        r#"
[limits]
body_read_timeout = "300ms"

[[endpoints]]
name = "stream"
base_url = "http://{t}"
auth = {{ type = "none" }}

[[endpoints]]
name = "held"
base_url = "http://{t}"
auth = {{ type = "basic", username = "u", password = "p", preemptive = false }}
"#
    ))
    .await;
    for ep in ["stream", "held"] {
        let mut s = tokio::net::TcpStream::connect(eg.addr).await.unwrap();
        s.write_all(format!("POST /{ep}/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nhello").as_bytes())
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{ep}: {answer}");
    }
    // A caller that leaves mid-body: 499, counted once for its endpoint.
    let mut s = tokio::net::TcpStream::connect(eg.addr).await.unwrap();
    s.write_all(b"POST /held/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nhello")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    drop(s);
    let series = r#"portcullis_egress_requests_total{endpoint="held",status="499"}"#;
    let counted = eventually(PATIENCE, || async { eg.gw.metric(series).await >= 1.0 }).await;
    assert!(counted, "{}", eg.gw.metrics().await);
    let m = eg.gw.metrics().await;
    assert_eq!(metric_value(&m, series), 1.0);
    assert_eq!(
        metric_value(&m, r#"portcullis_egress_requests_total{endpoint="held",status="400"}"#),
        0.0
    );
    for ep in ["stream", "held"] {
        let s408 = format!(r#"portcullis_egress_requests_total{{endpoint="{ep}",status="408"}}"#);
        assert_eq!(metric_value(&m, &s408), 1.0, "{ep}");
    }
    // A call refused before it names an endpoint is counted too, under one label value.
    let resp = client().get(eg.url("/no-such-endpoint/x")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let m = eg.gw.metrics().await;
    assert_eq!(
        metric_value(&m, r#"portcullis_egress_requests_total{endpoint="",status="404"}"#),
        1.0
    );
    eg.gw.stop().await;
    held.abort();
}
