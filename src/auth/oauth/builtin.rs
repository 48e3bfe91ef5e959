//! The builtin issuer: `POST /oauth/token` (RFC 6749: `password`, `client_credentials`,
//! `refresh_token`), `POST /oauth/revoke` (RFC 7009) and `GET /oauth/jwks.json`.
//!
//! Access tokens are EdDSA (Ed25519) JWTs signed with `oauth.signing_key` (PKCS#8 PEM) or
//! a key made at start and kept for the life of the process (its `kid` is logged; with a
//! shared store, one key agreed by all replicas). Refresh tokens are opaque 256-bit
//! strings, stored only as a hash; each use rotates them, and presenting a used one again
//! revokes its whole family. With a shared store (`[shared] backend = "redis"`) families
//! live in Redis, so rotation and reuse detection work across replicas; when Redis cannot
//! answer, rotation and revocation fail closed (503).

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

/// What a refresh token grants again: its family, subject and scope (and, from the
/// shared store, the next token, already stored by the same atomic step).
struct Grant {
    family: Family,
    sub: Arc<str>,
    scope: Option<Arc<str>>,
    next: Option<String>,
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
                        Ok(Grant {
                            family,
                            sub,
                            scope,
                            next: None,
                        })
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

    /// The family and client of a refresh token this process issued, without taking it.
    fn family_of(&self, token: &str) -> Option<(u64, String)> {
        match self.tokens.get(SecretHash::of(token.as_bytes()).bytes())? {
            Refresh::Active { family, client_id, .. } => Some((family.id, client_id.to_string())),
            Refresh::Used { .. } => None,
        }
    }
}

/// The refresh token of a token response: to issue (in a family, new or continued), or
/// already stored by an atomic rotation in the shared store.
enum Refreshing {
    Issue(Family, bool),
    Stored(String),
}

/// Access tokens revoked before their `exp` (RFC 7009), by `jti`, until that `exp`.
#[derive(Default)]
pub struct Revoked {
    ids: std::sync::Mutex<HashMap<String, u64>>,
    /// Unix seconds until which any entry may be in force: the check on every request
    /// is one atomic load while nothing is revoked.
    until: std::sync::atomic::AtomicU64,
}

impl Revoked {
    const MAX: usize = 100_000;

