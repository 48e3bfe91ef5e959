//! `X-Portcullis-Assertion`: a short-lived HS256 JWT of the principal, signed with the
//! `[assertion]` key (or a random key per process), so an upstream, and the egress
//! listener, can check who the gateway let through.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use http::HeaderValue;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::auth::Principal;
use crate::config::AuthMethod;

pub const ISSUER: &str = "portcullis";

/// The claims of an assertion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub roles: Vec<String>,
    pub auth_method: String,
    pub plan: String,
    pub integration: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The OAuth issuer (its configured name) whose token named the principal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_issuer: Option<String>,
    /// `false` when `sub` is not a `[[users]]` entry's name (a user of an OAuth issuer
    /// without `local_users`): rules naming users do not match it. Absent: `true`.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub local_user: bool,
    /// RFC 8705 confirmation of a client certificate: `{"x5t#S256": thumbprint}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<serde_json::Value>,
    pub iat: u64,
    pub exp: u64,
    /// A random id of this assertion (one assertion serves several requests).
    pub jti: String,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// What an assertion says: the route and everything about the principal it carries.
type Said = (
    usize,
    Arc<str>,
    Arc<[String]>,
    AuthMethod,
    Option<Arc<str>>,
    Option<Arc<str>>,
    Option<Arc<str>>,
    bool,
);

#[derive(Clone)]
pub struct Signer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl: Duration,
    /// Assertions already minted, reused for a quarter of their ttl: a principal's
    /// repeated requests cost a lookup, not an HMAC and a JSON encoding. The key is all the
    /// assertion says, so a principal whose roles changed gets a new one.
    minted: moka::sync::Cache<Said, HeaderValue>,
}

impl Signer {
    pub fn new(key: &[u8], ttl: Duration) -> Self {
        Signer {
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
            ttl,
            minted: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live((ttl / 4).max(Duration::from_millis(1)))
                .build(),
        }
    }

    /// The assertion for `p` on route `route` (index) of `plan`/`integration`: a cached
    /// one minted less than a quarter of the ttl ago, or a new one.
    pub fn assertion(&self, p: &Principal, route: usize, plan: &str, integration: &str) -> Option<HeaderValue> {
        let key: Said = (
            route,
            p.user.clone(),
            p.roles.clone(),
            p.method,
            p.client_id.clone(),
            p.cnf.clone(),
            p.issuer.clone(),
            p.local_user,
        );
        if let Some(v) = self.minted.get(&key) {
            return Some(v);
        }
        let token = self.sign(p, plan, integration).ok()?;
        let v = HeaderValue::from_str(&token).ok()?;
        self.minted.insert(key, v.clone());
        Some(v)
    }

    pub fn sign(&self, p: &Principal, plan: &str, integration: &str) -> Result<String, jsonwebtoken::errors::Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            iss: ISSUER.to_string(),
            sub: p.user.to_string(),
            roles: p.roles.to_vec(),
            auth_method: p.method.as_str().to_string(),
            plan: plan.to_string(),
            integration: integration.to_string(),
            client_id: p.client_id.as_ref().map(|c| c.to_string()),
            token_issuer: p.issuer.as_ref().map(|i| i.to_string()),
            local_user: p.local_user,
            cnf: p.cnf.as_ref().map(|t| serde_json::json!({ "x5t#S256": t.as_ref() })),
            iat: now,
            exp: now + self.ttl.as_secs().max(1),
            jti: format!("{:032x}", rand::random::<u128>()),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    /// Checks signature, issuer and expiry (no leeway: assertions are minted locally).
    pub fn verify(&self, token: &str) -> Result<Claims, jsonwebtoken::errors::Error> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.set_issuer(&[ISSUER]);
        v.set_required_spec_claims(&["exp", "iss", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &v).map(|d| d.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal() -> Principal {
        Principal::new(
            Arc::from("alice"),
            Arc::from(vec!["ops".to_string()]),
            AuthMethod::Basic,
            None,
        )
    }

    #[test]
    fn round_trip_and_forgery() {
        let s = Signer::new(b"k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1", Duration::from_secs(60));
        let t = s.sign(&principal(), "p", "i").unwrap();
        let c = s.verify(&t).unwrap();
        assert_eq!((c.sub.as_str(), c.plan.as_str(), c.roles.len()), ("alice", "p", 1));
        let other = Signer::new(b"k2k2k2k2k2k2k2k2k2k2k2k2k2k2k2k2", Duration::from_secs(60));
        assert!(other.verify(&t).is_err());
    }

    #[test]
    fn an_assertion_is_reused_only_for_what_it_says() {
        let s = Signer::new(b"k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1", Duration::from_secs(60));
        let a = s.assertion(&principal(), 0, "p", "i").unwrap();
        assert_eq!(s.assertion(&principal(), 0, "p", "i").unwrap(), a);
        // Another route, other roles or another method: another assertion.
        assert_ne!(s.assertion(&principal(), 1, "p", "j").unwrap(), a);
        let mut other = principal();
        other.roles = Arc::from(vec!["ops".to_string(), "admin".to_string()]);
        let b = s.assertion(&other, 0, "p", "i").unwrap();
        assert_ne!(b, a);
        let c = s.verify(b.to_str().unwrap()).unwrap();
        assert_eq!(c.roles, vec!["ops", "admin"]);
        let mut by_key = principal();
        by_key.method = AuthMethod::ApiKey;
        assert_ne!(s.assertion(&by_key, 0, "p", "i").unwrap(), a);
    }

    /// The same name from two issuers, or from an issuer and `[[users]]`: two
    /// assertions, each naming its issuer; one whose name is not a `[[users]]` entry's
    /// says so (`local_user: false`), the others carry no such claim.
    #[test]
    fn the_issuer_and_a_foreign_name_are_part_of_what_an_assertion_says() {
        let s = Signer::new(b"k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1", Duration::from_secs(60));
        let local = s.assertion(&principal(), 0, "p", "i").unwrap();
        let corp = principal().with_issuer(Arc::from("corp"));
        let partner = Principal {
            local_user: false,
            ..principal().with_issuer(Arc::from("partner"))
        };
        let (a, b) = (
            s.assertion(&corp, 0, "p", "i").unwrap(),
            s.assertion(&partner, 0, "p", "i").unwrap(),
        );
        assert!(a != local && b != local && a != b);
        let (ca, cb) = (
            s.verify(a.to_str().unwrap()).unwrap(),
            s.verify(b.to_str().unwrap()).unwrap(),
        );
        assert_eq!((ca.token_issuer.as_deref(), ca.local_user), (Some("corp"), true));
        assert_eq!((cb.token_issuer.as_deref(), cb.local_user), (Some("partner"), false));
        let payload = |t: &HeaderValue| {
            use base64::Engine;
            let part = t.to_str().unwrap().split('.').nth(1).unwrap().to_string();
            String::from_utf8(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
        };
        assert!(!payload(&a).contains("local_user") && payload(&b).contains(r#""local_user":false"#));
        assert!(!payload(&local).contains("token_issuer"));
    }

    #[test]
    fn a_reused_assertion_is_never_older_than_a_quarter_of_its_ttl() {
        // ttl 4 ms: reuse lasts 1 ms; after that a new one is minted with a fresh exp.
        let s = Signer::new(b"k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1", Duration::from_millis(4));
        let a = s.assertion(&principal(), 0, "p", "i").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let b = s.assertion(&principal(), 0, "p", "i").unwrap();
        assert_ne!(a, b);
    }
}
