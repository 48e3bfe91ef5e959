//! Inbound authentication: find the credentials where the integration's methods put
//! them, verify them, and name the [`Principal`], or say precisely why not.
//!
//! Dispatch order: the `Authorization` header first (`Basic` goes to `api_key` when its
//! user part is a known key id and the integration accepts keys, else to `basic`; `Bearer`
//! goes to `oauth`), then the `apiKey` query parameter (`url_key`). Credentials of a kind
//! the integration does not accept are not looked at: they count as no credentials.

pub mod api_key;
pub mod basic;
pub mod hasher;
pub mod lockout;
pub mod oauth;
pub mod url_key;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine;
use http::request::Parts;

use crate::config::{AuthMethod, Config};
use crate::metrics::Metrics;

/// Who is calling, as established by one authentication method.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: Arc<str>,
    pub roles: Arc<[String]>,
    pub method: AuthMethod,
    /// The OAuth client the token was issued to, if any.
    pub client_id: Option<Arc<str>>,
    /// The OAuth issuer (its configured name) whose token named this principal; `None`
    /// for every other method. Two issuers' users of one name are two principals.
    pub issuer: Option<Arc<str>>,
    /// The name is a `[[users]]` entry's, so rules may name it: every method's but that
    /// of an OAuth issuer whose users are its own (`local_users = false`), whose
    /// principals rules match by role only.
    pub local_user: bool,
    /// The identity as header values, built once where the principal (or the user entry
    /// it comes from) is made; `None` when a name cannot be a header value.
    pub headers: Option<Arc<IdentityHeaders>>,
    /// The client certificate's SHA-256 (base64url), for an `mtls` principal.
    pub cnf: Option<Arc<str>>,
    /// The verified token's claims (JWT, introspection and builtin tokens), for `when`
    /// policies and `claim_headers`; `None` for the other methods.
    pub claims: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
    /// The credential was found verified in a cache (a password or API-key check, a
    /// token's signature, an introspection answer) rather than checked now.
    pub cached: bool,
}

/// `X-Portcullis-User`, `-Roles`, `-Client-Id` and `-Issuer` values.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    pub user: http::HeaderValue,
    pub roles: http::HeaderValue,
    pub client_id: Option<http::HeaderValue>,
    pub issuer: Option<http::HeaderValue>,
}

impl IdentityHeaders {
    pub fn new(user: &str, roles: &[String], client_id: Option<&str>) -> Option<Arc<Self>> {
        let value = |s: &str| http::HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(s.as_bytes())).ok();
        Some(Arc::new(Self {
            user: value(user)?,
            roles: value(&roles.join(","))?,
            client_id: match client_id {
                Some(c) => Some(value(c)?),
                None => None,
            },
            issuer: None,
        }))
    }
}

impl Principal {
    pub fn new(user: Arc<str>, roles: Arc<[String]>, method: AuthMethod, client_id: Option<Arc<str>>) -> Self {
        let headers = IdentityHeaders::new(&user, &roles, client_id.as_deref());
        Self {
            user,
            roles,
            method,
            client_id,
            issuer: None,
            local_user: true,
            headers,
            claims: None,
            cached: false,
            cnf: None,
        }
    }

    /// The name rules (`access`, `senders`) may match: empty (matching no rule's
    /// `users`, which are never empty) when it is not a `[[users]]` entry's.
    pub fn rule_name(&self) -> &str {
        if self.local_user {
            &self.user
        } else {
            ""
        }
    }

    /// The principal as named by OAuth issuer `name` (`X-Portcullis-Issuer`).
    pub fn with_issuer(mut self, name: Arc<str>) -> Self {
        if let Some(h) = &self.headers {
            let mut h = IdentityHeaders::clone(h);
            // Issuer names are checked words (letters, digits, `-`, `_`, `.`).
            h.issuer = http::HeaderValue::from_str(&name).ok();
            self.headers = Some(Arc::new(h));
        }
        self.issuer = Some(name);
        self
    }
}

