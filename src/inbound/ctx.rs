//! The request's context ([`Ctx`]) and the finish phase: one access-log line, the
//! metrics, the refusal ring and the span, for every request, exactly once (the guard
//! [`crate::util::Finish`] runs it also when the client went away first).

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::Request;

use crate::config::AuthMethod;
use crate::gateway::{Env, Gateway, RefusalRecord, Route};
use crate::headers;
use crate::metrics::Outcome;

/// What the phases learn about one request and the finish phase reports.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The client's address: the peer, or the client a trusted proxy names.
    pub client: std::net::IpAddr,
    pub request_id: HeaderValue,
    pub started: Instant,
    pub method: http::Method,
    /// The request target as received (a reference-counted view, not a copy).
    pub uri: http::Uri,
    /// The index of the route (`Gateway::routes`) the request matched.
    pub route: Option<usize>,
    /// A built-in endpoint of the gateway itself (the OAuth issuer's), when no route.
    pub endpoint: Option<&'static str>,
    pub auth_method: Option<AuthMethod>,
    pub principal: Option<Arc<str>>,
    /// The OAuth issuer (its name) that named the principal.
    pub issuer: Option<Arc<str>>,
    pub upstream_elapsed: Option<Duration>,
    /// The answer's status; `None` while the request is in flight.
    pub status: Option<u16>,
    pub refusal: Option<(Outcome, &'static str)>,
    pub version: http::Version,
    pub host: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
    /// Declared body lengths (`Content-Length`, or a body known to be empty).
    pub bytes_in: Option<u64>,
    pub bytes_out: Option<u64>,
    /// The request's trace (W3C Trace Context), and when its upstream call started.
    pub trace: headers::TraceIds,
    pub upstream_started: Option<Instant>,
    /// Whether the credential came from a cache, once one was checked.
    pub cache_hit: Option<bool>,
    /// The client's connection closes after this answer (a refused upgrade).
    pub close: bool,
    /// `RateLimit-Policy` for the answer, when the route has limits, and `RateLimit`
    /// when they were counted.
    pub rate_policy: Option<HeaderValue>,
    pub rate_state: Option<HeaderValue>,
    /// What the refusal's reason alone does not say (which `when` refused, its error):
    /// for the log and the admin page, never for the client.
    pub detail: Option<Arc<str>>,
    /// `portcullis explain`: every authorization rule is evaluated into `judged`.
    pub explaining: bool,
    pub judged: Vec<crate::authz::Judged>,
}

