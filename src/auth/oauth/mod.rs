//! `oauth`: `Authorization: Bearer TOKEN`, checked by one of the configured issuers
//! (`[oauth]`, or each of `[[oauth.issuers]]`), each in one of three modes.
//!
//! - `builtin`: Portcullis issues the tokens itself (`POST /oauth/token`) and checks
//!   their EdDSA signature with its own keys (`signing_keys`, or generated and rotated).
//! - `jwt`: an external issuer's JWTs, checked against its JWKS (`jwks_url`, kept for
//!   the process and refetched on an unknown `kid` at most once per `jwks_min_refetch`,
//!   or `jwks_file`), with `iss`, `aud`, `exp`, `nbf` and an algorithm allow-list.
//! - `introspection`: RFC 7662 through the oauth2 crate, results cached; a server that is
//!   down, slow or erroring fails closed (503).
//!
//! `issuers.rs` chooses the one issuer of a token (a JWT by its `iss`) and applies the
//! integration's `issuers`; `jwks.rs` keeps the JWKS of each `jwt` issuer. The principal
//! names its issuer. Its roles are those the token carries in `roles_claim` and, for an
//! issuer with `local_users`, those of the `[[users]]` entry of the same name (a
//! disabled user is refused).

pub mod builtin;
pub mod introspection;
mod issuers;
mod jwks;
pub mod jwt;

pub use issuers::{Kind, Named, OAuth};
pub use jwks::KeySets;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Principal, Reason, UserEntry};
use crate::config::AuthMethod;

/// Why a token gave no principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Rejected(Reason),
    /// The authorization server could not answer: fail closed with 503.
    Unavailable(&'static str),
}

impl From<Reason> for Verdict {
    fn from(r: Reason) -> Self {
        Verdict::Rejected(r)
    }
}

/// What outlives a config generation: the builtin issuer's generated signing keys, and
/// the backend that keeps refresh-token families and revoked access tokens (this process
/// alone, or Redis shared with other replicas).
pub struct Shared {
    /// Generated keys by rotation period (`unix / signing_key_rotation`), the newest two.
    pub(super) generated: std::sync::Mutex<Vec<(u64, Arc<builtin::SigningKey>)>>,
    pub(crate) backend: crate::shared::Backend,
    /// The process state's clock, for token and family lifetimes.
    pub(crate) clock: crate::util::Clock,
}

/// Why the builtin issuer's signing key could not be made or agreed on.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Key(String),
    #[error("cannot agree on the builtin issuer's signing key through the shared store (Redis unavailable, or shared.secret differs between replicas); configure oauth.signing_key or retry")]
    Unavailable,
}

impl Shared {
    pub fn new(backend: crate::shared::Backend, clock: crate::util::Clock) -> Self {
        Shared {
            generated: Default::default(),
            backend,
            clock,
        }
    }

    /// The rotation period now, for keys that rotate every `rotation`.
    pub(super) fn period(&self, rotation: Duration) -> u64 {
        self.clock.unix() / rotation.as_secs().max(1)
    }

    /// Without `signing_keys`, every replica signs with one generated key per rotation
    /// period, agreed through the backend (sealed in Redis), so that a token from one
    /// passes on all; the previous period's key is agreed too, so tokens signed with it
    /// before the rotation keep passing here.
    pub async fn agree_signing_key(&self, rotation: Duration) -> Result<(), KeyError> {
        let now = self.period(rotation);
        for period in [now.saturating_sub(1), now] {
            self.agree_period(period).await?;
        }
        Ok(())
    }

    /// The agreed key of rotation `period`, agreed once per process.
    pub(super) async fn agree_period(&self, period: u64) -> Result<Arc<builtin::SigningKey>, KeyError> {
        if let Some(k) = self.held(period) {
            return Ok(k);
        }
        let fresh = builtin::SigningKey::generate_pkcs8().map_err(|e| KeyError::Key(e.to_string()))?;
        let keys = &self.backend.keys;
        let der = keys
            .agree(&format!("oauth-signing-key-{period}"), &fresh)
            .await
            .map_err(|_| KeyError::Unavailable)?;
        let key = Arc::new(builtin::SigningKey::from_pkcs8(&der).map_err(|e| KeyError::Key(e.to_string()))?);
        tracing::info!(kid = %key.kid, period, agreed_by = keys.agreed_by(), "oauth: no signing_keys configured; signing with a generated Ed25519 key agreed by {}", keys.agreed_by());
        Ok(self.hold(period, key))
    }

    fn held(&self, period: u64) -> Option<Arc<builtin::SigningKey>> {
        let g = self.generated.lock().unwrap_or_else(|p| p.into_inner());
        g.iter().find(|(p, _)| *p == period).map(|(_, k)| k.clone())
    }

