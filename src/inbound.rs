//! The inbound pipeline: every request runs these phases, top to bottom, once.
//!
//! ```text
//!  check head    431 headers over max_header_bytes; 400 ambiguous path
//!  route         404 no integration for the path; 405 not for this method
//!  body limit    413 declared Content-Length over max_body_bytes
//!  hygiene       strip client-sent X-Portcullis-*
//!  authenticate  429 locked out; 401 missing or refused credentials   -> Principal
//!  authorize     403 plan access AND integration senders              -> Permit
//!  rewrite       drop hop-by-hop and consumed credentials (Authorization, apiKey);
//!                set X-Forwarded-*, X-Request-Id, principal headers and assertion
//!  forward       stream to the upstream; 413 if a streamed body passes the limit;
//!                502 unreachable, 504 no answer within request_timeout
//!  finish        one access-log line and the metrics, for every request
//! ```
//!
//! [`handle_inner`] is a line of `?` checks; [`handle`] turns a [`Refusal`] into the
//! contract's JSON response once, and always sets `X-Request-Id`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio_rustls::TlsAcceptor;

use crate::assertion::Signer;
use crate::auth::oauth::builtin;
use crate::auth::{self, Auth, Failure, RouteRef};
use crate::authz::{self, Permit};
use crate::config::{AuthMethod, Config, Ingress, Rule, Upstream};
pub use crate::error::Refusal;
use crate::error::{Body, BoxError};
use crate::headers;
use crate::metrics::{Metrics, Outcome, RouteMetrics};
use crate::route::{Match, Router, Target};
use crate::server::listener::ConnInfo;
use crate::upstream::{self, BodyError};

/// Why a config could not become a running gateway.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("TLS: {0}")]
    Tls(String),
    #[error("oauth: {0}")]
    OAuth(String),
    #[error("egress: {0}")]
    Egress(String),
    #[error("shared store: {0}")]
    Shared(String),
    #[error("tracing: {0}")]
    Tracing(String),
}

/// How many refusals the admin page keeps.
pub const REFUSALS_KEPT: usize = 100;

/// What every request of every generation shares: the metrics, the pooled upstream
/// client, and the ring of recent refusals for the admin page.
pub struct Env {
    pub metrics: Metrics,
    /// Span export (`[tracing] otlp_endpoint`), when on.
    pub telemetry: Option<Arc<crate::telemetry::Telemetry>>,
    pub client: upstream::Client,
    /// For `h2c://` upstreams (HTTP/2 by prior knowledge).
    pub h2c: upstream::Client,
    /// HTTP/1.1 only, for upgrades (which HTTP/2 to the upstream cannot carry).
    pub h1: upstream::Client,
    /// `http://` upstreams over this thread's pool, driven in the request's task
    /// ([`upstream::h1`]): the per-core workers' path.
    pub in_task: bool,
    pub refusals: Arc<Refusals>,
}

impl Env {
    /// The environment of one per-core worker: the same metrics, span export and refusal
    /// ring, and upstream clients of its own, whose pooled connections are driven by the
    /// worker's runtime (made where they are first used).
    pub fn for_worker(&self) -> Env {
        Env {
            metrics: self.metrics.clone(),
            telemetry: self.telemetry.clone(),
            client: upstream::client(),
            h2c: upstream::h2c_client(),
            h1: upstream::h1_client(),
            in_task: true,
            refusals: self.refusals.clone(),
        }
    }
}

/// The last [`REFUSALS_KEPT`] refusals, newest last.
#[derive(Default)]
pub struct Refusals(std::sync::Mutex<std::collections::VecDeque<RefusalRecord>>);

impl Refusals {
    /// The last refusals, oldest first.
    pub fn list(&self) -> Vec<RefusalRecord> {
        self.0.lock().map(|r| r.iter().cloned().collect()).unwrap_or_default()
    }

    fn record(&self, r: RefusalRecord) {
        if let Ok(mut q) = self.0.lock() {
            if q.len() == REFUSALS_KEPT {
                q.pop_front();
            }
            q.push_back(r);
        }
    }
}

/// One refused request, as the admin page shows it. Never a secret: the path has no query.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RefusalRecord {
    /// RFC 3339 time.
    pub time: String,
    pub request_id: String,
    pub client_ip: String,
    pub integration: String,
    pub method: String,
    pub path: String,
    pub auth_method: String,
    pub principal: String,
    pub status: u16,
    pub reason: &'static str,
}

/// One config generation, ready to serve.
pub struct Gateway {
    pub config: Config,
    router: Router,
    routes: Vec<Route>,
    pub tls: Option<TlsAcceptor>,
    pub auth: Auth,
    signer: Signer,
    pub egress: crate::egress::Egress,
}

/// Everything the pipeline needs about one integration, resolved once.
pub struct Route {
    pub path: String,
    pub methods: Vec<http::Method>,
    pub plan: String,
    pub integration: String,
    plan_value: HeaderValue,
    integration_value: HeaderValue,
    pub upstream: Upstream,
    /// `host:port` of the upstream (no user info), for the access log.
    upstream_addr: Arc<str>,
    access: Rule,
    senders: Rule,
    pub auth: Vec<AuthMethod>,
    /// The plan forwards header names with `_`.
    underscores: bool,
    /// The integration forwards the client's bearer token.
    forward_token: bool,
    /// WebSocket upgrades pass (once authorized).
    websocket: bool,
    challenges: Vec<HeaderValue>,
    metrics: RouteMetrics,
    /// Its names as span attributes, shared by every span.
    span: crate::telemetry::RouteSpan,
}

