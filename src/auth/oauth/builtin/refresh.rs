//! Refresh tokens: issued in a family by a password grant, rotated on each use (the next
//! token stored by the same atomic step that takes the old one), and revoked by family.
//! Where they live is the backend's ([`crate::shared::RefreshFamilies`]); this file
//! speaks one API to it and maps its answers to the protocol's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::Response;
use serde::{Deserialize, Serialize};

use super::form::invalid_request;
use super::token::invalid_grant;
use super::{random_token, unavailable, Issuer};
use crate::auth::Auth;
use crate::error::{Body, OAuthError};
use crate::shared::{Issued, NewRefresh, Revocation, Rotation, Taken};

/// A refresh-token family: every token rotated from one sign-in. It ends at `ends_at`
/// (unix seconds) however often it is rotated.
#[derive(Debug, Clone)]
pub struct Family {
    /// 64 random bits, in hex.
    pub(super) id: String,
    pub(super) ends_at: u64,
}

impl Family {
    /// A new family, sign-in at `now` (unix seconds).
    pub fn new(max_lifetime: Duration, now: u64) -> Self {
        Family {
            id: format!("{:016x}", rand::random::<u64>()),
            ends_at: now.saturating_add(max_lifetime.as_secs()),
        }
    }
}

/// The refresh token of a token response: none, the first of a new family, or the next
/// one, already stored by the rotation.
pub(super) enum Refreshing {
    None,
    New(Family),
    Stored(String),
}

/// The grant a refresh token carries, as the backend stores it.
#[derive(Serialize, Deserialize)]
struct StoredGrant {
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

/// What a refresh token grants again: its family, subject and scope, and the next token.
struct Grant {
    family: Family,
    sub: Arc<str>,
    scope: Option<Arc<str>>,
    next: String,
}

const UNKNOWN: &str = "unknown or expired refresh token";

impl Issuer {
    /// `grant_type=refresh_token`: rotation; the user must still be allowed to sign in.
    pub(super) async fn refresh_grant(
        &self,
        auth: &Auth,
        params: &HashMap<String, String>,
        client: &Arc<str>,
    ) -> Result<Response<Body>, OAuthError> {
        let Some(rt) = params.get("refresh_token") else {
            return Err(invalid_request("refresh_token is required", "malformed_token_request"));
        };
        let grant = match self.take_refresh(rt, client).await? {
            Ok(grant) => grant,
            Err(why) => {
                tracing::info!(client_id = %crate::util::Escaped(&client), reason = "bad_refresh_token", detail = why, "oauth refresh refused");
                return Err(invalid_grant(why, "bad_refresh_token"));
            }
        };
        // Refresh tokens come only from password grants: the user must still exist and be
        // allowed to sign in, now.
        let standing = auth
            .user(&grant.sub)
            .ok_or(crate::auth::Reason::UnknownUser)
            .and_then(|e| e.standing(true));
        if let Err(reason) = standing {
            self.revoke_family(&grant.family, client).await?;
            tracing::info!(client_id = %crate::util::Escaped(&client), reason = reason.as_str(), "oauth refresh refused; family revoked");
            return Err(invalid_grant("the user may not sign in", reason.as_str()));
        }
        self.respond(&grant.sub, client, grant.scope, Refreshing::Stored(grant.next))
            .await
    }

    /// The first refresh token of `family` (a family revoked meanwhile gets none).
    pub(super) async fn issue_refresh(
        &self,
        family: &Family,
        sub: &str,
        client: &Arc<str>,
        scope: Option<Arc<str>>,
    ) -> Result<String, OAuthError> {
        let token = random_token();
        let expires_at = self
            .now()
            .saturating_add(self.refresh_ttl.as_secs())
            .min(family.ends_at);
        let grant = serde_json::to_string(&StoredGrant {
            sub: sub.to_string(),
            scope: scope.map(|s| s.to_string()),
        })
        .map_err(|_| unavailable("refresh_unavailable"))?;
        let ttl = Duration::from_secs(expires_at.saturating_sub(self.now()).max(1));
        let stored = self
            .shared
            .backend
            .refresh
            .issue(NewRefresh {
                token: &token,
                family: &family.id,
                family_ends_at: family.ends_at,
                new_family: true,
                client,
                expires_at,
                grant: &grant,
                ttl,
            })
            .await;
        match stored {
            Ok(Issued::Stored) => Ok(token),
            Ok(Issued::FamilyGone | Issued::FamilyForged) => {
                Err(invalid_grant("refresh token revoked", "bad_refresh_token"))
            }
            Err(_) => Err(unavailable("refresh_unavailable")),
        }
    }

    /// Takes a refresh token for `client_id` (rotation), atomically in the backend.
    /// `Ok(Err(why))`: refused; `Err`: the backend cannot answer.
    async fn take_refresh(&self, token: &str, client_id: &str) -> Result<Result<Grant, &'static str>, OAuthError> {
        let next = random_token();
        let taken = self
            .shared
            .backend
            .refresh
            .take(Rotation {
                token,
                client: client_id,
                now: self.now(),
                next: &next,
                ttl_secs: self.refresh_ttl.as_secs().max(1),
                limits: self.limits,
            })
            .await
            .map_err(|_| unavailable("refresh_unavailable"))?;
        Ok(match taken {
            Taken::Granted {
                family,
                fields,
                family_ends_at,
            } => match serde_json::from_str::<StoredGrant>(&fields) {
                Ok(g) => Ok(Grant {
                    family: Family {
                        id: family,
                        ends_at: family_ends_at,
                    },
                    sub: Arc::from(g.sub),
                    scope: g.scope.map(Arc::from),
                    next,
                }),
                Err(_) => Err(UNKNOWN),
            },
            Taken::Unknown => Err(UNKNOWN),
            Taken::Expired => Err("refresh token expired"),
            Taken::OtherClient => Err("refresh token was issued to another client"),
            Taken::Revoked => Err("refresh token revoked"),
            Taken::Reused => Err("refresh token already used; its family is revoked"),
            Taken::ReusedUnrevoked => Err("refresh token already used; its family cannot be revoked now"),
            // Counted and logged by the store; told apart from an unknown token to no one.
            Taken::Forged => Err(UNKNOWN),
        })
    }

    /// Revokes `family` (issued to `client`). In Redis a family is revoked by deleting
    /// it, which needs no room; in memory it takes a place in the bounded table, and a
    /// full table refuses (503), never forgets an older one.
    pub(super) async fn revoke_family(&self, family: &Family, client: &str) -> Result<(), OAuthError> {
        self.shared
            .backend
            .refresh
            .revoke_family(Revocation {
                key: &family.id,
                ends_at: family.ends_at,
                client,
                limits: self.limits,
            })
            .await
            .map_err(|e| self.refused(e, client, "refresh_unavailable"))
    }
}
