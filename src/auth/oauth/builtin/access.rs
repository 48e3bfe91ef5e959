//! Access tokens: their claims, minting, and verification on each use (signature and
//! claims once, then cached; revocation and the holder's standing every time).

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{random_token, Issuer};
use crate::auth::oauth::{TokenFacts, Verdict, VerifiedTokens};
use crate::auth::{Reason, UserEntry};
use crate::shared::Standing;

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Claims {
    pub(super) iss: String,
    pub(super) sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) aud: Option<String>,
    pub(super) iat: u64,
    pub(super) nbf: u64,
    pub(super) exp: u64,
    pub(super) jti: String,
    pub(super) client_id: String,
    /// How the token was granted: for a user ([`GRANT_USER`]) or a client alone
    /// ([`GRANT_CLIENT`]); says whose standing is checked on each use.
    pub(super) gty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) scope: Option<String>,
}

pub(super) const GRANT_USER: &str = "password";
pub(super) const GRANT_CLIENT: &str = "client_credentials";

impl Issuer {
    /// Verifies one of this issuer's access tokens: its signature and claims once (then
    /// cached until `exp`); on every use, its revocation and the standing of whom it was
    /// issued to: a user still present, not disabled, password not expired; a client
    /// still configured. Removing either from the config ends their tokens at once.
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
            match self.shared.backend.revocations.standing(jti) {
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
        let header = crate::auth::oauth::checked_header(token)?;
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
            .map_err(|e| Verdict::Rejected(crate::auth::oauth::reason_of(&e)))?
            .claims;
        if claims.iss != self.issuer {
            return Err(Reason::WrongIssuer.into());
        }
        if claims.iat > self.now().saturating_add(self.leeway.as_secs()) {
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
        // The claims as JSON too, for `when` policies and `claim_headers`.
        let map = match serde_json::to_value(&claims) {
            Ok(serde_json::Value::Object(m)) => Some(m),
            _ => None,
        };
        let facts = TokenFacts::make(
            claims.sub,
            Vec::new(),
            Some(claims.client_id),
            user_grant,
            Some(claims.jti),
            map,
        );
        Ok((facts, claims.exp))
    }

    pub(super) fn mint(
        &self,
        sub: &str,
        client_id: &str,
        grant: &str,
        scope: Option<&str>,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let iat = self.now();
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
        jsonwebtoken::encode(&header, &claims, &self.key.encoding)
    }

    /// A token's claims when this issuer signed it, whatever its times.
    pub(super) fn claims_ignoring_time(&self, token: &str) -> Option<Claims> {
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
