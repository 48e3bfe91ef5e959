//! The builtin issuer: `POST /oauth/token` (RFC 6749: `password`, `client_credentials`,
//! `refresh_token`) and `GET /oauth/jwks.json`.
//!
//! Access tokens are EdDSA (Ed25519) JWTs signed with `oauth.signing_key` (PKCS#8 PEM) or
//! a key made at start and kept for the life of the process (its `kid` is logged).
//! Refresh tokens are opaque 256-bit strings, stored only as SHA-256; each use rotates
//! them, and presenting a used one again revokes its whole family.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{Shared, TokenFacts, Verdict, VerifiedTokens};
use crate::auth::{Auth, Reason, UserEntry};
use crate::config::{self, SecretHash};
use crate::error::{full, Body, OAuthError};

pub use crate::config::keys::SigningKey;

// === refresh tokens ===

/// A refresh-token family: every token rotated from one sign-in. It ends at `ends_at`
/// (unix seconds) however often it is rotated.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    id: u64,
    ends_at: u64,
}

impl Family {
    pub fn new(max_lifetime: Duration) -> Self {
        Family {
            id: rand::random(),
            ends_at: now().saturating_add(max_lifetime.as_secs()),
        }
    }
}

#[derive(Clone)]
enum Refresh {
    Active {
        family: Family,
        sub: Arc<str>,
        client_id: Arc<str>,
        scope: Option<Arc<str>>,
        expires_at: u64,
    },
    Used {
        family: Family,
    },
}

/// What a refresh token grants again: its family, subject and scope.
struct Grant {
    family: Family,
    sub: Arc<str>,
    scope: Option<Arc<str>>,
}

/// Refresh tokens by SHA-256, with rotation and reuse detection; bounded.
pub struct RefreshStore {
    tokens: moka::sync::Cache<[u8; 32], Refresh>,
    revoked: moka::sync::Cache<u64, ()>,
}

impl Default for RefreshStore {
    fn default() -> Self {
        RefreshStore {
            tokens: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(Duration::from_secs(90 * 86400))
                .build(),
            revoked: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(90 * 86400))
                .build(),
        }
    }
}

impl RefreshStore {
    fn issue(
        &self,
        family: Family,
        sub: Arc<str>,
        client_id: Arc<str>,
        scope: Option<Arc<str>>,
        ttl: Duration,
    ) -> String {
        let token = random_token();
        // Idle expiry, never past the family's absolute end.
        let expires_at = now().saturating_add(ttl.as_secs()).min(family.ends_at);
        let entry = Refresh::Active {
            family,
            sub,
            client_id,
            scope,
            expires_at,
        };
        self.tokens.insert(*SecretHash::of(token.as_bytes()).bytes(), entry);
        token
    }

    /// Takes an active token for `client_id`, marking it used; a reused one revokes its
    /// family. Atomic per token: of two concurrent uses, exactly one gets the grant and the
    /// other is a reuse.
    fn take(&self, token: &str, client_id: &str) -> Result<Grant, &'static str> {
        use moka::ops::compute::Op;
        let id = *SecretHash::of(token.as_bytes()).bytes();
        let mut outcome: Result<Grant, &'static str> = Err("unknown or expired refresh token");
        self.tokens.entry(id).and_compute_with(|current| {
            let Some(entry) = current else { return Op::Nop };
            match entry.into_value() {
                Refresh::Used { family } => {
                    self.revoked.insert(family.id, ());
                    outcome = Err("refresh token already used; its family is revoked");
                    Op::Nop
                }
                Refresh::Active {
                    family,
                    sub,
                    client_id: owner,
                    scope,
                    expires_at,
                } => {
                    let t = now();
                    outcome = if self.revoked.contains_key(&family.id) {
                        Err("refresh token revoked")
                    } else if t >= expires_at || t >= family.ends_at {
                        Err("refresh token expired")
                    } else if &*owner != client_id {
                        Err("refresh token was issued to another client")
                    } else {
                        Ok(Grant { family, sub, scope })
                    };
                    if outcome.is_ok() {
                        Op::Put(Refresh::Used { family })
                    } else {
                        Op::Nop
                    }
                }
            }
        });
        outcome
    }

    /// Revokes every token of `family`.
    fn revoke(&self, family: Family) {
        self.revoked.insert(family.id, ());
    }
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