impl Gateway {
    /// The routes, in config order, for the admin page.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn build(
        config: Config,
        metrics: &Metrics,
        random_key: &[u8; 32],
        lasting: &auth::Lasting,
        client: &upstream::Client,
    ) -> Result<Self, BuildError> {
        let tls = match &config.listen.tls_key {
            Some(key) => {
                let key = key.clone();
                metrics
                    .tls_certificate_expiry
                    .set(crate::config::keys::not_after(&key).unwrap_or(0));
                let cfg = crate::server::tls::server_config(key, config.listen.client_verifier.clone())
                    .map_err(|e| BuildError::Tls(e.to_string()))?;
                Some(TlsAcceptor::from(cfg))
            }
            None => {
                metrics.tls_certificate_expiry.set(0);
                None
            }
        };
        let mut routes = Vec::new();
        let mut table = Vec::new();
        for (pi, plan) in config.plans.iter().enumerate() {
            for integ in &plan.integrations {
                // Targets index the flat route list.
                let index = routes.len();
                table.push((
                    integ.path.clone(),
                    integ.methods.clone(),
                    Target {
                        plan: pi,
                        integration: index,
                    },
                ));
                let upstream_addr = match &plan.upstream {
                    Upstream::Echo => "builtin:echo".to_string(),
                    Upstream::Http { authority, scheme, .. } => {
                        let port =
                            authority
                                .port_u16()
                                .unwrap_or(if *scheme == http::uri::Scheme::HTTPS { 443 } else { 80 });
                        format!("{}:{port}", authority.host())
                    }
                };
                routes.push(Route {
                    span: crate::telemetry::RouteSpan::new(&plan.name, &integ.name, &upstream_addr),
                    path: integ.path.to_string(),
                    methods: integ.methods.clone(),
                    plan: plan.name.clone(),
                    integration: integ.name.clone(),
                    // Names are checked to be plain ASCII tokens.
                    plan_value: HeaderValue::from_str(&plan.name).unwrap_or_else(|_| HeaderValue::from_static("")),
                    integration_value: HeaderValue::from_str(&integ.name)
                        .unwrap_or_else(|_| HeaderValue::from_static("")),
                    upstream: plan.upstream.clone(),
                    upstream_addr: upstream_addr.into(),
                    access: plan.access.clone(),
                    senders: integ.senders.clone(),
                    auth: integ.auth.clone(),
                    underscores: plan.underscores_in_headers,
                    forward_token: integ.forward_token,
                    websocket: integ.websocket,
                    challenges: challenges(&integ.auth),
                    metrics: RouteMetrics::new(metrics, &plan.name, &integ.name),
                });
            }
        }
        let key: &[u8] = config.assertion.key.as_ref().map_or(&random_key[..], |k| k.expose());
        Ok(Gateway {
            router: Router::new_checked(table),
            routes,
            tls,
            auth: Auth::new(&config, metrics, lasting, client).map_err(|e| BuildError::OAuth(e.to_string()))?,
            egress: crate::egress::Egress::new(&config.endpoints, metrics, &lasting.shared.egress)
                .map_err(BuildError::Egress)?
                .with_head_limits(config.limits.max_headers, config.limits.max_header_bytes),
            signer: Signer::new(key, config.assertion.ttl),
            config,
        })
    }

    pub fn signer(&self) -> &Signer {
        &self.signer
    }
}

/// `WWW-Authenticate` challenges for a route's methods.
fn challenges(methods: &[AuthMethod]) -> Vec<HeaderValue> {
    let mut out = Vec::new();
    if methods.contains(&AuthMethod::Basic) || methods.contains(&AuthMethod::ApiKey) {
        out.push(HeaderValue::from_static(
            "Basic realm=\"portcullis\", charset=\"UTF-8\"",
        ));
    }
    if methods.contains(&AuthMethod::OAuth) {
        out.push(HeaderValue::from_static("Bearer realm=\"portcullis\""));
    }
    if methods.contains(&AuthMethod::UrlKey) {
        out.push(HeaderValue::from_static(
            "ApiKey realm=\"portcullis\", param=\"apiKey\"",
        ));
    }
    out
}

// === the request ===

