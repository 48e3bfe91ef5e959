//! `jwt` mode: an external issuer's tokens, checked against its JWKS.
//!
//! Keys come from `jwks_file` (read at config load) or `jwks_url` (a key set kept for the
//! process: [`super::jwks`], refetched on an unknown `kid` at most once per
//! `jwks_min_refetch`, serving its last good keys up to `jwks_max_stale`). Only
//! asymmetric keys are kept: a JWKS `oct` key is ignored, so an HMAC token can never be
//! checked against public key material. Key material in the token itself (`jku`, `x5u`,
//! `jwk`) is never fetched nor trusted: such tokens are refused.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, Validation};

use super::jwks::{parse_alg, parse_jwks, JwksError, Key, KeySet, KeySets, Lookup, Policy};
use super::{TokenFacts, Verdict, VerifiedTokens};
use crate::auth::Reason;
use crate::config;

enum Source {
    File(HashMap<String, Arc<Key>>),
    Url(Arc<KeySet>),
}

pub struct Jwt {
    /// Verified tokens, until `min(exp, [cache] ttl)`.
    pub(super) verified: VerifiedTokens,
    verified_ttl: Duration,
    /// The key set's withdrawals when `verified` was last known good: once the IdP has
    /// withdrawn a key, tokens verified with it are verified again (and refused).
    withdrawals_seen: std::sync::atomic::AtomicU64,
    source: Source,
    policy: Policy,
    issuer: Option<String>,
    audience: Option<String>,
    username_claim: String,
    roles_claim: Option<String>,
    allowed_client_ids: Vec<String>,
    algorithms: Vec<Algorithm>,
    leeway: Duration,
}

impl Jwt {
    pub fn new(
        cfg: &config::OAuth,
        cache: &config::Cache,
        client: crate::upstream::Client,
        sets: &KeySets,
        clock: &crate::util::Clock,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Self, JwksError> {
        let source = match (&cfg.jwks_url, &cfg.jwks_file) {
            (_, Some(file)) => {
                let bytes = config::secret::read_file(file, config::FileKind::Jwks).map_err(|e| JwksError::Read {
                    path: file.display().to_string(),
                    error: e.to_string(),
                })?;
                Source::File(parse_jwks(&bytes)?)
            }
            (Some(url), None) => Source::Url(sets.of(cfg.issuer.as_deref().unwrap_or(""), url, clock)),
            (None, None) => return Err(JwksError::NoSource),
        };
        let algorithms = if cfg.algorithms.is_empty() {
            vec![Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA]
        } else {
            cfg.algorithms.iter().filter_map(|a| parse_alg(a)).collect()
        };
        Ok(Jwt {
            verified: VerifiedTokens::new(cache.max_entries),
            verified_ttl: cache.ttl,
            withdrawals_seen: Default::default(),
            source,
            policy: Policy::new(&cfg.name, cfg, cache, client, metrics),
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            username_claim: cfg.username_claim.clone(),
            roles_claim: cfg.roles_claim.clone(),
            allowed_client_ids: cfg.allowed_client_ids.clone(),
            algorithms,
            leeway: cfg.leeway,
        })
    }

    /// With the facts, whether they came from the verified-token cache.
    pub async fn verify(&self, token: &str) -> Result<(Arc<TokenFacts>, bool), Verdict> {
        if let Source::Url(set) = &self.source {
            let now = set.withdrawals();
            if self.withdrawals_seen.swap(now, std::sync::atomic::Ordering::AcqRel) != now {
                self.verified.clear();
            }
        }
        let id = VerifiedTokens::id(token);
        if let Some(facts) = self.verified.get(&id, crate::util::unix_now()) {
            return Ok((facts, true));
        }
        let (facts, exp) = self.check(token).await?;
        // Never past the token's own exp (no leeway), nor the cache ttl.
        self.verified.insert(id, &facts, exp, self.verified_ttl);
        Ok((facts, false))
    }

    /// The full verification of a token: header, key, signature, claims.
    async fn check(&self, token: &str) -> Result<(Arc<TokenFacts>, u64), Verdict> {
        let header = super::checked_header(token)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(Reason::AlgNotAllowed.into());
        }
        let kid = header.kid.clone().unwrap_or_default();
        let key = match &self.source {
            Source::File(keys) => keys.get(&kid).cloned().or_else(|| {
                (kid.is_empty() && keys.len() == 1)
                    .then(|| keys.values().next().cloned())
                    .flatten()
            }),
            Source::Url(set) => match set.key(&kid, &self.policy).await {
                Ok(k) => Some(k),
                Err(Lookup::Unknown) => None,
                Err(Lookup::Unavailable) => return Err(Verdict::Unavailable("jwks_unavailable")),
            },
        }
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
        let roles = super::roles_from(self.roles_claim.as_ref().and_then(|c| claims.get(c)));
        Ok((TokenFacts::new(user, roles, client_id, claims), exp))
    }
}
