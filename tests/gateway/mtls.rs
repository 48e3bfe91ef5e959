//! Client certificates as an authentication method (`auth = "mtls"`), with every
//! certificate made by the `openssl` command line as operators make them: a CA, clients
//! named by SAN or only by CN, a client of another CA, and one revoked in a CRL.

use crate::support;

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
    let san = if san.is_empty() {
        String::new()
    } else {
        format!("subjectAltName={san}\n")
    };
    leaf_with(
        dir,
        issuer,
        name,
        &format!("/CN={cn}"),
        &format!("extendedKeyUsage={usage}\n{san}"),
    );
}

/// A client leaf signed by `issuer` with the subject `subj` (as `openssl -subj` takes it)
/// and `ext`, lines of an `openssl x509 -extfile` (sections may follow).
fn leaf_with(dir: &Path, issuer: &str, name: &str, subj: &str, ext: &str) {
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
            subj,
        ],
    );
    std::fs::write(
        dir.join(format!("{name}.ext")),
        format!("basicConstraints=CA:FALSE\n{ext}"),
    )
    .unwrap();
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
    let file = |name: &str| toml::Value::from(dir.join(name).display().to_string());
    let tls = table([
        ("cert", file("server.crt")),
        ("key", file("server.key")),
        ("client_ca", file("ca.crt")),
        ("client_auth", client_auth.into()),
        ("client_crl", file("ca.crl")),
    ]);
    Config::new()
        .section("listen", |s| s.set("tls", tls))
        .user("svc", |u| {
            u.roles(["rest"])
                .set("cert_names", vec!["svc.example"])
                .password_hash(&argon2_hash("svc-pw"))
        })
        .user("legacy", |u| u.roles(["rest"]).set("cert_names", vec!["legacy-client"]))
        .plan("p", |p| {
            p.upstream(upstream)
                .access_roles(["rest"])
                .integration("m", |i| i.path("/m").methods(["GET"]).auth("mtls"))
                .integration("b", |i| i.path("/b").methods(["GET"]).auth("basic"))
        })
        .to_toml()
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

/// Class 6 of issue 23: the Common Name counts only when the certificate has no
/// subjectAltName at all; a SAN of any type, even one no `cert_names` can match (a UPN
/// otherName as Active Directory issues them, an IP address, a directoryName, a
/// registeredID), turns it off. A SAN extension that is empty or cannot be read fails
/// closed. Names of two users are refused as ambiguous, not matched by whichever comes
/// first; names of one user twice are fine. Every certificate is made by `openssl`, all
/// chain to the trusted CA, and each carries `svc.example` (a configured name) in its CN.
#[tokio::test]
async fn the_common_name_counts_only_without_a_san_and_two_users_are_ambiguous() {
    let pki = pki();
    let d = pki.path();
    let eku = |usage: &str| format!("extendedKeyUsage=clientAuth\n{usage}");
    let san = |s: &str| eku(&format!("subjectAltName={s}\n"));
    let cn_svc = "/CN=svc.example";
    // A SAN of a type no user can name: the CN `svc.example` must not count.
    let upn = "otherName:1.3.6.1.4.1.311.20.2.3;UTF8:svc@corp.example";
    leaf_with(d, "ca", "upn", cn_svc, &san(upn));
    leaf_with(d, "ca", "ip", cn_svc, &san("IP:127.0.0.1"));
    leaf_with(d, "ca", "rid", cn_svc, &san("RID:1.2.3.4"));
    leaf_with(
        d,
        "ca",
        "dirname",
        cn_svc,
        &format!("{}[dir]\nCN=svc.example\n", san("dirName:dir")),
    );
    // A SAN extension with no name in it, and one whose DNS name is not text.
    leaf_with(d, "ca", "emptysan", cn_svc, &eku("subjectAltName=DER:30:00\n"));
    leaf_with(d, "ca", "badsan", cn_svc, &eku("subjectAltName=DER:30:03:82:01:ff\n"));
    // Names of two users: in the SAN, and as two CNs without a SAN.
    leaf_with(d, "ca", "two-sans", "/CN=x", &san("DNS:svc.example,DNS:legacy-client"));
    leaf_with(d, "ca", "two-cns", "/CN=legacy-client/CN=svc.example", &eku(""));
    leaf_with(
        d,
        "ca",
        "upn-and-dns",
        "/CN=x",
        &san(&format!("{upn},email:svc@corp.example,DNS:legacy-alt")),
    );
    // Names of one user, twice: fine.
    leaf_with(
        d,
        "ca",
        "svc-twice",
        "/CN=legacy-client",
        &san("DNS:svc.example,email:svc@corp.example"),
    );
    leaf_with(d, "ca", "legacy-cns", "/CN=legacy-client/CN=legacy-alt", &eku(""));
    // A configured name beside names nobody has: the configured one decides.
    leaf_with(
        d,
        "ca",
        "mixed",
        "/CN=x",
        &san(&format!("{upn},IP:127.0.0.1,DNS:svc.example")),
    );

    let up = Upstream::start().await;
    let toml = gateway_config(d, &up.url(), "optional")
        .replace(
            "cert_names = [\"svc.example\"]",
            "cert_names = [\"svc.example\", \"svc@corp.example\"]",
        )
        .replace(
            "cert_names = [\"legacy-client\"]",
            "cert_names = [\"legacy-client\", \"legacy-alt\"]",
        );
    let gw = Gateway::start(&toml).await;
    let url = format!("https://localhost:{}/m", gw.addr.port());
    let get = |name: &'static str| {
        let url = url.clone();
        async move {
            let resp = client_with(d, Some(name)).get(url).send().await.unwrap();
            resp.status().as_u16()
        }
    };

    let mut unknown = 0.0;
    for name in ["upn", "ip", "rid", "dirname"] {
        let before = up.seen().len();
        assert_eq!(get(name).await, 401, "{name}: the CN must not count next to a SAN");
        unknown += 1.0;
        assert_eq!(
            gw.metric(&failures("unknown_certificate", "mtls")).await,
            unknown,
            "{name}"
        );
        assert_eq!(up.seen().len(), before, "{name} reached the upstream");
    }
    for (i, name) in ["emptysan", "badsan"].into_iter().enumerate() {
        assert_eq!(get(name).await, 401, "{name}: an unreadable SAN names nobody");
        assert_eq!(
            gw.metric(&failures("malformed_credentials", "mtls")).await,
            (i + 1) as f64,
            "{name}"
        );
    }
    for (i, name) in ["two-sans", "two-cns", "upn-and-dns"].into_iter().enumerate() {
        assert_eq!(get(name).await, 401, "{name}: two users' names");
        assert_eq!(
            gw.metric(&failures("ambiguous_certificate", "mtls")).await,
            (i + 1) as f64,
            "{name}"
        );
    }
    assert_eq!(up.seen().len(), 0, "nothing refused reached the upstream");
    for (name, user) in [("svc-twice", "svc"), ("legacy-cns", "legacy"), ("mixed", "svc")] {
        assert_eq!(get(name).await, 200, "{name}");
        assert_eq!(up.last().headers["x-portcullis-user"], user, "{name}");
    }
    // The refusals page names the reason for the operator.
    let refusals = client()
        .get(gw.admin_url("/refusals"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(refusals.contains("ambiguous_certificate"), "{refusals}");
    gw.stop().await;
}
