//! The JWKS of each `jwt` issuer, kept for the life of the process (across reloads and
//! shared by every worker), by the issuer's `iss` and `jwks_url`.
//!
//! - A `kid` the keys do not have triggers one refetch: single flight (requests that
//!   need the new key wait for the one fetch in progress rather than start their own),
//!   and at most one fetch per `jwks_min_refetch` per key set, so a flood of made-up
//!   `kid`s costs the issuer one request per interval.
//! - Keys older than `[cache] ttl` are refreshed on use, under the same bound.
//! - While fetches fail, the last good keys keep serving, up to `jwks_max_stale` after
//!   they were fetched; past that, tokens are refused with 503 (`jwks_unavailable`).
//!   Fetches are counted in `portcullis_jwks_refresh_total{issuer,result}` and
//!   `portcullis_jwks_stale{issuer}` is 1 while the last one failed.
//!
//! Time is the process state's [`Clock`], so tests move it instead of waiting.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::util::Clock;

pub(super) struct Key {
    pub(super) decoding: DecodingKey,
    /// The algorithms this key may verify: its own `alg`, or those of its type.
    pub(super) algs: Vec<Algorithm>,
}

pub(super) type ByKid = Arc<HashMap<String, Arc<Key>>>;

pub(super) fn parse_alg(name: &str) -> Option<Algorithm> {
    Some(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Why a JWKS could not be had.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("oauth.mode = \"jwt\" needs jwks_url or jwks_file")]
    NoSource,
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: String },
    #[error("invalid JWKS: {0}")]
    Invalid(#[source] serde_json::Error),
    #[error("{0}")]
    Request(#[source] http::Error),
    #[error("JWKS fetch failed: {0}")]
    Fetch(String),
    #[error("JWKS fetch answered {0}")]
    Status(http::StatusCode),
    #[error("JWKS body: {0}")]
    Body(String),
    #[error("JWKS fetch timed out")]
    TimedOut,
}

/// Parses a JWKS document into usable asymmetric keys.
pub(super) fn parse_jwks(bytes: &[u8]) -> Result<HashMap<String, Arc<Key>>, JwksError> {
    let set: JwkSet = serde_json::from_slice(bytes).map_err(JwksError::Invalid)?;
    let mut out = HashMap::new();
    for jwk in &set.keys {
        let family: Vec<Algorithm> = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => vec![
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
            AlgorithmParameters::EllipticCurve(_) => vec![Algorithm::ES256, Algorithm::ES384],
            AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
            // Symmetric keys never verify anything here.
            AlgorithmParameters::OctetKey(_) => continue,
        };
        let algs = match jwk
            .common
            .key_algorithm
            .as_ref()
            .and_then(|a| parse_alg(&format!("{a:?}")))
        {
            Some(a) if family.contains(&a) => vec![a],
            Some(_) => continue,
            None if jwk.common.key_algorithm.is_some() => continue,
            None => family,
        };
        let Ok(decoding) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        let key = Arc::new(Key { decoding, algs });
        match &jwk.common.key_id {
            Some(kid) => {
                out.insert(kid.clone(), key);
            }
            None => {
                // A key without kid is found by its RFC 7638 thumbprint, which issuers
                // commonly put in the token's kid, or by an absent kid.
                if let Some(t) = thumbprint(&jwk.algorithm) {
                    out.insert(t, key.clone());
                }
                out.insert(String::new(), key);
            }
        }
    }
    Ok(out)
}

/// RFC 7638 JWK thumbprint: SHA-256 over the required members in lexicographic order.
fn thumbprint(params: &AlgorithmParameters) -> Option<String> {
    use base64::Engine;
    use sha2::Digest;
    let canonical = match params {
        AlgorithmParameters::RSA(p) => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, p.e, p.n),
        AlgorithmParameters::EllipticCurve(p) => {
            let crv = serde_json::to_value(&p.curve).ok()?;
            format!(r#"{{"crv":{crv},"kty":"EC","x":"{}","y":"{}"}}"#, p.x, p.y)
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            let crv = serde_json::to_value(&p.curve).ok()?;
            format!(r#"{{"crv":{crv},"kty":"OKP","x":"{}"}}"#, p.x)
        }
        AlgorithmParameters::OctetKey(_) => return None,
    };
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(canonical.as_bytes())))
}

