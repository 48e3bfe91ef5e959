//! One config generation, ready to serve: the [`Gateway`] (routes resolved once, the
//! router, TLS acceptor, authentication, assertion signer, egress endpoints, and where
//! forwarded requests go), and the [`Env`] every request of every generation shares
//! (metrics, span export, upstream clients, the refusal ring). The inbound pipeline
//! reads a generation; the egress listener reads its endpoints; neither builds one.

use std::sync::Arc;

use http::header::HeaderValue;
use http::{Request, Response};
use tokio_rustls::TlsAcceptor;

use crate::assertion::Signer;
use crate::auth::{self, Auth};
use crate::config::{AuthMethod, Config, RateKey, RateLimit, Rule, Upstream};
use crate::error::{Body, BoxError};
use crate::headers::HostPort;
use crate::metrics::{Metrics, RouteMetrics};
use crate::route::{Router, Target};
use crate::shared::{Budget, Cell, MemoryRates, Rates};
use crate::upstream;

/// Why a config could not become a running gateway.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("oauth: {0}")]
    OAuth(#[from] crate::auth::oauth::BuildError),
    #[error("egress: {0}")]
    Egress(#[from] crate::egress::EndpointError),
    #[error("shared store: {0}")]
    Shared(#[from] crate::shared::SharedError),
    #[error("shared store: {0}")]
    SigningKey(#[from] crate::auth::oauth::KeyError),
    #[error("tracing: {0}")]
    Tracing(#[from] crate::telemetry::StartError),
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

    pub(crate) fn record(&self, r: RefusalRecord) {
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
    /// What the reason alone does not say (which policy refused, and its error).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// One config generation, ready to serve.
pub struct Gateway {
    pub config: Config,
    pub router: Router,
    routes: Vec<Route>,
    pub tls: Option<TlsAcceptor>,
    pub auth: Auth,
    signer: Signer,
    pub egress: crate::egress::Egress,
    /// Where forwarded requests go: the network, or a service of the caller's.
    pub upstreams: Upstreams,
    /// Where the routes' rate limits count.
    pub limiter: Limiter,
}

/// Where the pipeline sends what it forwards. `Network` is every route's own upstream,
/// over the worker's clients ([`Env`]); `Service` is one `tower::Service` in process, in
/// place of every upstream, so the whole pipeline runs without a socket (its unit tests).
#[derive(Clone, Default)]
pub enum Upstreams {
    #[default]
    Network,
    Service(UpstreamService),
}

/// An upstream in process: any `tower::Service` from request to response.
pub type UpstreamService = tower::util::BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>;

/// Everything the pipeline needs about one integration, resolved once.
pub struct Route {
    pub path: String,
    pub methods: Vec<http::Method>,
    pub plan: String,
    pub integration: String,
    pub(crate) plan_value: HeaderValue,
    pub(crate) integration_value: HeaderValue,
    pub upstream: Upstream,
    /// `host:port` of the upstream (no user info), for the access log.
    pub(crate) upstream_addr: Arc<str>,
    pub(crate) access: Rule,
    pub(crate) senders: Rule,
    /// The plan's and the integration's `when` policies (compiled with the config).
    pub(crate) plan_when: Option<crate::policy::Policy>,
    pub(crate) when: Option<crate::policy::Policy>,
    /// Token claims sent upstream, each under its `X-Portcullis-*` header.
    pub(crate) claim_headers: Vec<crate::config::ClaimHeader>,
    pub auth: Vec<AuthMethod>,
    /// The plan forwards header names with `_`.
    pub(crate) underscores: bool,
    /// The integration forwards the client's bearer token.
    pub(crate) forward_token: bool,
    /// WebSocket upgrades pass (once authorized).
    pub(crate) websocket: bool,
    pub(crate) challenges: Vec<HeaderValue>,
    pub(crate) metrics: RouteMetrics,
    /// The plan's rate limit, then the integration's: each applies.
    pub(crate) rates: Vec<RouteRate>,
    /// Its names as span attributes, shared by every span.
    pub(crate) span: crate::telemetry::RouteSpan,
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
                let cfg = crate::server::tls::server_config(key, config.listen.client_verifier.clone())?;
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
                        let default = if *scheme == http::uri::Scheme::HTTPS { 443 } else { 80 };
                        HostPort::with_port(authority, default).to_string()
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
                    plan_when: plan.when.clone(),
                    when: integ.when.clone(),
                    claim_headers: integ.claim_headers.clone(),
                    auth: integ.auth.clone(),
                    underscores: plan.underscores_in_headers,
                    forward_token: integ.forward_token,
                    websocket: integ.websocket,
                    challenges: challenges(&integ.auth),
                    metrics: RouteMetrics::new(metrics, &plan.name, &integ.name),
                    rates: [("plan", &plan.rate), ("integration", &integ.rate)]
                        .into_iter()
                        .filter_map(|(scope, rate)| {
                            let rate = rate.as_ref()?;
                            Some(RouteRate::new(scope, rate, &plan.name, &integ.name, metrics))
                        })
                        .collect(),
                });
            }
        }
        let key: &[u8] = config.assertion.key.as_ref().map_or(&random_key[..], |k| k.expose());
        Ok(Gateway {
            router: Router::new_checked(table),
            routes,
            tls,
            auth: Auth::new(&config, metrics, lasting, client)?,
            egress: crate::egress::Egress::new(&config.endpoints, metrics, &lasting.shared.egress)
                .map_err(BuildError::Egress)?
                .with_limits(&config.limits),
            signer: Signer::new(key, config.assertion.ttl),
            limiter: Limiter {
                shared: lasting.shared.rates.clone(),
                local: lasting.rate_local.clone(),
            },
            upstreams: Upstreams::Network,
            config,
        })
    }

    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// The generation with every forwarded request going to `service` instead of the
    /// network.
    pub fn with_upstream(mut self, service: UpstreamService) -> Self {
        self.upstreams = Upstreams::Service(service);
        self
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

// === rate limits ===

/// The budgets a generation counts in: the backend's (memory or Redis), and this
/// replica's own table for when Redis does not answer. Both outlive generations.
#[derive(Clone)]
pub struct Limiter {
    pub shared: Arc<dyn Rates>,
    pub local: Arc<MemoryRates>,
}

/// One limit of a route, resolved when the generation is built.
pub struct RouteRate {
    /// `plan` or `integration`: the policy's name in the fields, and where it was set.
    pub scope: &'static str,
    pub limit: RateLimit,
    pub cell: Cell,
    /// Its `RateLimit-Policy` item.
    pub policy: String,
    /// What names its budgets (before the principal or client part).
    pub prefix: String,
    pub limited: prometheus::IntCounter,
    pub local: prometheus::IntCounter,
}

impl RouteRate {
    pub fn new(
        scope: &'static str,
        limit: &RateLimit,
        plan: &str,
        integration: &str,
        metrics: &crate::metrics::Metrics,
    ) -> RouteRate {
        // A plan's budget is the plan's, whichever integration spends it.
        let owner = if scope == "plan" { "" } else { integration };
        RouteRate {
            scope,
            cell: Cell::of(limit),
            policy: policy_item(scope, limit),
            prefix: format!("{scope}\0{plan}\0{owner}\0"),
            limited: metrics.rate_limited.with_label_values(&[plan, integration]),
            local: metrics.rate_local.with_label_values(&[plan, integration]),
            limit: limit.clone(),
        }
    }

    /// The budget a request from `client` by `principal` spends: the principal's
    /// (another issuer's user qualified by the issuer's name: two principals), the
    /// client's (an IPv4 address, or an IPv6 /64), or the route's.
    pub fn budget(&self, client: std::net::IpAddr, principal: Option<&auth::Principal>) -> Budget {
        use std::fmt::Write as _;
        let mut name = self.prefix.clone();
        let by_address = match (self.limit.key, principal) {
            (RateKey::Integration, _) => false,
            (RateKey::Principal, Some(p)) => {
                match (&p.issuer, p.local_user) {
                    (Some(issuer), false) => {
                        let _ = write!(name, "principal\0{issuer}\0{}", p.user);
                    }
                    _ => {
                        let _ = write!(name, "principal\0\0{}", p.user);
                    }
                }
                false
            }
            (RateKey::Principal, None) | (RateKey::ClientIp, _) => {
                let _ = write!(name, "ip\0{}", crate::util::client_group(client));
                true
            }
        };
        Budget { name, by_address }
    }

    /// How many callers share one budget: a principal's (0), an address's (1), every
    /// caller's (2). A request steps the narrower budgets first.
    pub fn width(&self) -> u8 {
        match self.limit.key {
            RateKey::Principal => 0,
            RateKey::ClientIp => 1,
            RateKey::Integration => 2,
        }
    }
}

/// `"plan";q=100;w=1`: the quota per window of whole seconds (a window under a second
/// is stated per second).
fn policy_item(scope: &str, limit: &RateLimit) -> String {
    let window = limit.per.as_secs_f64().ceil().max(1.0);
    let quota = (limit.requests as f64 * window / limit.per.as_secs_f64()).floor() as u64;
    format!("\"{scope}\";q={quota};w={window}")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{RateFail, RateKey};

    fn limit(requests: u64, per: Duration) -> RateLimit {
        RateLimit {
            requests,
            per,
            burst: 0,
            key: RateKey::Principal,
            fail: RateFail::Local,
        }
    }

    #[test]
    fn policies_state_a_quota_per_whole_seconds() {
        assert_eq!(
            policy_item("plan", &limit(100, Duration::from_secs(1))),
            "\"plan\";q=100;w=1"
        );
        assert_eq!(
            policy_item("plan", &limit(10, Duration::from_millis(100))),
            "\"plan\";q=100;w=1"
        );
        assert_eq!(
            policy_item("integration", &limit(5, Duration::from_secs(3600))),
            "\"integration\";q=5;w=3600"
        );
        assert_eq!(
            policy_item("plan", &limit(3, Duration::from_millis(1500))),
            "\"plan\";q=4;w=2"
        );
    }
}
