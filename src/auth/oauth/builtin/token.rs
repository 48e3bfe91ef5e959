//! `POST /oauth/token`: the `password`, `client_credentials` and `refresh_token` grants
//! (RFC 6749 4.3, 4.4, 6), and the token response (5.1).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode};

use super::access::{GRANT_CLIENT, GRANT_USER};
use super::form::invalid_request;
use super::refresh::{Family, Refreshing};
use super::{json, Issuer};
use crate::auth::{Auth, Failure};
use crate::error::{Body, OAuthError};

/// A 400 `invalid_grant` (RFC 6749 5.2).
pub(super) fn invalid_grant(description: &'static str, reason: &'static str) -> OAuthError {
    OAuthError::new(StatusCode::BAD_REQUEST, "invalid_grant", description, None, reason)
}

impl Issuer {
    /// The grant the form asks for, for the authenticated `client_id`.
    pub(super) async fn token(
        &self,
        auth: &Auth,
        params: &HashMap<String, String>,
        client_id: String,
        ip: IpAddr,
    ) -> Result<Response<Body>, OAuthError> {
        let scope = params.get("scope").map(|s| Arc::<str>::from(s.as_str()));
        let client: Arc<str> = Arc::from(client_id);
        match params.get("grant_type").map(String::as_str) {
            Some("password") => self.password_grant(auth, params, &client, scope, ip).await,
            Some("client_credentials") => self.respond(&client, &client, scope, Refreshing::None).await,
            Some("refresh_token") => self.refresh_grant(auth, params, &client).await,
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
            None => Err(invalid_request("grant_type is required", "malformed_token_request")),
        }
    }

    /// `grant_type=password`: the user's password, under the lockout; a new refresh
    /// family.
    async fn password_grant(
        &self,
        auth: &Auth,
        params: &HashMap<String, String>,
        client: &Arc<str>,
        scope: Option<Arc<str>>,
        ip: IpAddr,
    ) -> Result<Response<Body>, OAuthError> {
        let (Some(user), Some(password)) = (params.get("username"), params.get("password")) else {
            return Err(invalid_request(
                "username and password are required",
                "malformed_token_request",
            ));
        };
        match auth.basic.verify(user, password, &auth.lockout, ip).await {
            Ok(p) => {
                let family = Family::new(self.refresh_max_lifetime, self.now());
                self.respond(&p.user, client, scope, Refreshing::New(family)).await
            }
            Err(Failure::LockedOut { retry_after, .. }) => Err(OAuthError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "invalid_grant",
                "too many failed attempts",
                Some(retry_after),
                "locked_out",
            )),
            Err(Failure::Unavailable { reason, .. }) => Err(OAuthError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the password cannot be checked now; retry shortly",
                Some(Duration::from_secs(1)),
                reason,
            )),
            Err(f) => {
                let reason = match f {
                    Failure::Rejected { reason, .. } => reason.as_str(),
                    _ => "rejected",
                };
                tracing::info!(client_id = %crate::util::Escaped(&client), reason, "oauth password grant refused");
                Err(invalid_grant("invalid resource owner credentials", reason))
            }
        }
    }

    /// The token response; with a refresh token when `refreshing` says so.
    pub(super) async fn respond(
        &self,
        sub: &str,
        client: &Arc<str>,
        scope: Option<Arc<str>>,
        refreshing: Refreshing,
    ) -> Result<Response<Body>, OAuthError> {
        let grant = match refreshing {
            Refreshing::None => GRANT_CLIENT,
            Refreshing::New(_) | Refreshing::Stored(_) => GRANT_USER,
        };
        // A generated key of a new period is agreed by the replicas first: 503 when the
        // shared store cannot answer.
        let Some(key) = self.signing_key().await else {
            return Err(super::unavailable("signing_key_unavailable"));
        };
        let access = match self.mint(&key, sub, client, grant, scope.as_deref()) {
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
            Refreshing::None => None,
            Refreshing::Stored(token) => Some(token),
            Refreshing::New(family) => Some(self.issue_refresh(&family, sub, client, scope).await?),
        };
        if let Some(rt) = rt {
            doc["refresh_token"] = serde_json::Value::String(rt);
        }
        Ok(json(StatusCode::OK, doc.to_string()))
    }
}
