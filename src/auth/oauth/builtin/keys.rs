//! The issuer's signing key and the JWKS that publishes it.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Response};

use super::{Issuer, IssuerError, SigningKey};
use crate::auth::oauth::Shared;
use crate::config;
use crate::error::{full, Body};

/// `oauth.signing_key`, else the key generated for this process (agreed by every replica
/// at start, when there is a shared store; else made on first use and kept across
/// reloads).
pub(super) fn signing_key(cfg: &config::OAuth, shared: &Shared) -> Result<Arc<SigningKey>, IssuerError> {
    if let Some(key) = &cfg.signing_key {
        return Ok(key.clone());
    }
    if let Some(k) = shared.generated_key.get() {
        return Ok(k.clone());
    }
    let k = Arc::new(SigningKey::generate().map_err(|e| IssuerError::SigningKey(e.to_string()))?);
    tracing::info!(kid = %k.kid, "oauth: no signing_key configured; generated an Ed25519 key for this process");
    Ok(shared.generated_key.get_or_init(|| k).clone())
}

/// `{"keys": [the public key]}`.
pub(super) fn jwks_document(key: &SigningKey) -> Bytes {
    Bytes::from(serde_json::json!({ "keys": [key.jwk] }).to_string())
}

impl Issuer {
    /// `GET /oauth/jwks.json`: cacheable for five minutes.
    pub fn jwks(&self) -> Response<Body> {
        let mut resp = Response::new(full(self.jwks.clone()));
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
        resp
    }
}
