//! Client authentication at the token and revocation endpoints (RFC 6749 2.3.1): one
//! method per request, the secret checked in constant time under the lockout.

use std::collections::HashMap;
use std::net::IpAddr;

use base64::Engine;
use http::{HeaderValue, StatusCode};

use super::form::{form_decode, invalid_request, parse_form};
use super::Issuer;
use crate::auth::Auth;
use crate::config::SecretHash;
use crate::error::OAuthError;

impl Issuer {
    /// The parameters of a token or revocation request and the client it authenticates
    /// (Basic, or `client_id` and `client_secret` in the form, never both: RFC 6749
    /// 2.3.1), its secret checked in constant time under the lockout.
    ///
    /// `authorization`: every `Authorization` field of the request (two are refused).
    pub(super) async fn client_request(
        &self,
        auth: &Auth,
        authorization: &http::header::GetAll<'_, HeaderValue>,
        form: &[u8],
        ip: IpAddr,
    ) -> Result<(String, HashMap<String, String>), OAuthError> {
        let authorization: Vec<&HeaderValue> = authorization.iter().take(2).collect();
        let params = parse_form(form)?;
        let (client_id, secret) = client_credentials(&authorization, &params)?;
        let client_subject = format!("client:{client_id}");
        let known = match self.clients.get(&client_id) {
            // A secret another replica's reload withdrew is refused here too.
            Some(h) => {
                h.matches(secret.as_bytes())
                    && self.shared.backend.withdrawals.withdrawn(
                        crate::shared::CredentialKind::Client,
                        &client_id,
                        h.bytes(),
                    ) == Ok(false)
            }
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
        Ok((client_id, params))
    }
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
