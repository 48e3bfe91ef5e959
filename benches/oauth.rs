//! OAuth decisions: an RS256 and an EdDSA JWT validated against a JWKS, and a cached
//! introspection result. `cargo bench --bench oauth`; medians in README.md.

use std::convert::Infallible;
use std::net::IpAddr;
use std::path::Path;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::Request;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::auth::{Auth, RouteRef};
use portcullis::config::AuthMethod;
use portcullis::metrics::Metrics;

fn auth_for(oauth: &str) -> Auth {
    let toml = format!(
        r#"
[listen]
address = "127.0.0.1:0"
[[users]]
name = "alice"
roles = ["rest"]
[[plans]]
name = "p"
upstream = "builtin:echo"
access = {{ all = true }}
[[plans.integrations]]
name = "i"
path = "/i"
methods = ["GET"]
auth = "oauth"
{oauth}
"#
    );
    let cfg = portcullis::config::parse(Path::new("bench.toml"), &toml)
        .unwrap()
        .config;
    let shared = portcullis::auth::Lasting::default();
    Auth::new(&cfg, &Metrics::new(), &shared, &portcullis::upstream::client()).unwrap()
}

fn bearer(token: &str) -> http::request::Parts {
    Request::get("/i")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap()
        .into_parts()
        .0
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let route = RouteRef {
        plan: "p",
        integration: "i",
    };
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let methods = [AuthMethod::OAuth];
    let root = env!("CARGO_MANIFEST_DIR");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({"iss": "https://idp", "sub": "alice", "exp": now + 3600, "iat": now});

    // JWT against a JWKS file holding the RSA test key and an Ed25519 key.
    let n = std::fs::read_to_string(format!("{root}/tests/fixtures/rsa-test-key.n")).unwrap();
    let rsa =
        EncodingKey::from_rsa_pem(&std::fs::read(format!("{root}/tests/fixtures/rsa-test-key.pem")).unwrap()).unwrap();
    let ed = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let ed_x = {
        use base64::Engine;
        use ring::signature::KeyPair;
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(ed.as_ref()).unwrap();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())
    };
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "r", "alg": "RS256", "n": n.trim(), "e": "AQAB"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "e", "x": ed_x}
        ]})
        .to_string(),
    )
    .unwrap();
    let auth = auth_for(&format!(
        "[oauth]\nmode = \"jwt\"\nissuer = \"https://idp\"\njwks_file = \"{}\"\nalgorithms = [\"RS256\", \"EdDSA\"]",
        jwks.display()
    ));
    let sign = |alg, kid: &str, key: &EncodingKey| {
        let mut h = Header::new(alg);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, &claims, key).unwrap()
    };
    let rs = bearer(&sign(Algorithm::RS256, "r", &rsa));
    let eddsa = bearer(&sign(Algorithm::EdDSA, "e", &EncodingKey::from_ed_der(ed.as_ref())));
    let run = |a: &Auth, p: &http::request::Parts| rt.block_on(a.authenticate(&methods, route, p, ip)).is_ok();
    assert!(run(&auth, &rs) && run(&auth, &eddsa));
    c.bench_function("jwt/RS256", |b| b.iter(|| assert!(run(&auth, &rs))));
    c.bench_function("jwt/EdDSA", |b| b.iter(|| assert!(run(&auth, &eddsa))));

    // Introspection, served once by a loopback server, then from the cache.
    let addr = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        let body = r#"{"active":true,"sub":"alice","exp":4102444800}"#;
                        let mut r = hyper::Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                        r.headers_mut()
                            .insert("content-type", "application/json".parse().unwrap());
                        Ok::<_, Infallible>(r)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        addr
    });
    let auth = auth_for(&format!(
        "[oauth]\nmode = \"introspection\"\nintrospection_url = \"http://{addr}/introspect\"\nclient_id = \"pc\""
    ));
    let token = bearer("opaque-token-0123456789");
    assert!(run(&auth, &token));
    c.bench_function("introspection/cached", |b| b.iter(|| assert!(run(&auth, &token))));
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