    /// Keeps `key` for `period` (the first one kept wins), with the newest two periods.
    pub(super) fn hold(&self, period: u64, key: Arc<builtin::SigningKey>) -> Arc<builtin::SigningKey> {
        let mut g = self.generated.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, k)) = g.iter().find(|(p, _)| *p == period) {
            return k.clone();
        }
        g.push((period, key.clone()));
        g.sort_by_key(|e| std::cmp::Reverse(e.0));
        g.truncate(2);
        key
    }

    /// The generated keys held now, newest first.
    pub(super) fn generated_keys(&self) -> Vec<(u64, Arc<builtin::SigningKey>)> {
        self.generated.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Why the `[oauth]` authenticator could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Issuer(#[from] builtin::IssuerError),
    #[error(transparent)]
    Jwks(#[from] jwks::JwksError),
    #[error(transparent)]
    Introspection(#[from] introspection::NoIntrospectionUrl),
}

/// A token's claims, as JSON.
pub type Claims = serde_json::Map<String, serde_json::Value>;

/// The facts a verified token gives, before they meet `[[users]]`.
#[derive(Debug)]
pub struct TokenFacts {
    pub user: String,
    pub roles: Vec<String>,
    pub client_id: Option<String>,
    /// The verified token's claims (a JWT's payload, an introspection answer, a builtin
    /// token's), for `when` policies and `claim_headers`.
    pub claims: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
    /// The principal last made from these facts, and the fingerprint of the user entry it
    /// was merged with: a cached token reuses it (roles merged and header values built
    /// once) for as long as that entry is unchanged.
    memo: arc_swap::ArcSwapOption<(Option<[u8; 32]>, Principal)>,
    /// A builtin token issued to a user (not a client): the user must exist and be in
    /// good standing, password expiry included, at every use.
    pub(super) user_grant: bool,
    /// A builtin token's id, checked against revocations at every use.
    pub(super) jti: Option<String>,
}

impl TokenFacts {
    pub fn new(
        user: String,
        roles: Vec<String>,
        client_id: Option<String>,
        claims: serde_json::Map<String, serde_json::Value>,
    ) -> Arc<Self> {
        Self::make(user, roles, client_id, claims, false, None)
    }

    fn make(
        user: String,
        roles: Vec<String>,
        client_id: Option<String>,
        claims: serde_json::Map<String, serde_json::Value>,
        user_grant: bool,
        jti: Option<String>,
    ) -> Arc<Self> {
        Arc::new(Self {
            user,
            roles,
            client_id,
            claims: Some(Arc::new(claims)),
            memo: Default::default(),
            user_grant,
            jti,
        })
    }

    /// The principal as issuer `issuer` names it. With `users` (the issuer's tokens meet
    /// `[[users]]`), the entry of the same name adds its roles, and its standing is
    /// checked on every call.
    fn principal(
        &self,
        users: Option<&HashMap<String, Arc<UserEntry>>>,
        issuer: &Arc<str>,
    ) -> Result<Principal, Verdict> {
        let entry = users.and_then(|u| u.get(&self.user));
        if let Some(entry) = entry {
            entry.standing(false)?;
        }
        let fingerprint = entry.map(|e| e.fingerprint);
        if let Some(memo) = self.memo.load().as_deref() {
            if memo.0 == fingerprint {
                return Ok(memo.1.clone());
            }
        }
        let mut roles = self.roles.clone();
        if let Some(entry) = entry {
            for r in entry.roles.iter() {
                if !roles.contains(r) {
                    roles.push(r.clone());
                }
            }
        }
        // Names and roles become header values: refuse what cannot be one.
        let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && b != b',');
        if !plain(&self.user) || !roles.iter().all(|r| plain(r)) {
            return Err(Verdict::Rejected(Reason::MalformedToken));
        }
        let p = Principal::new(
            Arc::from(self.user.as_str()),
            Arc::from(roles),
            AuthMethod::OAuth,
            self.client_id.as_deref().map(Arc::from),
        )
        .with_issuer(issuer.clone());
        let p = Principal {
            local_user: users.is_some(),
            claims: self.claims.clone(),
            ..p
        };
        self.memo.store(Some(Arc::new((fingerprint, p.clone()))));
        Ok(p)
    }
}

/// Verified tokens by SHA-256 of the token, each until `min(exp, max_ttl)`: a repeated
/// bearer costs a lookup, not a signature check. Only successes are kept; bounded. An
/// entry is also never served at or past its `exp` on the clock of the issuer that
/// checks it (the builtin issuer's is the process state's).
pub struct VerifiedTokens(moka::sync::Cache<[u8; 32], Verified>);

/// The facts of a verified token, how long the cache keeps them, and the token's `exp`.
type Verified = (Arc<TokenFacts>, Duration, u64);

struct UntilExp;

impl moka::Expiry<[u8; 32], Verified> for UntilExp {
    fn expire_after_create(&self, _k: &[u8; 32], v: &Verified, _now: std::time::Instant) -> Option<Duration> {
        Some(v.1)
    }
}

impl VerifiedTokens {
    pub fn new(max_entries: u64) -> Self {
        Self(
            moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .expire_after(UntilExp)
                .build(),
        )
    }

    pub fn id(token: &str) -> [u8; 32] {
        *crate::config::SecretHash::of(token.as_bytes()).bytes()
    }

    /// The facts of a token verified before, unless its `exp` has passed at `now`
    /// (Unix seconds).
    pub fn get(&self, id: &[u8; 32], now: u64) -> Option<Arc<TokenFacts>> {
        self.0.get(id).filter(|v| v.2 > now).map(|v| v.0)
    }

    /// Keeps `facts` until the token's `exp` (no leeway), and never longer than `max_ttl`.
    pub fn insert(&self, id: [u8; 32], facts: &Arc<TokenFacts>, exp: u64, max_ttl: Duration) {
        let ttl = max_ttl.min(Duration::from_secs(exp.saturating_sub(crate::util::unix_now())));
        if !ttl.is_zero() {
            self.0.insert(id, (facts.clone(), ttl, exp));
        }
    }

    pub fn clear(&self) {
        self.0.invalidate_all();
    }
}

/// Roles from a claim: an array of strings, or one string of space- or comma-separated roles.
pub fn roles_from(value: Option<&serde_json::Value>) -> Vec<String> {
    match value {
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        Some(serde_json::Value::String(s)) => s
            .split([' ', ','])
            .filter(|r| !r.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// A token's JOSE header, refused when it asks for what Portcullis never does: key
/// material from the token itself (`jku`, `x5u`, `jwk`, `x5c`), or extensions it must
/// understand (`crit`, including unencoded payloads `b64`).
pub fn checked_header(token: &str) -> Result<jsonwebtoken::Header, Verdict> {
    use base64::Engine;
    let header = jsonwebtoken::decode_header(token).map_err(|e| Verdict::Rejected(reason_of(&e)))?;
    if header.jku.is_some() || header.x5u.is_some() || header.jwk.is_some() || header.x5c.is_some() {
        return Err(Reason::UntrustedKeyHeader.into());
    }
    // jsonwebtoken's Header drops members it does not know: look at the raw JSON.
    let first = token.split('.').next().unwrap_or("");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(first)
        .map_err(|_| Verdict::Rejected(Reason::MalformedToken))?;
    let members: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&raw).map_err(|_| Verdict::Rejected(Reason::MalformedToken))?;
    if members.contains_key("crit") || members.contains_key("b64") {
        return Err(Reason::CriticalHeader.into());
    }
    Ok(header)
}

/// Registered claims whose form jsonwebtoken checks only "if present" or leniently:
/// `iss` must be one string equal to the configured issuer, `exp`/`nbf`/`iat` numbers,
/// and `iat` not in the future beyond the leeway.
pub fn check_registered_claims(
    claims: &serde_json::Map<String, serde_json::Value>,
    issuer: Option<&str>,
    leeway: std::time::Duration,
) -> Result<(), Reason> {
    if let Some(iss) = issuer {
        match claims.get("iss") {
            Some(serde_json::Value::String(s)) if s == iss => {}
            Some(serde_json::Value::String(_)) | Some(serde_json::Value::Array(_)) => return Err(Reason::WrongIssuer),
            Some(_) => return Err(Reason::MalformedToken),
            None => return Err(Reason::MissingClaim),
        }
    }
    for name in ["exp", "nbf", "iat"] {
        if claims.get(name).is_some_and(|v| !v.is_u64()) {
            return Err(Reason::MalformedToken);
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    if claims
        .get("iat")
        .and_then(|v| v.as_u64())
        .is_some_and(|iat| iat > now.saturating_add(leeway.as_secs()))
    {
        return Err(Reason::TokenNotYetValid);
    }
    Ok(())
}

/// Maps a jsonwebtoken error to the precise reason.
pub fn reason_of(e: &jsonwebtoken::errors::Error) -> Reason {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => Reason::TokenExpired,
        K::ImmatureSignature => Reason::TokenNotYetValid,
        K::InvalidSignature | K::Crypto(_) => Reason::BadSignature,
        K::InvalidIssuer => Reason::WrongIssuer,
        K::InvalidAudience => Reason::WrongAudience,
        K::InvalidAlgorithm | K::InvalidAlgorithmName | K::MissingAlgorithm | K::InvalidKeyFormat => {
            Reason::AlgNotAllowed
        }
        K::MissingRequiredClaim(_) => Reason::MissingClaim,
        _ => Reason::MalformedToken,
    }
}

/// The client id a token names, in the claims issuers use for it.
pub fn client_id_of(claims: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
    ["client_id", "azp", "cid"]
        .iter()
        .find_map(|k| claims.get(*k).and_then(|v| v.as_str()).map(str::to_string))
}
