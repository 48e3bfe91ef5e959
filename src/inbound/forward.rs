//! The body and forward phases: the request body held to its limits, the call to the
//! upstream (the network, or the generation's in-process service), and what the
//! upstream's answer, or its failure, becomes.

use std::time::Instant;

use http::request::Parts;
use http::{header, Request, Response};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::ctx::Ctx;
use crate::config::Upstream;
use crate::error::{Body, BoxError, Refusal};
use crate::gateway::{Env, Gateway, Route, Upstreams};
use crate::headers;
use crate::upstream::{self, BodyError, Overflow, RequestBody};

/// Why the upstream gave no response.
#[derive(Debug, thiserror::Error)]
#[error("{reason}: {source}")]
pub struct SendError {
    /// `upstream_unreachable` (no connection) or `upstream_error` (anything after).
    pub reason: &'static str,
    source: BoxError,
}

impl SendError {
    fn new(connect: bool, source: BoxError) -> Self {
        SendError {
            reason: if connect {
                "upstream_unreachable"
            } else {
                "upstream_error"
            },
            source,
        }
    }
}

/// When the whole request, body included, must be done: `request_timeout` from its head.
fn deadline(gw: &Gateway, ctx: &Ctx) -> tokio::time::Instant {
    tokio::time::Instant::from_std(ctx.started) + gw.config.limits.request_timeout
}

/// The body phase: `body` bounded by `max_body_bytes`, `body_read_timeout` and the
/// request's deadline ([`upstream::limit_body`]), with what tells later how it ended.
pub(super) async fn limit_body<B: RequestBody>(
    gw: &Gateway,
    ctx: &Ctx,
    parts: &Parts,
    body: B,
) -> Result<(Body, Overflow), Refusal> {
    let limits = &gw.config.limits;
    let timing = upstream::BodyTiming {
        idle: limits.body_read_timeout,
        until: deadline(gw, ctx),
        spool_max: limits.max_spool_bytes,
    };
    match upstream::limit_body(body, limits.max_body_bytes, content_length(parts), timing).await {
        Ok(x) => Ok(x),
        Err(BodyError::TooLarge) => Err(Refusal::PayloadTooLarge),
        Err(BodyError::Timeout) => Err(Refusal::BodyTimeout),
        Err(BodyError::Client(e)) if upstream::client_gone(&e) => Err(Refusal::ClientClosed),
        Err(BodyError::Client(_)) => Err(Refusal::BadRequest("request body could not be read".into())),
    }
}

/// The declared `Content-Length`, when there is one to read.
pub(super) fn content_length(parts: &Parts) -> Option<u64> {
    parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The forward phase: `req` to the upstream within the request's deadline, timed and
/// observed; a failure becomes the refusal that says whose fault it was (the client's
/// body: 413 or 408; the upstream: 502 or 504).
pub(super) async fn forward(
    env: &Env,
    gw: &Gateway,
    ctx: &mut Ctx,
    route: &Route,
    client: Option<&upstream::Client>,
    req: Request<Body>,
    overflow: &Overflow,
) -> Result<Response<Body>, Refusal> {
    let started = Instant::now();
    ctx.upstream_started = Some(started);
    let sent = tokio::time::timeout_at(deadline(gw, ctx), send(env, &gw.upstreams, client, route, req)).await;
    let elapsed = started.elapsed();
    ctx.upstream_elapsed = Some(elapsed);
    route.metrics.upstream.observe(elapsed.as_secs_f64());
    match sent {
        // Time ran out while the client was still sending: the client's delay, not the
        // upstream's.
        Err(_) if overflow.timed_out() || !overflow.finished() => Err(Refusal::BodyTimeout),
        Err(_) => Err(Refusal::GatewayTimeout),
        Ok(Err(_)) if overflow.happened() => Err(Refusal::PayloadTooLarge),
        // The upstream call failed because the client's body broke off: the client's
        // leaving, not the upstream's fault.
        Ok(Err(_)) if overflow.client_gone() => Err(Refusal::ClientClosed),
        Ok(Err(_)) if overflow.timed_out() => Err(Refusal::BodyTimeout),
        Ok(Err(e)) => {
            tracing::debug!(request_id = ?ctx.request_id, error = %crate::util::Escaped(&e), "upstream request failed");
            Err(Refusal::BadGateway(e.reason))
        }
        Ok(Ok(resp)) => Ok(resp),
    }
}

/// The upstream's answer to a request that asked for no upgrade, as the client gets it.
pub(super) fn answer(ctx: &mut Ctx, mut resp: Response<Body>) -> Result<Response<Body>, Refusal> {
    // A 101 would leave client and gateway speaking different protocols on one
    // connection.
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        ctx.close = true;
        return Err(Refusal::BadGateway("upgrade_refused"));
    }
    headers::remove_hop_by_hop(resp.headers_mut());
    Ok(resp)
}

type Called = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, BoxError>> + Send>>;

/// The generation's upstream service, called once (readiness first, as tower asks). A
/// plain function with a named future type: inside the `async fn`, the compiler cannot
/// prove the service's future `Send` for every lifetime of the boxed error type.
fn call(service: &crate::gateway::UpstreamService, req: Request<Body>) -> Called {
    Box::pin(service.clone().oneshot(req))
}

/// Sends `req` to its route's upstream: to the generation's service when it has one;
/// else by `client` when given (upgrades), else by this thread's in-task pool (per-core
/// workers, `http://`), else by the pooled client its scheme calls for.
async fn send(
    env: &Env,
    upstreams: &Upstreams,
    client: Option<&upstream::Client>,
    route: &Route,
    req: Request<Body>,
) -> Result<Response<Body>, SendError> {
    if let Upstreams::Service(service) = upstreams {
        return call(service, req).await.map_err(|e| SendError::new(false, e));
    }
    if let (true, None, Upstream::Http { scheme, h2c: false, .. }) = (env.in_task, client, &route.upstream) {
        if *scheme == http::uri::Scheme::HTTP {
            return upstream::h1::send(&route.upstream_addr, req)
                .await
                .map_err(|e| SendError::new(e.connect, Box::new(e)));
        }
    }
    match &route.upstream {
        Upstream::Echo => upstream::echo(req).await.map_err(|e| SendError::new(false, e)),
        // Boxed: hyper-util's request future (with its connector's) is several KB; inline,
        // it would size every request's future, moved on each hand-over.
        Upstream::Http { h2c, .. } => {
            match Box::pin(client.unwrap_or(if *h2c { &env.h2c } else { &env.client }).request(req)).await {
                Ok(resp) => Ok(resp.map(|b| b.map_err(BoxError::from).boxed_unsync())),
                Err(e) => Err(SendError::new(e.is_connect(), Box::new(e))),
            }
        }
    }
}
