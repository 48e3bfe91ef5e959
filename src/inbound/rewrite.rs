//! The rewrite phase: the request head as the upstream gets it. Hop-by-hop headers and
//! the credentials Portcullis consumed go; `X-Forwarded-*`, `X-Request-Id`, the trace,
//! the principal's `X-Portcullis-*` headers and its signed assertion are set; the target
//! becomes the upstream's.

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Uri, Version};

use super::ctx::Ctx;
use crate::auth;
use crate::authz::Permit;
use crate::config::{AuthMethod, ClaimHeader, Upstream};
use crate::error::Refusal;
use crate::gateway::{Gateway, Route};
use crate::headers;
use crate::server::listener::ConnInfo;

/// Edits the request head in place for the upstream; consumes the [`Permit`] and gives
/// back the route to forward to, so nothing is forwarded without one.
pub(super) fn rewrite<'g>(
    gw: &'g Gateway,
    conn: &ConnInfo,
    ctx: &Ctx,
    parts: &mut Parts,
    permit: Permit,
) -> Result<&'g Route, Refusal> {
    let route_index = permit.route();
    let route = &gw.routes()[route_index];
    let principal = permit.principal();
    let h = &mut parts.headers;
    headers::remove_hop_by_hop(h);
    let host = h.remove(header::HOST).or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    headers::set_forwarded(h, &conn.ip_header, conn.tls, host.as_ref());
    h.insert(headers::X_REQUEST_ID, ctx.request_id.clone());
    headers::continue_trace(h, &ctx.trace);
    h.insert(headers::X_PORTCULLIS_PLAN, route.plan_value.clone());
    h.insert(headers::X_PORTCULLIS_INTEGRATION, route.integration_value.clone());
    match principal {
        None => {
            h.insert(headers::X_PORTCULLIS_AUTH_METHOD, HeaderValue::from_static("none"));
        }
        Some(p) => {
            // The credential was for Portcullis: it goes no further, unless the
            // integration asks for the bearer token itself.
            if !(p.method == AuthMethod::OAuth && route.forward_token) {
                h.remove(header::AUTHORIZATION);
            }
            let id = p
                .headers
                .as_ref()
                .ok_or_else(|| Refusal::BadRequest("principal cannot be expressed in a header".into()))?;
            h.insert(headers::X_PORTCULLIS_USER, id.user.clone());
            h.insert(headers::X_PORTCULLIS_ROLES, id.roles.clone());
            h.insert(
                headers::X_PORTCULLIS_AUTH_METHOD,
                HeaderValue::from_static(p.method.as_str()),
            );
            if let Some(c) = &id.client_id {
                h.insert(headers::X_PORTCULLIS_CLIENT_ID, c.clone());
            }
            if let Some(i) = &id.issuer {
                h.insert(headers::X_PORTCULLIS_ISSUER, i.clone());
            }
            if !route.claim_headers.is_empty() {
                claim_headers(&route.claim_headers, p, h, ctx);
            }
            let assertion = gw
                .signer()
                .assertion(p, route_index, &route.plan, &route.integration)
                .ok_or(Refusal::BadGateway("assertion_signing_failed"))?;
            h.insert(headers::X_PORTCULLIS_ASSERTION, assertion);
        }
    }
    // The URL key is a credential: it never leaves Portcullis, whatever the route.
    let stripped = match parts.uri.query() {
        Some(q) if auth::url_key::may_contain(q) => Some(auth::url_key::strip(q)),
        _ => None,
    };
    parts.uri = upstream_uri(&route.upstream, &parts.uri, stripped)?;
    if let Upstream::Http { host, .. } = &route.upstream {
        parts.headers.insert(header::HOST, host.clone());
    }
    parts.version = Version::HTTP_11;
    Ok(route)
}

/// `claim_headers`: each claim the token has, under its header (the client's own were
/// stripped with every `X-Portcullis-*`): a string as it is, any other value as compact
/// JSON. A missing claim sends no header; a value that cannot be a header value (a
/// control character, a line break, non-ASCII text) is not sent, and logged.
fn claim_headers(list: &[ClaimHeader], p: &auth::Principal, h: &mut http::HeaderMap, ctx: &Ctx) {
    let Some(claims) = p.claims.as_deref() else {
        return;
    };
    for c in list {
        // A claim that is absent or null sends no header.
        let Some(value) = ClaimHeader::find(claims, &c.claim).filter(|v| !v.is_null()) else {
            continue;
        };
        let text = match value {
            serde_json::Value::String(s) => std::borrow::Cow::Borrowed(s.as_str()),
            other => std::borrow::Cow::Owned(other.to_string()),
        };
        // Visible ASCII and spaces only: `HeaderValue` would take obs-text bytes and tabs,
        // which upstreams read each their own way.
        let plain = text.bytes().all(|b| (0x20..0x7f).contains(&b));
        match HeaderValue::from_str(&text) {
            Ok(v) if plain => {
                h.insert(c.name.clone(), v);
            }
            Ok(_) | Err(_) => tracing::warn!(
                request_id = ctx.request_id.to_str().unwrap_or(""),
                header = c.name.as_str(),
                claim = c.claim.as_str(),
                "claim not sent upstream: its value cannot be a header value"
            ),
        }
    }
}

/// The upstream's scheme and authority, its base path, then the request's path and query
/// (`stripped`: the query with the URL key removed, when it had one). With no base path
/// and an untouched query the request's own path-and-query is reused, not copied.
fn upstream_uri(upstream: &Upstream, uri: &Uri, stripped: Option<Option<String>>) -> Result<Uri, Refusal> {
    let (builder, base) = match upstream {
        Upstream::Echo => (Uri::builder(), ""),
        Upstream::Http {
            scheme,
            authority,
            base_path,
            ..
        } => (
            Uri::builder().scheme(scheme.clone()).authority(authority.clone()),
            base_path.as_str(),
        ),
    };
    let bad = || Refusal::BadRequest("request target cannot be forwarded".into());
    let pq = match (uri.path_and_query(), &stripped) {
        (Some(pq), None) if base.is_empty() => pq.clone(),
        _ => {
            let path = uri.path();
            let query = match &stripped {
                Some(q) => q.as_deref(),
                None => uri.query(),
            };
            let mut s = String::with_capacity(base.len() + path.len() + query.map_or(0, |q| q.len() + 1));
            s.push_str(base);
            s.push_str(path);
            if let Some(q) = query {
                s.push('?');
                s.push_str(q);
            }
            http::uri::PathAndQuery::from_maybe_shared(bytes::Bytes::from(s.into_bytes().into_boxed_slice()))
                .map_err(|_| bad())?
        }
    };
    builder.path_and_query(pq).build().map_err(|_| bad())
}
