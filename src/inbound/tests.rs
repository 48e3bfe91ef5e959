//! The pipeline driven in process: a request goes through [`Pipeline`] with `oneshot`,
//! the generation's upstream is a `tower::Service` of the test's own, and the test reads
//! the [`Ctx`] the request finished with. No socket, no clock but tokio's.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;

use super::{Ctx, Pipeline};
use crate::error::{full, Body, BoxError};
use crate::gateway::{Env, Gateway, Refusals};
use crate::metrics::{Metrics, Outcome};
use crate::server::listener::ConnInfo;

const KEY: &str = "in-process-url-key-0123456789";

fn sha256_hex(s: &str) -> String {
    format!(
        "sha256:{}",
        hex::encode(ring::digest::digest(&ring::digest::SHA256, s.as_bytes()))
    )
}

/// One route, `/inc` (GET, POST) for the URL key of `alice`; `/open` without
/// authentication; a `[forward_auth]` listener trusting 10.0.0.0/8.
fn config(extra: &str) -> crate::config::Config {
    let text = format!(
        r#"
[listen]
address = "127.0.0.1:0"
trusted_proxies = ["10.0.0.0/8"]

[limits]
request_timeout = "5s"
{extra}

[assertion]
key = "in-process-assertion-key-0123456789"

[[users]]
name = "alice"
roles = ["rest"]
url_key_hash = "{hash}"

[[plans]]
name = "inc"
upstream = "http://127.0.0.1:9"
access = {{ roles = ["rest"] }}

[[plans.integrations]]
name = "events"
path = "/inc/*"
methods = ["GET", "POST"]
auth = "url_key"

[[plans.integrations]]
name = "open"
path = "/open"
methods = ["GET"]
auth = "none"
"#,
        hash = sha256_hex(KEY)
    );
    match crate::config::parse(std::path::Path::new("in-process.toml"), &text) {
        Ok(loaded) => loaded.config,
        Err(e) => panic!("test config: {e}"),
    }
}

/// What the fake upstream saw.
type Seen = Arc<Mutex<Vec<http::request::Parts>>>;

/// The pipeline over `config`, with `upstream` in place of every upstream.
fn pipeline<S>(config: crate::config::Config, upstream: S) -> (Pipeline, Arc<Env>)
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    let metrics = Metrics::new();
    let client = crate::upstream::client();
    let lasting = crate::auth::Lasting::default();
    let gw = match Gateway::build(config, &metrics, &[7; 32], &lasting, &client) {
        Ok(gw) => gw.with_upstream(tower::util::BoxCloneSyncService::new(upstream)),
        Err(e) => panic!("gateway: {e}"),
    };
    let env = Arc::new(Env {
        metrics,
        telemetry: None,
        client,
        h2c: crate::upstream::h2c_client(),
        h1: crate::upstream::h1_client(),
        in_task: false,
        refusals: Arc::new(Refusals::default()),
    });
    let conn = Arc::new(ConnInfo {
        remote: "192.0.2.7:40000".parse().unwrap(),
        local: "127.0.0.1:8443".parse().unwrap(),
        tls: false,
        ip_header: HeaderValue::from_static("192.0.2.7"),
        client_cert: None,
        places: None,
    });
    let p = Pipeline {
        env: env.clone(),
        gw: Arc::new(gw),
        conn,
        forward_auth: false,
    };
    (p, env)
}

/// An upstream that records each request head and answers 200 `ok`.
fn recording() -> (
    Seen,
    impl tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError, Future: Send> + Clone + Send + Sync,
) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let svc = tower::service_fn(move |req: Request<Body>| {
        let s = s.clone();
        async move {
            let (parts, body) = req.into_parts();
            body.collect().await?;
            s.lock().unwrap().push(parts);
            Ok::<_, BoxError>(Response::new(full("ok")))
        }
    });
    (seen, svc)
}

fn get(uri: &str) -> Request<Full<Bytes>> {
    Request::get(uri)
        .header("host", "gw.example")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn send(p: &Pipeline, req: Request<Full<Bytes>>) -> (StatusCode, http::HeaderMap, Bytes, Ctx) {
    let resp = p.clone().oneshot(req).await.unwrap();
    let ctx = resp
        .extensions()
        .get::<Ctx>()
        .cloned()
        .expect("the finished Ctx rides on the answer");
    let (parts, body) = resp.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
        ctx,
    )
}