/// The precise reason a credential was refused: logged and counted, never sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    UnknownUser,
    BadPassword,
    NoPassword,
    PasswordExpired,
    UserDisabled,
    UnknownKey,
    BadSecret,
    KeyWrongIntegration,
    BadUrlKey,
    AmbiguousCredentials,
    MalformedCredentials,
    OAuthNotConfigured,
    TokenExpired,
    TokenNotYetValid,
    TokenInactive,
    TokenRevoked,
    UnknownCertificate,
    AmbiguousCertificate,
    BadSignature,
    UnknownKid,
    WrongIssuer,
    WrongAudience,
    AlgNotAllowed,
    MalformedToken,
    MissingClaim,
    UntrustedKeyHeader,
    CriticalHeader,
    ClientNotAllowed,
    IssuerNotAllowed,
    /// A reload on another replica withdrew this credential (`[shared]`).
    CredentialWithdrawn,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UnknownUser => "unknown_user",
            Reason::BadPassword => "bad_password",
            Reason::NoPassword => "no_password",
            Reason::PasswordExpired => "password_expired",
            Reason::UserDisabled => "user_disabled",
            Reason::UnknownKey => "unknown_key",
            Reason::BadSecret => "bad_secret",
            Reason::KeyWrongIntegration => "key_wrong_integration",
            Reason::BadUrlKey => "bad_url_key",
            Reason::AmbiguousCredentials => "ambiguous_credentials",
            Reason::MalformedCredentials => "malformed_credentials",
            Reason::OAuthNotConfigured => "oauth_not_configured",
            Reason::TokenExpired => "token_expired",
            Reason::TokenNotYetValid => "token_not_yet_valid",
            Reason::TokenInactive => "token_inactive",
            Reason::TokenRevoked => "token_revoked",
            Reason::UnknownCertificate => "unknown_certificate",
            Reason::AmbiguousCertificate => "ambiguous_certificate",
            Reason::BadSignature => "bad_signature",
            Reason::UnknownKid => "unknown_kid",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::WrongAudience => "wrong_audience",
            Reason::AlgNotAllowed => "alg_not_allowed",
            Reason::MalformedToken => "malformed_token",
            Reason::MissingClaim => "missing_claim",
            Reason::UntrustedKeyHeader => "untrusted_key_header",
            Reason::CriticalHeader => "critical_header",
            Reason::ClientNotAllowed => "client_not_allowed",
            Reason::IssuerNotAllowed => "issuer_not_allowed",
            Reason::CredentialWithdrawn => "credential_withdrawn",
        }
    }
}

/// Why no principal came out of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Nothing where the integration's methods look.
    Missing,
    /// Credentials were there and were refused.
    Rejected { method: AuthMethod, reason: Reason },
    /// Too many recent failures for this subject from this address.
    LockedOut {
        method: AuthMethod,
        retry_after: std::time::Duration,
    },
    /// A service needed to decide is down; fail closed.
    Unavailable { method: AuthMethod, reason: &'static str },
}

/// A user as authentication needs it.
#[derive(Debug)]
pub struct UserEntry {
    pub name: Arc<str>,
    pub roles: Arc<[String]>,
    pub password_hash: Option<String>,
    pub expires_at: Option<SystemTime>,
    pub disabled: bool,
    /// A digest of everything above: a cached decision made against this entry holds only
    /// while the entry's fingerprint is unchanged.
    pub fingerprint: [u8; 32],
    headers: Option<Arc<IdentityHeaders>>,
}

