//! `X-Portcullis-Assertion`: a short-lived HS256 JWT of the principal, signed with the
//! `[assertion]` key (or a random key per process), so an upstream, and the egress
//! listener, can check who the gateway let through.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::auth::Principal;

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
    pub iat: u64,
    pub exp: u64,
    /// The request id of the request that was let through.
    pub jti: String,
}

#[derive(Clone)]
pub struct Signer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl: Duration,
}

impl Signer {
    pub fn new(key: &[u8], ttl: Duration) -> Self {
        Signer {
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
            ttl,
        }
    }

    pub fn sign(
        &self,
        p: &Principal,
        plan: &str,
        integration: &str,
        request_id: &str,
    ) -> Result<String, jsonwebtoken::errors::Error> {
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
            iat: now,
            exp: now + self.ttl.as_secs().max(1),
            jti: request_id.to_string(),
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
    use crate::config::AuthMethod;
    use std::sync::Arc;

    fn principal() -> Principal {
        Principal {
            user: Arc::from("alice"),
            roles: Arc::from(vec!["ops".to_string()]),
            method: AuthMethod::Basic,
            client_id: None,
        }
    }

    #[test]
    fn round_trip_and_forgery() {
        let s = Signer::new(b"k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1", Duration::from_secs(60));
        let t = s.sign(&principal(), "p", "i", "rid").unwrap();
        let c = s.verify(&t).unwrap();
        assert_eq!((c.sub.as_str(), c.plan.as_str(), c.roles.len()), ("alice", "p", 1));
        let other = Signer::new(b"k2k2k2k2k2k2k2k2k2k2k2k2k2k2k2k2", Duration::from_secs(60));
        assert!(other.verify(&t).is_err());
    }
}
