//! The authentication decision of each method, cached and uncached.
//!
//! `cargo bench --bench auth`. Medians are quoted in README.md with the machine and date.
//! The uncached `basic` decision runs argon2id with the crate's default (OWASP) parameters
//! (m=19456 KiB, t=2, p=1), which is the point of the cache.

use std::net::IpAddr;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use http::Request;
use portcullis::auth::{Auth, RouteRef};
use portcullis::config::AuthMethod;
use portcullis::metrics::Metrics;

fn hash(s: &str) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(s.as_bytes())))
}

fn basic(user: &str, secret: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"))
    )
}

fn auth() -> Auth {
    let pw = portcullis::auth::basic::hash_password("bench-pw").unwrap();
    let toml = format!(
        r#"
[listen]
address = "127.0.0.1:0"
[lockout]
max_failures = 1000000
[[users]]
name = "alice"
roles = ["rest"]
password_hash = "{pw}"
url_key_hash = "{url}"
[[plans]]
name = "p"
upstream = "builtin:echo"
access = {{ all = true }}
[[plans.integrations]]
name = "i"
path = "/i"
methods = ["GET"]
auth = ["basic", "api_key", "url_key"]
[[api_keys]]
key = "k1"
secret_hash = "{sec}"
user = "alice"
integration = "p/i"
"#,
        url = hash("bench-url-key-0123456789"),
        sec = hash("bench-secret-0123456789"),
    );
    let cfg = portcullis::config::parse(Path::new("bench.toml"), &toml)
        .unwrap()
        .config;
    let shared = portcullis::auth::Lasting::default();
    Auth::new(&cfg, &Metrics::new(), &shared, &portcullis::upstream::client()).unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let auth = auth();
    let methods = [AuthMethod::Basic, AuthMethod::ApiKey, AuthMethod::UrlKey];
    let route = RouteRef {
        plan: "p",
        integration: "i",
    };
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let parts = |auth: Option<String>, uri: &str| {
        let mut b = Request::get(uri);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(()).unwrap().into_parts().0
    };
    let run = |p: &http::request::Parts| rt.block_on(auth.authenticate(&methods, route, p, ip)).is_ok();

    let basic_ok = parts(Some(basic("alice", "bench-pw")), "/i");
    assert!(run(&basic_ok));
    c.bench_function("basic/cached", |b| b.iter(|| assert!(run(&basic_ok))));
    c.bench_function("basic/uncached_argon2id", |b| {
        b.iter(|| {
            auth.clear_caches();
            assert!(run(&basic_ok))
        })
    });
    let key_ok = parts(Some(basic("k1", "bench-secret-0123456789")), "/i");
    c.bench_function("api_key", |b| b.iter(|| assert!(run(&key_ok))));
    let url_ok = parts(None, "/i?x=1&apiKey=bench-url-key-0123456789");
    c.bench_function("url_key", |b| b.iter(|| assert!(run(&url_ok))));
    let missing = parts(None, "/i");
    c.bench_function("missing_credentials", |b| b.iter(|| assert!(!run(&missing))));
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
