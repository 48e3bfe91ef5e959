//! Prometheus metrics, named exactly as in the contract, in one registry served by the
//! admin listener at `/metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// `outcome` label values of `portcullis_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Unauthenticated,
    Forbidden,
    LockedOut,
    BadRequest,
    UpstreamError,
    /// The client closed or reset before the answer (logged as 499).
    ClientClosed,
    /// What decides a credential could not answer: the identity provider (JWKS,
    /// introspection), the shared token store, or the password pool (503).
    AuthUnavailable,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::Forbidden => "forbidden",
            Outcome::LockedOut => "locked_out",
            Outcome::BadRequest => "bad_request",
            Outcome::UpstreamError => "upstream_error",
            Outcome::ClientClosed => "client_closed",
            Outcome::AuthUnavailable => "auth_unavailable",
        }
    }
}

/// Every metric of the process. Cheap to share: the vectors are internally `Arc`ed.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub cache_requests: IntCounterVec,
    pub cache_entries: IntGaugeVec,
    pub egress_requests: IntCounterVec,
    pub egress_token_fetches: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub config_last_reload_success: IntGauge,
    /// 1 when the last config load succeeded, 0 while a refused one is the newest.
    pub config_last_reload_successful: IntGauge,
    pub connections_active: IntGaugeVec,
    pub connections_rejected: IntCounterVec,
    pub tls_handshake_failures: IntCounter,
    pub tls_certificate_expiry: IntGauge,
    /// argon2id checks waiting for a worker.
    pub hash_queue: IntGauge,
    /// argon2id checks refused because the queue was full or its deadline passed.
    pub hash_overloaded: IntCounter,
    /// Requests whose client went away before the answer (logged as status 499).
    pub client_closed: IntCounter,
    /// HTTP/2 connections ended for resetting too many streams early.
    pub h2_reset_abuse: IntCounter,
    /// Request heads the HTTP/1.1 parser refused before the pipeline saw them, by listener
    /// and reason.
    pub malformed_heads: IntCounterVec,
    /// Commands to the shared store (Redis) that failed or timed out, by operation.
    pub shared_errors: IntCounterVec,
    /// Values read back from the shared store that failed their integrity check (MAC), by
    /// kind: refused, never used.
    pub shared_integrity_failures: IntCounterVec,
    /// Requests refused because a bounded security table (or a client's share of it) was
    /// full, by table and limit (`total`, `per_client`).
    pub table_full: IntCounterVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
            // Names are static and distinct, so registration cannot fail.
            r.register(Box::new(c.clone())).expect("metric registers once");
            c
        }
        let counter = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let hist = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                HistogramVec::new(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()), labels)
                    .expect("valid metric"),
            )
        };
        let m = Metrics {
            requests: counter(
                "portcullis_requests_total",
                "Inbound requests by plan, integration, auth method and outcome.",
                &["plan", "integration", "auth_method", "outcome"],
            ),
            auth_failures: counter(
                "portcullis_auth_failures_total",
                "Refused credentials by auth method and precise reason.",
                &["auth_method", "reason"],
            ),
            request_duration: hist(
                "portcullis_request_duration_seconds",
                "Time from request head to response head, by plan and integration.",
                &["plan", "integration"],
            ),
            upstream_duration: hist(
                "portcullis_upstream_duration_seconds",
                "Time the upstream took to answer with its response head, by plan.",
                &["plan"],
            ),
            cache_requests: counter(
                "portcullis_cache_requests_total",
                "Credential and token cache lookups by cache and result (hit/miss).",
                &["cache", "result"],
            ),
            cache_entries: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new("portcullis_cache_entries", "Entries in each cache."),
                    &["cache"],
                )
                .expect("valid metric"),
            ),
            egress_requests: counter(
                "portcullis_egress_requests_total",
                "Egress calls by endpoint and response status.",
                &["endpoint", "status"],
            ),
            egress_token_fetches: counter(
                "portcullis_egress_token_fetches_total",
                "OAuth2 token fetches for egress endpoints by outcome.",
                &["endpoint", "outcome"],
            ),
            shared_errors: counter(
                "portcullis_shared_errors_total",
                "Commands to the shared store (Redis) that failed or timed out, by operation (lockout, refresh, revoke, agree, egress, publish, subscribe).",
                &["op"],
            ),
            shared_integrity_failures: counter(
                "portcullis_shared_integrity_failures_total",
                "Values read from the shared store (Redis) that failed their integrity check and were refused, by kind (refresh, family, revocation, event, agreed, egress).",
                &["kind"],
            ),
            table_full: counter(
                "portcullis_table_full_total",
                "Requests refused because a bounded security table was full, by table (revocations, lockout, remote_locks) and limit (total, per_client).",
                &["table", "limit"],
            ),
            config_reloads: counter(
                "portcullis_config_reloads_total",
                "Config reloads by outcome (success/failure).",
                &["outcome"],
            ),
            config_last_reload_success: reg(
                &registry,
                IntGauge::new(
                    "portcullis_config_last_reload_success_timestamp_seconds",
                    "Unix time of the last successful config load.",
                )
                .expect("valid metric"),
            ),
            config_last_reload_successful: reg(
                &registry,
                IntGauge::new(
                    "portcullis_config_last_reload_successful",
                    "1 if the last config load succeeded, 0 if the newest file was refused (the previous config still runs).",
                )
                .expect("valid metric"),
            ),
            connections_active: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new("portcullis_connections_active", "Open connections by listener."),
                    &["listener"],
                )
                .expect("valid metric"),
            ),
            connections_rejected: counter(
                "portcullis_connections_rejected_total",
                "Connections closed at accept because max_connections was reached.",
                &["listener"],
            ),
            tls_handshake_failures: reg(
                &registry,
                IntCounter::new(
                    "portcullis_tls_handshake_failures_total",
                    "Failed or timed-out TLS handshakes.",
                )
                .expect("valid metric"),
            ),
            tls_certificate_expiry: reg(
                &registry,
                IntGauge::new(
                    "portcullis_tls_certificate_expiry_timestamp_seconds",
                    "Unix time at which the inbound TLS certificate in use stops being valid (0: no TLS).",
                )
                .expect("valid metric"),
            ),
            hash_queue: reg(
                &registry,
                IntGauge::new(
                    "portcullis_hash_queue",
                    "argon2id checks waiting for a worker of the pool.",
                )
                .expect("valid metric"),
            ),
            hash_overloaded: reg(
                &registry,
                IntCounter::new(
                    "portcullis_hash_overloaded_total",
                    "argon2id checks refused (503 overloaded): queue full or queue deadline passed.",
                )
                .expect("valid metric"),
            ),
            client_closed: reg(
                &registry,
                IntCounter::new(
                    "portcullis_client_closed_total",
                    "Requests whose client closed or reset before the response (logged as 499).",
                )
                .expect("valid metric"),
            ),
            h2_reset_abuse: reg(
                &registry,
                IntCounter::new(
                    "portcullis_h2_reset_abuse_total",
                    "HTTP/2 connections closed for resetting too many streams before their response.",
                )
                .expect("valid metric"),
            ),
            malformed_heads: counter(
                "portcullis_malformed_requests_total",
                "HTTP/1.1 request heads refused by the parser before routing (431, 414, 400), by listener and reason.",
                &["listener", "reason"],
            ),
            registry,
        };
        for outcome in ["success", "failure"] {
            m.config_reloads.with_label_values(&[outcome]);
        }
        for listener in ["inbound", "admin", "egress"] {
            m.connections_active.with_label_values(&[listener]);
        }
        m
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Auth method labels, in the order of the per-route counter table.
const AUTH_LABELS: [&str; 7] = ["", "none", "basic", "api_key", "url_key", "oauth", "mtls"];
const OUTCOMES: usize = 8;

