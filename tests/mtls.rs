//! Client certificates as an authentication method (`auth = "mtls"`), with every
//! certificate made by the `openssl` command line as operators make them: a CA, clients
//! named by SAN or only by CN, a client of another CA, and one revoked in a CRL.

mod support;

use std::path::Path;

use support::*;

fn openssl(dir: &Path, args: &[&str]) {
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

/// A CA: `NAME.crt`, `NAME.key`.
fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-days",
            "30",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A leaf signed by `issuer`: `NAME.crt`, `NAME.key`; `san` empty for a CN-only one.
fn leaf(dir: &Path, issuer: &str, name: &str, cn: &str, san: &str, usage: &str) {
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
    let mut ext = format!("basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n");
    if !san.is_empty() {
        ext.push_str(&format!("subjectAltName={san}\n"));
    }
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{issuer}.crt"),
            "-CAkey",
            &format!("{issuer}.key"),
            "-CAcreateserial",
            "-days",
            "30",
            "-out",
            &format!("{name}.crt"),
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

/// Revokes `name` (signed by `issuer`) and writes `issuer.crl` with `openssl ca`.
fn revoke(dir: &Path, issuer: &str, name: &str) {
    std::fs::write(dir.join("index.txt"), "").unwrap();
    std::fs::write(dir.join("crlnumber"), "01\n").unwrap();
    std::fs::write(
        dir.join("ca.cnf"),
        format!(
            "[ ca ]\ndefault_ca = d\n[ d ]\ndatabase = index.txt\ncrlnumber = crlnumber\ndefault_md = sha256\n\
             default_crl_days = 30\ncertificate = {issuer}.crt\nprivate_key = {issuer}.key\n"
        ),
    )
    .unwrap();
    openssl(dir, &["ca", "-config", "ca.cnf", "-revoke", &format!("{name}.crt")]);
    openssl(
        dir,
        &["ca", "-config", "ca.cnf", "-gencrl", "-out", &format!("{issuer}.crl")],
    );
}

fn client_with(dir: &Path, identity: Option<&str>) -> reqwest::Client {
    let ca = std::fs::read(dir.join("ca.crt")).unwrap();
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap());
    if let Some(name) = identity {
        let mut pem = std::fs::read(dir.join(format!("{name}.crt"))).unwrap();
        pem.extend(std::fs::read(dir.join(format!("{name}.key"))).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

fn der_sha256_b64(dir: &Path, name: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    let pem = std::fs::read(dir.join(format!("{name}.crt"))).unwrap();
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
        .next()
        .unwrap()
        .unwrap();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(der.as_ref()))
}

fn gateway_config(dir: &Path, upstream: &str, client_auth: &str) -> String {
    let d = dir.display();
    config(&format!(
        r#"
[[users]]
name = "svc"
roles = ["rest"]
cert_names = ["svc.example"]
password_hash = "{pw}"

[[users]]
name = "legacy"
roles = ["rest"]
cert_names = ["legacy-client"]

[[plans]]
name = "p"
upstream = "{upstream}"
access = {{ roles = ["rest"] }}

[[plans.integrations]]
name = "m"
path = "/m"
methods = ["GET"]
auth = "mtls"

[[plans.integrations]]
name = "b"
path = "/b"
methods = ["GET"]
auth = "basic"
"#,
        pw = argon2_hash("svc-pw"),
    ))
    .replace(
        "[listen]\naddress = \"127.0.0.1:0\"",
        &format!(
            "[listen]\naddress = \"127.0.0.1:0\"\ntls = {{ cert = \"{d}/server.crt\", key = \"{d}/server.key\", client_ca = \"{d}/ca.crt\", client_auth = \"{client_auth}\", client_crl = \"{d}/ca.crl\" }}"
        ),
    )
}

fn pki() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ca(d, "ca");
    ca(d, "rogue");
    leaf(d, "ca", "server", "localhost", "DNS:localhost", "serverAuth");
    leaf(d, "ca", "svc", "ignored-when-san", "DNS:svc.example", "clientAuth");
    leaf(d, "ca", "legacy", "legacy-client", "", "clientAuth");
    leaf(d, "ca", "stranger", "stranger", "DNS:stranger.example", "clientAuth");
    leaf(d, "rogue", "forged", "svc.example", "DNS:svc.example", "clientAuth");
    leaf(d, "ca", "revoked", "revoked", "DNS:svc.example", "clientAuth");
    revoke(d, "ca", "revoked");
    dir
}

#[tokio::test]
async fn client_certificates_authenticate_by_their_names_and_nothing_else_does() {
    let pki = pki();
    let d = pki.path();
    let up = Upstream::start().await;
    let gw = Gateway::start(&gateway_config(d, &up.url(), "optional")).await;
    let url = |p: &str| format!("https://localhost:{}{p}", gw.addr.port());

    let resp = client_with(d, Some("svc")).get(url("/m")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-portcullis-user"], "svc");
    assert_eq!(seen.headers["x-portcullis-auth-method"], "mtls");
    let signer = portcullis::assertion::Signer::new(
        b"test-assertion-key-0123456789abcdef",
        std::time::Duration::from_secs(300),
    );
    let claims = signer
        .verify(seen.headers["x-portcullis-assertion"].to_str().unwrap())
        .unwrap();
    assert_eq!(claims.auth_method, "mtls");
    assert_eq!(
        claims.cnf.unwrap()["x5t#S256"],
        der_sha256_b64(d, "svc"),
        "RFC 8705 confirmation"
    );

    // A certificate without SAN is named by its CN.
    let resp = client_with(d, Some("legacy")).get(url("/m")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.last().headers["x-portcullis-user"], "legacy");

    // Optional: no certificate is no credential (401 on mtls, other methods still work).
    let resp = client_with(d, None).get(url("/m")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = client_with(d, None)
        .get(url("/b"))
        .basic_auth("svc", Some("svc-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // A certificate on a Basic route does not replace the password.
    let resp = client_with(d, Some("svc")).get(url("/b")).send().await.unwrap();
    assert_eq!(resp.status(), 401);

    // The right CA but a name nobody has: 401 unknown_certificate.
    let before = up.seen().len();
    let resp = client_with(d, Some("stranger")).get(url("/m")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(gw.metric_at_least(&failures("unknown_certificate", "mtls"), 1.0).await);
    // Another CA's certificate, even with the right name, and a revoked one: no handshake.
    assert!(client_with(d, Some("forged")).get(url("/m")).send().await.is_err());
    assert!(client_with(d, Some("revoked")).get(url("/m")).send().await.is_err());
    assert_eq!(up.seen().len(), before, "nothing refused reached the upstream");
    gw.stop().await;
}

#[tokio::test]
async fn required_client_certificates_refuse_the_handshake_without_one() {
    let pki = pki();
    let d = pki.path();
    let up = Upstream::start().await;
    let gw = Gateway::start(&gateway_config(d, &up.url(), "required")).await;
    let url = format!("https://localhost:{}/b", gw.addr.port());
    assert!(client_with(d, None)
        .get(&url)
        .basic_auth("svc", Some("svc-pw"))
        .send()
        .await
        .is_err());
    let resp = client_with(d, Some("svc"))
        .get(url.replace("/b", "/m"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(up.seen().len() == 1);
    gw.stop().await;
}
