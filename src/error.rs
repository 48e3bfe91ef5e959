//! The HTTP boundary's error: every refusal Portcullis answers itself, and the one
//! function that turns it into the contract's JSON response.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};

use crate::headers::X_REQUEST_ID;
use crate::metrics::Outcome;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every response Portcullis sends.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub const MSG_MISSING: &str = "Required to provide Auth information";
pub const MSG_REJECTED: &str = "User is not authenticated";
pub const MSG_FORBIDDEN: &str =
    "UNAUTHORIZED_ACCESS_ERROR: User does not have the permission to access this service/functionality.";

/// The status a request whose client went away is logged with (nginx's 499).
pub const CLIENT_CLOSED: StatusCode = match StatusCode::from_u16(499) {
    Ok(s) => s,
    Err(_) => StatusCode::BAD_REQUEST,
};

/// A request Portcullis answers itself instead of forwarding.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// 400: malformed or ambiguous request; the message says what was wrong.
    BadRequest(Cow<'static, str>),
    /// 400 with a precise log reason (`ambiguous_original_request`...).
    Invalid {
        reason: &'static str,
        message: Cow<'static, str>,
    },
    /// 404: no integration for the path.
    NotFound,
    /// 405: the path exists for these methods only.
    MethodNotAllowed(Vec<Method>),
    /// 413: body over `max_body_bytes`.
    PayloadTooLarge,
    /// 431: headers over `max_header_bytes`.
    HeadersTooLarge,
    /// 401: no credentials where the integration's methods look for them.
    Missing { challenges: Vec<HeaderValue> },
    /// 401: credentials refused; `reason` is for the log only.
    Rejected {
        reason: &'static str,
        challenges: Vec<HeaderValue>,
    },
    /// 403: authenticated, not allowed; `reason` is for the log only.
    Forbidden {
        reason: &'static str,
        challenge: Option<HeaderValue>,
    },
    /// 429: locked out after repeated failures.
    LockedOut { retry_after: Duration },
    /// 429: over a plan's or an integration's rate limit.
    RateLimited { retry_after: Duration },
    /// 502: the upstream (or a token server) could not be reached or answered badly.
    BadGateway(&'static str),
    /// 503: a service needed for the decision (an OAuth server) is unavailable.
    Unavailable(&'static str),
    /// 504: the upstream did not answer within `request_timeout`.
    GatewayTimeout,
    /// 408: the request body stalled past `body_read_timeout`, or the whole request
    /// past `request_timeout`.
    BodyTimeout,
    /// 499 (logged; the client rarely reads it): the client closed or reset before its
    /// request body was all sent.
    ClientClosed,
    /// A refusal of the builtin issuer's token endpoint: an RFC 6749 section 5.2 body.
    OAuth(Box<OAuthError>),
}

/// An RFC 6749 section 5.2 error of the token endpoint, with its precise log reason.
#[derive(Debug, Clone)]
pub struct OAuthError {
    pub status: StatusCode,
    /// `invalid_client`, `invalid_grant`, `invalid_request`, ...
    pub error: &'static str,
    pub description: Cow<'static, str>,
    pub retry_after: Option<Duration>,
    /// For the log, the metrics and the admin page.
    pub reason: &'static str,
}

impl OAuthError {
    pub fn new(
        status: StatusCode,
        error: &'static str,
        description: impl Into<Cow<'static, str>>,
        retry_after: Option<Duration>,
        reason: &'static str,
    ) -> Self {
        OAuthError {
            status,
            error,
            description: description.into(),
            retry_after,
            reason,
        }
    }
}

impl Answer for OAuthError {
    fn status(&self) -> StatusCode {
        self.status
    }

    fn reason(&self) -> &'static str {
        self.reason
    }

    fn message(&self) -> Cow<'static, str> {
        self.description.clone()
    }

    /// RFC 6749 section 5.2: `{"error": ..., "error_description": ...}`.
    fn body(&self) -> Option<Vec<u8>> {
        Some(
            serde_json::json!({"error": self.error, "error_description": self.description})
                .to_string()
                .into_bytes(),
        )
    }

    fn headers(&self, h: &mut http::HeaderMap) {
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if self.status == StatusCode::UNAUTHORIZED {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"portcullis\""),
            );
        }
        if let Some(r) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(r.as_secs().max(1)));
        }
    }
}

