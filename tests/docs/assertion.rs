//! The assertion's claims are README's: a real gateway mints assertions for principals of
//! every kind (Basic, on two routes; mTLS; an OAuth token), and each assertion holds only
//! claims README's table lists, each with the meaning the table gives it; together they
//! hold every listed claim.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::support::{argon2_hash, basic, sha256_hex, table, Config, Gateway, Upstream, ASSERTION_KEY};

/// README's claims table: claim -> what it holds (the second cell).
fn documented_claims() -> BTreeMap<String, String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let start = readme
        .find("`X-Portcullis-Assertion` is an HS256 JWT")
        .expect("README describes the assertion");
    let rest = &readme[start..];
    let table = &rest[rest
        .find("| claim |")
        .expect("README's table of the assertion's claims")..];
    let mut out = BTreeMap::new();
    for line in table.lines().skip(2).take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        let claim = cells[0].trim_matches('`').to_string();
        out.insert(claim, cells.get(1).copied().unwrap_or_default().to_string());
    }
    out
}

/// A CA, the server's certificate for localhost and a client's for `svc.example`,
/// written into `dir`; the client certificate's DER.
fn pki(dir: &std::path::Path) -> Vec<u8> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "docs-ca");
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = p.self_signed(&ca_key).unwrap();
    let leaf = |name: &str, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![usage];
        (p.signed_by(&key, &ca, &ca_key).unwrap(), key)
    };
    let (server, server_key) = leaf("localhost", ExtendedKeyUsagePurpose::ServerAuth);
    let (client, client_key) = leaf("svc.example", ExtendedKeyUsagePurpose::ClientAuth);
    let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
    write("ca.crt", ca.pem());
    write("server.crt", server.pem());
    write("server.key", server_key.serialize_pem());
    write("client.pem", format!("{}{}", client.pem(), client_key.serialize_pem()));
    client.der().to_vec()
}

/// One assertion as the upstream got it, with the headers it came with.
struct Minted {
    what: &'static str,
    token: String,
    claims: serde_json::Map<String, serde_json::Value>,
    headers: http::HeaderMap,
}

fn decode(token: &str) -> serde_json::Map<String, serde_json::Value> {
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::HS256, "README: an HS256 JWT");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.set_required_spec_claims::<&str>(&[]);
    v.validate_aud = false;
    jsonwebtoken::decode(
        token,
        &jsonwebtoken::DecodingKey::from_secret(ASSERTION_KEY.as_bytes()),
        &v,
    )
    .expect("signed with [assertion] key")
    .claims
}

/// TLS with optional client certificates (the PKI in `dir`); Basic users alice and bob,
/// svc by its certificate, the OAuth client cli; one route per method, two for Basic.
fn config(dir: &std::path::Path, upstream: &str) -> String {
    let file = |name: &str| toml::Value::from(dir.join(name).display().to_string());
    let tls = table([
        ("cert", file("server.crt")),
        ("key", file("server.key")),
        ("client_ca", file("ca.crt")),
        ("client_auth", "optional".into()),
    ]);
    let hash = argon2_hash("docs-pw");
    Config::new()
        .section("listen", |s| s.set("tls", tls))
        .user("alice", |u| u.roles(["rest", "ops"]).password_hash(&hash))
        .user("bob", |u| u.roles(["rest"]).password_hash(&hash))
        .user("svc", |u| u.roles(["rest"]).set("cert_names", vec!["svc.example"]))
        .user("cli", |u| u.roles(["rest"]))
        .plan("p", |p| {
            p.upstream(upstream)
                .access_roles(["rest"])
                .integration("basic", |i| i.path("/basic").methods(["GET"]).auth("basic"))
                .integration("other", |i| i.path("/other").methods(["GET"]).auth("basic"))
                .integration("mtls", |i| i.path("/mtls").methods(["GET"]).auth("mtls"))
                .integration("bearer", |i| i.path("/bearer").methods(["GET"]).auth("oauth"))
        })
        .toml(&format!(
            "[oauth]\nmode = \"builtin\"\n[[oauth.clients]]\nclient_id = \"cli\"\nclient_secret_hash = \"{}\"\n",
            sha256_hex("cli-secret")
        ))
        .to_toml()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_assertion_holds_the_claims_readme_lists_with_their_meaning() {
    let documented = documented_claims();
    assert!(documented.len() >= 10, "{documented:?}");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let client_der = pki(&d);
    let up = Upstream::start().await;
    let toml = config(&d, &up.url());
    let gw = Gateway::start(&toml).await;
    let ttl = gw.state.gateway().config.assertion.ttl.as_secs();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(d.join("ca.crt")).unwrap()).unwrap();
    let https = |identity: bool| {
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca.clone());
        if identity {
            b = b.identity(reqwest::Identity::from_pem(&std::fs::read(d.join("client.pem")).unwrap()).unwrap());
        }
        b.build().unwrap()
    };
    let url = |p: &str| format!("https://localhost:{}{p}", gw.addr.port());
    let bearer = crate::client_credentials_token(&https(false), url("/oauth/token"), "cli", "cli-secret").await;

    let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let mut minted = Vec::new();
    let requests: [(&'static str, &str, bool, Option<String>); 6] = [
        ("alice, Basic", "/basic", false, Some(basic("alice", "docs-pw"))),
        ("alice again", "/basic", false, Some(basic("alice", "docs-pw"))),
        ("bob, Basic", "/basic", false, Some(basic("bob", "docs-pw"))),
        ("alice, another route", "/other", false, Some(basic("alice", "docs-pw"))),
        ("svc, mTLS", "/mtls", true, None),
        ("cli, OAuth", "/bearer", false, Some(format!("Bearer {bearer}"))),
    ];
    for (i, (what, path, identity, auth)) in requests.into_iter().enumerate() {
        let mut r = https(identity)
            .get(url(path))
            .header("x-request-id", format!("docs-request-{i}"));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        let resp = r.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{what}");
        let headers = up.last().headers;
        let token = headers["x-portcullis-assertion"].to_str().unwrap().to_string();
        minted.push(Minted {
            what,
            claims: decode(&token),
            token,
            headers,
        });
    }
    let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();

    use base64::Engine;
    use sha2::Digest;
    let facts = Facts {
        before,
        after,
        ttl,
        thumbprint: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&client_der)),
    };
    let mut seen = BTreeSet::new();
    let mut jtis: BTreeMap<String, String> = BTreeMap::new();
    for m in &minted {
        for (claim, value) in &m.claims {
            let what = m.what;
            assert!(
                documented.contains_key(claim),
                "{what}: the assertion holds `{claim}` ({value}), which README's table does not list"
            );
            seen.insert(claim.clone());
        }
        for (claim, said) in &documented {
            check_claim(claim, said, m, &facts, &mut jtis);
        }
    }
    let listed: BTreeSet<String> = documented.keys().filter(|c| *c != "local_user").cloned().collect();
    assert_eq!(seen, listed, "claims README lists that no minted assertion holds");
    // Different principals and routes got different assertions, hence different jtis.
    assert!(jtis.len() >= 5, "{jtis:?}");
    gw.stop().await;
}

