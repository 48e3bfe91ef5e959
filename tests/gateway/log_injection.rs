//! Issue 23, class 12: nothing a client or a peer controls can forge a log line or drive
//! the terminal that reads the log, in the text log and in the JSON log of the real
//! binary. The peers try: an egress target whose certificate's issuer (and subject) hold
//! a newline, ANSI colour and OSC title sequences and a Unicode line separator; a client
//! certificate with such a subject; such a path; such an OAuth client_id and user name.

use crate::support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use support::*;

/// What an attacker puts in a name: a line of its own, a colour, a terminal title, a
/// Unicode line separator and a right-to-left override.
const EVIL: &str =
    "Evil CA\nFORGED ERROR portcullis::access: request principal=\"root\" status=200\x1b[31m red\x1b]0;pwned\x07\u{2028}FORGED2\u{202e}";

/// `portcullis serve --log-format FORMAT`, its stdout lines kept.
struct Run {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Run {
    fn start(config: &Path, format: &str) -> Run {
        let mut child = Command::new(bin())
            .args(["serve", "--log-format", format, "--config"])
            .arg(config)
            .env("PORTCULLIS_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            // Bytes, not `lines()`: a stray byte that is not UTF-8 must not end the reader.
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let line = String::from_utf8_lossy(&buf).trim_end_matches('\n').to_string();
                sink.lock().unwrap().push(line);
                buf.clear();
            }
        });
        Run { child, lines }
    }

    fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    async fn when(&self, f: impl Fn(&str) -> bool) -> String {
        let ok = eventually(PATIENCE, || {
            let holds = f(&self.text());
            async move { holds }
        })
        .await;
        assert!(ok, "the log never showed what was expected:\n{}", self.text());
        self.text()
    }

    /// A listener's address from its `listening` line, in either format.
    async fn listener(&self, name: &str) -> SocketAddr {
        let json = format!("\"listener\":\"{name}\"");
        let text = format!("listener=\"{name}\"");
        let logs = self.when(|l| l.contains(&json) || l.contains(&text)).await;
        let line = logs.lines().find(|l| l.contains(&json) || l.contains(&text)).unwrap();
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            return v["address"].as_str().unwrap().parse().unwrap();
        }
        let at = line.find("address=").unwrap() + "address=".len();
        line[at..].split(' ').next().unwrap().parse().unwrap()
    }
}

/// A CA named [`EVIL`], and a leaf it signs for 127.0.0.1 whose subject is `leaf ` and
/// [`EVIL`] (not its issuer's: the refusal must name the issuer).
fn evil_pki() -> (rcgen::Certificate, rcgen::KeyPair, String, String) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name.push(rcgen::DnType::CommonName, EVIL);
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    leaf.distinguished_name = rcgen::DistinguishedName::new();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, format!("leaf {EVIL}"));
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();
    (ca_cert, ca_key, leaf_cert.pem(), leaf_key.serialize_pem())
}

/// A TLS server on 127.0.0.1 presenting `cert`: the handshake is all it does.
async fn tls_target(cert: &str, key: &str) -> SocketAddr {
    use rustls_pki_types::pem::PemObject;
    let certs = vec![rustls_pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(s).await;
            });
        }
    });
    addr
}

/// Every line the gateway wrote is one whole log event: in text, a line that starts with
/// a timestamp and a level; in JSON, one object. No line holds an escape character or
/// starts with the forged text, and no JSON value decodes to a line break or an escape.
fn assert_one_event_per_line(logs: &str, format: &str) {
    for line in logs.lines() {
        assert!(
            !line.contains('\x1b') && !line.contains('\x07'),
            "terminal control in: {line:?}"
        );
        assert!(
            !line.contains('\u{2028}') && !line.contains('\u{202e}'),
            "separator in: {line:?}"
        );
        assert!(!line.trim_start().starts_with("FORGED"), "forged line: {line:?}");
        match format {
            "json" => {
                let v: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not one JSON event ({e}): {line:?}"));
                for (k, value) in v.as_object().unwrap() {
                    if let Some(s) = value.as_str() {
                        assert!(
                            !s.contains(['\n', '\r', '\x1b', '\x07', '\u{2028}', '\u{202e}']),
                            "{k} decodes to a control: {s:?}"
                        );
                    }
                }
            }
            _ => {
                let ts = line.split(' ').next().unwrap_or("");
                assert!(
                    ts.len() > 20 && ts.starts_with("20") && ts.ends_with('Z'),
                    "a line that is not a log event: {line:?}"
                );
                assert!(
                    [" INFO ", " WARN ", " ERROR ", " DEBUG "]
                        .iter()
                        .any(|l| line.contains(l)),
                    "no level: {line:?}"
                );
            }
        }
    }
}