/// Pre-resolved handles for one route, so the hot path hashes no labels: the histograms at
/// config load, each `portcullis_requests_total` counter on its first use.
#[derive(Clone)]
pub struct RouteMetrics {
    pub duration: Histogram,
    pub upstream: Histogram,
    requests: std::sync::Arc<[std::sync::OnceLock<prometheus::IntCounter>]>,
    vec: IntCounterVec,
    plan: std::sync::Arc<str>,
    integration: std::sync::Arc<str>,
}

impl RouteMetrics {
    pub fn new(m: &Metrics, plan: &str, integration: &str) -> Self {
        RouteMetrics {
            duration: m.request_duration.with_label_values(&[plan, integration]),
            upstream: m.upstream_duration.with_label_values(&[plan]),
            requests: (0..AUTH_LABELS.len() * OUTCOMES)
                .map(|_| std::sync::OnceLock::new())
                .collect(),
            vec: m.requests.clone(),
            plan: plan.into(),
            integration: integration.into(),
        }
    }

    /// Counts one request of this route.
    pub fn count(&self, auth_method: &str, outcome: Outcome) {
        let Some(m) = AUTH_LABELS.iter().position(|l| *l == auth_method) else {
            self.vec
                .with_label_values(&[&self.plan, &self.integration, auth_method, outcome.as_str()])
                .inc();
            return;
        };
        self.requests[m * OUTCOMES + outcome as usize]
            .get_or_init(|| {
                self.vec
                    .with_label_values(&[&self.plan, &self.integration, auth_method, outcome.as_str()])
            })
            .inc();
    }
}

/// The counters of one cache (`portcullis_cache_requests_total{cache, result}` and
/// `portcullis_cache_entries{cache}`), resolved once: every cache counts the same way.
#[derive(Clone)]
pub struct CacheCounters {
    hits: prometheus::IntCounter,
    misses: prometheus::IntCounter,
    entries: IntGauge,
}

impl CacheCounters {
    pub fn new(m: &Metrics, cache: &str) -> Self {
        CacheCounters {
            hits: m.cache_requests.with_label_values(&[cache, "hit"]),
            misses: m.cache_requests.with_label_values(&[cache, "miss"]),
            entries: m.cache_entries.with_label_values(&[cache]),
        }
    }

    pub fn hit(&self) {
        self.hits.inc();
    }

    /// A miss, and the cache's entry count once the new entry is settled.
    pub fn miss(&self, entries: u64) {
        self.misses.inc();
        self.entries.set(entries as i64);
    }

    pub fn set_entries(&self, entries: u64) {
        self.entries.set(entries as i64);
    }
}
