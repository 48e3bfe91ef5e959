//! The builtin issuer: `POST /oauth/token` (RFC 6749: `password`, `client_credentials`,
//! `refresh_token`), `POST /oauth/revoke` (RFC 7009) and `GET /oauth/jwks.json`.
//!
//! Access tokens are EdDSA (Ed25519) JWTs signed with `oauth.signing_key` (PKCS#8 PEM) or
//! a key made at start and kept for the life of the process (its `kid` is logged; with a
//! shared store, one key agreed by all replicas). Refresh tokens are opaque 256-bit
//! strings, stored only as a hash; each use rotates them, and presenting a used one again
//! revokes its whole family. Families and revoked access tokens live in the backend of
//! [`crate::shared`] chosen at start: this process's bounded tables, or Redis, so that
//! rotation, reuse detection and revocation work across replicas (when Redis cannot
//! answer, they fail closed: 503).
//!
//! | file | owns |
//! | --- | --- |
//! | `mod.rs` | the [`Issuer`], its [`endpoint`]s and [`Issuer::serve`], which answers them |
//! | `keys.rs` | the signing key (configured, generated or agreed) and the JWKS |
//! | `access.rs` | access tokens: their claims, minting, verification on each use |
//! | `client.rs` | client authentication (RFC 6749 2.3.1) |
//! | `form.rs` | the strict form of token and revocation requests |
//! | `token.rs` | `POST /oauth/token`: the grants and the token response |
//! | `refresh.rs` | refresh tokens: issue, rotation, family revocation |
//! | `revoke.rs` | `POST /oauth/revoke` (RFC 7009) and refused revocations |

mod access;
mod client;
mod form;
mod keys;
mod refresh;
mod revoke;
mod token;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http::{header, HeaderValue, Response, StatusCode};

use super::{Shared, VerifiedTokens};
use crate::auth::Auth;
use crate::config::{self, SecretHash};
use crate::error::{full, Body, OAuthError, Refusal};
use crate::shared::RevocationLimits;

pub use crate::config::keys::SigningKey;
pub use crate::config::{JWKS_PATH, REVOKE_PATH, TOKEN_PATH};

pub const DEFAULT_ISSUER: &str = "portcullis";

/// Why the builtin issuer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("cannot generate a signing key: {0}")]
    SigningKey(String),
}

pub struct Issuer {
    /// `signing_keys`: the first signs, all verify. Empty: generated keys (`shared`).
    configured: Vec<Arc<SigningKey>>,
    rotation: Duration,
    issuer: String,
    audience: Option<String>,
    access_ttl: Duration,
    refresh_ttl: Duration,
    refresh_max_lifetime: Duration,
    leeway: Duration,
    clients: HashMap<String, SecretHash>,
    shared: Arc<Shared>,
    /// Bounds of the revocation tables (`oauth.max_revocations`, `_per_client`).
    limits: RevocationLimits,
    /// This generation's verified tokens (a reload starts afresh: clients may change).
    pub(super) verified: VerifiedTokens,
}

/// The issuer's own endpoint at `path`, by the label its requests are logged and counted
/// under (`integration` of the access log and `portcullis_requests_total`).
pub fn endpoint(path: &str) -> Option<&'static str> {
    match path {
        TOKEN_PATH => Some("oauth_token"),
        REVOKE_PATH => Some("oauth_revoke"),
        JWKS_PATH => Some("oauth_jwks"),
        _ => None,
    }
}

impl Issuer {
    pub fn new(cfg: &config::OAuth, cache: &config::Cache, shared: &Arc<Shared>) -> Result<Self, IssuerError> {
        keys::ensure_generated(cfg, shared)?;
        let limits = RevocationLimits {
            total: cfg.max_revocations,
            per_client: cfg.max_revocations_per_client,
        };
        shared.backend.revocations.set_cap(limits.total);
        Ok(Issuer {
            limits,
            issuer: cfg.iss().unwrap_or(DEFAULT_ISSUER).to_string(),
            audience: cfg.audience.clone(),
            access_ttl: cfg.access_token_ttl,
            refresh_ttl: cfg.refresh_token_ttl,
            refresh_max_lifetime: cfg.refresh_token_max_lifetime,
            leeway: cfg.leeway,
            clients: cfg
                .clients
                .iter()
                .map(|c| (c.client_id.clone(), c.client_secret_hash.clone()))
                .collect(),
            shared: shared.clone(),
            configured: cfg.signing_keys.clone(),
            rotation: cfg.signing_key_rotation,
            verified: VerifiedTokens::new(cache.max_entries),
        })
    }

    /// Answers a request to one of the issuer's [`endpoint`]s: `GET /oauth/jwks.json`,
    /// `POST /oauth/token` and `POST /oauth/revoke` (a form of at most 64 KiB, read
    /// within `timeout`). The pipeline calls it in place of a route; the refusals are
    /// counted, logged and shown like any other.
    pub async fn serve<B: crate::upstream::RequestBody>(
        &self,
        auth: &Auth,
        parts: &http::request::Parts,
        body: B,
        client: IpAddr,
        timeout: Duration,
    ) -> Result<Response<Body>, Refusal> {
        use http::Method;
        use http_body_util::BodyExt;
        const MAX_FORM: usize = 64 * 1024;
        let path = parts.uri.path();
        if path == JWKS_PATH {
            crate::upstream::drain(body);
            return match parts.method {
                Method::GET | Method::HEAD => Ok(self.jwks()),
                _ => Err(Refusal::MethodNotAllowed(vec![Method::GET, Method::HEAD])),
            };
        }
        if parts.method != Method::POST {
            crate::upstream::drain(body);
            return Err(Refusal::MethodNotAllowed(vec![Method::POST]));
        }
        let form_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded"));
        if !form_type {
            crate::upstream::drain(body);
            return Err(form::invalid_request(
                "the token request must be application/x-www-form-urlencoded",
                "malformed_token_request",
            )
            .into());
        }
        let form = match tokio::time::timeout(timeout, http_body_util::Limited::new(body, MAX_FORM).collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(Refusal::PayloadTooLarge),
            Ok(Err(e)) if crate::upstream::client_gone(&e) => return Err(Refusal::ClientClosed),
            Ok(Err(_)) => return Err(Refusal::BadRequest("token request body could not be read".into())),
            Err(_) => return Err(Refusal::BadRequest("token request body timed out".into())),
        };
        let authorization = parts.headers.get_all(header::AUTHORIZATION);
        let (client_id, params) = self.client_request(auth, &authorization, &form, client).await?;
        if path == REVOKE_PATH {
            return Ok(self.revoke(&params, client_id).await?);
        }
        Ok(self.token(auth, &params, client_id, client).await?)
    }
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Issuer {
    /// Unix seconds on the process state's clock.
    fn now(&self) -> u64 {
        self.shared.clock.unix()
    }
}

/// The token store (the shared backend) cannot answer: 503, retry shortly.
fn unavailable(reason: &'static str) -> OAuthError {
    OAuthError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "the token store cannot answer now; retry shortly",
        Some(Duration::from_secs(1)),
        reason,
    )
}

/// A JSON answer of the token and revocation endpoints: never cached (RFC 6749 5.1).
fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}