impl From<OAuthError> for Refusal {
    fn from(e: OAuthError) -> Self {
        Refusal::OAuth(Box::new(e))
    }
}

/// What every refusal of every listener has: a status, a precise reason for the log and
/// the metrics (never sent), the message the client reads, and headers of its own. One
/// function, [`answer`], turns any of them into the contract's response.
pub trait Answer {
    fn status(&self) -> StatusCode;
    /// The precise reason for the log line; never sent to the client.
    fn reason(&self) -> &'static str;
    /// What the client is told.
    fn message(&self) -> Cow<'static, str>;
    /// Headers the answer carries beyond the contract's (challenges, `Allow`, `Retry-After`).
    fn headers(&self, _h: &mut http::HeaderMap) {}
    /// A body another standard fixes instead of the contract's JSON (RFC 6749 token errors).
    fn body(&self) -> Option<Vec<u8>> {
        None
    }
}

/// The contract's answer: `{"code","reason","message","request_id"}` (or the body the
/// answer's standard fixes) as JSON, `Cache-Control: no-store`, `X-Request-Id`, and the
/// answer's own headers.
pub fn answer<A: Answer + ?Sized>(a: &A, request_id: &HeaderValue) -> Response<Body> {
    let mut resp = match a.body() {
        Some(body) => json_response(a.status(), body, request_id),
        None => json_error(a.status(), &a.message(), request_id),
    };
    a.headers(resp.headers_mut());
    resp
}

