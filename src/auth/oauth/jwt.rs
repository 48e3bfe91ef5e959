//! `jwt` mode: an external issuer's tokens, checked against its JWKS.
//!
//! Keys come from `jwks_file` (read at config load) or `jwks_url` (fetched on first use,
//! refreshed after `[cache] ttl`, and refetched on an unknown `kid` at most once per
//! `[cache] negative_ttl`). Only asymmetric keys are kept: a JWKS `oct` key is ignored, so
//! an HMAC token can never be checked against public key material. Key material in the
//! token itself (`jku`, `x5u`, `jwk`) is never fetched nor trusted: such tokens are refused.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio::sync::{Mutex, RwLock};

use super::{TokenFacts, Verdict, VerifiedTokens};
use crate::auth::Reason;
use crate::config;

struct Key {
    decoding: DecodingKey,
    /// The algorithms this key may verify: its own `alg`, or those of its type.
    algs: Vec<Algorithm>,
}

#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, Arc<Key>>,
    fetched: Option<Instant>,
    last_attempt: Option<Instant>,
}

enum Source {
    File,
    Url(url::Url),
}

pub struct Jwt {
    /// Verified tokens, until `min(exp, [cache] ttl)`.
    pub(super) verified: VerifiedTokens,
    source: Source,
    keys: RwLock<Keys>,
    fetching: Mutex<()>,
    client: crate::upstream::Client,
    issuer: Option<String>,
    audience: Option<String>,
    username_claim: String,
    roles_claim: Option<String>,
    allowed_client_ids: Vec<String>,
    algorithms: Vec<Algorithm>,
    leeway: Duration,
    refresh_after: Duration,
    refetch_interval: Duration,
}