/// What the finish phase reports about one request.
struct Ctx {
    /// The client's address: the peer, or the client a trusted proxy names.
    client: std::net::IpAddr,
    request_id: HeaderValue,
    started: Instant,
    method: http::Method,
    /// The request target as received (a reference-counted view, not a copy).
    uri: http::Uri,
    route: Option<usize>,
    /// A built-in endpoint of the gateway itself (the OAuth issuer's), when no route.
    endpoint: Option<&'static str>,
    auth_method: Option<AuthMethod>,
    principal: Option<Arc<str>>,
    upstream_elapsed: Option<Duration>,
    /// The answer's status; `None` while the request is in flight.
    status: Option<u16>,
    refusal: Option<(Outcome, &'static str)>,
    version: http::Version,
    host: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    /// Declared body lengths (`Content-Length`, or a body known to be empty).
    bytes_in: Option<u64>,
    bytes_out: Option<u64>,
    /// The request's trace (W3C Trace Context), and when its upstream call started.
    trace: headers::TraceIds,
    upstream_started: Option<Instant>,
    /// Whether the credential came from a cache, once one was checked.
    cache_hit: Option<bool>,
    /// The client's connection closes after this answer (a refused upgrade).
    close: bool,
}

/// Runs the finish phase when dropped: at the end of [`handle`], or when the request's
/// future is dropped before it (client reset or disconnect, shutdown past the grace
/// period), so every request gets its log line and metrics exactly once.
struct Finish {
    env: Arc<Env>,
    gw: Arc<Gateway>,
    ctx: Ctx,
}

impl Drop for Finish {
    fn drop(&mut self) {
        finish(&self.env, &self.gw, &self.ctx);
    }
}

/// Serves one inbound request; never fails.
pub async fn handle(env: Arc<Env>, gw: Arc<Gateway>, req: Request<Incoming>, conn: Arc<ConnInfo>) -> Response<Body> {
    serve(env, gw, req, conn, Mode::Proxy).await
}

/// Answers one forward-auth subrequest (nginx `auth_request`, Traefik ForwardAuth,
/// Envoy ext_authz HTTP service): the decision for the original request it describes,
/// with the principal's `X-Portcullis-*` headers (and assertion) for the ingress to
/// copy; never forwards anything.
pub async fn forward_auth(
    env: Arc<Env>,
    gw: Arc<Gateway>,
    req: Request<Incoming>,
    conn: Arc<ConnInfo>,
) -> Response<Body> {
    serve(env, gw, req, conn, Mode::ForwardAuth).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Proxy,
    ForwardAuth,
}

async fn serve(
    env: Arc<Env>,
    gw: Arc<Gateway>,
    req: Request<Incoming>,
    conn: Arc<ConnInfo>,
    mode: Mode,
) -> Response<Body> {
    let request_id = match req.headers().get(headers::X_REQUEST_ID) {
        Some(v) if headers::valid_request_id(v) => v.clone(),
        _ => headers::new_request_id(),
    };
    let client = gw.config.listen.client_ip(conn.remote.ip(), req.headers());
    let mut guard = Finish {
        ctx: Ctx {
            client,
            request_id,
            started: Instant::now(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            route: None,
            endpoint: None,
            auth_method: None,
            principal: None,
            upstream_elapsed: None,
            status: None,
            refusal: None,
            version: req.version(),
            host: req.headers().get(header::HOST).cloned().or_else(|| {
                req.uri()
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            }),
            user_agent: req.headers().get(header::USER_AGENT).cloned(),
            bytes_in: http_body::Body::size_hint(req.body()).exact(),
            bytes_out: None,
            trace: headers::trace_of(req.headers(), env.telemetry.as_ref().map_or(0, |t| t.sample)),
            upstream_started: None,
            cache_hit: None,
            close: false,
        },
        env: env.clone(),
        gw: gw.clone(),
    };
    let ctx = &mut guard.ctx;
    // A gRPC client reads refusals as gRPC statuses, not HTTP ones.
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let inner = match mode {
        Mode::Proxy => handle_inner(&env, &gw, &conn, ctx, req).await,
        Mode::ForwardAuth => forward_auth_inner(&gw, &conn, ctx, req).await,
    };
    // The status logged and counted: a gRPC refusal is logged with the HTTP status it
    // stands for, though it travels as 200 and a grpc-status.
    let mut logged_status = None;
    let mut resp = match inner {
        Ok(resp) => resp,
        Err(r) => {
            ctx.refusal = Some((r.outcome(), r.reason()));
            if grpc && mode == Mode::Proxy {
                logged_status = Some(r.status().as_u16());
                r.into_grpc_response()
            } else {
                r.into_response(&ctx.request_id)
            }
        }
    };
    resp.headers_mut().insert(headers::X_REQUEST_ID, ctx.request_id.clone());
    if ctx.close && ctx.version <= Version::HTTP_11 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    ctx.status = Some(logged_status.unwrap_or(resp.status().as_u16()));
    ctx.bytes_out = http_body::Body::size_hint(resp.body()).exact();
    drop(guard);
    resp
}

async fn handle_inner(
    env: &Env,
    gw: &Gateway,
    conn: &ConnInfo,
    ctx: &mut Ctx,
    req: Request<Incoming>,
) -> Result<Response<Body>, Refusal> {
    let (mut parts, body) = req.into_parts();
    if let Err(r) = check_head(&gw.config.limits, &parts) {
        upstream::drain(body);
        return Err(r);
    }
    // RFC 8441: a WebSocket over HTTP/2 arrives as an extended CONNECT (`:protocol`
    // websocket) on a path. It is routed, authenticated and authorized as the GET it
    // stands for, and goes to the upstream as an HTTP/1.1 upgrade.
    let h2_websocket = match parts.extensions.get::<hyper::ext::Protocol>() {
        Some(p) if parts.method == http::Method::CONNECT => {
            if !p.as_str().eq_ignore_ascii_case("websocket") {
                upstream::drain(body);
                return Err(Refusal::BadRequest(
                    "extended CONNECT carries only the websocket protocol".into(),
                ));
            }
            parts.method = http::Method::GET;
            true
        }
        _ => false,
    };
    // The client certificate this connection's handshake verified, for `auth = "mtls"`.
    if let Some(cert) = &conn.client_cert {
        parts.extensions.insert(cert.clone());
    }
    if let Some(issuer) = gw.auth.oauth.as_ref().and_then(|o| o.issuer()) {
        if let Some(endpoint) = builtin::endpoint(parts.uri.path()) {
            // The issuer's endpoints are routes of the pipeline too: their refusals are
            // counted, logged and shown like any other, under their own labels.
            ctx.endpoint = Some(endpoint);
            ctx.auth_method = Some(AuthMethod::OAuth);
            let timeout = gw.config.limits.request_timeout;
            return issuer.serve(&gw.auth, &parts, body, ctx.client, timeout).await;
        }
    }
    let permit = match decide(gw, ctx, &mut parts).await {
        Ok(permit) => permit,
        Err(r) => {
            upstream::drain(body);
            return Err(r);
        }
    };
    let limits = &gw.config.limits;
    // The whole request, body included, is bounded by request_timeout from its head.
    let until = tokio::time::Instant::from_std(ctx.started) + limits.request_timeout;
    let timing = upstream::BodyTiming {
        idle: limits.body_read_timeout,
        until,
        spool_max: limits.max_spool_bytes,
    };
    let (body, overflow) = match upstream::limit_body(body, limits.max_body_bytes, content_length(&parts), timing).await
    {
        Ok(x) => x,
        Err(BodyError::TooLarge) => return Err(Refusal::PayloadTooLarge),
        Err(BodyError::Timeout) => return Err(Refusal::BodyTimeout),
        Err(BodyError::Client(_)) => return Err(Refusal::BadRequest("request body could not be read".into())),
    };
    // An authorized WebSocket upgrade, on an integration that allows it, keeps the
    // client's side of the connection. The upstream is asked for exactly `websocket`,
    // with a key of the gateway's own, whatever else the client offered (h2c included).
    let allowed = gw.routes[permit.route()].websocket;
    let upgrade = if h2_websocket {
        if !allowed {
            return Err(Refusal::BadRequest(
                "WebSocket upgrades are not enabled for this integration".into(),
            ));
        }
        Some(h2_upgrade(conn, &mut parts)?)
    } else if allowed && websocket_requested(&parts) {
        Some(h1_upgrade(&mut parts)?)
    } else {
        None
    };
    let route = rewrite(gw, conn, ctx, &mut parts, permit)?;
    if let Some(u) = &upgrade {
        let h = &mut parts.headers;
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_str(&u.key).map_err(|_| Refusal::BadGateway("upgrade_refused"))?,
        );
        h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    }
    // limit_body dropped the client's trailers: they could carry any header past the checks.
    let req = Request::from_parts(parts, body);
    let started = Instant::now();
    ctx.upstream_started = Some(started);
    // An upgrade goes over HTTP/1.1 even to an upstream that would pick HTTP/2 by ALPN.
    let client = if upgrade.is_some() { Some(&env.h1) } else { None };
    let sent = tokio::time::timeout_at(until, send(env, client, route, req)).await;
    let elapsed = started.elapsed();
    ctx.upstream_elapsed = Some(elapsed);
    route.metrics.upstream.observe(elapsed.as_secs_f64());
    let mut resp = match sent {
        // Time ran out while the client was still sending: the client's delay, not the
        // upstream's.
        Err(_) if overflow.timed_out() || !overflow.finished() => return Err(Refusal::BodyTimeout),
        Err(_) => return Err(Refusal::GatewayTimeout),
        Ok(Err(_)) if overflow.happened() => return Err(Refusal::PayloadTooLarge),
        Ok(Err(_)) if overflow.timed_out() => return Err(Refusal::BodyTimeout),
        Ok(Err(e)) => {
            tracing::debug!(request_id = ?ctx.request_id, error = %crate::util::Escaped(&e), "upstream request failed");
            return Err(Refusal::BadGateway(e.reason));
        }
        Ok(Ok(resp)) => resp,
    };
    let Some(upgrade) = upgrade else {
        // No upgrade was asked of the upstream: a 101 would leave client and gateway
        // speaking different protocols on one connection.
        if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            ctx.close = true;
            return Err(Refusal::BadGateway("upgrade_refused"));
        }
        headers::remove_hop_by_hop(resp.headers_mut());
        return Ok(resp);
    };
    // A tunnel opens only on a 101 that switched to WebSocket and proved it read our key;
    // anything else is the upstream refusing (or twisting) the upgrade, and the client's
    // connection closes with the 502.
    if !websocket_accepted(&resp, &upgrade.key) {
        tracing::debug!(
            request_id = ?ctx.request_id,
            status = resp.status().as_u16(),
            "upstream did not accept the WebSocket handshake"
        );
        drop(resp);
        ctx.close = true;
        return Err(Refusal::BadGateway("upgrade_refused"));
    }
    let negotiated = |resp: &Response<Body>, out: &mut http::HeaderMap| {
        for name in [header::SEC_WEBSOCKET_PROTOCOL, header::SEC_WEBSOCKET_EXTENSIONS] {
            for v in resp.headers().get_all(&name) {
                out.append(name.clone(), v.clone());
            }
        }
    };
    let tunnel_to = |client, resp: &mut Response<Body>, place| {
        tokio::spawn(tunnel(
            client,
            hyper::upgrade::on(resp),
            limits.upgrade_idle_timeout,
            limits.upgrade_max_lifetime,
            ctx.request_id.clone(),
            place,
        ));
    };
    // The client is answered with a head of our own: 101 with the proof for its key
    // (HTTP/1.1), or 200 (RFC 8441), and the subprotocol and extensions agreed.
    let mut ok = Response::new(crate::error::full(bytes::Bytes::new()));
    negotiated(&resp, ok.headers_mut());
    match upgrade.side {
        Side::H1 { client, accept } => {
            tunnel_to(client, &mut resp, None);
            *ok.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
            let h = ok.headers_mut();
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        Side::H2 { client, place } => tunnel_to(client, &mut resp, place),
    }
    Ok(ok)
}

/// A WebSocket upgrade on its way to the upstream: the client's side of it, and the key
/// the gateway sends the upstream (its own, never the client's).
struct Upgrade {
    side: Side,
    key: String,
}

enum Side {
    /// HTTP/1.1 `Upgrade: websocket`; `accept` answers the client's own key.
    H1 {
        client: hyper::upgrade::OnUpgrade,
        accept: HeaderValue,
    },
    /// HTTP/2 extended CONNECT (RFC 8441), with the tunnel's place in `max_connections`.
    H2 {
        client: hyper::upgrade::OnUpgrade,
        place: Option<crate::server::listener::ConnGuard>,
    },
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes in base64 (RFC 6455 section 4.1).
fn websocket_key() -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, rand::random::<[u8; 16]>())
}