impl Answer for Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::BadRequest(_) | Refusal::Invalid { .. } => StatusCode::BAD_REQUEST,
            Refusal::NotFound => StatusCode::NOT_FOUND,
            Refusal::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Refusal::Missing { .. } | Refusal::Rejected { .. } => StatusCode::UNAUTHORIZED,
            Refusal::Forbidden { .. } => StatusCode::FORBIDDEN,
            Refusal::LockedOut { .. } | Refusal::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refusal::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            Refusal::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Refusal::ClientClosed => CLIENT_CLOSED,
            Refusal::OAuth(e) => e.status,
        }
    }

    fn message(&self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Refusal::BadRequest(m) | Refusal::Invalid { message: m, .. } => return m.clone(),
            Refusal::NotFound => "No integration matches this path",
            Refusal::MethodNotAllowed(_) => "Method not allowed for this integration",
            Refusal::PayloadTooLarge => "Request body exceeds the size limit",
            Refusal::HeadersTooLarge => "Request headers exceed the size limit",
            Refusal::Missing { .. } => MSG_MISSING,
            Refusal::Rejected { .. } => MSG_REJECTED,
            Refusal::Forbidden { .. } => MSG_FORBIDDEN,
            Refusal::LockedOut { .. } => "Too many failed attempts; try again later",
            Refusal::RateLimited { .. } => "Too many requests; slow down and retry after the time given",
            Refusal::BadGateway("upgrade_refused") => "Upstream service refused the WebSocket upgrade",
            Refusal::BadGateway(_) => "Upstream service unreachable",
            Refusal::Unavailable(_) => "Authorization service unavailable",
            Refusal::GatewayTimeout => "Upstream service timed out",
            Refusal::BodyTimeout => "Request body not received in time",
            Refusal::ClientClosed => "Client closed the request",
            Refusal::OAuth(e) => return e.description.clone(),
        })
    }

    fn reason(&self) -> &'static str {
        match self {
            Refusal::BadRequest(_) => "bad_request",
            Refusal::Invalid { reason, .. } => reason,
            Refusal::NotFound => "no_route",
            Refusal::MethodNotAllowed(_) => "method_not_allowed",
            Refusal::PayloadTooLarge => "body_too_large",
            Refusal::HeadersTooLarge => "headers_too_large",
            Refusal::Missing { .. } => "no_credentials",
            Refusal::Rejected { reason, .. } | Refusal::Forbidden { reason, .. } => reason,
            Refusal::LockedOut { .. } => "locked_out",
            Refusal::RateLimited { .. } => "rate_limited",
            Refusal::BadGateway(r) | Refusal::Unavailable(r) => r,
            Refusal::GatewayTimeout => "upstream_timeout",
            Refusal::BodyTimeout => "body_timeout",
            Refusal::ClientClosed => "client_closed",
            Refusal::OAuth(e) => e.reason,
        }
    }

    fn headers(&self, h: &mut http::HeaderMap) {
        match self {
            Refusal::MethodNotAllowed(methods) => {
                let allow = methods.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ");
                if let Ok(v) = HeaderValue::from_str(&allow) {
                    h.insert(header::ALLOW, v);
                }
            }
            Refusal::Missing { challenges } | Refusal::Rejected { challenges, .. } => {
                for c in challenges {
                    h.append(header::WWW_AUTHENTICATE, c.clone());
                }
            }
            Refusal::Forbidden { challenge: Some(c), .. } => {
                h.insert(header::WWW_AUTHENTICATE, c.clone());
            }
            Refusal::LockedOut { retry_after } | Refusal::RateLimited { retry_after } => {
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                h.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            }
            Refusal::PayloadTooLarge | Refusal::HeadersTooLarge | Refusal::BodyTimeout | Refusal::ClientClosed => {
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Refusal::Unavailable(_) => {
                // Overload and identity-provider outages pass: ask for a retry shortly.
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Refusal::OAuth(e) => e.headers(h),
            Refusal::BadRequest(_)
            | Refusal::Invalid { .. }
            | Refusal::NotFound
            | Refusal::Forbidden { challenge: None, .. }
            | Refusal::BadGateway(_)
            | Refusal::GatewayTimeout => {}
        }
    }

    fn body(&self) -> Option<Vec<u8>> {
        match self {
            Refusal::OAuth(e) => e.body(),
            _ => None,
        }
    }
}

impl Refusal {
    /// The `outcome` label of `portcullis_requests_total`.
    pub fn outcome(&self) -> Outcome {
        match self {
            Refusal::BadRequest(_)
            | Refusal::Invalid { .. }
            | Refusal::NotFound
            | Refusal::MethodNotAllowed(_)
            | Refusal::PayloadTooLarge
            | Refusal::HeadersTooLarge
            | Refusal::BodyTimeout => Outcome::BadRequest,
            Refusal::ClientClosed => Outcome::ClientClosed,
            Refusal::Missing { .. } | Refusal::Rejected { .. } => Outcome::Unauthenticated,
            Refusal::Forbidden { .. } => Outcome::Forbidden,
            Refusal::LockedOut { .. } => Outcome::LockedOut,
            Refusal::RateLimited { .. } => Outcome::RateLimited,
            Refusal::BadGateway(_) | Refusal::GatewayTimeout => Outcome::UpstreamError,
            Refusal::Unavailable(_) => Outcome::AuthUnavailable,
            Refusal::OAuth(e) => match e.status {
                StatusCode::UNAUTHORIZED => Outcome::Unauthenticated,
                StatusCode::TOO_MANY_REQUESTS => Outcome::LockedOut,
                // invalid_grant: refused credentials of the resource owner.
                StatusCode::BAD_REQUEST if e.error == "invalid_grant" => Outcome::Unauthenticated,
                StatusCode::SERVICE_UNAVAILABLE => Outcome::AuthUnavailable,
                s if s.is_server_error() => Outcome::UpstreamError,
                _ => Outcome::BadRequest,
            },
        }
    }

    /// The refusal as gRPC answers it (a Trailers-Only response): HTTP 200 with
    /// `grpc-status` and `grpc-message`; 401 is UNAUTHENTICATED (16), 403
    /// PERMISSION_DENIED (7), 429 and 413/431 RESOURCE_EXHAUSTED (8), 502/503/504
    /// UNAVAILABLE (14), 404/405 UNIMPLEMENTED (12), 408 DEADLINE_EXCEEDED (4), other 400s
    /// INVALID_ARGUMENT (3). `WWW-Authenticate` and `Retry-After` are kept.
    pub fn into_grpc_response(&self) -> Response<Body> {
        let status = self.status();
        let code: u16 = match status.as_u16() {
            401 => 16,
            403 => 7,
            429 | 413 | 431 => 8,
            502..=504 => 14,
            404 | 405 => 12,
            408 => 4,
            // CANCELLED: the client went away.
            499 => 1,
            400..=499 => 3,
            _ => 2,
        };
        let message = self.message();
        let mut own = http::HeaderMap::new();
        self.headers(&mut own);
        let mut resp = Response::new(full(Bytes::new()));
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from(code));
        // grpc-message is percent-encoded (gRPC over HTTP/2).
        let encoded: String = message
            .bytes()
            .map(|b| {
                if (0x20..0x7f).contains(&b) && b != b'%' {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        if let Ok(v) = HeaderValue::from_str(&encoded) {
            h.insert("grpc-message", v);
        }
        for name in [header::WWW_AUTHENTICATE, header::RETRY_AFTER] {
            for v in own.get_all(&name) {
                h.append(name.clone(), v.clone());
            }
        }
        resp
    }
}

/// `{"code":401,"reason":"Unauthorized","message":"...","request_id":"..."}`
pub fn json_error(status: StatusCode, message: &str, request_id: &HeaderValue) -> Response<Body> {
    #[derive(serde::Serialize)]
    struct ErrorBody<'a> {
        code: u16,
        reason: &'a str,
        message: &'a str,
        request_id: &'a str,
    }
    let body = ErrorBody {
        code: status.as_u16(),
        reason: status.canonical_reason().unwrap_or(""),
        message,
        request_id: request_id.to_str().unwrap_or(""),
    };
    json_response(status, serde_json::to_vec(&body).unwrap_or_default(), request_id)
}

/// A JSON answer: `status`, `body`, `Cache-Control: no-store` and `X-Request-Id`.
fn json_response(status: StatusCode, body: Vec<u8>, request_id: &HeaderValue) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(X_REQUEST_ID, request_id.clone());
    resp
}

/// A complete body from bytes.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn body_and_headers_follow_the_contract() {
        let id = HeaderValue::from_static("req-1");
        let refusal = Refusal::Missing {
            challenges: vec![HeaderValue::from_static("Basic realm=\"portcullis\"")],
        };
        let resp = answer(&refusal, &id);
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.headers()["x-request-id"], "req-1");
        assert_eq!(resp.headers()["www-authenticate"], "Basic realm=\"portcullis\"");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"code":401,"reason":"Unauthorized","message":MSG_MISSING,"request_id":"req-1"})
        );
    }

    #[tokio::test]
    async fn a_token_endpoint_error_keeps_its_rfc_6749_body() {
        let e = OAuthError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
            None,
            "bad_client_credentials",
        );
        let resp = answer(&Refusal::from(e), &HeaderValue::from_static("req-2"));
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.headers()["x-request-id"], "req-2");
        assert_eq!(resp.headers()["cache-control"], "no-store");
        assert_eq!(resp.headers()["pragma"], "no-cache");
        assert_eq!(resp.headers()["www-authenticate"], "Basic realm=\"portcullis\"");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error":"invalid_client","error_description":"client authentication failed"})
        );
    }

    #[test]
    fn locked_out_rounds_retry_after_up() {
        let refusal = Refusal::LockedOut {
            retry_after: Duration::from_millis(1500),
        };
        let resp = answer(&refusal, &HeaderValue::from_static("x"));
        assert_eq!(resp.headers()["retry-after"], "2");
    }
}