impl UserEntry {
    pub fn new(
        name: &str,
        roles: &[String],
        password_hash: Option<String>,
        expires_at: Option<SystemTime>,
        disabled: bool,
    ) -> Self {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let mut field = |b: &[u8]| {
            h.update((b.len() as u64).to_be_bytes());
            h.update(b);
        };
        field(name.as_bytes());
        for r in roles {
            field(r.as_bytes());
        }
        field(b"\0roles-end");
        field(password_hash.as_deref().unwrap_or("").as_bytes());
        let expiry = expires_at.map(|t| t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        field(format!("{expiry:?}").as_bytes());
        field(&[u8::from(disabled)]);
        UserEntry {
            name: Arc::from(name),
            roles: Arc::from(roles.to_vec()),
            password_hash,
            expires_at,
            disabled,
            fingerprint: h.finalize().into(),
            headers: IdentityHeaders::new(name, roles, None),
        }
    }

    pub fn principal(&self, method: AuthMethod) -> Principal {
        Principal {
            user: self.name.clone(),
            roles: self.roles.clone(),
            method,
            client_id: None,
            issuer: None,
            local_user: true,
            headers: self.headers.clone(),
            cnf: None,
            claims: None,
            cached: false,
        }
    }

    /// `disabled` and `password_expires_at`, checked on every use, cached or not.
    pub fn standing(&self, check_expiry: bool) -> Result<(), Reason> {
        if self.disabled {
            return Err(Reason::UserDisabled);
        }
        if check_expiry && self.expires_at.is_some_and(|at| SystemTime::now() >= at) {
            return Err(Reason::PasswordExpired);
        }
        Ok(())
    }
}

/// Where a route is: the key of `api_key` bindings.
#[derive(Debug, Clone, Copy)]
pub struct RouteRef<'a> {
    pub plan: &'a str,
    pub integration: &'a str,
}

/// What authentication keeps from one config generation to the next: the caches of
/// verified credentials (each entry valid only while what it was verified against is
/// unchanged), the lockout table, and the builtin issuer's state.
pub struct Lasting {
    /// What replicas share (`[shared] backend`): memory or Redis, chosen once at start.
    pub shared: crate::shared::Backend,
    pub oauth: Arc<oauth::Shared>,
    basic: basic::Carried,
    pub(crate) introspection: oauth::introspection::Carried,
    /// Every `jwt` issuer's keys, for the life of the process.
    pub(crate) jwks: oauth::KeySets,
    lockout: lockout::Carried,
    hasher: std::sync::Mutex<Option<Arc<hasher::Hasher>>>,
    /// The clock of lockouts and token lifetimes (tests move it).
    pub clock: crate::util::Clock,
    /// Rate-limit budgets counted here while Redis does not answer (`rate_fail = "local"`).
    pub rate_local: Arc<crate::shared::MemoryRates>,
}

impl Default for Lasting {
    /// In memory, counting full tables nowhere (tests, benches).
    fn default() -> Self {
        Lasting::with_backend(crate::shared::Backend::default())
    }
}

impl Lasting {
    /// What outlives generations, on `shared` (this process alone, or Redis).
    pub fn with_backend(shared: crate::shared::Backend) -> Self {
        let clock = crate::util::Clock::default();
        Lasting {
            oauth: Arc::new(oauth::Shared::new(shared.clone(), clock.clone())),
            rate_local: Arc::new(crate::shared::MemoryRates::new(
                crate::shared::RATE_TABLE_CAP,
                clock.clone(),
                None,
            )),
            clock,
            shared,
            basic: Default::default(),
            introspection: Default::default(),
            jwks: Default::default(),
            lockout: Default::default(),
            hasher: Default::default(),
        }
    }

    /// The argon2 pool: the running one unless `[auth]` changed its shape.
    fn hasher(&self, settings: &crate::config::AuthSettings, metrics: &Metrics) -> Arc<hasher::Hasher> {
        let shape = hasher::Shape {
            workers: settings.hash_workers,
            queue: settings.hash_queue,
            deadline: settings.hash_queue_timeout,
        };
        let mut slot = self.hasher.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = slot.as_ref().filter(|h| h.shape() == shape) {
            return h.clone();
        }
        let h = Arc::new(hasher::Hasher::new(
            shape,
            metrics.hash_queue.clone(),
            metrics.hash_overloaded.clone(),
        ));
        *slot = Some(h.clone());
        h
    }
}