fn parse_alg(name: &str) -> Option<Algorithm> {
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

/// Parses a JWKS document into usable asymmetric keys.
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

fn parse_jwks(bytes: &[u8]) -> Result<HashMap<String, Arc<Key>>, JwksError> {
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

impl Jwt {
    pub fn new(cfg: &config::OAuth, cache: &config::Cache, client: crate::upstream::Client) -> Result<Self, JwksError> {
        let mut keys = Keys::default();
        let source = match (&cfg.jwks_url, &cfg.jwks_file) {
            (_, Some(file)) => {
                let bytes = config::secret::read_file(file, config::FileKind::Jwks).map_err(|e| JwksError::Read {
                    path: file.display().to_string(),
                    error: e.to_string(),
                })?;
                keys.by_kid = parse_jwks(&bytes)?;
                keys.fetched = Some(Instant::now());
                Source::File
            }
            (Some(url), None) => Source::Url(url.clone()),
            (None, None) => return Err(JwksError::NoSource),
        };
        let algorithms = if cfg.algorithms.is_empty() {
            vec![Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA]
        } else {
            cfg.algorithms.iter().filter_map(|a| parse_alg(a)).collect()
        };
        Ok(Jwt {
            verified: VerifiedTokens::new(cache.max_entries),
            source,
            keys: RwLock::new(keys),
            fetching: Mutex::new(()),
            client,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            username_claim: cfg.username_claim.clone(),
            roles_claim: cfg.roles_claim.clone(),
            allowed_client_ids: cfg.allowed_client_ids.clone(),
            algorithms,
            leeway: cfg.leeway,
            refresh_after: cache.ttl,
            refetch_interval: cache.negative_ttl,
        })
    }

    async fn fetch(&self, url: &url::Url) -> Result<HashMap<String, Arc<Key>>, JwksError> {
        let req = http::Request::get(url.as_str())
            .header(http::header::ACCEPT, "application/json")
            .body(crate::error::full(bytes::Bytes::new()))
            .map_err(JwksError::Request)?;
        // One deadline for the whole exchange, body included: a server that trickles its
        // answer cannot hold the refresh.
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| JwksError::Fetch(e.to_string()))?;
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

    /// Whether the keys should be fetched now: stale, or `force`d (an unknown kid), and
    /// the last attempt old enough.
    fn due(&self, k: &Keys, force: bool) -> bool {
        let stale = k.fetched.is_none_or(|t| t.elapsed() >= self.refresh_after);
        let may_retry = k.last_attempt.is_none_or(|t| t.elapsed() >= self.refetch_interval);
        may_retry && (stale || force)
    }

    /// Refetches the JWKS if allowed now (`force`: an unknown kid; else: stale keys).
    async fn refresh(&self, force: bool) -> Result<(), &'static str> {
        let Source::Url(url) = &self.source else { return Ok(()) };
        // The common case takes no lock that a refresh holds: fresh keys, or a refetch
        // not yet allowed, are answered from a read of the key set.
        if !self.due(&*self.keys.read().await, force) {
            return Ok(());
        }
        // Only one refresh at a time; a verification that finds one running uses the keys
        // it has rather than wait, unless it has none.
        let _one = match self.fetching.try_lock() {
            Ok(guard) => guard,
            Err(_) if !self.keys.read().await.by_kid.is_empty() => return Ok(()),
            Err(_) => self.fetching.lock().await,
        };
        if !self.due(&*self.keys.read().await, force) {
            return Ok(());
        }
        let result = self.fetch(url).await;
        let mut k = self.keys.write().await;
        k.last_attempt = Some(Instant::now());
        match result {
            Ok(keys) => {
                k.by_kid = keys;
                k.fetched = Some(Instant::now());
                Ok(())
            }
            Err(e) => {
                tracing::warn!(url = %url, error = %crate::util::Escaped(&e), "oauth: JWKS fetch failed");
                if k.by_kid.is_empty() {
                    Err("jwks_unavailable")
                } else {
                    Ok(())
                }
            }
        }
    }

    async fn key(&self, kid: &str) -> Result<Option<Arc<Key>>, &'static str> {
        self.refresh(false).await?;
        let found = {
            let k = self.keys.read().await;
            k.by_kid.get(kid).cloned().or_else(|| {
                // A token without kid may use the only key there is.
                (kid.is_empty() && k.by_kid.len() == 1)
                    .then(|| k.by_kid.values().next().cloned())
                    .flatten()
            })
        };
        if found.is_some() {
            return Ok(found);
        }
        self.refresh(true).await?;
        Ok(self.keys.read().await.by_kid.get(kid).cloned())
    }

    /// With the facts, whether they came from the verified-token cache.
    pub async fn verify(&self, token: &str) -> Result<(Arc<TokenFacts>, bool), Verdict> {
        let id = VerifiedTokens::id(token);
        if let Some(facts) = self.verified.get(&id) {
            return Ok((facts, true));
        }
        let (facts, exp) = self.check(token).await?;
        // Never past the token's own exp (no leeway), nor the cache ttl.
        self.verified.insert(id, &facts, exp, self.refresh_after);
        Ok((facts, false))
    }

    /// The full verification of a token: header, key, signature, claims.
    async fn check(&self, token: &str) -> Result<(Arc<TokenFacts>, u64), Verdict> {
        let header = super::checked_header(token)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(Reason::AlgNotAllowed.into());
        }
        let kid = header.kid.clone().unwrap_or_default();
        let key = self
            .key(&kid)
            .await
            .map_err(Verdict::Unavailable)?
            .ok_or(Verdict::Rejected(Reason::UnknownKid))?;
        if !key.algs.contains(&header.alg) {
            return Err(Reason::AlgNotAllowed.into());
        }
        let mut v = Validation::new(header.alg);
        v.leeway = self.leeway.as_secs();
        v.validate_nbf = true;
        // Every configured check is also a required claim: jsonwebtoken checks `iss` and
        // `aud` only when the token carries them.
        let mut required = vec!["exp"];
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        match &self.audience {
            Some(a) => {
                v.set_audience(&[a]);
                required.push("aud");
            }
            None => v.validate_aud = false,
        }
        v.set_required_spec_claims(&required);
        let claims = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key.decoding, &v)
            .map_err(|e| Verdict::Rejected(super::reason_of(&e)))?
            .claims;
        super::check_registered_claims(&claims, self.issuer.as_deref(), self.leeway)?;
        let user = claims
            .get(&self.username_claim)
            .and_then(|v| v.as_str())
            .ok_or(Verdict::Rejected(Reason::MissingClaim))?
            .to_string();
        let client_id = super::client_id_of(&claims);
        if !self.allowed_client_ids.is_empty()
            && !client_id.as_ref().is_some_and(|c| self.allowed_client_ids.contains(c))
        {
            return Err(Reason::ClientNotAllowed.into());
        }
        let exp = claims.get("exp").and_then(|v| v.as_u64()).unwrap_or(0);
        Ok((
            TokenFacts::new(
                user,
                super::roles_from(self.roles_claim.as_ref().and_then(|c| claims.get(c))),
                client_id,
                Some(claims),
            ),
            exp,
        ))
    }
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