#[tokio::test]
async fn an_authorized_request_reaches_the_upstream_with_the_principal_and_without_the_key() {
    let (seen, upstream) = recording();
    let (p, _) = pipeline(config(""), upstream);
    let mut req = get(&format!("/inc/a?x=1&apiKey={KEY}"));
    req.headers_mut()
        .insert("x-portcullis-user", HeaderValue::from_static("mallory"));
    let (status, headers, body, ctx) = send(&p, req).await;
    assert_eq!(status, 200);
    assert_eq!(body, "ok");
    assert_eq!(headers["x-request-id"], ctx.request_id);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let up = &seen[0];
    assert_eq!(up.uri, "http://127.0.0.1:9/inc/a?x=1");
    assert_eq!(
        up.headers.get_all("x-portcullis-user").iter().collect::<Vec<_>>(),
        ["alice"]
    );
    assert_eq!(up.headers["x-portcullis-auth-method"], "url_key");
    assert_eq!(up.headers["x-forwarded-for"], "192.0.2.7");
    assert!(up.headers.contains_key("x-portcullis-assertion"));
    assert_eq!(ctx.status, Some(200));
    assert_eq!(ctx.principal.as_deref(), Some("alice"));
    assert_eq!(ctx.route, Some(0));
    assert!(ctx.refusal.is_none());
    assert!(ctx.upstream_elapsed.is_some());
}

#[tokio::test]
async fn a_refused_request_never_reaches_the_upstream_and_finishes_with_its_reason() {
    let (seen, upstream) = recording();
    let (p, env) = pipeline(config(""), upstream);
    let (status, headers, _, ctx) = send(&p, get("/inc/a")).await;
    assert_eq!(status, 401);
    assert_eq!(
        headers["www-authenticate"],
        "ApiKey realm=\"portcullis\", param=\"apiKey\""
    );
    assert_eq!(ctx.refusal, Some((Outcome::Unauthenticated, "no_credentials")));
    assert_eq!(ctx.status, Some(401));
    let (status, _, _, ctx) = send(&p, get("/inc/a?apiKey=wrong-key-0123456789")).await;
    assert_eq!(status, 401);
    assert_eq!(ctx.refusal.map(|(_, r)| r), Some("bad_url_key"));
    let (status, _, _, ctx) = send(&p, get("/nowhere")).await;
    assert_eq!(status, 404);
    assert_eq!(ctx.refusal.map(|(_, r)| r), Some("no_route"));
    assert!(seen.lock().unwrap().is_empty());
    let reasons: Vec<_> = env.refusals.list().into_iter().map(|r| r.reason).collect();
    assert_eq!(reasons, ["no_credentials", "bad_url_key", "no_route"]);
}

#[tokio::test]
async fn an_upstream_that_fails_is_a_502_and_one_that_never_answers_a_504() {
    let failing =
        tower::service_fn(|_req: Request<Body>| async { Err::<Response<Body>, BoxError>("connection reset".into()) });
    let (p, _) = pipeline(config(""), failing);
    let (status, _, _, ctx) = send(&p, get("/open")).await;
    assert_eq!(status, 502);
    assert_eq!(ctx.refusal, Some((Outcome::UpstreamError, "upstream_error")));

    tokio::time::pause();
    let silent = tower::service_fn(|_req: Request<Body>| std::future::pending::<Result<Response<Body>, BoxError>>());
    let (p, _) = pipeline(config(""), silent);
    // Paused, the runtime moves its clock to the next timer once every task waits: the
    // request_timeout of 5 s passes without waiting for it.
    let (status, _, _, ctx) = send(&p, get("/open")).await;
    assert_eq!(status, 504);
    assert_eq!(ctx.refusal.map(|(_, r)| r), Some("upstream_timeout"));
}

#[tokio::test]
async fn a_request_dropped_before_its_answer_is_finished_once_as_client_closed() {
    let (p, env) = pipeline(
        config(""),
        tower::service_fn(|_req: Request<Body>| std::future::pending::<Result<Response<Body>, BoxError>>()),
    );
    let mut call = Box::pin(p.clone().oneshot(get("/open")));
    // Poll until the request waits on the upstream, then drop it, as hyper does when the
    // client resets the stream.
    assert!(futures_poll_once(call.as_mut()).await.is_none());
    drop(call);
    let refusals = env.refusals.list();
    assert_eq!(refusals.len(), 1);
    assert_eq!(refusals[0].reason, "client_closed");
    assert_eq!(refusals[0].status, 499);
    let text = env.metrics.render();
    assert!(text.contains("portcullis_client_closed_total 1"), "{text}");
}

