//! Prometheus metrics, named exactly as in the contract, in one registry served by the
//! admin listener at `/metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// What `portcullis --version` and `portcullis_build_info` say of this binary, read by
/// `build.rs` at build time (`unknown` where it could not tell).
pub mod build {
    pub const VERSION: &str = env!("CARGO_PKG_VERSION");
    /// The abbreviated git commit, or `unknown` (built outside a git checkout).
    pub const COMMIT: &str = env!("PORTCULLIS_COMMIT");
    /// `YYYY-MM-DD`: `SOURCE_DATE_EPOCH`, else the commit's date, else the day of the build.
    pub const DATE: &str = env!("PORTCULLIS_BUILD_DATE");
    /// The version of the rustc that built it.
    pub const RUSTC: &str = env!("PORTCULLIS_RUSTC");
    /// `0.1.0 (commit 9f7f7b9, built 2026-12-05, rustc 1.95.0)`.
    pub const LONG_VERSION: &str = concat!(
        env!("CARGO_PKG_VERSION"),
        " (commit ",
        env!("PORTCULLIS_COMMIT"),
        ", built ",
        env!("PORTCULLIS_BUILD_DATE"),
        ", rustc ",
        env!("PORTCULLIS_RUSTC"),
        ")"
    );
}

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
    /// Over a plan's or an integration's rate limit (429).
    RateLimited,
}

impl Outcome {
    pub const ALL: [Outcome; 9] = [
        Outcome::Allowed,
        Outcome::Unauthenticated,
        Outcome::Forbidden,
        Outcome::LockedOut,
        Outcome::BadRequest,
        Outcome::UpstreamError,
        Outcome::ClientClosed,
        Outcome::AuthUnavailable,
        Outcome::RateLimited,
    ];

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
            Outcome::RateLimited => "rate_limited",
        }
    }
}

// Label values known before any request, exported at 0 from the start so that a dashboard
// shows 0 and not "No data" (docs/metrics.md states the bound). The code that counts
// checks its value against these lists in debug builds.

/// `listener` of the connection and parser counters.
pub const LISTENERS: [&str; 4] = ["inbound", "admin", "egress", "forward_auth"];
/// `reason` of `portcullis_malformed_requests_total`.
pub const MALFORMED_REASONS: [&str; 3] = ["headers_too_large", "uri_too_long", "malformed_request"];
/// `op` of `portcullis_shared_errors_total`.
pub const SHARED_OPS: [&str; 9] = [
    "rate",
    "lockout",
    "refresh",
    "revoke",
    "agree",
    "egress",
    "publish",
    "subscribe",
    "replicate",
];
/// `kind` of `portcullis_shared_integrity_failures_total`.
pub const INTEGRITY_KINDS: [&str; 6] = ["refresh", "family", "revocation", "event", "agreed", "egress"];
/// `(table, limit)` of `portcullis_table_full_total`: the limits each table has.
pub const FULL_TABLES: [(&str, &str); 8] = [
    ("rate", "total"),
    ("revocations", "total"),
    ("revocations", "per_client"),
    ("lockout", "total"),
    ("lockout", "per_client"),
    ("revocations_mirror", "total"),
    ("remote_locks", "total"),
    ("withdrawals", "total"),
];

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
    pub rate_limited: IntCounterVec,
    pub rate_local: IntCounterVec,
    /// JWKS fetches of `jwt` issuers, by issuer (its name) and result (`ok`, `error`).
    pub jwks_refreshes: IntCounterVec,
    /// 1 while an issuer's last JWKS fetch failed (its last good keys serve, up to
    /// `jwks_max_stale`), else 0.
    pub jwks_stale: IntGaugeVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A metric's name and help text.
type Desc = (&'static str, &'static str);

