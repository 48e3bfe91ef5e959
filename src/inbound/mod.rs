//! The inbound pipeline: every request runs these phases, top to bottom, once. This is
//! the one phase chart of the project (README.md and ARCHITECTURE.md link here); each
//! phase names the file that holds it.
//!
//! ```text
//!  phase         what it does; what it refuses                                 file
//!  check head    431 headers over max_header_bytes; 400 a Host that is not     decide.rs
//!                host[:port], two Hosts, none on HTTP/1.1, or an authority
//!                other than the Host's
//!  (issuer)      the builtin issuer's /oauth/token, /oauth/revoke and          auth::oauth::
//!                /oauth/jwks.json answer here instead of a route               builtin
//!  route         400 ambiguous path; unreserved escapes decoded (the decoded   decide.rs
//!                path is routed and forwarded); 404 no integration for the
//!                path; 405 not for this method (with Allow); 400 if the path
//!                read without case or trailing / is another integration's
//!  body limit    413 declared Content-Length over max_body_bytes               decide.rs
//!  hygiene       drop client-sent X-Portcullis-* in every spelling, header     decide.rs ->
//!                names with _ (unless the plan sets underscores_in_headers),  headers
//!                routing and client-identity overrides (X-Original-URL,
//!                X-HTTP-Method-Override, Forwarded, X-Real-IP, ...)
//!  authenticate  429 locked out; 401 missing or refused credentials; 503 an    decide.rs ->
//!                identity provider unavailable                  -> Principal   auth
//!  authorize     403 plan access AND integration senders        -> Permit      decide.rs ->
//!                                                                              authz
//!  rate          429 over the plan's or the integration's rate limit (GCRA,     rate.rs
//!                per principal, client IP or integration, across replicas
//!                on Redis); 503 the budget cannot be counted
//!  body          413 a body over max_body_bytes; 408 one that stalls past      forward.rs
//!                body_read_timeout or request_timeout; trailers dropped
//!  upgrade       400 a malformed WebSocket handshake, or one the integration   upgrade.rs
//!                does not allow (RFC 8441 extended CONNECT)
//!  rewrite       drop hop-by-hop headers (and those named in Connection), the  rewrite.rs
//!                consumed Authorization (a Bearer token too, unless
//!                forward_token = true), every apiKey query parameter; set
//!                X-Forwarded-For (appended), -Proto, -Host, X-Request-Id, the
//!                trace, X-Portcullis-* and the signed assertion
//!  forward       stream to the upstream (pooled, or the generation's service); forward.rs
//!                413/408 if the streamed body passes its limit or its time;
//!                502 unreachable, or a 101 nobody asked for; 504 no response
//!                head within request_timeout
//!  tunnel        a 101 that proves the upstream read the gateway's own key     upgrade.rs
//!                opens the WebSocket tunnel; anything else is a 502
//!  finish        one access-log line, the metrics, the refusal ring and the    ctx.rs
//!                span, for every request, exactly once (499 client_closed
//!                when the client went away first)
//! ```
//!
//! Forward-auth (`forward_auth.rs`) runs check head through rewrite for the request a
//! subrequest describes and answers with the headers instead of forwarding; `explain`
//! (`explain.rs`) runs route through authorize for `portcullis explain`.
//!
//! [`serve`] holds the request's [`Ctx`] in a guard that runs the finish phase once, and
//! turns a [`Refusal`] into the contract's answer in one place. [`handle_inner`] is the
//! chart above as a line of `?` steps.

mod ctx;
mod decide;
mod explain;
mod forward;
mod forward_auth;
mod rate;
mod rewrite;
mod upgrade;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, Version};

use crate::auth::oauth::builtin;
use crate::config::AuthMethod;
pub use crate::error::Refusal;
use crate::error::{Answer, Body};
use crate::gateway::{Env, Gateway};
use crate::server::listener::ConnInfo;
use crate::upstream::{self, RequestBody};
use crate::util::Finish;