/// Every `jwt` issuer's key set, by (`iss`, `jwks_url`), for the life of the process.
#[derive(Default)]
pub struct KeySets(std::sync::Mutex<HashMap<(String, String), Arc<KeySet>>>);

impl KeySets {
    /// Forgets the key sets no issuer of the config names (a generation still running
    /// keeps its own through its `Arc`).
    pub(super) fn keep_only(&self, issuers: &[crate::config::OAuth]) {
        let mut sets = self.0.lock().unwrap_or_else(|p| p.into_inner());
        sets.retain(|(iss, url), _| {
            issuers.iter().any(|o| {
                o.issuer.as_deref().unwrap_or("") == iss && o.jwks_url.as_ref().is_some_and(|u| u.as_str() == url)
            })
        });
    }

    /// The key set of `iss` at `url`: the one already kept, or a new, empty one.
    pub(super) fn of(&self, iss: &str, url: &url::Url, clock: &Clock) -> Arc<KeySet> {
        let mut sets = self.0.lock().unwrap_or_else(|p| p.into_inner());
        sets.entry((iss.to_string(), url.as_str().to_string()))
            .or_insert_with(|| {
                Arc::new(KeySet {
                    url: url.clone(),
                    withdrawals: Default::default(),
                    state: Default::default(),
                    fetching: tokio::sync::Mutex::new(()),
                    clock: clock.clone(),
                })
            })
            .clone()
    }
}

#[derive(Default, Clone)]
struct State {
    by_kid: ByKid,
    /// When the keys in use were fetched (`None`: never).
    fetched: Option<Instant>,
    last_attempt: Option<Instant>,
    /// Fetches finished so far: a request that waited for the fetch in flight sees it
    /// changed and does not fetch again.
    attempts: u64,
}

/// One issuer's keys at one `jwks_url`.
pub struct KeySet {
    url: url::Url,
    /// Counts fetches that removed a key: a token verified with a key the IdP has
    /// withdrawn must not pass from a cache of verified tokens (see [`KeySet::withdrawals`]).
    withdrawals: std::sync::atomic::AtomicU64,
    state: std::sync::RwLock<State>,
    fetching: tokio::sync::Mutex<()>,
    clock: Clock,
}

/// How one generation uses a key set: its bounds, client and counters.
pub(super) struct Policy {
    pub(super) refresh_after: Duration,
    pub(super) min_refetch: Duration,
    pub(super) max_stale: Duration,
    pub(super) client: crate::upstream::Client,
    pub(super) ok: prometheus::IntCounter,
    pub(super) failed: prometheus::IntCounter,
    pub(super) stale: prometheus::IntGauge,
}

impl Policy {
    pub(super) fn new(
        name: &str,
        cfg: &crate::config::OAuth,
        cache: &crate::config::Cache,
        client: crate::upstream::Client,
        metrics: &crate::metrics::Metrics,
    ) -> Self {
        Policy {
            refresh_after: cache.ttl,
            min_refetch: cfg.jwks_min_refetch,
            max_stale: cfg.jwks_max_stale,
            client,
            ok: metrics.jwks_refreshes.with_label_values(&[name, "ok"]),
            failed: metrics.jwks_refreshes.with_label_values(&[name, "error"]),
            stale: metrics.jwks_stale.with_label_values(&[name]),
        }
    }
}

/// Why a key could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lookup {
    /// The keys are usable and have no such `kid`.
    Unknown,
    /// No usable keys: never fetched, or the last good ones are past `jwks_max_stale`.
    Unavailable,
}

impl KeySet {
    /// How many fetches so far removed a key (the IdP withdrew it): a cache of tokens
    /// verified with these keys is good only while this has not moved.
    pub(super) fn withdrawals(&self) -> u64 {
        self.withdrawals.load(std::sync::atomic::Ordering::Acquire)
    }