const REQUESTS: Desc = (
    "portcullis_requests_total",
    "Inbound requests by plan, integration, auth method and outcome.",
);
const AUTH_FAILURES: Desc = (
    "portcullis_auth_failures_total",
    "Refused credentials by auth method and precise reason.",
);
const REQUEST_DURATION: Desc = (
    "portcullis_request_duration_seconds",
    "Time from request head to response head, by plan and integration.",
);
const UPSTREAM_DURATION: Desc = (
    "portcullis_upstream_duration_seconds",
    "Time the upstream took to answer with its response head, by plan.",
);
const CACHE_REQUESTS: Desc = (
    "portcullis_cache_requests_total",
    "Credential and token cache lookups by cache and result (hit/miss).",
);
const CACHE_ENTRIES: Desc = ("portcullis_cache_entries", "Entries in each cache.");
const EGRESS_REQUESTS: Desc = (
    "portcullis_egress_requests_total",
    "Egress calls by endpoint and response status.",
);
const EGRESS_TOKEN_FETCHES: Desc = (
    "portcullis_egress_token_fetches_total",
    "OAuth2 token fetches for egress endpoints by outcome.",
);
const SHARED_ERRORS: Desc = ("portcullis_shared_errors_total", "Commands to the shared store (Redis) that failed or timed out, by operation (rate, lockout, refresh, revoke, agree, egress, publish, subscribe; replicate: a write fewer replicas than shared.wait_replicas confirmed).");
const SHARED_INTEGRITY_FAILURES: Desc = ("portcullis_shared_integrity_failures_total", "Values read from the shared store (Redis) that failed their integrity check and were refused, by kind (refresh, family, revocation, event, agreed, egress).");
const TABLE_FULL: Desc = ("portcullis_table_full_total", "Requests refused because a bounded security table was full, by table (rate, revocations, lockout, revocations_mirror, remote_locks, withdrawals) and limit (total, per_client).");
const RATE_LIMITED: Desc = (
    "portcullis_rate_limited_total",
    "Requests refused with 429 over a plan's or an integration's rate limit, by plan and integration.",
);
const RATE_LOCAL: Desc = (
    "portcullis_rate_local_total",
    "Rate-limit steps counted against this replica's share of the budget because the shared store (Redis) did not answer, by plan and integration.",
);
const CONFIG_RELOADS: Desc = (
    "portcullis_config_reloads_total",
    "Config reloads by outcome (success/failure).",
);
const CONFIG_LAST_RELOAD_SUCCESS: Desc = (
    "portcullis_config_last_reload_success_timestamp_seconds",
    "Unix time of the last successful config load.",
);
const CONFIG_LAST_RELOAD_SUCCESSFUL: Desc = (
    "portcullis_config_last_reload_successful",
    "1 if the last config load succeeded, 0 if the newest file was refused (the previous config still runs).",
);
const CONNECTIONS_ACTIVE: Desc = ("portcullis_connections_active", "Open connections by listener.");
const CONNECTIONS_REJECTED: Desc = (
    "portcullis_connections_rejected_total",
    "Connections closed at accept because max_connections was reached.",
);
const TLS_HANDSHAKE_FAILURES: Desc = (
    "portcullis_tls_handshake_failures_total",
    "Failed or timed-out TLS handshakes.",
);
const TLS_CERTIFICATE_EXPIRY: Desc = (
    "portcullis_tls_certificate_expiry_timestamp_seconds",
    "Unix time at which the inbound TLS certificate in use stops being valid (0: no TLS).",
);
const HASH_QUEUE: Desc = (
    "portcullis_hash_queue",
    "argon2id checks waiting for a worker of the pool.",
);
const HASH_OVERLOADED: Desc = (
    "portcullis_hash_overloaded_total",
    "argon2id checks refused (503 overloaded): queue full or queue deadline passed.",
);
const CLIENT_CLOSED: Desc = (
    "portcullis_client_closed_total",
    "Requests whose client closed or reset before the response (logged as 499).",
);
const H2_RESET_ABUSE: Desc = (
    "portcullis_h2_reset_abuse_total",
    "HTTP/2 connections closed for resetting too many streams before their response.",
);
const BUILD_INFO: Desc = (
    "portcullis_build_info",
    "Always 1; the labels say which build runs: version, git commit, rustc version.",
);
const MALFORMED_HEADS: Desc = (
    "portcullis_malformed_requests_total",
    "HTTP/1.1 request heads refused by the parser before routing (431, 414, 400), by listener and reason.",
);