/// Whether the upstream's answer completes the WebSocket handshake for `key` (RFC 6455
/// section 4.1): 101, `Upgrade` exactly `websocket` (one line, one token), `Connection`
/// naming `upgrade`, and one `Sec-WebSocket-Accept` that proves it read `key`.
fn websocket_accepted(resp: &Response<Body>, key: &str) -> bool {
    let h = resp.headers();
    let single = |name: header::HeaderName| {
        let mut all = h.get_all(name).into_iter();
        match (all.next(), all.next()) {
            (Some(v), None) => Some(v.as_bytes()),
            _ => None,
        }
    };
    resp.status() == http::StatusCode::SWITCHING_PROTOCOLS
        && single(header::UPGRADE).is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"websocket"))
        && tokens(h, header::CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade"))
        && single(header::SEC_WEBSOCKET_ACCEPT).is_some_and(|v| v == websocket_accept(key).as_bytes())
}

/// The comma-separated tokens of every line of a header, trimmed.
fn tokens(h: &http::HeaderMap, name: header::HeaderName) -> impl Iterator<Item = &str> {
    h.get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// An HTTP/1.1 WebSocket upgrade checked (RFC 6455 section 4.2.1: one `Sec-WebSocket-Key`
/// of 16 bytes, version 13) and turned into the upgrade the upstream gets.
fn h1_upgrade(parts: &mut Parts) -> Result<Upgrade, Refusal> {
    let bad = |m: &'static str| Refusal::BadRequest(m.into());
    let one = |name: header::HeaderName| {
        let mut all = parts.headers.get_all(name).into_iter();
        match (all.next(), all.next()) {
            (Some(v), None) => Some(v.clone()),
            _ => None,
        }
    };
    let client_key = one(header::SEC_WEBSOCKET_KEY)
        .filter(|k| {
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, k.as_bytes())
                .is_ok_and(|b| b.len() == 16)
        })
        .ok_or_else(|| bad("a WebSocket upgrade needs one Sec-WebSocket-Key of 16 bytes in base64"))?;
    if one(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes().trim_ascii() != b"13") {
        return Err(bad("a WebSocket upgrade needs Sec-WebSocket-Version: 13"));
    }
    let accept = HeaderValue::from_str(&websocket_accept(client_key.to_str().unwrap_or("")))
        .map_err(|_| bad("the WebSocket key cannot be answered"))?;
    let client = parts
        .extensions
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or_else(|| bad("this connection cannot be upgraded"))?;
    Ok(Upgrade {
        side: Side::H1 { client, accept },
        key: websocket_key(),
    })
}

/// An RFC 8441 WebSocket turned into the HTTP/1.1 upgrade request the upstream expects,
/// with the client's side of it and the tunnel's place in `max_connections`.
fn h2_upgrade(conn: &ConnInfo, parts: &mut Parts) -> Result<Upgrade, Refusal> {
    let Some(client) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        return Err(Refusal::BadRequest(
            "extended CONNECT without a stream to upgrade".into(),
        ));
    };
    // The tunnel will hold a socket to the upstream without a connection of its own
    // from the client: it takes its own place in max_connections.
    let place = match conn.places.as_ref().map(|p| p.take()) {
        Some(None) => return Err(Refusal::Unavailable("max_connections")),
        Some(place) => place,
        None => None,
    };
    parts.extensions.remove::<hyper::ext::Protocol>();
    parts.version = Version::HTTP_11;
    Ok(Upgrade {
        side: Side::H2 { client, place },
        key: websocket_key(),
    })
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 section 4.2.2).
fn websocket_accept(key: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, ctx.finish())
}