/// The authenticators of one config generation.
pub struct Auth {
    users: Arc<HashMap<String, Arc<UserEntry>>>,
    /// Users by client-certificate name (`cert_names`).
    cert_users: HashMap<String, Arc<UserEntry>>,
    pub(crate) basic: basic::Basic,
    pub oauth: Option<oauth::OAuth>,
    api_keys: api_key::ApiKeys,
    url_keys: url_key::UrlKeys,
    /// Credentials another replica's reload withdrew (`[shared]`).
    withdrawals: Arc<dyn crate::shared::Withdrawals>,
    pub lockout: lockout::Lockout,
    /// The process state's clock (`now` of `when` policies; tests move it).
    pub clock: crate::util::Clock,
}

impl Auth {
    pub fn new(
        config: &Config,
        metrics: &Metrics,
        lasting: &Lasting,
        client: &crate::upstream::Client,
    ) -> Result<Self, oauth::BuildError> {
        let users: HashMap<String, Arc<UserEntry>> = config
            .users
            .iter()
            .map(|u| {
                let e = UserEntry::new(
                    &u.name,
                    &u.roles,
                    u.password_hash.clone(),
                    u.password_expires_at,
                    u.disabled,
                );
                (u.name.clone(), Arc::new(e))
            })
            .collect();
        let users = Arc::new(users);
        let cert_users = config
            .users
            .iter()
            .flat_map(|u| u.cert_names.iter().map(move |n| (n.clone(), u.name.clone())))
            .filter_map(|(n, name)| users.get(&name).map(|e| (n, e.clone())))
            .collect();
        let withdrawals = lasting.shared.withdrawals.clone();
        let oauth = oauth::OAuth::new(config, lasting, client, metrics)?;
        Ok(Auth {
            oauth,
            basic: basic::Basic::new(
                users.clone(),
                &config.cache,
                &lasting.basic,
                lasting.hasher(&config.auth, metrics),
                metrics,
                withdrawals.clone(),
            ),
            api_keys: api_key::ApiKeys::new(&config.api_keys, users.clone(), withdrawals.clone()),
            url_keys: url_key::UrlKeys::new(&config.users, users.clone(), withdrawals.clone()),
            withdrawals,
            cert_users,
            lockout: lasting
                .lockout
                .take(&config.lockout, config.cache.max_entries, metrics, &lasting.clock)
                .with_shared(lasting.shared.lockouts.clone()),
            users,
            clock: lasting.clock.clone(),
        })
    }

    pub fn user(&self, name: &str) -> Option<&Arc<UserEntry>> {
        self.users.get(name)
    }

