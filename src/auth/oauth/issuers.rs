//! Many issuers: which one checks a bearer token, and whether the integration accepts it.
//!
//! - A JWT (three base64url segments whose first is a JSON object) goes to the one issuer
//!   whose `issuer` equals its `iss`: the payload is read unverified only to choose, then
//!   that issuer verifies everything with its own keys. It is never tried against every
//!   issuer in turn. An `iss` that is not one string is refused (`malformed_token`, or
//!   `wrong_issuer` for a list); one that names no issuer is `wrong_issuer`, unless the
//!   integration accepts introspection issuers that name no `issuer` (their server
//!   decides: the token is opaque to Portcullis).
//! - Any other token is opaque: the introspection issuers the integration accepts are
//!   asked in config order, each through its own cache; the first active answer wins. A
//!   server that cannot answer is skipped over, but when none says active, one that could
//!   not answer makes it 503 (the token might be its).
//! - An issuer the integration does not list in `issuers` is `issuer_not_allowed`, before
//!   any key is fetched or server asked.
//! - With one issuer (the single `[oauth]` table), every token goes to it, as before
//!   there were several: it refuses what is not its own with its own reasons.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;

use super::{builtin, introspection, jwt, BuildError, Verdict};
use crate::auth::{Principal, Reason, RouteRef, UserEntry};
use crate::config::{self, OAuthMode};
use crate::metrics::Metrics;

/// How an issuer checks its tokens.
pub enum Kind {
    Builtin(Box<builtin::Issuer>),
    Jwt(Box<jwt::Jwt>),
    Introspection(Box<introspection::Introspector>),
}

/// One configured issuer.
pub struct Named {
    pub name: Arc<str>,
    pub kind: Kind,
    /// Its tokens' users meet `[[users]]` entries of the same name (roles, standing).
    local_users: bool,
    /// Introspection without a configured `issuer`: its server judges any token.
    any_iss: bool,
}

/// The OAuth issuers of one config generation.
pub struct OAuth {
    issuers: Vec<Named>,
    /// Issuer index by `iss`.
    by_iss: HashMap<String, usize>,
    /// `plan/integration` -> which issuers it accepts (by index), for the integrations
    /// that name `issuers`; the others accept every issuer.
    allowed: HashMap<String, Vec<bool>>,
}

/// What the unverified token says about where it goes.
#[derive(Debug, PartialEq, Eq)]
enum Routed {
    /// A JWT naming this `iss`.
    Iss(String),
    /// A JWT without `iss`.
    NoIss,
    /// A JWT whose `iss` is not one string, or whose payload is not a JSON object.
    Bad(Reason),
    /// Not a JWT.
    Opaque,
}

/// Reads where a token goes: its header and payload decoded, unverified.
fn route_of(token: &str) -> Routed {
    let b64 = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Routed::Opaque;
    };
    let header_is_json = b64
        .decode(h)
        .ok()
        .and_then(|raw| serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&raw).ok())
        .is_some();
    if !header_is_json {
        return Routed::Opaque;
    }
    let payload = b64
        .decode(p)
        .ok()
        .and_then(|raw| serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&raw).ok());
    let Some(payload) = payload else {
        return Routed::Bad(Reason::MalformedToken);
    };
    match payload.get("iss") {
        Some(serde_json::Value::String(s)) => Routed::Iss(s.clone()),
        Some(serde_json::Value::Array(_)) => Routed::Bad(Reason::WrongIssuer),
        Some(_) => Routed::Bad(Reason::MalformedToken),
        None => Routed::NoIss,
    }
}

impl OAuth {
    pub fn new(
        config: &config::Config,
        lasting: &crate::auth::Lasting,
        client: &crate::upstream::Client,
        metrics: &Metrics,
    ) -> Result<Option<Self>, BuildError> {
        if config.issuers.is_empty() {
            lasting.jwks.keep_only(&[]);
            lasting.introspection.keep_only(&[]);
            return Ok(None);
        }
        let cache = &config.cache;
        lasting.jwks.keep_only(&config.issuers);
        lasting.introspection.keep_only(&config.issuers);
        let mut issuers = Vec::with_capacity(config.issuers.len());
        let mut by_iss = HashMap::new();
        for (i, cfg) in config.issuers.iter().enumerate() {
            let name: Arc<str> = Arc::from(cfg.name.as_str());
            let kind = match cfg.mode {
                OAuthMode::Builtin => Kind::Builtin(Box::new(builtin::Issuer::new(cfg, cache, &lasting.oauth)?)),
                OAuthMode::Jwt => Kind::Jwt(Box::new(jwt::Jwt::new(
                    cfg,
                    cache,
                    client.clone(),
                    &lasting.jwks,
                    &lasting.clock,
                    metrics,
                )?)),
                OAuthMode::Introspection => Kind::Introspection(Box::new(introspection::Introspector::new(
                    cfg,
                    cache,
                    client.clone(),
                    &lasting.introspection,
                    metrics,
                )?)),
            };
            if let Some(iss) = cfg.iss() {
                by_iss.insert(iss.to_string(), i);
            }
            issuers.push(Named {
                name,
                kind,
                local_users: cfg.local_users,
                any_iss: cfg.mode == OAuthMode::Introspection && cfg.issuer.is_none(),
            });
        }
        let mut allowed = HashMap::new();
        for p in &config.plans {
            for int in &p.integrations {
                if let Some(names) = &int.issuers {
                    let set = config.issuers.iter().map(|o| names.contains(&o.name)).collect();
                    allowed.insert(format!("{}/{}", p.name, int.name), set);
                }
            }
        }
        Ok(Some(OAuth {
            issuers,
            by_iss,
            allowed,
        }))
    }