/// Whether an HTTP/1.1 request asks for a WebSocket upgrade: a GET with `Connection`
/// naming `upgrade` and `Upgrade` naming `websocket` among whatever else it offers.
fn websocket_requested(parts: &Parts) -> bool {
    parts.version == Version::HTTP_11
        && parts.method == http::Method::GET
        && tokens(&parts.headers, header::CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade"))
        && tokens(&parts.headers, header::UPGRADE).any(|t| t.eq_ignore_ascii_case("websocket"))
}

/// Bytes both ways between the client and the upstream of an upgraded connection, until
/// either closes, nothing moves for `idle`, or `lifetime` has passed. `_place` (an HTTP/2
/// tunnel's place in `max_connections`) is held until then.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    idle: Duration,
    lifetime: Duration,
    request_id: HeaderValue,
    _place: Option<crate::server::listener::ConnGuard>,
) {
    let (client, upstream) = match tokio::join!(client, upstream) {
        (Ok(c), Ok(u)) => (c, u),
        _ => {
            tracing::debug!(request_id = ?request_id, "upgrade did not complete on both sides");
            return;
        }
    };
    let activity = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let mut client = Watched {
        io: hyper_util::rt::TokioIo::new(client),
        activity: activity.clone(),
        start,
    };
    let mut upstream = Watched {
        io: hyper_util::rt::TokioIo::new(upstream),
        activity: activity.clone(),
        start,
    };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    let deadline = tokio::time::sleep(lifetime);
    tokio::pin!(deadline);
    let check = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = &mut copy => return,
            _ = &mut deadline => {
                tracing::info!(request_id = ?request_id, "upgraded connection reached upgrade_max_lifetime; closed");
                return;
            }
            _ = tokio::time::sleep(check) => {
                let last = Duration::from_millis(activity.load(std::sync::atomic::Ordering::Relaxed));
                if start.elapsed().saturating_sub(last) >= idle {
                    tracing::info!(request_id = ?request_id, "upgraded connection idle for upgrade_idle_timeout; closed");
                    return;
                }
            }
        }
    }
}

/// An upgraded stream that notes when it last moved a byte (ms since `start`).
struct Watched<T> {
    io: T,
    activity: Arc<std::sync::atomic::AtomicU64>,
    start: Instant,
}

impl<T> Watched<T> {
    fn touch(&self) {
        self.activity.store(
            self.start.elapsed().as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The head's own checks: within `max_headers` and `max_header_bytes`, and one valid
/// `Host` (RFC 9112 section 3.2: an HTTP/1.1 request without one, or with two, is a
/// 400), so the `X-Forwarded-Host` the upstream reads is the one the client sent.
fn check_head(limits: &crate::config::Limits, parts: &Parts) -> Result<(), Refusal> {
    if parts.headers.len() > limits.max_headers || headers::size(&parts.headers) > limits.max_header_bytes {
        return Err(Refusal::HeadersTooLarge);
    }
    let bad = |m: &'static str| Err(Refusal::BadRequest(m.into()));
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return bad("more than one Host header"),
        (None, _) if parts.version == Version::HTTP_11 => {
            return bad("an HTTP/1.1 request needs a Host header");
        }
        (host, _) => host,
    };
    // RFC 9112 section 3.2: a Host that is not `host[:port]` is a 400; and the authority
    // of an absolute-form target or of HTTP/2's `:authority` must be the Host's, so that
    // the `X-Forwarded-Host` the service reads is the authority the client addressed.
    if let Some(h) = host.filter(|h| !h.is_empty()) {
        let text = h.to_str().unwrap_or("");
        let after_host = text.rfind(']').map_or(text, |i| &text[i + 1..]);
        let port_ok = after_host
            .split_once(':')
            .is_none_or(|(_, p)| p.is_empty() || p.parse::<u16>().is_ok());
        let valid = !text.is_empty()
            && port_ok
            && !text
                .bytes()
                .any(|b| matches!(b, b'@' | b'/' | b'?' | b'#' | b',' | b' '))
            && http::uri::Authority::try_from(text).is_ok();
        if !valid {
            return bad("the Host header is not a host and port");
        }
        if let Some(a) = parts.uri.authority() {
            if !a.as_str().eq_ignore_ascii_case(h.to_str().unwrap_or("")) {
                return bad("the request target's authority and the Host header differ");
            }
        }
    }
    if parts.uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return bad("the request target's authority has user info");
    }
    Ok(())
}

/// Every check before forwarding: the route index and the principal (none for `auth = "none"`).
async fn decide(gw: &Gateway, ctx: &mut Ctx, parts: &mut Parts) -> Result<Permit, Refusal> {
    let path = parts.uri.path();
    let bad_path = |e: crate::path::PathError| Refusal::BadRequest(e.to_string().into());
    crate::path::check_path(path).map_err(bad_path)?;
    // Escapes of unreserved characters are decoded, and the decoded path is what is both
    // routed and forwarded.
    if let std::borrow::Cow::Owned(normal) = crate::path::normalize(path) {
        let pq = match parts.uri.query() {
            Some(q) => format!("{normal}?{q}"),
            None => normal,
        };
        let mut p = parts.uri.clone().into_parts();
        p.path_and_query = Some(
            pq.parse()
                .map_err(|_| Refusal::BadRequest("request target cannot be parsed".into()))?,
        );
        parts.uri = Uri::from_parts(p).map_err(|_| Refusal::BadRequest("request target cannot be parsed".into()))?;
    }
    let index = match gw.router.route(parts.uri.path(), &parts.method).map_err(bad_path)? {
        Match::Found(t) => t.integration,
        Match::MethodNotAllowed(allowed) => return Err(Refusal::MethodNotAllowed(allowed.to_vec())),
        Match::NotFound => return Err(Refusal::NotFound),
    };
    ctx.route = Some(index);
    let route = &gw.routes[index];
    let limit = gw.config.limits.max_body_bytes;
    if limit > 0 && content_length(parts).is_some_and(|n| n > limit) {
        return Err(Refusal::PayloadTooLarge);
    }
    headers::sanitize(&mut parts.headers, route.underscores);
    if let Some(permit) = Permit::public(index, &route.auth) {
        ctx.auth_method = Some(AuthMethod::None);
        return Ok(permit);
    }
    let route_ref = RouteRef {
        plan: &route.plan,
        integration: &route.integration,
    };
    let principal = match gw.auth.authenticate(&route.auth, route_ref, parts, ctx.client).await {
        Ok(p) => p,
        Err(f) => return Err(refuse(route, ctx, f)),
    };
    ctx.auth_method = Some(principal.method);
    ctx.principal = Some(principal.user.clone());
    ctx.cache_hit = Some(principal.cached);
    authz::authorize(index, &route.access, &route.senders, principal).map_err(|denied| {
        // RFC 6750 section 3.1: a valid token without the rights is insufficient_scope.
        let challenge = (denied.principal.method == AuthMethod::OAuth)
            .then(|| HeaderValue::from_static("Bearer realm=\"portcullis\", error=\"insufficient_scope\""));
        Refusal::Forbidden {
            reason: denied.reason,
            challenge,
        }
    })
}

/// Maps an authentication failure to its refusal, counting its precise reason.
fn refuse(route: &Route, ctx: &mut Ctx, f: Failure) -> Refusal {
    let first = route.auth.first().copied().unwrap_or(AuthMethod::None);
    match f {
        Failure::Missing => {
            ctx.auth_method = Some(first);
            Refusal::Missing {
                challenges: route.challenges.clone(),
            }
        }
        Failure::Rejected { method, reason } => {
            ctx.auth_method = Some(method);
            let mut challenges = route.challenges.clone();
            if method == AuthMethod::OAuth {
                // RFC 6750 section 3.1: say the token itself was the problem.
                for c in challenges.iter_mut() {
                    if c.as_bytes().starts_with(b"Bearer") {
                        *c = HeaderValue::from_static("Bearer realm=\"portcullis\", error=\"invalid_token\"");
                    }
                }
            }
            Refusal::Rejected {
                reason: reason.as_str(),
                challenges,
            }
        }
        Failure::LockedOut { method, retry_after } => {
            ctx.auth_method = Some(method);
            Refusal::LockedOut { retry_after }
        }
        Failure::Unavailable { method, reason } => {
            ctx.auth_method = Some(method);
            Refusal::Unavailable(reason)
        }
    }
}

fn content_length(parts: &Parts) -> Option<u64> {
    parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Edits the request head in place for the upstream; consumes the [`Permit`] and gives
/// back the route to forward to, so nothing is forwarded without one.
fn rewrite<'g>(
    gw: &'g Gateway,
    conn: &ConnInfo,
    ctx: &Ctx,
    parts: &mut Parts,
    permit: Permit,
) -> Result<&'g Route, Refusal> {
    let route_index = permit.route();
    let route = &gw.routes[route_index];
    let principal = permit.principal();
    let h = &mut parts.headers;
    headers::remove_hop_by_hop(h);
    let host = h.remove(header::HOST).or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    headers::set_forwarded(h, &conn.ip_header, conn.tls, host.as_ref());
    h.insert(headers::X_REQUEST_ID, ctx.request_id.clone());
    headers::continue_trace(h, &ctx.trace);
    h.insert(headers::X_PORTCULLIS_PLAN, route.plan_value.clone());
    h.insert(headers::X_PORTCULLIS_INTEGRATION, route.integration_value.clone());
    match principal {
        None => {
            h.insert(headers::X_PORTCULLIS_AUTH_METHOD, HeaderValue::from_static("none"));
        }
        Some(p) => {
            // The credential was for Portcullis: it goes no further, unless the
            // integration asks for the bearer token itself.
            if !(p.method == AuthMethod::OAuth && route.forward_token) {
                h.remove(header::AUTHORIZATION);
            }
            let id = p
                .headers
                .as_ref()
                .ok_or_else(|| Refusal::BadRequest("principal cannot be expressed in a header".into()))?;
            h.insert(headers::X_PORTCULLIS_USER, id.user.clone());
            h.insert(headers::X_PORTCULLIS_ROLES, id.roles.clone());
            h.insert(
                headers::X_PORTCULLIS_AUTH_METHOD,
                HeaderValue::from_static(p.method.as_str()),
            );
            if let Some(c) = &id.client_id {
                h.insert(headers::X_PORTCULLIS_CLIENT_ID, c.clone());
            }
            let assertion = gw
                .signer()
                .assertion(p, route_index, &route.plan, &route.integration)
                .ok_or(Refusal::BadGateway("assertion_signing_failed"))?;
            h.insert(headers::X_PORTCULLIS_ASSERTION, assertion);
        }
    }
    // The URL key is a credential: it never leaves Portcullis, whatever the route.
    let stripped = match parts.uri.query() {
        Some(q) if auth::url_key::may_contain(q) => Some(auth::url_key::strip(q)),
        _ => None,
    };
    parts.uri = upstream_uri(&route.upstream, &parts.uri, stripped)?;
    if let Upstream::Http { host, .. } = &route.upstream {
        parts.headers.insert(header::HOST, host.clone());
    }
    parts.version = Version::HTTP_11;
    Ok(route)
}