    /// Authenticates `parts` for a route accepting `methods`, under the lockout.
    ///
    /// Exactly one credential may be presented: two `Authorization` headers, or an
    /// `Authorization` credential the route accepts together with an `apiKey` parameter it
    /// also accepts, are refused as ambiguous rather than resolved by picking one.
    pub async fn authenticate(
        &self,
        methods: &[AuthMethod],
        route: RouteRef<'_>,
        parts: &Parts,
        client: IpAddr,
    ) -> Result<Principal, Failure> {
        let accepts = |m| methods.contains(&m);
        let first = methods.first().copied().unwrap_or(AuthMethod::None);
        let ambiguous = |method| Failure::Rejected {
            method,
            reason: Reason::AmbiguousCredentials,
        };
        let mut values = parts.headers.get_all(http::header::AUTHORIZATION).iter();
        let authorization = values.next();
        if values.next().is_some() {
            return Err(ambiguous(first));
        }
        let url_key = if accepts(AuthMethod::UrlKey) {
            url_key::find(parts.uri.query())
        } else {
            url_key::Found::None
        };
        if let Some(value) = authorization {
            let value = value.as_bytes();
            if let Some(encoded) = strip_scheme(value, b"basic") {
                if accepts(AuthMethod::Basic) || accepts(AuthMethod::ApiKey) {
                    let method = if accepts(AuthMethod::Basic) {
                        AuthMethod::Basic
                    } else {
                        AuthMethod::ApiKey
                    };
                    if url_key != url_key::Found::None {
                        return Err(ambiguous(method));
                    }
                    let Some(creds) = decode_basic(encoded) else {
                        return Err(Failure::Rejected {
                            method,
                            reason: Reason::MalformedCredentials,
                        });
                    };
                    let (user, secret) = (creds.user(), creds.secret());
                    let as_key =
                        accepts(AuthMethod::ApiKey) && (!accepts(AuthMethod::Basic) || self.api_keys.knows(user));
                    return if as_key {
                        let verified = self.api_keys.verify(user, secret.as_bytes(), route);
                        self.settled(AuthMethod::ApiKey, user, client, verified).await
                    } else {
                        self.basic.verify(user, secret, &self.lockout, client).await
                    };
                }
            } else if let Some(token) = strip_scheme(value, b"bearer") {
                if accepts(AuthMethod::OAuth) {
                    if url_key != url_key::Found::None {
                        return Err(ambiguous(AuthMethod::OAuth));
                    }
                    return self.bearer(token, route).await;
                }
            }
        }
        match url_key {
            // No credential in the request: a client certificate, when the integration
            // takes one and the handshake verified one.
            url_key::Found::None => match parts.extensions.get::<Arc<crate::server::tls::ClientCert>>() {
                Some(cert) if accepts(AuthMethod::Mtls) => self.mtls(cert),
                _ => Err(Failure::Missing),
            },
            url_key::Found::Ambiguous => Err(ambiguous(AuthMethod::UrlKey)),
            url_key::Found::One(key) => {
                // A wrong key names nobody: it is throttled per client address.
                let verified = self.url_keys.verify(&key);
                self.settled(AuthMethod::UrlKey, url_key::SUBJECT, client, verified)
                    .await
            }
        }
    }

    /// Settles a verification that ran without waiting against the lockout: past the
    /// budget, the answer is 429 whether or not the credential was right.
    async fn settled(
        &self,
        method: AuthMethod,
        subject: &str,
        client: IpAddr,
        verified: Result<Principal, Reason>,
    ) -> Result<Principal, Failure> {
        if let Err(retry_after) = self.settle(subject, client, verified.is_ok()).await {
            return Err(Failure::LockedOut { method, retry_after });
        }
        verified.map_err(|reason| Failure::Rejected { method, reason })
    }

    /// The user a verified client certificate names (by any of its names in `cert_names`),
    /// in good standing. A certificate is issued by the configured CA, so an unknown one
    /// is not a guess: it is refused without counting against a lockout. Names of two
    /// different users are refused as ambiguous, never settled by which comes first; a
    /// certificate whose names cannot be read names nobody.
    fn mtls(&self, cert: &crate::server::tls::ClientCert) -> Result<Principal, Failure> {
        use crate::server::tls::Names;
        let method = AuthMethod::Mtls;
        let rejected = |reason| Failure::Rejected { method, reason };
        let names = match &cert.names {
            Names::Usable(names) => names,
            Names::Unreadable(_) => return Err(rejected(Reason::MalformedCredentials)),
        };
        let mut matched: Option<&Arc<UserEntry>> = None;
        let mut withdrawn = false;
        for (name, entry) in names.iter().filter_map(|n| self.cert_users.get(n).map(|e| (n, e))) {
            // A name another replica's reload took from this user no longer names them.
            let kind = crate::shared::CredentialKind::CertName;
            if self.withdrawals.withdrawn(kind, &entry.name, name.as_bytes()) != Ok(false) {
                withdrawn = true;
                continue;
            }
            match matched {
                Some(m) if m.name != entry.name => return Err(rejected(Reason::AmbiguousCertificate)),
                Some(_) => {}
                None => matched = Some(entry),
            }
        }
        let unmatched = if withdrawn {
            Reason::CredentialWithdrawn
        } else {
            Reason::UnknownCertificate
        };
        let entry = matched.ok_or(rejected(unmatched))?;
        entry.standing(false).map_err(rejected)?;
        let mut p = entry.principal(method);
        p.cnf = Some(Arc::from(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(cert.sha256)
                .as_str(),
        ));
        Ok(p)
    }