async fn forge_attempts(format: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ca, _ca_key, leaf_pem, leaf_key) = evil_pki();
    let target = tls_target(&leaf_pem, &leaf_key).await;
    // The evil CA is also the inbound client CA: its client certificates are verified,
    // name nobody, and are refused.
    std::fs::write(d.join("evil-ca.crt"), ca.pem()).unwrap();
    let server = self_signed(d, "server");
    let client_pem = format!("{leaf_pem}{leaf_key}");
    let tls = table([
        ("cert", server.cert_path.display().to_string().into()),
        ("key", server.key_path.display().to_string().into()),
        ("client_ca", format!("{}/evil-ca.crt", d.display()).into()),
        ("client_auth", "optional".into()),
    ]);
    let toml = Config::new()
        .section("listen", |s| s.set("tls", tls))
        .section("egress", |s| s.set("address", "127.0.0.1:0"))
        .entry("endpoints", |e| {
            e.set("name", "evil")
                .set("base_url", format!("https://{target}"))
                .set("trust_self_signed", true)
        })
        .entry("endpoints", |e| {
            e.set("name", "strict").set("base_url", format!("https://{target}"))
        })
        .section("oauth", |s| {
            s.set("mode", "builtin").entry("clients", |c| {
                c.set("client_id", "jira")
                    .set("client_secret_hash", sha256_hex("jira-client-secret"))
            })
        })
        .user("svc", |u| u.roles(["rest"]).set("cert_names", vec!["svc.example"]))
        .plan("p", |p| {
            p.upstream("builtin:echo")
                .access_roles(["rest"])
                .integration("m", |i| i.path("/m").methods(["GET"]).auth("mtls"))
        })
        .to_toml();
    let path = write_config(d, &toml);
    let gw = Run::start(&path, format);
    let inbound = gw.listener("inbound").await;
    let egress = gw.listener("egress").await;

    // 1. An egress target whose certificate's issuer and subject are EVIL: refused, and
    //    the refusal quotes the issuer, escaped, in the log and in the caller's 502.
    let resp = client().get(format!("http://{egress}/evil/x")).send().await.unwrap();
    let message = error_body(resp, 502).await["message"].as_str().unwrap().to_string();
    assert!(message.contains("its issuer `CN=Evil CA\\nFORGED ERROR"), "{message}");
    assert!(message.contains("\\u{1b}[31m"), "{message}");
    assert!(
        !message.contains(['\n', '\x1b', '\x07', '\u{2028}', '\u{202e}']),
        "{message:?}"
    );
    let resp = client().get(format!("http://{egress}/strict/x")).send().await.unwrap();
    error_body(resp, 502).await;
    // 2. A client certificate with an EVIL subject (issued by the trusted, EVIL CA).
    let tls = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(server.cert_pem.as_bytes()).unwrap())
        .identity(reqwest::Identity::from_pem(client_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let resp = tls
        .get(format!("https://localhost:{}/m", inbound.port()))
        .header("x-request-id", "cert-req")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // 3. A path with an encoded newline and escape.
    let https = tls_client(&server);
    let base = format!("https://localhost:{}", inbound.port());
    let resp = https
        .get(format!("{base}/m%0aFORGED%20ERROR%1b%5b31m%e2%80%a8x"))
        .header("x-request-id", "path-req")
        .send()
        .await;
    assert!(resp.is_ok());
    // 4. An OAuth client_id and a user name with EVIL in them.
    let resp = https
        .post(format!("{base}/oauth/token"))
        .form(&[
            ("grant_type", "password"),
            ("client_id", EVIL),
            ("client_secret", "wrong"),
            ("username", EVIL),
            ("password", "pw"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = https
        .post(format!("{base}/oauth/token"))
        .form(&[
            ("grant_type", "password"),
            ("client_id", "jira"),
            ("client_secret", "jira-client-secret"),
            ("username", EVIL),
            ("password", "pw"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    // Everything was logged (the access lines of the last two requests and the egress
    // refusal), each as one event.
    let logs = gw
        .when(|l| {
            l.contains("egress: target unreachable")
                && l.contains("oauth token request refused")
                && l.contains("oauth password grant refused")
                && l.contains("path-req")
                && l.contains("cert-req")
        })
        .await;
    let logged = if format == "json" {
        logs.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["error"].as_str().map(str::to_string))
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        logs.clone()
    };
    assert!(
        logged.contains("its issuer `CN=Evil CA\\nFORGED ERROR"),
        "the issuer is logged, escaped:\n{logs}"
    );
    assert_one_event_per_line(&logs, format);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_names_cannot_forge_text_log_lines() {
    forge_attempts("text").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_names_cannot_forge_json_log_lines() {
    forge_attempts("json").await;
}

/// `portcullis endpoint test` prints the refusal and describes the certificate to the
/// operator's terminal: escaped as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_test_output_cannot_drive_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, leaf_pem, leaf_key) = evil_pki();
    let target = tls_target(&leaf_pem, &leaf_key).await;
    let path = write_config(
        dir.path(),
        &config(&format!(
            "[egress]\naddress = \"127.0.0.1:0\"\n\n[[endpoints]]\nname = \"evil\"\nbase_url = \"https://{target}\"\ntrust_self_signed = true\n"
        )),
    );
    let out = tokio::process::Command::new(bin())
        .args(["endpoint", "test", "evil", "--config"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("FAILED: endpoint `evil`"), "{stdout}");
    assert!(stdout.contains("issuer: CN=Evil CA\\nFORGED ERROR"), "{stdout}");
    for line in stdout.lines() {
        assert!(!line.trim_start().starts_with("FORGED"), "forged line: {line:?}");
        assert!(
            !line.contains(['\x1b', '\x07', '\u{2028}', '\u{202e}']),
            "control in: {line:?}"
        );
    }
}