pub use ctx::Ctx;
pub use explain::{explain, Explanation};
pub use forward::SendError;

/// Serves one inbound request; never fails.
pub async fn handle<B: RequestBody>(
    env: Arc<Env>,
    gw: Arc<Gateway>,
    req: Request<B>,
    conn: Arc<ConnInfo>,
) -> Response<Body> {
    serve(env, gw, req, conn, Mode::Proxy, false).await
}

/// Answers one forward-auth subrequest (nginx `auth_request`, Traefik ForwardAuth,
/// Envoy ext_authz HTTP service): the decision for the original request it describes,
/// with the principal's `X-Portcullis-*` headers (and assertion) for the ingress to
/// copy; never forwards anything.
pub async fn forward_auth<B: RequestBody>(
    env: Arc<Env>,
    gw: Arc<Gateway>,
    req: Request<B>,
    conn: Arc<ConnInfo>,
) -> Response<Body> {
    serve(env, gw, req, conn, Mode::ForwardAuth, false).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Proxy,
    ForwardAuth,
}

/// One request from its head to its answer: the [`Ctx`] in its finish guard, the phases,
/// and the one place a refusal becomes the answer (JSON, or a gRPC status for a gRPC
/// client), with `X-Request-Id` on every answer. With `report`, the finished [`Ctx`]
/// rides on the answer's extensions (the in-process [`Pipeline`] of tests asks for it).
async fn serve<B: RequestBody>(
    env: Arc<Env>,
    gw: Arc<Gateway>,
    req: Request<B>,
    conn: Arc<ConnInfo>,
    mode: Mode,
    report: bool,
) -> Response<Body> {
    let client = gw.config.listen.client_ip(conn.remote.ip(), req.headers());
    let sample = env.telemetry.as_ref().map_or(0, |t| t.sample);
    let mut guard = Finish::default();
    let live = guard.start(ctx::Live {
        ctx: Ctx::of_request(&req, client, sample),
        env: env.clone(),
        gw: gw.clone(),
    });
    let ctx = &mut live.ctx;
    // A gRPC client reads refusals as gRPC statuses, not HTTP ones.
    let grpc = mode == Mode::Proxy
        && req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(crate::headers::is_grpc);
    let inner = match mode {
        Mode::Proxy => handle_inner(&env, &gw, &conn, ctx, req).await,
        Mode::ForwardAuth => forward_auth::handle(&gw, &conn, ctx, req).await,
    };
    let mut resp = match inner {
        Ok(resp) => resp,
        Err(r) => {
            ctx.refusal = Some((r.outcome(), r.reason()));
            if grpc {
                // Logged and counted with the HTTP status it stands for, though it
                // travels as 200 and a grpc-status.
                ctx.status = Some(r.status().as_u16());
                r.into_grpc_response()
            } else {
                crate::error::answer(&r, &ctx.request_id)
            }
        }
    };
    resp.headers_mut()
        .insert(crate::headers::X_REQUEST_ID, ctx.request_id.clone());
    // Appended: an upstream's own limits stay in the list beside the gateway's.
    if let Some(policy) = ctx.rate_policy.take() {
        resp.headers_mut().append(crate::headers::RATELIMIT_POLICY, policy);
    }
    if let Some(state) = ctx.rate_state.take() {
        resp.headers_mut().append(crate::headers::RATELIMIT, state);
    }
    if ctx.close && ctx.version <= Version::HTTP_11 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    ctx.answered(&resp);
    let finished = guard.complete();
    if report {
        if let Some(live) = finished {
            resp.extensions_mut().insert(live.ctx);
        }
    }
    resp
}

/// The pipeline as a `tower::Service`, for one connection's requests: what a test drives
/// in process (`oneshot`), with a generation whose upstream is a service of its own
/// ([`Gateway::with_upstream`](crate::gateway::Gateway::with_upstream)). Each answer
/// carries the request's finished [`Ctx`] in its extensions.
#[derive(Clone)]
pub struct Pipeline {
    pub env: Arc<Env>,
    pub gw: Arc<Gateway>,
    pub conn: Arc<ConnInfo>,
    pub forward_auth: bool,
}