    fn insert(&self, jti: &str, exp: u64) {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        let t = now();
        if ids.len() >= Self::MAX {
            ids.retain(|_, e| *e > t);
        }
        if ids.len() < Self::MAX {
            ids.insert(jti.to_string(), exp);
            self.until.fetch_max(exp, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn contains(&self, jti: &str) -> bool {
        if self.until.load(std::sync::atomic::Ordering::Relaxed) < now() {
            return false;
        }
        let ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        ids.get(jti).is_some_and(|exp| *exp >= now())
    }
}

/// The grant a refresh token carries, as stored in the shared store.
#[derive(Serialize, Deserialize)]
struct StoredGrant {
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
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

pub use crate::config::{JWKS_PATH, REVOKE_PATH, TOKEN_PATH};
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
    /// With the facts, whether they came from the verified-token cache.
    pub fn verify(
        &self,
        token: &str,
        users: &HashMap<String, Arc<UserEntry>>,
    ) -> Result<(Arc<TokenFacts>, bool), Verdict> {
        let id = VerifiedTokens::id(token);
        let (facts, cached) = match self.verified.get(&id) {
            Some(facts) => (facts, true),
            None => {
                let (facts, exp) = self.check(token)?;
                self.verified.insert(id, &facts, exp, self.access_ttl);
                (facts, false)
            }
        };
        if let Some(jti) = &facts.jti {
            if self.shared.revoked.contains(jti) || self.shared.store.as_ref().is_some_and(|s| s.is_revoked(jti)) {
                return Err(Reason::TokenRevoked.into());
            }
        }
        if facts.user_grant {
            let user = users.get(&facts.user).ok_or(Reason::UnknownUser)?;
            user.standing(true)?;
        }
        Ok((facts, cached))
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
        let facts = TokenFacts::make(
            claims.sub,
            Vec::new(),
            Some(claims.client_id),
            user_grant,
            Some(claims.jti),
        );
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
        let client_id = self.authenticate_client(auth, authorization, &params, ip).await?;
        let scope = params.get("scope").map(|s| Arc::<str>::from(s.as_str()));
        let client: Arc<str> = Arc::from(client_id.as_str());
        self.grant(auth, &params, client, scope, ip).await
    }

    /// The client's credentials (Basic, or `client_id` and `client_secret` in the form),
    /// checked in constant time under the lockout.
    async fn authenticate_client(
        &self,
        auth: &Auth,
        authorization: Option<&HeaderValue>,
        params: &HashMap<String, String>,
        ip: IpAddr,
    ) -> Result<String, OAuthError> {
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
        if let Err(retry) = auth.settle(&client_subject, ip, known).await {
            return Err(OAuthError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "invalid_client",
                "too many failed attempts",
                Some(retry),
                "locked_out",
            ));
        }
        if !known {
            tracing::info!(client_id = ?client_id, reason = "bad_client_credentials", "oauth token request refused");
            return Err(OAuthError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
                None,
                "bad_client_credentials",
            ));
        }
        Ok(client_id)
    }

    async fn grant(
        &self,
        auth: &Auth,
        params: &HashMap<String, String>,
        client: Arc<str>,
        scope: Option<Arc<str>>,
        ip: IpAddr,
    ) -> Result<Response<Body>, OAuthError> {
        let client_id: &str = &client;
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
                        self.respond(&p.user, &client, scope, Some(Refreshing::Issue(family, true)))
                            .await
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
                        tracing::info!(client_id = ?client_id, reason, "oauth password grant refused");
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
            Some("client_credentials") => self.respond(&client, &client, scope, None).await,
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
                match self.take_refresh(rt, client_id).await? {
                    Ok(Grant {
                        family,
                        sub,
                        scope: old_scope,
                        next,
                    }) => {
                        // Refresh tokens come only from password grants: the user must
                        // still exist and be allowed to sign in, now.
                        let standing = auth
                            .user(&sub)
                            .ok_or(crate::auth::Reason::UnknownUser)
                            .and_then(|e| e.standing(true));
                        if let Err(reason) = standing {
                            self.revoke_family(family).await?;
                            tracing::info!(client_id = ?client_id, reason = reason.as_str(), "oauth refresh refused; family revoked");
                            return Err(OAuthError::new(
                                StatusCode::BAD_REQUEST,
                                "invalid_grant",
                                "the user may not sign in",
                                None,
                                reason.as_str(),
                            ));
                        }
                        let plan = match next {
                            Some(token) => Refreshing::Stored(token),
                            None => Refreshing::Issue(family, false),
                        };
                        self.respond(&sub, &client, old_scope, Some(plan)).await
                    }
                    Err(why) => {
                        tracing::info!(client_id = ?client_id, reason = "bad_refresh_token", detail = why, "oauth refresh refused");
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

    /// The token response; `family`: a refresh token too, in that family (new or not).
    async fn respond(
        &self,
        sub: &str,
        client: &Arc<str>,
        scope: Option<Arc<str>>,
        refreshing: Option<Refreshing>,
    ) -> Result<Response<Body>, OAuthError> {
        let grant = if refreshing.is_some() { GRANT_USER } else { GRANT_CLIENT };
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
        let rt = match refreshing {
            None => None,
            Some(Refreshing::Stored(token)) => Some(token),
            Some(Refreshing::Issue(family, new_family)) => {
                Some(self.issue_refresh(family, new_family, sub, client, scope).await?)
            }
        };
        if let Some(rt) = rt {
            doc["refresh_token"] = serde_json::Value::String(rt);
        }
        Ok(json(StatusCode::OK, doc.to_string()))
    }

    /// A new refresh token in `family`: in the shared store when there is one (a family
    /// revoked meanwhile gets no new token), else in this process.
    async fn issue_refresh(
        &self,
        family: Family,
        new_family: bool,
        sub: &str,
        client: &Arc<str>,
        scope: Option<Arc<str>>,
    ) -> Result<String, OAuthError> {
        let Some(store) = &self.shared.store else {
            return Ok(self
                .shared
                .refresh
                .issue(family, Arc::from(sub), client.clone(), scope, self.refresh_ttl));
        };
        let token = random_token();
        let expires_at = now().saturating_add(self.refresh_ttl.as_secs()).min(family.ends_at);
        let grant = serde_json::to_string(&StoredGrant {
            sub: sub.to_string(),
            scope: scope.map(|s| s.to_string()),
        })
        .map_err(|_| unavailable("refresh_unavailable"))?;
        let ttl = Duration::from_secs(expires_at.saturating_sub(now()).max(1));
        let family_id = format!("{:016x}", family.id);
        let stored = store
            .refresh_issue(crate::shared::NewRefresh {
                token: &token,
                family: &family_id,
                family_ends_at: family.ends_at,
                new_family,
                client,
                expires_at,
                grant: &grant,
                ttl,
            })
            .await;
        match stored {
            Ok(true) => Ok(token),
            Ok(false) => Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "refresh token revoked",
                None,
                "bad_refresh_token",
            )),
            Err(_) => Err(unavailable("refresh_unavailable")),
        }
    }

    /// Takes a refresh token for `client_id` (rotation): atomically, in the shared store
    /// when there is one. `Ok(Err(why))`: refused; `Err`: the store cannot answer.
    async fn take_refresh(&self, token: &str, client_id: &str) -> Result<Result<Grant, &'static str>, OAuthError> {
        let Some(store) = &self.shared.store else {
            return Ok(self.shared.refresh.take(token, client_id));
        };
        use crate::shared::Taken;
        let next = random_token();
        match store
            .refresh_take(token, client_id, now(), &next, self.refresh_ttl.as_secs().max(1))
            .await
        {
            Ok(Taken::Granted {
                family,
                fields,
                family_ends_at,
            }) => {
                let Ok(g) = serde_json::from_str::<StoredGrant>(&fields) else {
                    return Ok(Err("unknown or expired refresh token"));
                };
                let Ok(id) = u64::from_str_radix(&family, 16) else {
                    return Ok(Err("unknown or expired refresh token"));
                };
                Ok(Ok(Grant {
                    family: Family {
                        id,
                        ends_at: family_ends_at,
                    },
                    sub: Arc::from(g.sub),
                    scope: g.scope.map(Arc::from),
                    next: Some(next),
                }))
            }
            Ok(Taken::Unknown) => Ok(Err("unknown or expired refresh token")),
            Ok(Taken::Expired) => Ok(Err("refresh token expired")),
            Ok(Taken::OtherClient) => Ok(Err("refresh token was issued to another client")),
            Ok(Taken::Revoked) => Ok(Err("refresh token revoked")),
            Ok(Taken::Reused) => Ok(Err("refresh token already used; its family is revoked")),
            Err(_) => Err(unavailable("refresh_unavailable")),
        }
    }

    async fn revoke_family(&self, family: Family) -> Result<(), OAuthError> {
        match &self.shared.store {
            None => {
                self.shared.refresh.revoke(family);
                Ok(())
            }
            Some(store) => store
                .refresh_revoke_family(&format!("{:016x}", family.id))
                .await
                .map_err(|_| unavailable("refresh_unavailable")),
        }
    }

    /// `POST /oauth/revoke` (RFC 7009): a client revokes one of its refresh tokens (the
    /// whole family goes) or access tokens (refused from then on, on every replica).
    /// Unknown and expired tokens are answered 200, as the RFC asks; another client's
    /// token is refused.
    pub async fn revoke(
        &self,
        auth: &Auth,
        authorization: Option<&HeaderValue>,
        form: &[u8],
        ip: IpAddr,
    ) -> Result<Response<Body>, OAuthError> {
        let params: HashMap<String, String> = url::form_urlencoded::parse(form).into_owned().collect();
        let client_id = self.authenticate_client(auth, authorization, &params, ip).await?;
        let Some(token) = params.get("token").filter(|t| !t.is_empty()) else {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "token is required",
                None,
                "malformed_token_request",
            ));
        };
        let not_yours = || {
            OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                "the token was issued to another client",
                None,
                "token_of_another_client",
            )
        };
        // A refresh token: its family.
        let family = match &self.shared.store {
            None => self.shared.refresh.family_of(token),
            Some(store) => match store.refresh_peek(token).await {
                Ok(Some((family, owner))) => u64::from_str_radix(&family, 16).ok().map(|id| (id, owner)),
                Ok(None) => None,
                Err(_) => return Err(unavailable("refresh_unavailable")),
            },
        };
        if let Some((id, owner)) = family {
            if owner != client_id {
                return Err(not_yours());
            }
            self.revoke_family(Family { id, ends_at: 0 }).await?;
            tracing::info!(client_id = ?client_id, "oauth: refresh token family revoked");
            return Ok(json(StatusCode::OK, "{}".into()));
        }
        // An access token of this issuer (signature checked; expired ones need nothing).
        if let Some(claims) = self.claims_ignoring_time(token) {
            if claims.exp < now() {
                return Ok(json(StatusCode::OK, "{}".into()));
            }
            if claims.client_id != client_id {
                return Err(not_yours());
            }
            if let Some(store) = &self.shared.store {
                store
                    .revoke_jti(&claims.jti, claims.exp)
                    .await
                    .map_err(|_| unavailable("revocation_unavailable"))?;
            }
            self.shared.revoked.insert(&claims.jti, claims.exp);
            tracing::info!(client_id = ?client_id, "oauth: access token revoked");
        }
        Ok(json(StatusCode::OK, "{}".into()))
    }

    /// A token's claims when this issuer signed it, whatever its times.
    fn claims_ignoring_time(&self, token: &str) -> Option<Claims> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.alg != Algorithm::EdDSA || header.kid.as_deref() != Some(self.key.kid.as_str()) {
            return None;
        }
        let mut v = Validation::new(Algorithm::EdDSA);
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key.decoding, &v)
            .ok()?
            .claims;
        (claims.iss == self.issuer).then_some(claims)
    }
}

fn unavailable(reason: &'static str) -> OAuthError {
    OAuthError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "the token store cannot answer now; retry shortly",
        Some(Duration::from_secs(1)),
        reason,
    )
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