    /// [`lockout::Lockout::settle`], then, for a failure, the count across replicas.
    pub async fn settle(&self, subject: &str, client: IpAddr, ok: bool) -> Result<(), std::time::Duration> {
        self.lockout.settle(subject, client, ok)?;
        if ok {
            return Ok(());
        }
        self.lockout.record_shared(subject, client, false, false).await
    }

    async fn bearer(&self, token: &[u8], route: RouteRef<'_>) -> Result<Principal, Failure> {
        let method = AuthMethod::OAuth;
        let Some(oauth) = &self.oauth else {
            return Err(Failure::Rejected {
                method,
                reason: Reason::OAuthNotConfigured,
            });
        };
        let Ok(token) = std::str::from_utf8(token) else {
            return Err(Failure::Rejected {
                method,
                reason: Reason::MalformedToken,
            });
        };
        match oauth.verify(token, &self.users, route).await {
            Ok(p) => Ok(p),
            Err(oauth::Verdict::Rejected(reason)) => Err(Failure::Rejected { method, reason }),
            Err(oauth::Verdict::Unavailable(reason)) => Err(Failure::Unavailable { method, reason }),
        }
    }

    /// Empties every cache of verified credentials.
    pub fn clear_caches(&self) {
        self.basic.clear();
        if let Some(o) = &self.oauth {
            o.clear_caches();
        }
    }
}

/// The credentials after `Scheme ` in an `Authorization` value (scheme case-insensitive).
fn strip_scheme<'a>(value: &'a [u8], scheme: &[u8]) -> Option<&'a [u8]> {
    let n = scheme.len();
    if value.len() > n && value[..n].eq_ignore_ascii_case(scheme) && value[n] == b' ' {
        Some(value[n + 1..].trim_ascii())
    } else {
        None
    }
}

/// Decoded `user:secret`, in one buffer that is wiped when dropped.
struct BasicCredentials {
    text: zeroize::Zeroizing<String>,
    colon: usize,
}

impl BasicCredentials {
    fn user(&self) -> &str {
        &self.text[..self.colon]
    }

    fn secret(&self) -> &str {
        &self.text[self.colon + 1..]
    }
}

/// `base64(user:secret)` into its two parts, split at the first `:`.
fn decode_basic(encoded: &[u8]) -> Option<BasicCredentials> {
    let raw = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
    let text = match String::from_utf8(raw) {
        Ok(text) => zeroize::Zeroizing::new(text),
        Err(e) => {
            drop(zeroize::Zeroizing::new(e.into_bytes()));
            return None;
        }
    };
    let colon = text.find(':')?;
    if colon == 0 {
        return None;
    }
    Some(BasicCredentials { text, colon })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_decode() {
        let enc = base64::engine::general_purpose::STANDARD.encode("alice:pa:ss");
        let c = decode_basic(enc.as_bytes()).unwrap();
        assert_eq!((c.user(), c.secret()), ("alice", "pa:ss"));
        assert!(decode_basic(b"!!!").is_none());
        let no_colon = base64::engine::general_purpose::STANDARD.encode("alice");
        assert!(decode_basic(no_colon.as_bytes()).is_none());
        let no_user = base64::engine::general_purpose::STANDARD.encode(":pw");
        assert!(decode_basic(no_user.as_bytes()).is_none());
        let not_utf8 = base64::engine::general_purpose::STANDARD.encode(b"al\xffice:pw");
        assert!(decode_basic(not_utf8.as_bytes()).is_none());
    }

    #[test]
    fn scheme_is_case_insensitive() {
        assert_eq!(strip_scheme(b"BASIC abc", b"basic"), Some(&b"abc"[..]));
        assert_eq!(strip_scheme(b"Basicabc", b"basic"), None);
        assert_eq!(strip_scheme(b"Bearer t", b"basic"), None);
    }
}