const JWKS_REFRESHES: Desc = (
    "portcullis_jwks_refresh_total",
    "JWKS fetches of jwt issuers, by issuer name and result (ok, error).",
);
const JWKS_STALE: Desc = (
    "portcullis_jwks_stale",
    "1 while a jwt issuer's last JWKS fetch failed and its last good keys serve (up to jwks_max_stale), else 0; by issuer name.",
);

/// How many labelled series [`Metrics::new`] exports at 0 before any request.
pub const PRECREATED: usize = 2
    + LISTENERS.len() * (2 + MALFORMED_REASONS.len())
    + Outcome::ALL.len()
    + SHARED_OPS.len()
    + INTEGRITY_KINDS.len()
    + FULL_TABLES.len();

/// Registers metrics as they are made. Names are static and distinct and labels fixed,
/// so making and registering cannot fail.
struct Reg(Registry);

impl Reg {
    fn add<T: prometheus::core::Collector + Clone + 'static>(&self, c: T) -> T {
        self.0.register(Box::new(c.clone())).expect("metric registers once");
        c
    }

    fn counter(&self, (name, help): Desc, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    fn hist(&self, (name, help): Desc, labels: &[&str]) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
        self.add(HistogramVec::new(opts, labels).expect("valid metric"))
    }

    fn gauge_vec(&self, (name, help): Desc, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    fn gauge(&self, (name, help): Desc) -> IntGauge {
        self.add(IntGauge::new(name, help).expect("valid metric"))
    }

    fn int_counter(&self, (name, help): Desc) -> IntCounter {
        self.add(IntCounter::new(name, help).expect("valid metric"))
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Reg(Registry::new());
        let m = Metrics {
            requests: r.counter(REQUESTS, &["plan", "integration", "auth_method", "outcome"]),
            auth_failures: r.counter(AUTH_FAILURES, &["auth_method", "reason"]),
            jwks_refreshes: r.counter(JWKS_REFRESHES, &["issuer", "result"]),
            jwks_stale: r.gauge_vec(JWKS_STALE, &["issuer"]),
            request_duration: r.hist(REQUEST_DURATION, &["plan", "integration"]),
            upstream_duration: r.hist(UPSTREAM_DURATION, &["plan"]),
            cache_requests: r.counter(CACHE_REQUESTS, &["cache", "result"]),
            cache_entries: r.gauge_vec(CACHE_ENTRIES, &["cache"]),
            egress_requests: r.counter(EGRESS_REQUESTS, &["endpoint", "status"]),
            egress_token_fetches: r.counter(EGRESS_TOKEN_FETCHES, &["endpoint", "outcome"]),
            shared_errors: r.counter(SHARED_ERRORS, &["op"]),
            shared_integrity_failures: r.counter(SHARED_INTEGRITY_FAILURES, &["kind"]),
            table_full: r.counter(TABLE_FULL, &["table", "limit"]),
            rate_limited: r.counter(RATE_LIMITED, &["plan", "integration"]),
            rate_local: r.counter(RATE_LOCAL, &["plan", "integration"]),
            config_reloads: r.counter(CONFIG_RELOADS, &["outcome"]),
            config_last_reload_success: r.gauge(CONFIG_LAST_RELOAD_SUCCESS),
            config_last_reload_successful: r.gauge(CONFIG_LAST_RELOAD_SUCCESSFUL),
            connections_active: r.gauge_vec(CONNECTIONS_ACTIVE, &["listener"]),
            connections_rejected: r.counter(CONNECTIONS_REJECTED, &["listener"]),
            tls_handshake_failures: r.int_counter(TLS_HANDSHAKE_FAILURES),
            tls_certificate_expiry: r.gauge(TLS_CERTIFICATE_EXPIRY),
            hash_queue: r.gauge(HASH_QUEUE),
            hash_overloaded: r.int_counter(HASH_OVERLOADED),
            client_closed: r.int_counter(CLIENT_CLOSED),
            h2_reset_abuse: r.int_counter(H2_RESET_ABUSE),
            malformed_heads: r.counter(MALFORMED_HEADS, &["listener", "reason"]),
            registry: r.0,
        };
        let info = IntGaugeVec::new(Opts::new(BUILD_INFO.0, BUILD_INFO.1), &["version", "commit", "rustc"])
            .expect("valid metric");
        info.with_label_values(&[build::VERSION, build::COMMIT, build::RUSTC])
            .set(1);
        m.registry.register(Box::new(info)).expect("metric registers once");
        // CPU, memory, file descriptors, threads and start time of this process, read from
        // /proc at each scrape (the collector exists on Linux only).
        #[cfg(target_os = "linux")]
        m.registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("process metrics register once");
        m.precreate();
        m
    }

    /// Exports at 0 every series whose labels are known before any request (a fixed
    /// number, [`PRECREATED`]): a dashboard or an alert then reads 0, not nothing.
    /// Series of a configured plan, cache or endpoint are made when its generation is
    /// built; open-ended labels (statuses, refusal reasons) are not pre-created.
    fn precreate(&self) {
        for outcome in ["success", "failure"] {
            self.config_reloads.with_label_values(&[outcome]);
        }
        for listener in LISTENERS {
            self.connections_active.with_label_values(&[listener]);
            self.connections_rejected.with_label_values(&[listener]);
            for reason in MALFORMED_REASONS {
                self.malformed_heads.with_label_values(&[listener, reason]);
            }
        }
        // Refused before a route was known (what the parser refuses counts here too): one
        // series per outcome, so "requests by outcome" has every line from the start.
        for outcome in Outcome::ALL {
            self.requests.with_label_values(&["", "", "", outcome.as_str()]);
        }
        for op in SHARED_OPS {
            self.shared_errors.with_label_values(&[op]);
        }
        for kind in INTEGRITY_KINDS {
            self.shared_integrity_failures.with_label_values(&[kind]);
        }
        for (table, limit) in FULL_TABLES {
            self.table_full.with_label_values(&[table, limit]);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every sample of a fresh registry: (name, sorted `label=value` pairs, value).
    fn samples(m: &Metrics) -> Vec<(String, Vec<String>, f64)> {
        let mut out = Vec::new();
        for family in m.registry().gather() {
            for metric in family.get_metric() {
                let labels = metric
                    .get_label()
                    .iter()
                    .map(|l| format!("{}={}", l.name(), l.value()))
                    .collect();
                let value = match family.get_field_type() {
                    prometheus::proto::MetricType::COUNTER => metric.get_counter().get_value(),
                    prometheus::proto::MetricType::GAUGE => metric.get_gauge().get_value(),
                    prometheus::proto::MetricType::HISTOGRAM
                    | prometheus::proto::MetricType::SUMMARY
                    | prometheus::proto::MetricType::UNTYPED => continue,
                };
                out.push((family.name().to_string(), labels, value));
            }
        }
        out
    }

    #[test]
    fn build_info_is_one_with_the_build_labels() {
        let s = samples(&Metrics::new());
        let info: Vec<_> = s.iter().filter(|(n, ..)| n == "portcullis_build_info").collect();
        assert_eq!(info.len(), 1, "{info:?}");
        let (_, labels, value) = info[0];
        assert_eq!(*value, 1.0);
        assert_eq!(
            labels,
            &[
                format!("commit={}", build::COMMIT),
                format!("rustc={}", build::RUSTC),
                format!("version={}", env!("CARGO_PKG_VERSION")),
            ]
        );
        assert!(build::COMMIT == "unknown" || build::COMMIT.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(build::LONG_VERSION.starts_with(&format!("{} (commit ", build::VERSION)));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_metrics_are_exported() {
        let s = samples(&Metrics::new());
        let value = |name: &str| {
            s.iter()
                .find(|(n, ..)| n == name)
                .unwrap_or_else(|| panic!("{name} missing"))
                .2
        };
        for name in ["process_cpu_seconds_total", "process_threads"] {
            value(name);
        }
        assert!(value("process_resident_memory_bytes") > 0.0);
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        assert!(value("process_open_fds") > 0.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        // Started after 2020 and not in the future.
        let start = value("process_start_time_seconds");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(start > 1.6e9 && start <= now + 1.0, "{start}");
    }

    #[test]
    fn known_series_are_zero_from_the_start_and_bounded() {
        let m = Metrics::new();
        let s = samples(&m);
        let zero = |name: &str, labels: &[(&str, &str)]| {
            let mut want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            want.sort();
            assert!(
                s.iter().any(|(n, l, v)| n == name && *l == want && *v == 0.0),
                "{name}{want:?} not exported at 0"
            );
        };
        for outcome in ["success", "failure"] {
            zero("portcullis_config_reloads_total", &[("outcome", outcome)]);
        }
        for listener in ["inbound", "admin", "egress", "forward_auth"] {
            zero("portcullis_connections_active", &[("listener", listener)]);
            zero("portcullis_connections_rejected_total", &[("listener", listener)]);
            for reason in ["headers_too_large", "uri_too_long", "malformed_request"] {
                zero(
                    "portcullis_malformed_requests_total",
                    &[("listener", listener), ("reason", reason)],
                );
            }
        }
        for o in Outcome::ALL {
            let l = [
                ("plan", ""),
                ("integration", ""),
                ("auth_method", ""),
                ("outcome", o.as_str()),
            ];
            zero("portcullis_requests_total", &l);
        }
        for op in [
            "rate",
            "lockout",
            "refresh",
            "revoke",
            "agree",
            "egress",
            "publish",
            "subscribe",
            "replicate",
        ] {
            zero("portcullis_shared_errors_total", &[("op", op)]);
        }
        for kind in ["refresh", "family", "revocation", "event", "agreed", "egress"] {
            zero("portcullis_shared_integrity_failures_total", &[("kind", kind)]);
        }
        for (table, limit) in [
            ("rate", "total"),
            ("revocations", "total"),
            ("revocations", "per_client"),
            ("lockout", "total"),
            ("lockout", "per_client"),
            ("revocations_mirror", "total"),
            ("remote_locks", "total"),
            ("withdrawals", "total"),
        ] {
            zero("portcullis_table_full_total", &[("table", table), ("limit", limit)]);
        }
        // The bound: the labelled portcullis_ series of a fresh registry are exactly the
        // pre-created ones (build_info aside), and docs/metrics.md states their number.
        let labelled = s
            .iter()
            .filter(|(n, l, _)| n.starts_with("portcullis_") && !l.is_empty() && n != "portcullis_build_info")
            .count();
        assert_eq!(labelled, PRECREATED);
        assert_eq!(PRECREATED, 54);
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
        assert!(
            doc.contains(&format!("a fixed {PRECREATED} series")),
            "docs/metrics.md states another bound"
        );
    }

    #[test]
    fn the_rendered_text_has_every_family() {
        let text = Metrics::new().render();
        assert!(text.contains("\nportcullis_build_info{"), "{text}");
        #[cfg(target_os = "linux")]
        assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
        assert!(text.contains("portcullis_table_full_total{limit=\"per_client\",table=\"lockout\"} 0"));
    }
}
