//! Routing, header rewriting, and the whole pipeline on loopback.
//!
//! `cargo bench --bench pipeline`. "loopback/direct" calls a tiny hyper upstream
//! directly; "loopback/through_gateway" calls it through Portcullis (auth = "none") and
//! "loopback/through_gateway_api_key" with an API key; the difference is the gateway's
//! cost per request, measured in the same run. Medians are quoted in README.md.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::config::PathPattern;
use portcullis::path::check_path;
use portcullis::route::{Router, Target};

fn routing(c: &mut Criterion) {
    let mut routes = Vec::new();
    for i in 0..50 {
        routes.push((
            PathPattern::Exact(format!("/svc{i}/incidents")),
            vec![Method::POST],
            Target {
                plan: 0,
                integration: i,
            },
        ));
        routes.push((
            PathPattern::Prefix(format!("/svc{i}/api")),
            vec![Method::GET],
            Target {
                plan: 0,
                integration: 100 + i,
            },
        ));
    }
    let router = Router::new_checked(routes.into_iter().collect());
    c.bench_function("route/check_path_and_match", |b| {
        b.iter(|| {
            let p = std::hint::black_box("/svc42/api/v1/incidents/12345");
            check_path(p).unwrap();
            router.route(p, &Method::GET)
        })
    });
}

fn headers(c: &mut Criterion) {
    let mut base = HeaderMap::new();
    for (k, v) in [
        ("host", "gw.example"),
        ("user-agent", "ServiceNow/1.0"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("content-length", "512"),
        ("connection", "keep-alive"),
        ("x-portcullis-user", "spoofed"),
        ("authorization", "Basic YWxpY2U6cHc="),
    ] {
        base.insert(k, HeaderValue::from_static(v));
    }
    let ip = HeaderValue::from_static("10.1.2.3");
    c.bench_function("headers/hygiene_and_forwarded", |b| {
        b.iter_batched_ref(
            || base.clone(),
            |h| {
                portcullis::headers::remove_hop_by_hop(h);
                portcullis::headers::sanitize(h, false);
                let host = h.remove("host");
                portcullis::headers::set_forwarded(h, &ip, true, host.as_ref());
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

async fn upstream() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn loopback(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let secret = "bench-secret-0123456789";
    let (up, gw) = rt.block_on(async {
        let up = upstream().await;
        let hash = {
            use sha2::Digest;
            format!("sha256:{}", hex::encode(sha2::Sha256::digest(secret.as_bytes())))
        };
        let toml = format!(
            r#"
[listen]
address = "127.0.0.1:0"
[[users]]
name = "alice"
roles = ["rest"]
[[plans]]
name = "p"
upstream = "http://{up}"
access = {{ all = true }}
[[plans.integrations]]
name = "open"
path = "/open"
methods = ["GET"]
auth = "none"
[[plans.integrations]]
name = "key"
path = "/key"
methods = ["GET"]
auth = "api_key"
[[api_keys]]
key = "k1"
secret_hash = "{hash}"
user = "alice"
integration = "p/key"
"#
        );
        let cfg = portcullis::config::parse(Path::new("bench.toml"), &toml)
            .unwrap()
            .config;
        let bound = portcullis::server::Bound::bind(&cfg).unwrap();
        let addr = bound.inbound_addr();
        let state = portcullis::state::State::new(cfg).unwrap();
        let (trigger, sd) = portcullis::server::shutdown::channel();
        tokio::spawn(portcullis::run::run(state, bound, sd));
        std::mem::forget(trigger);
        (up, addr)
    });
    let client: Arc<Client<_, Empty<Bytes>>> = Arc::new(Client::builder(TokioExecutor::new()).build_http());
    let auth = {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("k1:{secret}"))
        )
    };
    let get = |url: String, auth: Option<&str>| {
        let client = client.clone();
        let auth = auth.map(str::to_string);
        async move {
            let mut req = hyper::Request::get(url);
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let resp = client.request(req.body(Empty::new()).unwrap()).await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.unwrap();
        }
    };
    let mut g = c.benchmark_group("loopback");
    g.bench_function("direct", |b| {
        b.to_async(&rt).iter(|| get(format!("http://{up}/open"), None))
    });
    g.bench_function("through_gateway", |b| {
        b.to_async(&rt).iter(|| get(format!("http://{gw}/open"), None))
    });
    g.bench_function("through_gateway_api_key", |b| {
        b.to_async(&rt).iter(|| get(format!("http://{gw}/key"), Some(&auth)))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = routing, headers, loopback
}
criterion_main!(benches);