// === the issuer ===

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: String,
    client_id: String,
    /// How the token was granted: for a user ([`GRANT_USER`]) or a client alone
    /// ([`GRANT_CLIENT`]); says whose standing is checked on each use.
    gty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

const GRANT_USER: &str = "password";
const GRANT_CLIENT: &str = "client_credentials";

pub struct Issuer {
    key: Arc<SigningKey>,
    issuer: String,
    audience: Option<String>,
    access_ttl: Duration,
    refresh_ttl: Duration,
    refresh_max_lifetime: Duration,
    leeway: Duration,
    clients: HashMap<String, SecretHash>,
    shared: Arc<Shared>,
    jwks: Bytes,
    /// This generation's verified tokens (a reload starts afresh: clients may change).
    pub(super) verified: VerifiedTokens,
}

pub use crate::config::{JWKS_PATH, TOKEN_PATH};
pub const DEFAULT_ISSUER: &str = "portcullis";

impl Issuer {
    pub fn new(cfg: &config::OAuth, cache: &config::Cache, shared: &Arc<Shared>) -> Result<Self, String> {
        let key = match &cfg.signing_key {
            Some(key) => key.clone(),
            None => match shared.generated_key.get() {
                Some(k) => k.clone(),
                None => {
                    let k = Arc::new(SigningKey::generate()?);
                    tracing::info!(kid = %k.kid, "oauth: no signing_key configured; generated an Ed25519 key for this process");
                    shared.generated_key.get_or_init(|| k).clone()
                }
            },
        };
        let jwks = Bytes::from(serde_json::json!({ "keys": [key.jwk] }).to_string());
        Ok(Issuer {
            issuer: cfg.issuer.clone().unwrap_or_else(|| DEFAULT_ISSUER.to_string()),
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
            jwks,
            key,
            verified: VerifiedTokens::new(cache.max_entries),
        })
    }

    /// Verifies one of this issuer's access tokens, and on every use the standing of whom
    /// it was issued to: a user still present, not disabled, password not expired; a
    /// client still configured. Removing either from the config ends their tokens at once.
    /// A token of this issuer: its signature and claims once (then cached until `exp`),
    /// the user's standing on every use.
    pub fn verify(&self, token: &str, users: &HashMap<String, Arc<UserEntry>>) -> Result<Arc<TokenFacts>, Verdict> {
        let id = VerifiedTokens::id(token);
        let facts = match self.verified.get(&id) {
            Some(facts) => facts,
            None => {
                let (facts, exp) = self.check(token)?;
                self.verified.insert(id, &facts, exp, self.access_ttl);
                facts
            }
        };
        if facts.user_grant {
            let user = users.get(&facts.user).ok_or(Reason::UnknownUser)?;
            user.standing(true)?;
        }
        Ok(facts)
    }