/// The upstream's scheme and authority, its base path, then the request's path and query
/// (`stripped`: the query with the URL key removed, when it had one). With no base path
/// and an untouched query the request's own path-and-query is reused, not copied.
fn upstream_uri(upstream: &Upstream, uri: &Uri, stripped: Option<Option<String>>) -> Result<Uri, Refusal> {
    let (builder, base) = match upstream {
        Upstream::Echo => (Uri::builder(), ""),
        Upstream::Http {
            scheme,
            authority,
            base_path,
            ..
        } => (
            Uri::builder().scheme(scheme.clone()).authority(authority.clone()),
            base_path.as_str(),
        ),
    };
    let bad = || Refusal::BadRequest("request target cannot be forwarded".into());
    let pq = match (uri.path_and_query(), &stripped) {
        (Some(pq), None) if base.is_empty() => pq.clone(),
        _ => {
            let path = uri.path();
            let query = match &stripped {
                Some(q) => q.as_deref(),
                None => uri.query(),
            };
            let mut s = String::with_capacity(base.len() + path.len() + query.map_or(0, |q| q.len() + 1));
            s.push_str(base);
            s.push_str(path);
            if let Some(q) = query {
                s.push('?');
                s.push_str(q);
            }
            http::uri::PathAndQuery::from_maybe_shared(bytes::Bytes::from(s.into_bytes().into_boxed_slice()))
                .map_err(|_| bad())?
        }
    };
    builder.path_and_query(pq).build().map_err(|_| bad())
}

/// Why the upstream gave no response.
#[derive(Debug)]
pub struct SendError {
    pub reason: &'static str,
    source: BoxError,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.source)
    }
}

