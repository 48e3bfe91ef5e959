//! `POST /oauth/revoke` (RFC 7009): a client revokes one of its refresh tokens (the whole
//! family goes) or access tokens (refused from then on, on every replica); and the answer
//! to a revocation that cannot be kept.

use std::collections::HashMap;
use std::time::Duration;

use http::{Response, StatusCode};

use super::form::invalid_request;
use super::refresh::Family;
use super::{json, unavailable, Issuer};
use crate::error::{Body, OAuthError};
use crate::shared::{Peeked, Revocation, RevokeRefused};

impl Issuer {
    /// Revokes the token of the form for the authenticated `client_id`. Unknown and
    /// expired tokens are answered 200, as the RFC asks; another client's token is
    /// refused; 200 only once the revocation is kept.
    pub(super) async fn revoke(
        &self,
        params: &HashMap<String, String>,
        client_id: String,
    ) -> Result<Response<Body>, OAuthError> {
        let Some(token) = params.get("token").filter(|t| !t.is_empty()) else {
            return Err(invalid_request("token is required", "malformed_token_request"));
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
        let refresh = &self.shared.backend.refresh;
        // A refresh token: its family.
        match refresh.peek(token).await {
            Ok(Peeked::Found {
                family,
                family_ends_at,
                client,
            }) => {
                if client != client_id {
                    return Err(not_yours());
                }
                let family = Family {
                    id: family,
                    ends_at: family_ends_at,
                };
                self.revoke_family(&family, &client_id).await?;
                tracing::info!(client_id = %crate::util::Escaped(&client_id), "oauth: refresh token family revoked");
                return Ok(json(StatusCode::OK, "{}".into()));
            }
            Ok(Peeked::Unknown) => {}
            Ok(Peeked::Forged) => {
                // Refused on every use anyway; deleted so that no later write can make it
                // usable again under a revocation answered 200.
                refresh
                    .forget(token)
                    .await
                    .map_err(|_| unavailable("refresh_unavailable"))?;
                return Ok(json(StatusCode::OK, "{}".into()));
            }
            Err(_) => return Err(unavailable("refresh_unavailable")),
        }
        // An access token of this issuer (signature checked; expired ones need nothing).
        if let Some(claims) = self.claims_ignoring_time(token) {
            if claims.exp < self.now() {
                return Ok(json(StatusCode::OK, "{}".into()));
            }
            if claims.client_id != client_id {
                return Err(not_yours());
            }
            // 200 only once the revocation is kept: a full table refuses (503).
            self.shared
                .backend
                .revocations
                .revoke(Revocation {
                    key: &claims.jti,
                    ends_at: claims.exp,
                    client: &client_id,
                    limits: self.limits,
                })
                .await
                .map_err(|e| self.refused(e, &client_id, "revocation_unavailable"))?;
            tracing::info!(client_id = %crate::util::Escaped(&client_id), "oauth: access token revoked");
        }
        Ok(json(StatusCode::OK, "{}".into()))
    }

    /// The answer to a revocation that cannot be kept: 503. A full table (counted by the
    /// backend, by table and limit) is logged; a backend that cannot answer is
    /// `unavailable_reason`.
    pub(super) fn refused(&self, why: RevokeRefused, client: &str, unavailable_reason: &'static str) -> OAuthError {
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
            RevokeRefused::Unavailable => return unavailable(unavailable_reason),
        };
        tracing::warn!(client_id = %crate::util::Escaped(&client), limit, "oauth: revocation refused: the revocation table is full");
        answer
    }
}