    fn snapshot(&self) -> State {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The keys, if they may still serve (fetched no longer than `max_stale` ago).
    fn usable(&self, s: &State, p: &Policy) -> Option<ByKid> {
        let now = self.clock.instant();
        s.fetched
            .filter(|t| now.saturating_duration_since(*t) <= p.max_stale)
            .map(|_| s.by_kid.clone())
    }

    fn may_fetch(&self, s: &State, p: &Policy) -> bool {
        let now = self.clock.instant();
        s.last_attempt
            .is_none_or(|t| now.saturating_duration_since(t) >= p.min_refetch)
    }

    /// The key for `kid`: from the keys held, or after one refetch when they lack it
    /// (or are old), within the bounds of `p`.
    pub(super) async fn key(&self, kid: &str, p: &Policy) -> Result<Arc<Key>, Lookup> {
        let s = self.snapshot();
        let keys = self.usable(&s, p);
        let found = keys.as_ref().and_then(|k| find(k, kid));
        let old = s
            .fetched
            .is_none_or(|t| self.clock.instant().saturating_duration_since(t) >= p.refresh_after);
        if let Some(key) = &found {
            if !old || !self.may_fetch(&s, p) {
                return Ok(key.clone());
            }
            // Old keys that still have the kid: one request refreshes them, the others
            // use them meanwhile.
            if let Ok(_one) = self.fetching.try_lock() {
                if self.snapshot().attempts == s.attempts {
                    self.fetch(p).await;
                }
            }
            return Ok(self.current(kid, p).unwrap_or_else(|| key.clone()));
        }
        if !self.may_fetch(&s, p) {
            return Err(if keys.is_some() {
                Lookup::Unknown
            } else {
                Lookup::Unavailable
            });
        }
        // Single flight: wait for the fetch in progress, or make the one fetch.
        let _one = self.fetching.lock().await;
        let now = self.snapshot();
        if now.attempts == s.attempts && self.may_fetch(&now, p) {
            self.fetch(p).await;
        }
        let after = self.snapshot();
        match self.usable(&after, p) {
            Some(k) => find(&k, kid).ok_or(Lookup::Unknown),
            None => Err(Lookup::Unavailable),
        }
    }

    fn current(&self, kid: &str, p: &Policy) -> Option<Arc<Key>> {
        self.usable(&self.snapshot(), p).and_then(|k| find(&k, kid))
    }

    /// One fetch (the caller holds `fetching`): new keys replace the old; a failure
    /// keeps them.
    async fn fetch(&self, p: &Policy) {
        let result = fetch(&p.client, &self.url).await;
        let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
        let now = self.clock.instant();
        s.last_attempt = Some(now);
        s.attempts += 1;
        match result {
            Ok(keys) => {
                if s.by_kid.keys().any(|kid| !keys.contains_key(kid)) {
                    self.withdrawals.fetch_add(1, std::sync::atomic::Ordering::Release);
                }
                s.by_kid = Arc::new(keys);
                s.fetched = Some(now);
                p.ok.inc();
                p.stale.set(0);
            }
            Err(e) => {
                p.failed.inc();
                p.stale.set(1);
                tracing::warn!(url = %self.url, error = %crate::util::Escaped(&e), "oauth: JWKS fetch failed; the last good keys serve until jwks_max_stale");
            }
        }
    }
}

/// The key for `kid`; a token without `kid` may use the only key there is.
fn find(keys: &HashMap<String, Arc<Key>>, kid: &str) -> Option<Arc<Key>> {
    keys.get(kid).cloned().or_else(|| {
        (kid.is_empty() && keys.len() == 1)
            .then(|| keys.values().next().cloned())
            .flatten()
    })
}

/// GETs and parses a JWKS: one deadline for the whole exchange, body included (a server
/// that trickles its answer cannot hold the refresh), at most 1 MiB.
async fn fetch(client: &crate::upstream::Client, url: &url::Url) -> Result<HashMap<String, Arc<Key>>, JwksError> {
    let req = http::Request::get(url.as_str())
        .header(http::header::ACCEPT, "application/json")
        .body(crate::error::full(bytes::Bytes::new()))
        .map_err(JwksError::Request)?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| JwksError::Fetch(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(JwksError::Status(resp.status()));
        }
        http_body_util::Limited::new(resp.into_body(), 1024 * 1024)
            .collect()
            .await
            .map_err(|e| JwksError::Body(e.to_string()))
            .map(|b| b.to_bytes())
    };
    let body = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| JwksError::TimedOut)??;
    parse_jwks(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprint_matches_rfc_7638_example() {
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(serde_json::json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        }))
        .unwrap();
        assert_eq!(
            thumbprint(&jwk.algorithm).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn symmetric_and_mismatched_keys_are_dropped() {
        let doc = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "e", "alg": "RS256", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ok", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
        ]});
        let keys = parse_jwks(doc.to_string().as_bytes()).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["ok"]);
        assert_eq!(keys["ok"].algs, vec![Algorithm::EdDSA]);
    }
}