/// Sends `req` to its route's upstream: by `client` when given, else by this thread's
/// in-task pool (per-core workers, `http://`), else by the pooled client its scheme calls
/// for.
async fn send(
    env: &Env,
    client: Option<&upstream::Client>,
    route: &Route,
    req: Request<Body>,
) -> Result<Response<Body>, SendError> {
    if let (true, None, Upstream::Http { scheme, h2c: false, .. }) = (env.in_task, client, &route.upstream) {
        if *scheme == http::uri::Scheme::HTTP {
            return upstream::h1::send(&route.upstream_addr, req)
                .await
                .map_err(|e| SendError {
                    reason: if e.connect {
                        "upstream_unreachable"
                    } else {
                        "upstream_error"
                    },
                    source: Box::new(e),
                });
        }
    }
    match &route.upstream {
        Upstream::Echo => upstream::echo(req).await.map_err(|source| SendError {
            reason: "upstream_error",
            source,
        }),
        // Boxed: hyper-util's request future (with its connector's) is several KB; inline,
        // it would size every request's future, moved on each hand-over.
        Upstream::Http { h2c, .. } => {
            match Box::pin(client.unwrap_or(if *h2c { &env.h2c } else { &env.client }).request(req)).await {
                Ok(resp) => Ok(resp.map(|b| b.map_err(BoxError::from).boxed_unsync())),
                Err(e) => Err(SendError {
                    reason: if e.is_connect() {
                        "upstream_unreachable"
                    } else {
                        "upstream_error"
                    },
                    source: Box::new(e),
                }),
            }
        }
    }
}

/// The finish phase: one access-log line and the metrics. A request whose client went
/// away before the answer is logged with status 499 and outcome `client_closed`.
fn finish(env: &Env, gw: &Gateway, ctx: &Ctx) {
    let elapsed = ctx.started.elapsed();
    let route = ctx.route.map(|i| &gw.routes[i]);
    let (plan, integration) = match (route, ctx.endpoint) {
        (Some(r), _) => (r.plan.as_str(), r.integration.as_str()),
        (None, Some(endpoint)) => ("portcullis", endpoint),
        (None, None) => ("", ""),
    };
    let auth_method = ctx.auth_method.map_or("", |m| m.as_str());
    let (status, refusal) = match ctx.status {
        Some(s) => (s, ctx.refusal),
        None => (499, Some((Outcome::ClientClosed, "client_closed"))),
    };
    let outcome = refusal.map_or(Outcome::Allowed, |(o, _)| o);
    let m = &env.metrics;
    match route {
        Some(r) => r.metrics.count(auth_method, outcome),
        None => m
            .requests
            .with_label_values(&[plan, integration, auth_method, outcome.as_str()])
            .inc(),
    }
    if outcome == Outcome::ClientClosed {
        m.client_closed.inc();
    }
    if let Some(r) = route {
        r.metrics.duration.observe(elapsed.as_secs_f64());
    }
    let reason = refusal.map(|(_, r)| r);
    if let Some((o, r)) = refusal {
        if matches!(o, Outcome::Unauthenticated | Outcome::LockedOut | Outcome::Forbidden) {
            m.auth_failures.with_label_values(&[auth_method, r]).inc();
        }
    }
    if let Some(reason) = reason {
        env.refusals.record(RefusalRecord {
            time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            request_id: ctx.request_id.to_str().unwrap_or("").to_string(),
            client_ip: ctx.client.to_string(),
            integration: if plan.is_empty() {
                String::new()
            } else {
                format!("{plan}/{integration}")
            },
            method: ctx.method.as_str().to_string(),
            path: ctx.uri.path().to_string(),
            auth_method: auth_method.to_string(),
            principal: ctx.principal.as_deref().unwrap_or("").to_string(),
            status,
            reason,
        });
    }
    tracing::info!(
        target: "portcullis::access",
        request_id = ctx.request_id.to_str().unwrap_or(""),
        client = %ctx.client,
        method = ctx.method.as_str(),
        path = ctx.uri.path(),
        plan,
        integration,
        auth_method,
        principal = ctx.principal.as_deref().unwrap_or(""),
        status,
        reason = reason.unwrap_or(""),
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        upstream_ms = ctx.upstream_elapsed.map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        protocol = ?ctx.version,
        host = ctx.host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or(""),
        user_agent = ctx.user_agent.as_ref().and_then(|h| h.to_str().ok()).unwrap_or(""),
        bytes_in = ctx.bytes_in,
        bytes_out = ctx.bytes_out,
        upstream = route.map_or("", |r| &*r.upstream_addr),
        trace_id = %hex::encode(ctx.trace.trace),
        "request"
    );
    if let Some(t) = &env.telemetry {
        let now = std::time::SystemTime::now();
        let at = |i: Instant| now.checked_sub(i.elapsed()).unwrap_or(now);
        let upstream = match (ctx.upstream_started, ctx.upstream_elapsed) {
            (Some(s), Some(d)) => Some((at(s), at(s) + d)),
            _ => None,
        };
        t.record(&crate::telemetry::RequestSpan {
            trace: ctx.trace,
            start: at(ctx.started),
            end: now,
            upstream,
            method: &ctx.method,
            path: ctx.uri.path(),
            status,
            route: route.map(|r| &r.span),
            endpoint: ctx.endpoint,
            auth_method,
            cache_hit: ctx.cache_hit,
            reason: reason.unwrap_or(""),
        });
    }
}

// === explain ===