    fn check(&self, token: &str) -> Result<(Arc<TokenFacts>, u64), Verdict> {
        let header = super::checked_header(token)?;
        if header.alg != Algorithm::EdDSA {
            return Err(Reason::AlgNotAllowed.into());
        }
        if header.kid.as_deref() != Some(self.key.kid.as_str()) {
            return Err(Reason::UnknownKid.into());
        }
        let mut v = Validation::new(Algorithm::EdDSA);
        v.leeway = self.leeway.as_secs();
        v.validate_nbf = true;
        v.set_issuer(&[&self.issuer]);
        v.set_required_spec_claims(&["exp", "iss", "sub"]);
        match &self.audience {
            Some(a) => {
                v.set_audience(&[a]);
                v.required_spec_claims.insert("aud".into());
            }
            None => v.validate_aud = false,
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key.decoding, &v)
            .map_err(|e| Verdict::Rejected(super::reason_of(&e)))?
            .claims;
        if claims.iss != self.issuer {
            return Err(Reason::WrongIssuer.into());
        }
        if claims.iat > now().saturating_add(self.leeway.as_secs()) {
            return Err(Reason::TokenNotYetValid.into());
        }
        if !self.clients.contains_key(&claims.client_id) {
            return Err(Reason::ClientNotAllowed.into());
        }
        let user_grant = match claims.gty.as_str() {
            GRANT_USER => true,
            GRANT_CLIENT if claims.sub == claims.client_id => false,
            _ => return Err(Reason::MalformedToken.into()),
        };
        let facts = TokenFacts::make(claims.sub, Vec::new(), Some(claims.client_id), user_grant);
        Ok((facts, claims.exp))
    }

