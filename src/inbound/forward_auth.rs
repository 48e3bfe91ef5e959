//! Forward-auth: an ingress (nginx `auth_request`, Traefik ForwardAuth, Envoy ext_authz)
//! asks about the request it holds; the answer is the pipeline's decision for that
//! request, with the headers the proxy path would set, and nothing is forwarded.

use http::request::Parts;
use http::{Request, Response, Uri};

use super::ctx::Ctx;
use super::{decide, rewrite};
use crate::config::Ingress;
use crate::error::{Body, Refusal};
use crate::gateway::Gateway;
use crate::route::Match;
use crate::server::listener::ConnInfo;
use crate::upstream::{self, RequestBody};

// === forward-auth ===

/// The original request a forward-auth subrequest describes, read from one header family
/// only (`[forward_auth] ingress`): `X-Original-Method` and `X-Original-URI` (nginx),
/// `X-Forwarded-Method` and `X-Forwarded-Uri` (Traefik), or the subrequest's own method
/// and target (Envoy ext_authz). An ingress may copy the client's own headers into the
/// subrequest, so a client can add the other family's: named, the ingress's family alone
/// counts; left to detect, two families that disagree are a 400
/// `ambiguous_original_request`, as is any of these headers sent twice.
///
/// `is_route` says whether a path and method may name an integration.
fn original_request(
    parts: &Parts,
    ingress: Ingress,
    is_route: impl Fn(&str, &http::Method) -> bool,
) -> Result<(http::Method, Uri), Refusal> {
    let bad = |what: String| Refusal::BadRequest(format!("forward-auth: {what}").into());
    let ambiguous = |what: String| Refusal::Invalid {
        message: format!("forward-auth: {what}").into(),
        reason: "ambiguous_original_request",
    };
    // Exactly one line per header: a list where one value is expected is refused.
    let one = |name: &'static str| -> Result<Option<&str>, Refusal> {
        let mut all = parts.headers.get_all(name).iter();
        match (all.next(), all.next()) {
            (None, _) => Ok(None),
            (Some(v), None) => v
                .to_str()
                .map(Some)
                .map_err(|_| bad(format!("`{name}` is not visible ASCII"))),
            (Some(_), Some(_)) => Err(ambiguous(format!("`{name}` is sent more than once"))),
        }
    };
    let read = |method: &'static str, uri: &'static str| -> Result<Option<(http::Method, Uri)>, Refusal> {
        match (one(method)?, one(uri)?) {
            (None, None) => Ok(None),
            (Some(m), Some(u)) => {
                let m =
                    http::Method::from_bytes(m.as_bytes()).map_err(|_| bad(format!("`{method}` is not a method")))?;
                if !u.starts_with('/') {
                    return Err(bad(format!("`{uri}` is not a path (expected `/a/b?c`)")));
                }
                let u: Uri = u.parse().map_err(|_| bad(format!("`{uri}` cannot be parsed")))?;
                Ok(Some((m, u)))
            }
            _ => Err(bad(format!("`{method}` and `{uri}` come together"))),
        }
    };
    let nginx = || read("x-original-method", "x-original-uri");
    let traefik = || read("x-forwarded-method", "x-forwarded-uri");
    let own = || {
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri: Uri = target
            .parse()
            .map_err(|_| bad("the subrequest's target cannot be parsed".to_string()))?;
        Ok((parts.method.clone(), uri))
    };
    let missing = |family: &str| bad(format!("the {family} headers naming the original request are missing"));
    match ingress {
        Ingress::Nginx => nginx()?.ok_or_else(|| missing("X-Original-Method and X-Original-URI")),
        Ingress::Traefik => traefik()?.ok_or_else(|| missing("X-Forwarded-Method and X-Forwarded-Uri")),
        Ingress::Envoy => own(),
        Ingress::Detect => match (nginx()?, traefik()?) {
            (Some(a), Some(b)) if a != b => Err(ambiguous(
                "X-Original-* and X-Forwarded-* name different requests; set [forward_auth] ingress".to_string(),
            )),
            (Some(a), _) | (None, Some(a)) => {
                // Envoy sends the original request as the check request itself, and may
                // pass the client's headers along: a family naming another request than
                // a subrequest target that is itself a route is ambiguous.
                let (method, target) = own()?;
                if (method != a.0 || target != a.1) && is_route(target.path(), &method) {
                    return Err(ambiguous(
                        "the headers name another request than the subrequest's own target; set [forward_auth] ingress"
                            .to_string(),
                    ));
                }
                Ok(a)
            }
            (None, None) => own(),
        },
    }
}

/// Check head through rewrite for the request a subrequest describes, from a trusted
/// ingress only; the answer carries the `X-Portcullis-*` headers the upstream would get.
pub(super) async fn handle<B: RequestBody>(
    gw: &Gateway,
    conn: &ConnInfo,
    ctx: &mut Ctx,
    req: Request<B>,
) -> Result<Response<Body>, Refusal> {
    let (mut parts, body) = req.into_parts();
    upstream::drain(body);
    // Only an ingress may describe requests: anyone else could name any URI.
    let peer = conn.remote.ip().to_canonical();
    if !gw.config.listen.trusted_proxies.iter().any(|n| n.contains(&peer)) {
        return Err(Refusal::Forbidden {
            reason: "untrusted_forwarder",
            challenge: None,
        });
    }
    // A path that fails the path rules could still reach a route behind a lenient
    // ingress: it counts as one.
    let is_route = |path: &str, method: &http::Method| {
        crate::path::check_path(path).is_err()
            || !matches!(
                gw.router.route(&crate::path::normalize(path), method),
                Ok(Match::NotFound)
            )
    };
    let (method, uri) = original_request(&parts, gw.config.forward_auth_ingress, is_route)?;
    for name in [
        "x-original-uri",
        "x-original-method",
        "x-forwarded-uri",
        "x-forwarded-method",
    ] {
        parts.headers.remove(name);
    }
    parts.method = method.clone();
    parts.uri = uri.clone();
    ctx.method = method;
    ctx.uri = uri;
    decide::check_head(&gw.config.limits, &parts)?;
    let permit = decide::decide(gw, ctx, &mut parts).await?;
    super::rate::limit(gw, ctx, &permit, true).await?;
    // The headers the proxy path would set, made the same way, returned for the ingress.
    rewrite::rewrite(gw, conn, ctx, &mut parts, permit)?;
    let mut resp = Response::new(crate::error::full(bytes::Bytes::new()));
    for (name, value) in &parts.headers {
        if name.as_str().starts_with("x-portcullis-") {
            resp.headers_mut().append(name.clone(), value.clone());
        }
    }
    Ok(resp)
}