impl<B: RequestBody> tower::Service<Request<B>> for Pipeline {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let mode = if self.forward_auth {
            Mode::ForwardAuth
        } else {
            Mode::Proxy
        };
        let (env, gw, conn) = (self.env.clone(), self.gw.clone(), self.conn.clone());
        Box::pin(async move { Ok(serve(env, gw, req, conn, mode, true).await) })
    }
}

/// The phases of the proxy path, in order.
async fn handle_inner<B: RequestBody>(
    env: &Env,
    gw: &Gateway,
    conn: &ConnInfo,
    ctx: &mut Ctx,
    req: Request<B>,
) -> Result<Response<Body>, Refusal> {
    let (mut parts, body) = req.into_parts();
    let admitted = match admit(gw, conn, ctx, &mut parts).await {
        Ok(admitted) => admitted,
        Err(r) => {
            upstream::drain(body);
            return Err(r);
        }
    };
    let (permit, h2_websocket) = match admitted {
        Admitted::Route { permit, h2_websocket } => (permit, h2_websocket),
        Admitted::Issuer(issuer) => {
            let timeout = gw.config.limits.request_timeout;
            return issuer.serve(&gw.auth, &parts, body, ctx.client, timeout).await;
        }
    };
    let (body, overflow) = forward::limit_body(gw, ctx, &parts, body).await?;
    let upgrade = upgrade::prepare(gw, conn, &mut parts, &permit, h2_websocket)?;
    let route = rewrite::rewrite(gw, conn, ctx, &mut parts, permit)?;
    if let Some(u) = &upgrade {
        u.ask(&mut parts.headers)?;
    }
    let client = upgrade.as_ref().map(|_| &env.h1);
    // limit_body dropped the client's trailers: they could carry any header past the checks.
    let req = Request::from_parts(parts, body);
    let resp = forward::forward(env, gw, ctx, route, client, req, &overflow).await?;
    match upgrade {
        None => forward::answer(ctx, resp),
        Some(u) => upgrade::open(&gw.config.limits, ctx, u, resp),
    }
}

/// What the head's checks let through: a route's permit, or the builtin issuer's
/// endpoint.
enum Admitted<'g> {
    Route {
        permit: crate::authz::Permit,
        h2_websocket: bool,
    },
    Issuer(&'g builtin::Issuer),
}

/// Check head, the issuer's endpoints, route, hygiene, authenticate, authorize: every
/// phase before the body is read.
async fn admit<'g>(
    gw: &'g Gateway,
    conn: &ConnInfo,
    ctx: &mut Ctx,
    parts: &mut http::request::Parts,
) -> Result<Admitted<'g>, Refusal> {
    decide::check_head(&gw.config.limits, parts)?;
    let h2_websocket = upgrade::extended_connect(parts)?;
    // The client certificate this connection's handshake verified, for `auth = "mtls"`.
    if let Some(cert) = &conn.client_cert {
        parts.extensions.insert(cert.clone());
    }
    if let Some(issuer) = gw.auth.oauth.as_ref().and_then(|o| o.issuer()) {
        // Matched as routes are: with escapes of unreserved characters decoded.
        if let Some(endpoint) = builtin::endpoint(&crate::path::normalize(parts.uri.path())) {
            // The issuer's endpoints are routes of the pipeline too: their refusals are
            // counted, logged and shown like any other, under their own labels.
            ctx.endpoint = Some(endpoint);
            ctx.auth_method = Some(AuthMethod::OAuth);
            return Ok(Admitted::Issuer(issuer));
        }
    }
    let permit = decide::decide(gw, ctx, parts).await?;
    rate::limit(gw, ctx, &permit, true).await?;
    Ok(Admitted::Route { permit, h2_websocket })
}
