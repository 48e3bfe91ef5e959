//! The decision phases: check head, route, body limit, hygiene, authenticate and
//! authorize. What comes out is a [`Permit`] (nothing is forwarded without one) or the
//! refusal that says precisely why not.

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Uri, Version};

use super::ctx::Ctx;
use super::forward::content_length;
use crate::auth::{Failure, RouteRef};
use crate::authz::{self, Permit};
use crate::config::AuthMethod;
use crate::error::Refusal;
use crate::gateway::{Gateway, Route};
use crate::headers;
use crate::route::Match;

/// The head's own checks: within `max_headers` and `max_header_bytes`, and one valid
/// `Host` (RFC 9112 section 3.2: an HTTP/1.1 request without one, or with two, is a
/// 400), so the `X-Forwarded-Host` the upstream reads is the one the client sent.
pub(super) fn check_head(limits: &crate::config::Limits, parts: &Parts) -> Result<(), Refusal> {
    if parts.headers.len() > limits.max_headers || headers::size(&parts.headers) > limits.max_header_bytes {
        return Err(Refusal::HeadersTooLarge);
    }
    let bad = |m: &'static str| Err(Refusal::BadRequest(m.into()));
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return bad("more than one Host header"),
        (None, _) if parts.version == Version::HTTP_11 => {
            return bad("an HTTP/1.1 request needs a Host header");
        }
        (host, _) => host,
    };
    // RFC 9112 section 3.2: a Host that is not `host[:port]` is a 400; and the authority
    // of an absolute-form target or of HTTP/2's `:authority` must be the Host's, so that
    // the `X-Forwarded-Host` the service reads is the authority the client addressed.
    if let Some(h) = host.filter(|h| !h.is_empty()) {
        let text = h.to_str().unwrap_or("");
        let after_host = text.rfind(']').map_or(text, |i| &text[i + 1..]);
        let port_ok = after_host
            .split_once(':')
            .is_none_or(|(_, p)| p.is_empty() || p.parse::<u16>().is_ok());
        let valid = !text.is_empty()
            && port_ok
            && !text
                .bytes()
                .any(|b| matches!(b, b'@' | b'/' | b'?' | b'#' | b',' | b' '))
            && http::uri::Authority::try_from(text).is_ok();
        if !valid {
            return bad("the Host header is not a host and port");
        }
        if let Some(a) = parts.uri.authority() {
            if !a.as_str().eq_ignore_ascii_case(h.to_str().unwrap_or("")) {
                return bad("the request target's authority and the Host header differ");
            }
        }
    }
    if parts.uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return bad("the request target's authority has user info");
    }
    Ok(())
}

/// Every check before forwarding: the route index and the principal (none for `auth = "none"`).
pub(super) async fn decide(gw: &Gateway, ctx: &mut Ctx, parts: &mut Parts) -> Result<Permit, Refusal> {
    let path = parts.uri.path();
    let bad_path = |e: crate::path::PathError| Refusal::BadRequest(e.to_string().into());
    crate::path::check_path(path).map_err(bad_path)?;
    // Escapes of unreserved characters are decoded, and the decoded path is what is both
    // routed and forwarded.
    if let std::borrow::Cow::Owned(normal) = crate::path::normalize(path) {
        let pq = match parts.uri.query() {
            Some(q) => format!("{normal}?{q}"),
            None => normal,
        };
        let mut p = parts.uri.clone().into_parts();
        p.path_and_query = Some(
            pq.parse()
                .map_err(|_| Refusal::BadRequest("request target cannot be parsed".into()))?,
        );
        parts.uri = Uri::from_parts(p).map_err(|_| Refusal::BadRequest("request target cannot be parsed".into()))?;
    }
    let index = match gw.router.route(parts.uri.path(), &parts.method).map_err(bad_path)? {
        Match::Found(t) => t.integration,
        Match::MethodNotAllowed(allowed) => return Err(Refusal::MethodNotAllowed(allowed.to_vec())),
        Match::NotFound => return Err(Refusal::NotFound),
    };
    ctx.route = Some(index);
    let route = &gw.routes()[index];
    let limit = gw.config.limits.max_body_bytes;
    if limit > 0 && content_length(parts).is_some_and(|n| n > limit) {
        return Err(Refusal::PayloadTooLarge);
    }
    headers::sanitize(&mut parts.headers, route.underscores);
    if let Some(permit) = Permit::public(index, &route.auth) {
        ctx.auth_method = Some(AuthMethod::None);
        return Ok(permit);
    }
    let route_ref = RouteRef {
        plan: &route.plan,
        integration: &route.integration,
    };
    let principal = match gw.auth.authenticate(&route.auth, route_ref, parts, ctx.client).await {
        Ok(p) => p,
        Err(f) => return Err(refuse(route, ctx, f)),
    };
    ctx.auth_method = Some(principal.method);
    ctx.principal = Some(principal.user.clone());
    ctx.issuer = principal.issuer.clone();
    ctx.cache_hit = Some(principal.cached);
    let rules = authz::Rules {
        access: &route.access,
        senders: &route.senders,
        plan: route.plan_when.as_ref(),
        integration: route.when.as_ref(),
    };
    let seen = authz::Seen {
        parts,
        client: ctx.client,
        clock: &gw.auth.clock,
    };
    if ctx.explaining {
        ctx.judged = authz::judge(&rules, &seen, &principal);
    }
    authz::authorize(index, &rules, &seen, principal).map_err(|denied| {
        // RFC 6750 section 3.1: a valid token without the rights is insufficient_scope.
        let challenge = (denied.principal.method == AuthMethod::OAuth)
            .then(|| HeaderValue::from_static("Bearer realm=\"portcullis\", error=\"insufficient_scope\""));
        ctx.detail = denied.detail.map(Into::into);
        Refusal::Forbidden {
            reason: denied.reason,
            challenge,
        }
    })
}

/// Maps an authentication failure to its refusal, counting its precise reason.
fn refuse(route: &Route, ctx: &mut Ctx, f: Failure) -> Refusal {
    let first = route.auth.first().copied().unwrap_or(AuthMethod::None);
    match f {
        Failure::Missing => {
            ctx.auth_method = Some(first);
            Refusal::Missing {
                challenges: route.challenges.clone(),
            }
        }
        Failure::Rejected { method, reason } => {
            ctx.auth_method = Some(method);
            let mut challenges = route.challenges.clone();
            if method == AuthMethod::OAuth {
                // RFC 6750 section 3.1: say the token itself was the problem.
                for c in challenges.iter_mut() {
                    if c.as_bytes().starts_with(b"Bearer") {
                        *c = HeaderValue::from_static("Bearer realm=\"portcullis\", error=\"invalid_token\"");
                    }
                }
            }
            Refusal::Rejected {
                reason: reason.as_str(),
                challenges,
            }
        }
        Failure::LockedOut { method, retry_after } => {
            ctx.auth_method = Some(method);
            Refusal::LockedOut { retry_after }
        }
        Failure::Unavailable { method, reason } => {
            ctx.auth_method = Some(method);
            Refusal::Unavailable(reason)
        }
    }
}