/// Polls `f` once; `Some` if it finished.
async fn futures_poll_once<F: std::future::Future + Unpin>(mut f: F) -> Option<F::Output> {
    std::future::poll_fn(|cx| match std::pin::Pin::new(&mut f).poll(cx) {
        std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

#[tokio::test]
async fn a_grpc_client_gets_its_refusal_as_a_grpc_status_logged_as_the_http_one() {
    let (_, upstream) = recording();
    let (p, _) = pipeline(config(""), upstream);
    let mut req = get("/inc/a");
    req.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    let (status, headers, _, ctx) = send(&p, req).await;
    assert_eq!(status, 200);
    assert_eq!(headers["grpc-status"], "16");
    assert_eq!(ctx.status, Some(401));
}

#[tokio::test]
async fn forward_auth_answers_only_a_trusted_ingress_and_never_forwards() {
    let (seen, upstream) = recording();
    let (mut p, _) = pipeline(config(""), upstream);
    p.forward_auth = true;
    let mut req = get("/check");
    req.headers_mut()
        .insert("x-original-method", HeaderValue::from_static("GET"));
    req.headers_mut().insert(
        "x-original-uri",
        HeaderValue::from_str(&format!("/inc/a?apiKey={KEY}")).unwrap(),
    );
    let (status, _, _, ctx) = send(&p, req.clone()).await;
    assert_eq!(status, 403);
    assert_eq!(ctx.refusal.map(|(_, r)| r), Some("untrusted_forwarder"));
    let mut trusted = (*p.conn).clone();
    trusted.remote = "10.1.2.3:5000".parse().unwrap();
    p.conn = Arc::new(trusted);
    let (status, headers, _, ctx) = send(&p, req).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-portcullis-user"], "alice");
    assert_eq!(ctx.principal.as_deref(), Some("alice"));
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_before_the_upstream_sees_it() {
    let (seen, upstream) = recording();
    let (p, _) = pipeline(config("max_body_bytes = 16"), upstream);
    let req = Request::post("/open")
        .header("host", "gw.example")
        .body(Full::new(Bytes::from(vec![b'x'; 64])))
        .unwrap();
    let (status, _, _, ctx) = send(&p, req).await;
    assert_eq!(status, 405, "/open is GET only");
    assert_eq!(ctx.refusal.map(|(_, r)| r), Some("method_not_allowed"));
    let req = Request::post(format!("/inc/a?apiKey={KEY}"))
        .header("host", "gw.example")
        .body(Full::new(Bytes::from(vec![b'x'; 64])))
        .unwrap();
    let (status, _, _, ctx) = send(&p, req).await;
    assert_eq!(status, 413);
    assert_eq!(ctx.refusal.map(|(_, r)| r), Some("body_too_large"));
    assert!(seen.lock().unwrap().is_empty());
}

/// A body that sends `hello`, then fails as a reset connection does.
struct Broken(bool);

impl http_body::Body for Broken {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        if self.0 {
            return std::task::Poll::Ready(Some(Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset))));
        }
        self.0 = true;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(b"hello")))))
    }
}

#[tokio::test]
async fn a_body_that_breaks_off_is_the_client_leaving_not_the_upstream_failing() {
    for limit in ["max_body_bytes = 0", "max_body_bytes = 1024"] {
        let (seen, upstream) = recording();
        let (p, env) = pipeline(config(limit), upstream);
        let req = Request::post("/inc/a?apiKey=".to_string() + KEY)
            .header("host", "gw.example")
            .body(Broken(false))
            .unwrap();
        let resp = p.clone().oneshot(req).await.unwrap();
        let ctx = resp.extensions().get::<Ctx>().cloned().unwrap();
        assert_eq!(resp.status().as_u16(), 499, "{limit}");
        assert_eq!(ctx.refusal, Some((Outcome::ClientClosed, "client_closed")), "{limit}");
        assert!(seen.lock().unwrap().is_empty(), "{limit}");
        assert!(
            env.metrics.render().contains("portcullis_client_closed_total 1"),
            "{limit}"
        );
    }
}
