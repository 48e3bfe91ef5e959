//! The issuer's signing keys and the JWKS that publishes them.
//!
//! `signing_keys` (or `signing_key`): the first signs, every one verifies, so a rotation
//! (a new key put first, the old one kept after it) never refuses a token issued before
//! it. Without configured keys, a generated key per `signing_key_rotation` period, agreed
//! by every replica through the shared store: the current period's signs, and the
//! previous period's keeps verifying.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Response};

use super::{Issuer, IssuerError, SigningKey};
use crate::auth::oauth::Shared;
use crate::config;
use crate::error::{full, Body};

/// Makes sure a generated key is held for the current period when none is configured:
/// with a shared store it was agreed at start; otherwise it is made here, for this
/// process (and kept across reloads).
pub(super) fn ensure_generated(cfg: &config::OAuth, shared: &Shared) -> Result<(), IssuerError> {
    if !cfg.signing_keys.is_empty() {
        return Ok(());
    }
    let period = shared.period(cfg.signing_key_rotation);
    if shared.generated_keys().iter().any(|(p, _)| *p == period) {
        return Ok(());
    }
    let k = Arc::new(SigningKey::generate().map_err(|e| IssuerError::SigningKey(e.to_string()))?);
    tracing::info!(kid = %k.kid, "oauth: no signing_keys configured; generated an Ed25519 key for this process");
    shared.hold(period, k);
    Ok(())
}

impl Issuer {
    /// Every key that verifies now: the configured ones, or the generated ones held for
    /// this period and the previous one.
    pub(super) fn verifying_keys(&self) -> Vec<Arc<SigningKey>> {
        if !self.configured.is_empty() {
            return self.configured.clone();
        }
        let now = self.shared.period(self.rotation);
        self.shared
            .generated_keys()
            .into_iter()
            .filter(|(p, _)| *p == now || p.saturating_add(1) == now)
            .map(|(_, k)| k)
            .collect()
    }

    /// The verifying key of `kid`; for generated keys, after agreeing on the current
    /// period's key when a new period has begun.
    pub(super) async fn key_of(&self, kid: &str) -> Option<Arc<SigningKey>> {
        let find = |keys: Vec<Arc<SigningKey>>| keys.into_iter().find(|k| k.kid == kid);
        if let Some(k) = find(self.verifying_keys()) {
            return Some(k);
        }
        if self.configured.is_empty() {
            let _ = self.shared.agree_period(self.shared.period(self.rotation)).await;
            return find(self.verifying_keys());
        }
        None
    }

    /// The key that signs now: the first configured one, or the current period's
    /// generated key; while that cannot be agreed on (Redis down at a new period), the
    /// previous period's, which every replica still verifies.
    pub(super) async fn signing_key(&self) -> Option<Arc<SigningKey>> {
        if let Some(k) = self.configured.first() {
            return Some(k.clone());
        }
        match self.shared.agree_period(self.shared.period(self.rotation)).await {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!(error = %e, "oauth: cannot agree on this period's signing key; signing with the previous one");
                self.verifying_keys().into_iter().next()
            }
        }
    }

    /// `GET /oauth/jwks.json`: every verifying key; cacheable for five minutes.
    pub fn jwks(&self) -> Response<Body> {
        let keys: Vec<serde_json::Value> = self.verifying_keys().iter().map(|k| k.jwk.clone()).collect();
        let mut resp = Response::new(full(Bytes::from(serde_json::json!({ "keys": keys }).to_string())));
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
        resp
    }
}
