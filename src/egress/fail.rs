//! What an egress call answers when it does not forward: a [`Refusal`] it shares with the
//! inbound side (400, 403, 431, 504...), or an [`EgressError`] only egress has. Both are
//! [`Answer`]s, so one function ([`crate::error::answer`]) writes either.

use std::borrow::Cow;

use http::StatusCode;

use super::{signer, REPLAY_LIMIT};
use crate::error::{Answer, Refusal};

/// Why an egress call was not forwarded or got no answer.
#[derive(Debug, thiserror::Error)]
pub enum Fail {
    /// What egress answers like the inbound side (400, 403, 504...).
    #[error("{}", .0.message())]
    Refusal(Refusal),
    /// What only egress has, by source.
    #[error(transparent)]
    Egress(#[from] EgressError),
}

impl From<Refusal> for Fail {
    fn from(r: Refusal) -> Self {
        Fail::Refusal(r)
    }
}

impl Answer for Fail {
    fn status(&self) -> StatusCode {
        match self {
            Fail::Refusal(r) => r.status(),
            Fail::Egress(e) => e.status(),
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Fail::Refusal(r) => r.reason(),
            Fail::Egress(e) => e.reason(),
        }
    }

    fn message(&self) -> Cow<'static, str> {
        match self {
            Fail::Refusal(r) => r.message(),
            Fail::Egress(e) => e.message(),
        }
    }

    fn headers(&self, h: &mut http::HeaderMap) {
        if let Fail::Refusal(r) = self {
            r.headers(h);
        }
    }
}

/// A 403 of egress (an assertion refused, a caller not allowed).
pub(super) fn forbidden(reason: &'static str) -> Fail {
    Fail::Refusal(Refusal::Forbidden {
        reason,
        challenge: None,
    })
}

/// Why an egress call was refused or failed, by source; each has its status, its log
/// reason and a message for the calling service.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.message())]
pub enum EgressError {
    /// 404: no endpoint of that name.
    UnknownEndpoint(String),
    /// 413: the body is over the largest whose Content-Digest is computed.
    BodyTooLargeToDigest,
    /// 400: the request cannot be signed as configured (the signer's reason).
    CannotSign(signer::SignError),
    /// 502: a signature header could not be formed.
    BadHeader,
    /// 502: the token server gave a token that cannot be a header.
    BadToken,
    /// 502: the token server refused or failed (its RFC 6749 error when it gave one).
    TokenServer(String),
    /// 502: the target asked for credentials again and the body was not kept to replay.
    BodyTooLargeToReplay(&'static str),
    /// 502: connect or TLS failure, with the chain of causes.
    Unreachable { endpoint: String, detail: String },
}

impl Answer for EgressError {
    fn status(&self) -> StatusCode {
        match self {
            EgressError::UnknownEndpoint(_) => StatusCode::NOT_FOUND,
            EgressError::BodyTooLargeToDigest => StatusCode::PAYLOAD_TOO_LARGE,
            EgressError::CannotSign(_) => StatusCode::BAD_REQUEST,
            EgressError::BadHeader
            | EgressError::BadToken
            | EgressError::TokenServer(_)
            | EgressError::BodyTooLargeToReplay(_)
            | EgressError::Unreachable { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            EgressError::UnknownEndpoint(_) => "unknown_endpoint",
            EgressError::BodyTooLargeToDigest => "body_too_large_to_digest",
            EgressError::CannotSign(_) => "cannot_sign",
            EgressError::BadHeader => "bad_header",
            EgressError::BadToken => "bad_token",
            EgressError::TokenServer(_) => "token_fetch_failed",
            EgressError::BodyTooLargeToReplay(_) => "body_too_large_to_replay",
            EgressError::Unreachable { .. } => "target_unreachable",
        }
    }

    fn message(&self) -> Cow<'static, str> {
        Cow::Owned(match self {
            EgressError::UnknownEndpoint(name) => format!("no endpoint named `{}`", crate::util::Escaped(name)),
            EgressError::BodyTooLargeToDigest => format!(
                "the body is over {} bytes, the largest whose Content-Digest is computed",
                signer::DIGEST_LIMIT
            ),
            EgressError::CannotSign(why) => why.to_string(),
            EgressError::BadHeader => "a signature header could not be formed".into(),
            EgressError::BadToken => "the token server gave an unusable token".into(),
            EgressError::TokenServer(why) => why.clone(),
            EgressError::BodyTooLargeToReplay(why) => format!(
                "the target answered 401 and {why} needs the request sent again, but its body is over {REPLAY_LIMIT} bytes and was not kept"
            ),
            EgressError::Unreachable { endpoint, detail } => format!("endpoint `{endpoint}` unreachable: {detail}"),
        })
    }
}
