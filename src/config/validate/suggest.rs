//! "Did you mean": the keys each table of the config accepts, and the one an unknown key
//! most likely meant. `tests/docs.rs` keeps [`KNOWN`] equal to the config model.

use super::locate::Segment;

/// The keys of `[oauth]` and of each `[[oauth.issuers]]` entry.
const OAUTH: &[&str] = &[
    "name",
    "mode",
    "issuer",
    "audience",
    "jwks_url",
    "jwks_file",
    "introspection_url",
    "client_id",
    "client_secret",
    "username_claim",
    "roles_claim",
    "allowed_client_ids",
    "leeway",
    "access_token_ttl",
    "refresh_token_ttl",
    "refresh_token_max_lifetime",
    "max_revocations",
    "max_revocations_per_client",
    "algorithm",
    "algorithms",
    "signing_key",
    "signing_keys",
    "signing_key_rotation",
    "jwks_min_refetch",
    "jwks_max_stale",
    "local_users",
    "clients",
    "issuers",
];

/// The keys of a `rate` table.
const RATE: &[&str] = &["requests", "per", "burst", "key"];

/// The keys of an `access` or `senders` rule.
const RULE: &[&str] = &["all", "roles", "users"];

/// Each table (its dotted path, array indices left out) and the keys it accepts. Endpoint
/// `auth` tables are absent: serde itself refuses their unknown keys, listing the valid ones.
pub const KNOWN: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "listen",
            "limits",
            "admin",
            "egress",
            "forward_auth",
            "cache",
            "lockout",
            "shared",
            "runtime",
            "tracing",
            "auth",
            "assertion",
            "users",
            "plans",
            "api_keys",
            "oauth",
            "endpoints",
        ],
    ),
    ("listen", &["address", "tls", "trusted_proxies"]),
    ("listen.tls", &["cert", "key", "client_ca", "client_auth", "client_crl"]),
    ("admin", &["address"]),
    ("egress", &["address"]),
    ("forward_auth", &["address", "ingress"]),
    (
        "limits",
        &[
            "header_read_timeout",
            "request_timeout",
            "idle_timeout",
            "shutdown_timeout",
            "max_header_bytes",
            "max_headers",
            "max_body_bytes",
            "max_connections",
            "body_read_timeout",
            "drain_delay",
            "max_spool_bytes",
            "h2_max_concurrent_streams",
            "h2_max_pending_resets",
            "upgrade_idle_timeout",
            "upgrade_max_lifetime",
        ],
    ),
    ("auth", &["hash_workers", "hash_queue", "hash_queue_timeout"]),
    ("cache", &["ttl", "negative_ttl", "max_entries"]),
    (
        "lockout",
        &["max_failures", "window", "duration", "max_entries_per_address"],
    ),
    (
        "shared",
        &[
            "backend",
            "url",
            "key_prefix",
            "secret",
            "connect_timeout",
            "command_timeout",
            "pool_size",
            "sentinels",
            "master_name",
            "cluster",
            "nodes",
            "tls",
            "tls_ca_file",
            "username",
            "password",
            "sentinel_password",
            "wait_replicas",
        ],
    ),
    (
        "tracing",
        &["otlp_endpoint", "protocol", "sample_ratio", "service_name"],
    ),
    ("runtime", &["worker_threads", "model"]),
    ("assertion", &["key", "ttl"]),
    (
        "users",
        &[
            "name",
            "roles",
            "password_hash",
            "password_expires_at",
            "url_key_hash",
            "cert_names",
            "disabled",
        ],
    ),
    (
        "plans",
        &[
            "name",
            "upstream",
            "access",
            "underscores_in_headers",
            "when",
            "rate",
            "rate_fail",
            "integrations",
        ],
    ),
    (
        "plans.integrations",
        &[
            "name",
            "path",
            "methods",
            "auth",
            "senders",
            "forward_token",
            "upgrades",
            "rate",
            "rate_fail",
            "issuers",
            "when",
            "claim_headers",
        ],
    ),
    ("plans.rate", RATE),
    ("plans.integrations.rate", RATE),
    ("plans.access", RULE),
    ("plans.integrations.senders", RULE),
    ("api_keys", &["key", "secret_hash", "user", "integration"]),
    ("oauth", OAUTH),
    ("oauth.issuers", OAUTH),
    ("oauth.issuers.clients", &["client_id", "client_secret_hash"]),
    ("oauth.clients", &["client_id", "client_secret_hash"]),
    (
        "endpoints",
        &[
            "name",
            "base_url",
            "trust_self_signed",
            "pin_sha256",
            "callers",
            "auth",
            "timeout",
        ],
    ),
];

/// The key of the same table closest to the unknown last segment of `segs`, when one is
/// close enough to be a slip (a typo, a transposition, a missing or doubled letter).
pub(super) fn did_you_mean(segs: &[Segment]) -> Option<&'static str> {
    let (last, table) = segs.split_last()?;
    let Segment::Key(unknown) = last else { return None };
    let table: Vec<&str> = table
        .iter()
        .filter_map(|s| match s {
            Segment::Key(k) => Some(k.as_str()),
            Segment::Index(_) => None,
        })
        .collect();
    let table = table.join(".");
    let (_, keys) = KNOWN.iter().find(|(name, _)| *name == table)?;
    let unknown = unknown.to_ascii_lowercase();
    keys.iter()
        .map(|k| (strsim::jaro_winkler(&unknown, k), *k))
        .filter(|(score, k)| *score >= 0.85 || strsim::damerau_levenshtein(&unknown, k) <= 1)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str) -> Vec<Segment> {
        path.split('.')
            .map(|p| match p.parse() {
                Ok(i) => Segment::Index(i),
                Err(_) => Segment::Key(p.to_string()),
            })
            .collect()
    }

    #[test]
    fn slips_find_the_key_meant() {
        assert_eq!(did_you_mean(&key("plans.0.acess")), Some("access"));
        assert_eq!(did_you_mean(&key("plans.0.integrations.2.sendres")), Some("senders"));
        assert_eq!(did_you_mean(&key("listen.adress")), Some("address"));
        assert_eq!(did_you_mean(&key("lisen")), Some("listen"));
        assert_eq!(did_you_mean(&key("cache.TTL")), Some("ttl"));
        assert_eq!(did_you_mean(&key("oauth.jwks_uri")), Some("jwks_url"));
        assert_eq!(
            did_you_mean(&key("plans.1.integrations.0.senders.rolez")),
            Some("roles")
        );
    }

    #[test]
    fn nothing_close_suggests_nothing() {
        assert_eq!(did_you_mean(&key("plans.0.colour")), None);
        assert_eq!(did_you_mean(&key("nowhere.ttl")), None);
        assert_eq!(did_you_mean(&key("listen.0")), None);
    }
}
