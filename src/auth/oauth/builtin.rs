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
use crate::error::{full, Body, OAuthError, Refusal};
use crate::shared::{RevocationLimits, RevokeRefused};

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
        client_id: Arc<str>,
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
///
/// An evicted token only stops working (it is unknown, so refused). Revoked families are
/// a security table: kept until the family ends, never evicted, bounded by
/// `oauth.max_revocations` (with the access-token revocations' per-client share).
pub struct RefreshStore {
    tokens: moka::sync::Cache<[u8; 32], Refresh>,
    revoked: Table<u64>,
}

impl Default for RefreshStore {
    fn default() -> Self {
        RefreshStore {
            tokens: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(Duration::from_secs(90 * 86400))
                .build(),
            revoked: Table::default(),
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
    fn take(&self, token: &str, client_id: &str, limits: RevocationLimits) -> Result<Grant, &'static str> {
        use moka::ops::compute::Op;
        let id = *SecretHash::of(token.as_bytes()).bytes();
        let mut outcome: Result<Grant, &'static str> = Err("unknown or expired refresh token");
        self.tokens.entry(id).and_compute_with(|current| {
            let Some(entry) = current else { return Op::Nop };
            match entry.into_value() {
                Refresh::Used {
                    family,
                    client_id: owner,
                } => {
                    // The reused token is refused whatever happens; a full table is
                    // counted by the caller (the family's other token then lives on).
                    outcome = match self.revoked.insert(family.id, family.ends_at, &owner, limits) {
                        Ok(()) => Err("refresh token already used; its family is revoked"),
                        Err(_) => Err(REUSED_UNREVOKED),
                    };
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
                    outcome = if self.revoked.contains(&family.id) {
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
                        Op::Put(Refresh::Used {
                            family,
                            client_id: owner,
                        })
                    } else {
                        Op::Nop
                    }
                }
            }
        });
        outcome
    }

    /// Revokes every token of `family` (issued to `client`): refused when the table, or
    /// the client's share of it, is full.
    fn revoke(&self, family: Family, client: &str, limits: RevocationLimits) -> Result<(), RevokeRefused> {
        self.revoked.insert(family.id, family.ends_at, client, limits)
    }

    /// The family and client of a refresh token this process issued, without taking it.
    fn family_of(&self, token: &str) -> Option<(Family, String)> {
        match self.tokens.get(SecretHash::of(token.as_bytes()).bytes())? {
            Refresh::Active { family, client_id, .. } => Some((family, client_id.to_string())),
            Refresh::Used { .. } => None,
        }
    }
}

/// A reused refresh token whose family could not be revoked (the table is full).
const REUSED_UNREVOKED: &str = "refresh token already used; its family cannot be revoked now";

/// The refresh token of a token response: to issue (in a family, new or continued), or
/// already stored by an atomic rotation in the shared store.
enum Refreshing {
    Issue(Family, bool),
    Stored(String),
}

/// A security table: entries kept until they end (unix seconds), never evicted, bounded
/// in total and per client. A new entry that does not fit is refused; the caller refuses
/// the request that needed it.
pub struct Table<K> {
    inner: std::sync::Mutex<TableInner<K>>,
    /// Unix seconds until which any entry may be in force: the check on every request
    /// is one atomic load while nothing is in it.
    until: std::sync::atomic::AtomicU64,
}

struct TableInner<K> {
    entries: HashMap<K, (u64, Arc<str>)>,
    per_client: HashMap<Arc<str>, u64>,
}

impl<K> Default for Table<K> {
    fn default() -> Self {
        Table {
            inner: std::sync::Mutex::new(TableInner {
                entries: HashMap::new(),
                per_client: HashMap::new(),
            }),
            until: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> Table<K> {
    fn insert(&self, key: K, ends: u64, client: &str, limits: RevocationLimits) -> Result<(), RevokeRefused> {
        let mut t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if t.entries.contains_key(&key) {
            return Ok(());
        }
        let t = &mut *t;
        let used = |t: &TableInner<K>| t.per_client.get(client).copied().unwrap_or(0);
        if t.entries.len() as u64 >= limits.total || used(t) >= limits.per_client {
            // Only what has ended leaves the table.
            let now = now();
            let per_client = &mut t.per_client;
            t.entries.retain(|_, (end, owner)| {
                let live = *end >= now;
                if !live {
                    if let Some(n) = per_client.get_mut(owner) {
                        *n = n.saturating_sub(1);
                    }
                }
                live
            });
            per_client.retain(|_, n| *n > 0);
        }
        if used(t) >= limits.per_client {
            return Err(RevokeRefused::ClientFull);
        }
        if t.entries.len() as u64 >= limits.total {
            return Err(RevokeRefused::Full);
        }
        let owner: Arc<str> = match t.per_client.get_key_value(client) {
            Some((k, _)) => k.clone(),
            None => Arc::from(client),
        };
        *t.per_client.entry(owner.clone()).or_insert(0) += 1;
        t.entries.insert(key, (ends, owner));
        self.until.fetch_max(ends, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn contains<Q>(&self, key: &Q) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        if self.until.load(std::sync::atomic::Ordering::Relaxed) < now() {
            return false;
        }
        let t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        t.entries.get(key).is_some_and(|(end, _)| *end >= now())
    }
}

/// Access tokens revoked before their `exp` (RFC 7009), by `jti`, until that `exp`.
pub type Revoked = Table<String>;

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
    /// Bounds of the revocation tables (`oauth.max_revocations`, `_per_client`).
    limits: RevocationLimits,
    table_full: prometheus::IntCounterVec,
    jwks: Bytes,
    /// This generation's verified tokens (a reload starts afresh: clients may change).
    pub(super) verified: VerifiedTokens,
}

pub use crate::config::{JWKS_PATH, REVOKE_PATH, TOKEN_PATH};
pub const DEFAULT_ISSUER: &str = "portcullis";

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
    pub fn new(
        cfg: &config::OAuth,
        cache: &config::Cache,
        shared: &Arc<Shared>,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Self, String> {
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
        let limits = RevocationLimits {
            total: cfg.max_revocations,
            per_client: cfg.max_revocations_per_client,
        };
        if let Some(store) = &shared.store {
            store.set_revocation_cap(limits.total);
        }
        Ok(Issuer {
            limits,
            table_full: metrics.table_full.clone(),
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
            use crate::shared::Standing;
            let standing = match &self.shared.store {
                Some(store) => store.revocation(jti),
                None if self.shared.revoked.contains(jti.as_str()) => Standing::Revoked,
                None => Standing::Clear,
            };
            match standing {
                Standing::Clear => {}
                Standing::Revoked => return Err(Reason::TokenRevoked.into()),
                // This replica cannot tell whether the token was revoked: fail closed.
                Standing::Unknown => return Err(Verdict::Unavailable("revocation_unavailable")),
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
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the token request must be application/x-www-form-urlencoded",
                None,
                "malformed_token_request",
            )
            .into());
        }
        let form = match tokio::time::timeout(timeout, http_body_util::Limited::new(body, MAX_FORM).collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(_)) => return Err(Refusal::PayloadTooLarge),
            Err(_) => return Err(Refusal::BadRequest("token request body timed out".into())),
        };
        let authorization = parts.headers.get_all(header::AUTHORIZATION);
        if path == REVOKE_PATH {
            return Ok(self.revoke(auth, authorization, &form, client).await?);
        }
        Ok(self.token(auth, authorization, &form, client).await?)
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
    ///
    /// `authorization`: every `Authorization` field of the request (two are refused).
    pub async fn token<'h>(
        &self,
        auth: &Auth,
        authorization: impl IntoIterator<Item = &'h HeaderValue>,
        form: &[u8],
        ip: IpAddr,
    ) -> Result<Response<Body>, OAuthError> {
        let authorization: Vec<&HeaderValue> = authorization.into_iter().take(2).collect();
        let params = parse_form(form)?;
        let client_id = self.authenticate_client(auth, &authorization, &params, ip).await?;
        let scope = params.get("scope").map(|s| Arc::<str>::from(s.as_str()));
        let client: Arc<str> = Arc::from(client_id.as_str());
        self.grant(auth, &params, client, scope, ip).await
    }

    /// The client's credentials (Basic, or `client_id` and `client_secret` in the form,
    /// never both: RFC 6749 2.3.1), checked in constant time under the lockout.
    async fn authenticate_client(
        &self,
        auth: &Auth,
        authorization: &[&HeaderValue],
        params: &HashMap<String, String>,
        ip: IpAddr,
    ) -> Result<String, OAuthError> {
        let (client_id, secret) = client_credentials(authorization, params)?;
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
            tracing::info!(client_id = %crate::util::Escaped(&client_id), reason = "bad_client_credentials", "oauth token request refused");
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
                        tracing::info!(client_id = %crate::util::Escaped(&client_id), reason, "oauth password grant refused");
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
                            self.revoke_family(family, client_id).await?;
                            tracing::info!(client_id = %crate::util::Escaped(&client_id), reason = reason.as_str(), "oauth refresh refused; family revoked");
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
                        tracing::info!(client_id = %crate::util::Escaped(&client_id), reason = "bad_refresh_token", detail = why, "oauth refresh refused");
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
            Ok(crate::shared::Issued::Stored) => Ok(token),
            Ok(crate::shared::Issued::FamilyGone | crate::shared::Issued::FamilyForged) => Err(OAuthError::new(
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
            let taken = self.shared.refresh.take(token, client_id, self.limits);
            if taken.as_ref().err() == Some(&REUSED_UNREVOKED) {
                self.table_full.with_label_values(&["revocations", "total"]).inc();
                tracing::error!(client_id = %crate::util::Escaped(&client_id), "oauth: a reused refresh token's family cannot be revoked: the revocation table is full");
            }
            return Ok(taken);
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
            // Counted and logged by the store; told apart from an unknown token to no one.
            Ok(Taken::Forged) => Ok(Err("unknown or expired refresh token")),
            Err(_) => Err(unavailable("refresh_unavailable")),
        }
    }

    /// Revokes `family` (issued to `client`). In the shared store a family is revoked
    /// by deleting it, which needs no room; in this process it takes a place in the
    /// bounded table, and a full table refuses (503), never forgets an older one.
    async fn revoke_family(&self, family: Family, client: &str) -> Result<(), OAuthError> {
        match &self.shared.store {
            None => self
                .shared
                .refresh
                .revoke(family, client, self.limits)
                .map_err(|e| self.refused(e, client)),
            Some(store) => store
                .refresh_revoke_family(&format!("{:016x}", family.id))
                .await
                .map_err(|_| unavailable("refresh_unavailable")),
        }
    }

    /// The answer to a revocation that cannot be kept: 503, counted by table and limit.
    fn refused(&self, why: RevokeRefused, client: &str) -> OAuthError {
        let retry = Some(Duration::from_secs(60));
        let (limit, answer) = match why {
            RevokeRefused::Full => (
                "total",
                OAuthError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "too many revoked tokens are still live; retry later",
                    retry,
                    "revocations_full",
                ),
            ),
            RevokeRefused::ClientFull => (
                "per_client",
                OAuthError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "this client has too many revoked tokens still live; retry later",
                    retry,
                    "client_revocations_full",
                ),
            ),
            RevokeRefused::Unavailable => return unavailable("revocation_unavailable"),
        };
        // The shared store counts its own refusals.
        if self.shared.store.is_none() {
            self.table_full.with_label_values(&["revocations", limit]).inc();
        }
        tracing::warn!(client_id = %crate::util::Escaped(&client), limit, "oauth: revocation refused: the revocation table is full");
        answer
    }

    /// `POST /oauth/revoke` (RFC 7009): a client revokes one of its refresh tokens (the
    /// whole family goes) or access tokens (refused from then on, on every replica).
    /// Unknown and expired tokens are answered 200, as the RFC asks; another client's
    /// token is refused.
    pub async fn revoke<'h>(
        &self,
        auth: &Auth,
        authorization: impl IntoIterator<Item = &'h HeaderValue>,
        form: &[u8],
        ip: IpAddr,
    ) -> Result<Response<Body>, OAuthError> {
        let authorization: Vec<&HeaderValue> = authorization.into_iter().take(2).collect();
        let params = parse_form(form)?;
        let client_id = self.authenticate_client(auth, &authorization, &params, ip).await?;
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
                Ok(crate::shared::Peeked::Found { family, client }) => {
                    // The record's MAC held, so its family id is one this issuer wrote.
                    u64::from_str_radix(&family, 16)
                        .ok()
                        .map(|id| (Family { id, ends_at: 0 }, client))
                }
                Ok(crate::shared::Peeked::Unknown) => None,
                Ok(crate::shared::Peeked::Forged) => {
                    // Refused on every use anyway; deleted so that no later write can
                    // make it usable again under a revocation answered 200.
                    store
                        .refresh_forget(token)
                        .await
                        .map_err(|_| unavailable("refresh_unavailable"))?;
                    return Ok(json(StatusCode::OK, "{}".into()));
                }
                Err(_) => return Err(unavailable("refresh_unavailable")),
            },
        };
        if let Some((family, owner)) = family {
            if owner != client_id {
                return Err(not_yours());
            }
            self.revoke_family(family, &client_id).await?;
            tracing::info!(client_id = %crate::util::Escaped(&client_id), "oauth: refresh token family revoked");
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
            // 200 only once the revocation is kept: a full table refuses (503).
            match &self.shared.store {
                Some(store) => store
                    .revoke_jti(&claims.jti, claims.exp, &client_id, self.limits)
                    .await
                    .map_err(|e| self.refused(e, &client_id))?,
                None => self
                    .shared
                    .revoked
                    .insert(claims.jti.clone(), claims.exp, &client_id, self.limits)
                    .map_err(|e| self.refused(e, &client_id))?,
            }
            tracing::info!(client_id = %crate::util::Escaped(&client_id), "oauth: access token revoked");
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

// === the token and revocation requests: RFC 6749 2.3.1 and 3.2, RFC 7009 2.1 ===

/// The parameters the token and revocation endpoints read (all lowercase). A name that
/// differs from one of them only in ASCII case is refused, not ignored as unknown: one
/// spelling per request, whatever a client or an intermediary thinks names are.
const KNOWN_PARAMS: &[&str] = &[
    "grant_type",
    "username",
    "password",
    "refresh_token",
    "scope",
    "client_id",
    "client_secret",
    "token",
    "token_type_hint",
];

/// More parameters than any token or revocation request has (the form is 64 KiB at most).
const MAX_PARAMS: usize = 32;

/// A 400 `invalid_request` (RFC 6749 5.2).
fn invalid_request(description: &'static str, reason: &'static str) -> OAuthError {
    OAuthError::new(StatusCode::BAD_REQUEST, "invalid_request", description, None, reason)
}

/// The parameters of an `application/x-www-form-urlencoded` token or revocation request.
///
/// - Every name at most once (RFC 6749 3.2), compared after percent-decoding
///   (`grant%5Ftype` is `grant_type`) and without regard to ASCII case; a repeat is
///   refused even with equal or empty values. A case variant of a name this endpoint
///   reads (`Grant_Type`) is refused too.
/// - Names and values are strictly percent-decoded: a malformed escape (`%zz`, `%4`) or
///   bytes that are not UTF-8 are refused, never replaced.
/// - A parameter with an empty value is treated as omitted (RFC 6749 3.2).
fn parse_form(form: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let mut params = HashMap::new();
    let mut seen: Vec<String> = Vec::new();
    for piece in form.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        let (name, value) = match piece.iter().position(|b| *b == b'=') {
            Some(i) => (&piece[..i], &piece[i + 1..]),
            None => (piece, &b""[..]),
        };
        let malformed = || {
            invalid_request(
                "the form is not valid application/x-www-form-urlencoded UTF-8",
                "malformed_token_request",
            )
        };
        let name = form_decode(name).ok_or_else(malformed)?;
        let value = form_decode(value).ok_or_else(malformed)?;
        if name.is_empty() {
            return Err(malformed());
        }
        if seen.len() >= MAX_PARAMS {
            return Err(invalid_request("too many parameters", "malformed_token_request"));
        }
        let folded = name.to_ascii_lowercase();
        if seen.contains(&folded) {
            return Err(invalid_request(
                "a parameter is included more than once (RFC 6749 section 3.2)",
                "ambiguous_token_request",
            ));
        }
        if folded != name && KNOWN_PARAMS.contains(&folded.as_str()) {
            return Err(invalid_request(
                "parameter names are case-sensitive and lowercase (RFC 6749)",
                "ambiguous_token_request",
            ));
        }
        seen.push(folded);
        if !value.is_empty() {
            params.insert(name, value);
        }
    }
    Ok(params)
}

/// Strict `application/x-www-form-urlencoded` decoding of one name or value: `+` is a
/// space, `%XX` a byte; a malformed escape or a result that is not UTF-8 is `None`.
fn form_decode(raw: &[u8]) -> Option<String> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = hex(*bytes.next()?)?;
                let lo = hex(*bytes.next()?)?;
                out.push((hi << 4) | lo);
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

/// The client's id and secret, from exactly one authentication method (RFC 6749 2.3.1):
/// one `Authorization: Basic` field, or `client_id` and `client_secret` in the form.
///
/// - Two `Authorization` fields: 400 `invalid_request`.
/// - Basic and a form `client_secret`, whatever its value: 400 `invalid_request`.
/// - Basic and a form `client_id`: allowed only when equal to Basic's (RFC 6749 3.2.1 lets
///   a client name itself); a different one is 400 `invalid_request`.
/// - A Basic value that is not base64 of `id:secret`, each form-urlencoded UTF-8, with a
///   non-empty id: 400 `invalid_request` (never a fall back to the form).
/// - Another scheme: 401 `invalid_client`; with form credentials besides, 400.
/// - `client_secret` without `client_id`: 400; neither, or an id alone: 401.
fn client_credentials(
    authorization: &[&HeaderValue],
    params: &HashMap<String, String>,
) -> Result<(String, String), OAuthError> {
    let form_id = params.get("client_id");
    let form_secret = params.get("client_secret");
    let value = match authorization {
        [] => {
            return match (form_id, form_secret) {
                (Some(id), Some(secret)) => Ok((id.clone(), secret.clone())),
                (None, Some(_)) => Err(invalid_request(
                    "client_secret without client_id",
                    "malformed_token_request",
                )),
                (_, None) => Err(OAuthError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "client authentication required",
                    None,
                    "no_client_credentials",
                )),
            };
        }
        [one] => one.as_bytes(),
        _ => {
            return Err(invalid_request(
                "more than one Authorization header",
                "ambiguous_token_request",
            ))
        }
    };
    let (scheme, rest) = match value.iter().position(|b| *b == b' ') {
        Some(i) => (&value[..i], &value[i + 1..]),
        None => (value, &b""[..]),
    };
    if form_secret.is_some() {
        return Err(invalid_request(
            "client credentials both in the Authorization header and in the form (RFC 6749 section 2.3.1)",
            "ambiguous_token_request",
        ));
    }
    if !scheme.eq_ignore_ascii_case(b"basic") {
        if form_id.is_some() {
            return Err(invalid_request(
                "client_id in the form beside an Authorization header of another scheme",
                "ambiguous_token_request",
            ));
        }
        return Err(OAuthError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "clients authenticate with HTTP Basic or client_id and client_secret in the form",
            None,
            "unsupported_client_authentication",
        ));
    }
    let Some((id, secret)) = client_basic(rest) else {
        return Err(invalid_request(
            "the Authorization: Basic value is not base64 of client_id:client_secret",
            "malformed_token_request",
        ));
    };
    if form_id.is_some_and(|f| *f != id) {
        return Err(invalid_request(
            "client_id in the form differs from the one in the Authorization header",
            "ambiguous_token_request",
        ));
    }
    Ok((id, secret))
}

/// The id and secret of a Basic credential (after the scheme): standard base64 of
/// `id:secret`, each part form-urlencoded (RFC 6749 2.3.1), the id not empty.
fn client_basic(credential: &[u8]) -> Option<(String, String)> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(credential.trim_ascii())
        .ok()?;
    let colon = raw.iter().position(|b| *b == b':')?;
    let id = form_decode(&raw[..colon])?;
    let secret = form_decode(&raw[colon + 1..])?;
    (!id.is_empty()).then_some((id, secret))
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