/// What the pipeline decides for one request, without a connection and without calling
/// the upstream: the same checks, in the same order, as [`handle`] (`portcullis explain`).
#[derive(Debug)]
pub struct Explanation {
    /// `(plan, integration, path pattern, methods)` of the route, when one matched.
    pub route: Option<(String, String, String, Vec<String>)>,
    /// The integration's authentication methods.
    pub methods: Vec<AuthMethod>,
    /// The principal, when authentication named one.
    pub principal: Option<crate::auth::Principal>,
    /// Who the credentials named and by which method, also when the request was refused.
    pub named: Option<(String, AuthMethod)>,
    /// `Ok(upstream URL)` when the request would be forwarded; else the refusal:
    /// status, reason, the message the client would get.
    pub decision: Result<String, (u16, &'static str, String)>,
}

pub async fn explain(gw: &Gateway, mut parts: Parts, client: std::net::IpAddr) -> Explanation {
    let mut ctx = Ctx {
        client,
        request_id: headers::new_request_id(),
        started: Instant::now(),
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        route: None,
        endpoint: None,
        auth_method: None,
        principal: None,
        upstream_elapsed: None,
        status: None,
        refusal: None,
        version: parts.version,
        host: None,
        user_agent: None,
        bytes_in: None,
        bytes_out: None,
        trace: headers::trace_of(&parts.headers, 0),
        upstream_started: None,
        cache_hit: None,
        close: false,
    };
    let decided = decide(gw, &mut ctx, &mut parts).await;
    let route = ctx.route.map(|i| &gw.routes[i]);
    let mut out = Explanation {
        route: route.map(|r| {
            (
                r.plan.clone(),
                r.integration.clone(),
                r.path.clone(),
                r.methods.iter().map(|m| m.to_string()).collect(),
            )
        }),
        methods: route.map(|r| r.auth.clone()).unwrap_or_default(),
        principal: None,
        named: ctx
            .principal
            .as_deref()
            .zip(ctx.auth_method)
            .map(|(p, m)| (p.to_string(), m)),
        decision: Err((0, "", String::new())),
    };
    out.decision = match decided {
        Ok(permit) => {
            out.principal = permit.principal().cloned();
            let r = &gw.routes[permit.route()];
            match &r.upstream {
                Upstream::Echo => Ok("builtin:echo".to_string()),
                Upstream::Http {
                    scheme,
                    authority,
                    base_path,
                    ..
                } => {
                    let host = match authority.port_u16() {
                        Some(p) => format!("{}:{p}", authority.host()),
                        None => authority.host().to_string(),
                    };
                    Ok(format!("{scheme}://{host}{base_path}{}", parts.uri.path()))
                }
            }
        }
        Err(refusal) => Err((
            refusal.status().as_u16(),
            refusal.reason(),
            refusal.message().into_owned(),
        )),
    };
    out
}

// === forward-auth ===

/// The original request a forward-auth subrequest describes, read from one header family
/// only (`[forward_auth] ingress`): `X-Original-Method` and `X-Original-URI` (nginx),
/// `X-Forwarded-Method` and `X-Forwarded-Uri` (Traefik), or the subrequest's own method
/// and target (Envoy ext_authz). An ingress may copy the client's own headers into the
/// subrequest, so a client can add the other family's: named, the ingress's family alone
/// counts; left to detect, two families that disagree are a 400
/// `ambiguous_original_request`, as is any of these headers sent twice.
///
/// `is_route` says whether a path and method may name an integration.
fn original_request(
    parts: &Parts,
    ingress: Ingress,
    is_route: impl Fn(&str, &http::Method) -> bool,
) -> Result<(http::Method, Uri), Refusal> {
    let bad = |what: String| Refusal::BadRequest(format!("forward-auth: {what}").into());
    let ambiguous = |what: String| Refusal::Invalid {
        message: format!("forward-auth: {what}").into(),
        reason: "ambiguous_original_request",
    };
    // Exactly one line per header: a list where one value is expected is refused.
    let one = |name: &'static str| -> Result<Option<&str>, Refusal> {
        let mut all = parts.headers.get_all(name).iter();
        match (all.next(), all.next()) {
            (None, _) => Ok(None),
            (Some(v), None) => v
                .to_str()
                .map(Some)
                .map_err(|_| bad(format!("`{name}` is not visible ASCII"))),
            (Some(_), Some(_)) => Err(ambiguous(format!("`{name}` is sent more than once"))),
        }
    };
    let read = |method: &'static str, uri: &'static str| -> Result<Option<(http::Method, Uri)>, Refusal> {
        match (one(method)?, one(uri)?) {
            (None, None) => Ok(None),
            (Some(m), Some(u)) => {
                let m =
                    http::Method::from_bytes(m.as_bytes()).map_err(|_| bad(format!("`{method}` is not a method")))?;
                if !u.starts_with('/') {
                    return Err(bad(format!("`{uri}` is not a path (expected `/a/b?c`)")));
                }
                let u: Uri = u.parse().map_err(|_| bad(format!("`{uri}` cannot be parsed")))?;
                Ok(Some((m, u)))
            }
            _ => Err(bad(format!("`{method}` and `{uri}` come together"))),
        }
    };
    let nginx = || read("x-original-method", "x-original-uri");
    let traefik = || read("x-forwarded-method", "x-forwarded-uri");
    let own = || {
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri: Uri = target
            .parse()
            .map_err(|_| bad("the subrequest's target cannot be parsed".to_string()))?;
        Ok((parts.method.clone(), uri))
    };
    let missing = |family: &str| bad(format!("the {family} headers naming the original request are missing"));
    match ingress {
        Ingress::Nginx => nginx()?.ok_or_else(|| missing("X-Original-Method and X-Original-URI")),
        Ingress::Traefik => traefik()?.ok_or_else(|| missing("X-Forwarded-Method and X-Forwarded-Uri")),
        Ingress::Envoy => own(),
        Ingress::Detect => match (nginx()?, traefik()?) {
            (Some(a), Some(b)) if a != b => Err(ambiguous(
                "X-Original-* and X-Forwarded-* name different requests; set [forward_auth] ingress".to_string(),
            )),
            (Some(a), _) | (None, Some(a)) => {
                // Envoy sends the original request as the check request itself, and may
                // pass the client's headers along: a family naming another request than
                // a subrequest target that is itself a route is ambiguous.
                let (method, target) = own()?;
                if (method != a.0 || target != a.1) && is_route(target.path(), &method) {
                    return Err(ambiguous(
                        "the headers name another request than the subrequest's own target; set [forward_auth] ingress"
                            .to_string(),
                    ));
                }
                Ok(a)
            }
            (None, None) => own(),
        },
    }
}

async fn forward_auth_inner(
    gw: &Gateway,
    conn: &ConnInfo,
    ctx: &mut Ctx,
    req: Request<Incoming>,
) -> Result<Response<Body>, Refusal> {
    let (mut parts, body) = req.into_parts();
    upstream::drain(body);
    // Only an ingress may describe requests: anyone else could name any URI.
    let peer = conn.remote.ip().to_canonical();
    if !gw.config.listen.trusted_proxies.iter().any(|n| n.contains(&peer)) {
        return Err(Refusal::Forbidden {
            reason: "untrusted_forwarder",
            challenge: None,
        });
    }
    // A path that fails the path rules could still reach a route behind a lenient
    // ingress: it counts as one.
    let is_route = |path: &str, method: &http::Method| {
        crate::path::check_path(path).is_err()
            || !matches!(
                gw.router.route(&crate::path::normalize(path), method),
                Ok(Match::NotFound)
            )
    };
    let (method, uri) = original_request(&parts, gw.config.forward_auth_ingress, is_route)?;
    for name in [
        "x-original-uri",
        "x-original-method",
        "x-forwarded-uri",
        "x-forwarded-method",
    ] {
        parts.headers.remove(name);
    }
    parts.method = method.clone();
    parts.uri = uri.clone();
    ctx.method = method;
    ctx.uri = uri;
    check_head(&gw.config.limits, &parts)?;
    let permit = decide(gw, ctx, &mut parts).await?;
    // The headers the proxy path would set, made the same way, returned for the ingress.
    rewrite(gw, conn, ctx, &mut parts, permit)?;
    let mut resp = Response::new(crate::error::full(bytes::Bytes::new()));
    for (name, value) in &parts.headers {
        if name.as_str().starts_with("x-portcullis-") {
            resp.headers_mut().append(name.clone(), value.clone());
        }
    }
    Ok(resp)
}