/// What the checks of the claims compare with: the window the requests were sent in, the
/// configured ttl, the client certificate's SHA-256 (base64url).
struct Facts {
    before: u64,
    after: u64,
    ttl: u64,
    thumbprint: String,
}

/// Checks that `m` holds `claim` as README says (`said`); `jtis` collects the ids seen,
/// each with its assertion.
fn check_claim(claim: &str, said: &str, m: &Minted, f: &Facts, jtis: &mut BTreeMap<String, String>) {
    let what = m.what;
    let has = m.claims.contains_key(claim);
    let h = |name: &str| m.headers.get(name).map(|v| v.to_str().unwrap().to_string());
    let s = |claim: &str| m.claims.get(claim).and_then(|v| v.as_str()).map(str::to_string);
    let oauth = m.what.contains("OAuth");
    let mtls = m.what.contains("mTLS");
    match claim {
        "iss" => assert_eq!(format!("`{}`", m.claims["iss"]), *said, "{what}: iss is not README's"),
        "sub" => assert_eq!(s("sub"), h("x-portcullis-user"), "{what}"),
        "roles" => {
            let roles: Vec<String> = h("x-portcullis-roles")
                .unwrap()
                .split(',')
                .map(str::to_string)
                .collect();
            assert_eq!(m.claims["roles"], serde_json::json!(roles), "{what}: roles, a list");
        }
        "auth_method" => assert_eq!(s("auth_method"), h("x-portcullis-auth-method"), "{what}"),
        "plan" => assert_eq!(s("plan"), h("x-portcullis-plan"), "{what}"),
        "integration" => assert_eq!(s("integration"), h("x-portcullis-integration"), "{what}"),
        "client_id" => {
            assert!(said.starts_with("OAuth only"), "{said}");
            assert_eq!(has, oauth, "{what}: client_id is for OAuth only");
            assert_eq!(s("client_id"), h("x-portcullis-client-id"), "{what}");
            if oauth {
                assert_eq!(s("client_id").as_deref(), Some("cli"), "{what}: the token's client");
            }
        }
        "token_issuer" => {
            assert!(said.starts_with("OAuth only"), "{said}");
            assert_eq!(has, oauth, "{what}: token_issuer is for OAuth only");
            assert_eq!(s("token_issuer"), h("x-portcullis-issuer"), "{what}");
        }
        // Every principal minted here is a `[[users]]` name or a local client; another
        // issuer's user (`local_user: false`) is minted by the unit test
        // `assertion::tests::the_issuer_and_a_foreign_name_are_part_of_what_an_assertion_says`.
        "local_user" => {
            assert!(said.starts_with("only when"), "{said}");
            assert!(!has, "{what}: a local principal carries no local_user claim");
        }
        "cnf" => {
            assert!(said.starts_with("mTLS only"), "{said}");
            assert_eq!(has, mtls, "{what}: cnf is for mTLS only");
            if mtls {
                assert_eq!(
                    m.claims["cnf"],
                    serde_json::json!({ "x5t#S256": f.thumbprint }),
                    "{what}"
                );
            }
        }
        "iat" => {
            let iat = m.claims["iat"].as_u64().expect("iat in Unix seconds");
            assert!(
                (f.before..=f.after).contains(&iat),
                "{what}: iat {iat} not in {}..={}",
                f.before,
                f.after
            );
        }
        "exp" => {
            let (iat, exp) = (m.claims["iat"].as_u64().unwrap(), m.claims["exp"].as_u64().unwrap());
            assert_eq!(exp, iat + f.ttl, "{what}: exp is iat plus [assertion] ttl");
        }
        "jti" => {
            let jti = s("jti").expect("jti, a string");
            assert!(
                jti.len() == 32 && jti.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
                "{what}: jti `{jti}` is not 32 hex digits"
            );
            assert_ne!(
                Some(jti.clone()),
                h("x-request-id"),
                "{what}: jti is not the request id"
            );
            assert!(!jti.contains("docs-request"), "{what}");
            // The same jti only for the same assertion (reused): distinct assertions,
            // distinct ids.
            if let Some(token) = jtis.insert(jti.clone(), m.token.clone()) {
                assert_eq!(token, m.token, "{what}: two assertions share jti {jti}");
            }
        }
        other => panic!("README lists the claim `{other}`, which this test has no check for: add one"),
    }
}