    /// The issuers, in config order.
    pub fn issuers(&self) -> &[Named] {
        &self.issuers
    }

    /// The builtin issuer, if one is configured.
    pub fn issuer(&self) -> Option<&builtin::Issuer> {
        self.issuers.iter().find_map(|n| match &n.kind {
            Kind::Builtin(i) => Some(&**i),
            Kind::Jwt(_) | Kind::Introspection(_) => None,
        })
    }

    pub fn clear_caches(&self) {
        for n in &self.issuers {
            match &n.kind {
                Kind::Builtin(i) => i.verified.clear(),
                Kind::Jwt(j) => j.verified.clear(),
                Kind::Introspection(i) => i.clear(),
            }
        }
    }

    /// The principal `token` names, checked by the one issuer it belongs to.
    pub async fn verify(
        &self,
        token: &str,
        users: &HashMap<String, Arc<UserEntry>>,
        route: RouteRef<'_>,
    ) -> Result<Principal, Verdict> {
        let allowed = if self.allowed.is_empty() {
            None
        } else {
            self.allowed.get(&format!("{}/{}", route.plan, route.integration))
        };
        let allows = |i: usize| allowed.is_none_or(|set| set.get(i).copied().unwrap_or(false));
        // One issuer (the single `[oauth]` table): every token is its to judge, as it
        // always was; nothing to choose, so nothing is decoded to choose.
        if self.issuers.len() == 1 {
            if !allows(0) {
                return Err(Reason::IssuerNotAllowed.into());
            }
            return self.one(0, token, users).await;
        }
        let unrouted = match route_of(token) {
            Routed::Iss(iss) => match self.by_iss.get(&iss) {
                Some(&i) if allows(i) => return self.one(i, token, users).await,
                Some(_) => return Err(Reason::IssuerNotAllowed.into()),
                None => Reason::WrongIssuer,
            },
            Routed::NoIss => Reason::MissingClaim,
            Routed::Bad(reason) => return Err(reason.into()),
            Routed::Opaque => Reason::MalformedToken,
        };
        // Opaque to Portcullis: the introspection servers that may judge it.
        let judges = |i: &usize| match &self.issuers[*i].kind {
            Kind::Introspection(_) => unrouted == Reason::MalformedToken || self.issuers[*i].any_iss,
            Kind::Builtin(_) | Kind::Jwt(_) => false,
        };
        let candidates: Vec<usize> = (0..self.issuers.len()).filter(judges).collect();
        if candidates.is_empty() {
            return Err(unrouted.into());
        }
        let mut first_refusal = None;
        let mut unavailable = None;
        for &i in candidates.iter().filter(|i| allows(**i)) {
            match self.one(i, token, users).await {
                Ok(p) => return Ok(p),
                Err(Verdict::Rejected(r)) => {
                    first_refusal.get_or_insert(r);
                }
                Err(Verdict::Unavailable(r)) => {
                    unavailable.get_or_insert(r);
                }
            }
        }
        match (unavailable, first_refusal) {
            (Some(r), _) => Err(Verdict::Unavailable(r)),
            (None, Some(r)) => Err(r.into()),
            (None, None) => Err(Reason::IssuerNotAllowed.into()),
        }
    }

    /// Issuer `i`'s verdict on `token`.
    async fn one(&self, i: usize, token: &str, users: &HashMap<String, Arc<UserEntry>>) -> Result<Principal, Verdict> {
        let named = &self.issuers[i];
        let (facts, cached) = match &named.kind {
            Kind::Builtin(b) => b.verify(token, users).await?,
            Kind::Jwt(j) => j.verify(token).await?,
            Kind::Introspection(x) => x.verify(token).await?,
        };
        let local = named.local_users.then_some(users);
        Ok(Principal {
            cached,
            ..facts.principal(local, &named.name)?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(header: &str, payload: &str) -> String {
        let b = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{}.{}.sig", b.encode(header), b.encode(payload))
    }

    #[test]
    fn tokens_are_routed_by_their_unverified_iss_only_when_they_are_jwts() {
        let h = r#"{"alg":"RS256"}"#;
        assert_eq!(
            route_of(&jwt(h, r#"{"iss":"https://a"}"#)),
            Routed::Iss("https://a".into())
        );
        assert_eq!(route_of(&jwt(h, r#"{"sub":"x"}"#)), Routed::NoIss);
        assert_eq!(
            route_of(&jwt(h, r#"{"iss":["https://a","https://b"]}"#)),
            Routed::Bad(Reason::WrongIssuer)
        );
        assert_eq!(route_of(&jwt(h, r#"{"iss":42}"#)), Routed::Bad(Reason::MalformedToken));
        assert_eq!(
            route_of(&jwt(h, r#"{"iss":null}"#)),
            Routed::Bad(Reason::MalformedToken)
        );
        assert_eq!(route_of(&jwt(h, "not json")), Routed::Bad(Reason::MalformedToken));
        assert_eq!(route_of(&jwt(h, "[1]")), Routed::Bad(Reason::MalformedToken));
        // Not JWTs: opaque.
        assert_eq!(route_of("opaque-token"), Routed::Opaque);
        assert_eq!(route_of("not.a.jwt"), Routed::Opaque);
        assert_eq!(route_of(&jwt("[]", r#"{"iss":"https://a"}"#)), Routed::Opaque);
        assert_eq!(route_of(&format!("{}.x", jwt(h, "{}"))), Routed::Opaque);
    }
}