impl Ctx {
    /// The context of a request whose head just arrived; `sample` is the span sampling
    /// rate of `[tracing]`.
    pub fn of_request<B: http_body::Body>(req: &Request<B>, client: std::net::IpAddr, sample: u64) -> Ctx {
        let h = req.headers();
        let trace = headers::trace_of(h, sample);
        let mut ctx = Ctx::new(
            client,
            headers::request_id(h),
            req.method(),
            req.uri(),
            req.version(),
            trace,
        );
        ctx.host = h.get(header::HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        ctx.user_agent = h.get(header::USER_AGENT).cloned();
        ctx.bytes_in = req.body().size_hint().exact();
        ctx
    }

    /// A context with only what every request has.
    pub fn new(
        client: std::net::IpAddr,
        request_id: HeaderValue,
        method: &http::Method,
        uri: &http::Uri,
        version: http::Version,
        trace: headers::TraceIds,
    ) -> Ctx {
        Ctx {
            client,
            request_id,
            started: Instant::now(),
            method: method.clone(),
            uri: uri.clone(),
            route: None,
            endpoint: None,
            auth_method: None,
            principal: None,
            issuer: None,
            upstream_elapsed: None,
            status: None,
            refusal: None,
            version,
            host: None,
            user_agent: None,
            bytes_in: None,
            bytes_out: None,
            trace,
            upstream_started: None,
            cache_hit: None,
            close: false,
            rate_policy: None,
            rate_state: None,
            detail: None,
            explaining: false,
            judged: Vec::new(),
        }
    }

    /// The answer is ready: its status (unless a gRPC refusal set the one it stands for)
    /// and its declared length.
    pub(super) fn answered(&mut self, resp: &http::Response<crate::error::Body>) {
        self.status.get_or_insert(resp.status().as_u16());
        self.bytes_out = http_body::Body::size_hint(resp.body()).exact();
    }
}

/// A request in flight: its context and what finishing it needs.
pub(super) struct Live {
    pub env: Arc<Env>,
    pub gw: Arc<Gateway>,
    pub ctx: Ctx,
}

impl crate::util::Finishing for Live {
    fn finish(&mut self) {
        finish(&self.env, &self.gw, &self.ctx);
    }
}

/// The finish phase: the metrics, the refusal ring, the access-log line and the span. A
/// request whose client went away before the answer is finished with status 499 and
/// outcome `client_closed`.
fn finish(env: &Env, gw: &Gateway, ctx: &Ctx) {
    let route = ctx.route.map(|i| &gw.routes()[i]);
    let (plan, integration) = match (route, ctx.endpoint) {
        (Some(r), _) => (r.plan.as_str(), r.integration.as_str()),
        (None, Some(endpoint)) => ("portcullis", endpoint),
        (None, None) => ("", ""),
    };
    let (status, refusal) = match ctx.status {
        Some(s) => (s, ctx.refusal),
        None => (499, Some((Outcome::ClientClosed, "client_closed"))),
    };
    let done = Done {
        ctx,
        route,
        plan,
        integration,
        auth_method: ctx.auth_method.map_or("", |m| m.as_str()),
        status,
        refusal,
        elapsed: ctx.started.elapsed(),
    };
    done.count(env);
    done.record(env);
    done.log();
    done.span(env);
}

/// A finished request, as the finish phase reports it.
struct Done<'a> {
    ctx: &'a Ctx,
    route: Option<&'a Route>,
    plan: &'a str,
    integration: &'a str,
    auth_method: &'static str,
    status: u16,
    refusal: Option<(Outcome, &'static str)>,
    elapsed: Duration,
}

impl Done<'_> {
    fn reason(&self) -> &'static str {
        self.refusal.map_or("", |(_, r)| r)
    }

    /// `portcullis_requests_total`, the duration histogram, `client_closed` and
    /// `auth_failures`.
    fn count(&self, env: &Env) {
        let outcome = self.refusal.map_or(Outcome::Allowed, |(o, _)| o);
        let m = &env.metrics;
        match self.route {
            Some(r) => {
                r.metrics.count(self.auth_method, outcome);
                r.metrics.duration.observe(self.elapsed.as_secs_f64());
            }
            None => m
                .requests
                .with_label_values(&[self.plan, self.integration, self.auth_method, outcome.as_str()])
                .inc(),
        }
        if outcome == Outcome::ClientClosed {
            m.client_closed.inc();
        }
        if let Some((o, r)) = self.refusal {
            if matches!(o, Outcome::Unauthenticated | Outcome::LockedOut | Outcome::Forbidden) {
                m.auth_failures.with_label_values(&[self.auth_method, r]).inc();
            }
        }
    }

    /// A refusal goes into the admin page's ring.
    fn record(&self, env: &Env) {
        let Some((_, reason)) = self.refusal else {
            return;
        };
        let ctx = self.ctx;
        env.refusals.record(RefusalRecord {
            time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            request_id: ctx.request_id.to_str().unwrap_or("").to_string(),
            client_ip: ctx.client.to_string(),
            integration: if self.plan.is_empty() {
                String::new()
            } else {
                format!("{}/{}", self.plan, self.integration)
            },
            method: ctx.method.as_str().to_string(),
            path: ctx.uri.path().to_string(),
            auth_method: self.auth_method.to_string(),
            principal: ctx.principal.as_deref().unwrap_or("").to_string(),
            status: self.status,
            reason,
            detail: ctx.detail.as_deref().unwrap_or("").to_string(),
        });
    }

    /// The access-log line.
    fn log(&self) {
        let ctx = self.ctx;
        tracing::info!(
            target: "portcullis::access",
            request_id = ctx.request_id.to_str().unwrap_or(""),
            client = %ctx.client,
            method = ctx.method.as_str(),
            path = ctx.uri.path(),
            plan = self.plan,
            integration = self.integration,
            auth_method = self.auth_method,
            principal = ctx.principal.as_deref().unwrap_or(""),
            issuer = ctx.issuer.as_deref().unwrap_or(""),
            status = self.status,
            reason = self.reason(),
            detail = ctx.detail.as_deref().unwrap_or(""),
            latency_ms = self.elapsed.as_secs_f64() * 1000.0,
            upstream_ms = ctx.upstream_elapsed.map_or(0.0, |d| d.as_secs_f64() * 1000.0),
            protocol = ?ctx.version,
            host = ctx.host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or(""),
            user_agent = ctx.user_agent.as_ref().and_then(|h| h.to_str().ok()).unwrap_or(""),
            bytes_in = ctx.bytes_in,
            bytes_out = ctx.bytes_out,
            upstream = self.route.map_or("", |r| &*r.upstream_addr),
            trace_id = %hex::encode(ctx.trace.trace),
            "request"
        );
    }

    /// The request's span (and its upstream call's), when spans are exported.
    fn span(&self, env: &Env) {
        let Some(t) = &env.telemetry else {
            return;
        };
        let ctx = self.ctx;
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
            status: self.status,
            route: self.route.map(|r| &r.span),
            endpoint: ctx.endpoint,
            auth_method: self.auth_method,
            issuer: ctx.issuer.as_deref(),
            cache_hit: ctx.cache_hit,
            reason: self.reason(),
        });
    }
}