    fn mint(&self, sub: &str, client_id: &str, grant: &str, scope: Option<&str>) -> Result<String, String> {
        let iat = now();
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: sub.to_string(),
            aud: self.audience.clone(),
            iat,
            nbf: iat,
            exp: iat + self.access_ttl.as_secs().max(1),
            jti: random_token(),
            client_id: client_id.to_string(),
            gty: grant.to_string(),
            scope: scope.map(str::to_string),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.key.kid.clone());
        header.typ = Some("at+jwt".into());
        jsonwebtoken::encode(&header, &claims, &self.key.encoding).map_err(|e| e.to_string())
    }

    pub fn jwks(&self) -> Response<Body> {
        let mut resp = Response::new(full(self.jwks.clone()));
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
        resp
    }

    /// `POST /oauth/token`: authenticates the client, then the grant.
    pub async fn token(
        &self,
        auth: &Auth,
        authorization: Option<&HeaderValue>,
        form: &[u8],
        ip: IpAddr,
    ) -> Result<Response<Body>, OAuthError> {
        let params: HashMap<String, String> = url::form_urlencoded::parse(form).into_owned().collect();
        let basic = authorization.and_then(|v| client_basic(v.as_bytes()));
        let (client_id, secret) = match (&basic, params.get("client_id"), params.get("client_secret")) {
            (Some((id, secret)), _, _) => (id.clone(), secret.clone()),
            (None, Some(id), Some(secret)) => (id.clone(), secret.clone()),
            _ => {
                return Err(OAuthError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "client authentication required",
                    None,
                    "no_client_credentials",
                ))
            }
        };
        let client_subject = format!("client:{client_id}");
        let known = match self.clients.get(&client_id) {
            Some(h) => h.matches(secret.as_bytes()),
            None => {
                let _ = SecretHash::of(b"").matches(secret.as_bytes());
                false
            }
        };
        if let Err(retry) = auth.lockout.settle(&client_subject, ip, known) {
            return Err(OAuthError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "invalid_client",
                "too many failed attempts",
                Some(retry),
                "locked_out",
            ));
        }
        if !known {
            tracing::info!(client_id = %client_id, reason = "bad_client_credentials", "oauth token request refused");
            return Err(OAuthError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
                None,
                "bad_client_credentials",
            ));
        }
        let scope = params.get("scope").map(|s| Arc::<str>::from(s.as_str()));
        let client: Arc<str> = Arc::from(client_id.as_str());
        match params.get("grant_type").map(String::as_str) {
            Some("password") => {
                let (Some(user), Some(password)) = (params.get("username"), params.get("password")) else {
                    return Err(OAuthError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "username and password are required",
                        None,
                        "malformed_token_request",
                    ));
                };
                match auth.basic.verify(user, password, &auth.lockout, ip).await {
                    Ok(p) => {
                        let family = Family::new(self.refresh_max_lifetime);
                        self.respond(&p.user, &client, scope, Some(family))
                    }
                    Err(crate::auth::Failure::LockedOut { retry_after, .. }) => Err(OAuthError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "invalid_grant",
                        "too many failed attempts",
                        Some(retry_after),
                        "locked_out",
                    )),
                    Err(crate::auth::Failure::Unavailable { reason, .. }) => Err(OAuthError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "temporarily_unavailable",
                        "the password cannot be checked now; retry shortly",
                        Some(Duration::from_secs(1)),
                        reason,
                    )),
                    Err(f) => {
                        let reason = match f {
                            crate::auth::Failure::Rejected { reason, .. } => reason.as_str(),
                            _ => "rejected",
                        };
                        tracing::info!(client_id = %client_id, reason, "oauth password grant refused");
                        Err(OAuthError::new(
                            StatusCode::BAD_REQUEST,
                            "invalid_grant",
                            "invalid resource owner credentials",
                            None,
                            reason,
                        ))
                    }
                }
            }
            Some("client_credentials") => self.respond(&client, &client, scope, None),
            Some("refresh_token") => {
                let Some(rt) = params.get("refresh_token") else {
                    return Err(OAuthError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "refresh_token is required",
                        None,
                        "malformed_token_request",
                    ));
                };
                match self.shared.refresh.take(rt, &client_id) {
                    Ok(Grant {
                        family,
                        sub,
                        scope: old_scope,
                    }) => {
                        // Refresh tokens come only from password grants: the user must
                        // still exist and be allowed to sign in, now.
                        let standing = auth
                            .user(&sub)
                            .ok_or(crate::auth::Reason::UnknownUser)
                            .and_then(|e| e.standing(true));
                        if let Err(reason) = standing {
                            self.shared.refresh.revoke(family);
                            tracing::info!(client_id = %client_id, reason = reason.as_str(), "oauth refresh refused; family revoked");
                            return Err(OAuthError::new(
                                StatusCode::BAD_REQUEST,
                                "invalid_grant",
                                "the user may not sign in",
                                None,
                                reason.as_str(),
                            ));
                        }
                        self.respond(&sub, &client, old_scope, Some(family))
                    }
                    Err(why) => {
                        tracing::info!(client_id = %client_id, reason = "bad_refresh_token", detail = why, "oauth refresh refused");
                        Err(OAuthError::new(
                            StatusCode::BAD_REQUEST,
                            "invalid_grant",
                            why,
                            None,
                            "bad_refresh_token",
                        ))
                    }
                }
            }
            Some(other) => {
                let msg = format!("grant_type `{other}` is not supported");
                Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    msg,
                    None,
                    "unsupported_grant_type",
                ))
            }
            None => Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is required",
                None,
                "malformed_token_request",
            )),
        }
    }

    fn respond(
        &self,
        sub: &str,
        client: &Arc<str>,
        scope: Option<Arc<str>>,
        family: Option<Family>,
    ) -> Result<Response<Body>, OAuthError> {
        let grant = if family.is_some() { GRANT_USER } else { GRANT_CLIENT };
        let access = match self.mint(sub, client, grant, scope.as_deref()) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "oauth: cannot sign an access token");
                return Err(OAuthError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "cannot issue a token",
                    None,
                    "cannot_sign",
                ));
            }
        };
        let mut doc = serde_json::json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.access_ttl.as_secs(),
        });
        if let Some(s) = &scope {
            doc["scope"] = serde_json::Value::String(s.to_string());
        }
        if let Some(family) = family {
            let rt = self
                .shared
                .refresh
                .issue(family, Arc::from(sub), client.clone(), scope, self.refresh_ttl);
            doc["refresh_token"] = serde_json::Value::String(rt);
        }
        Ok(json(StatusCode::OK, doc.to_string()))
    }
}

/// Client credentials from `Authorization: Basic`, each part form-urlencoded (RFC 6749 2.3.1).
fn client_basic(value: &[u8]) -> Option<(String, String)> {
    let rest = value
        .strip_prefix(b"Basic ")
        .or_else(|| value.strip_prefix(b"basic "))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim_ascii())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (id, secret) = text.split_once(':')?;
    let dec = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((dec(id)?, dec(secret)?))
}

fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}
