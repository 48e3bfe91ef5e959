//! `portcullis explain`: what the pipeline decides for one request, by the same phases
//! in the same order, without a connection and without calling the upstream.

use http::request::Parts;

use super::ctx::Ctx;
use crate::config::{AuthMethod, Upstream};
use crate::error::Answer;
use crate::gateway::Gateway;
use crate::headers;

/// What the pipeline decides for one request, without a connection and without calling
/// the upstream: the same checks, in the same order, as [`handle`] (`portcullis explain`).
#[derive(Debug)]
pub struct Explanation {
    /// `(plan, integration, path pattern, methods)` of the route, when one matched.
    pub route: Option<(String, String, String, Vec<String>)>,
    /// The integration's authentication methods.
    pub methods: Vec<AuthMethod>,
    /// The principal, when authentication named one.
    pub principal: Option<crate::auth::Principal>,
    /// Who the credentials named and by which method, also when the request was refused.
    pub named: Option<(String, AuthMethod)>,
    /// `Ok(upstream URL)` when the request would be forwarded; else the refusal:
    /// status, reason, the message the client would get.
    pub decision: Result<String, (u16, &'static str, String)>,
    /// The builtin issuer's endpoint that answers the request itself (`oauth_token`,
    /// `oauth_revoke`, `oauth_jwks`), when the path names one: no route, nothing forwarded.
    pub endpoint: Option<&'static str>,
    /// The rate limits that apply (the plan's, the integration's) and the budget each has
    /// left now, looked at without spending it.
    pub rates: super::rate::Decided,
    /// Each authorization rule and its value (`access`, `senders`, each `when`), once
    /// authentication named a principal; a `when` that reads headers or the query says so.
    pub rules: Vec<crate::authz::Judged>,
}

/// The decision for one request head, from `client`.
pub async fn explain(gw: &Gateway, mut parts: Parts, client: std::net::IpAddr) -> Explanation {
    let trace = headers::trace_of(&parts.headers, 0);
    let mut ctx = Ctx::new(
        client,
        headers::new_request_id(),
        &parts.method,
        &parts.uri,
        parts.version,
        trace,
    );
    let mut rates = Vec::new();
    ctx.explaining = true;
    // The phases of `admit`, in its order, then the upgrade's own checks.
    let decided = async {
        super::decide::check_head(&gw.config.limits, &parts)?;
        super::upgrade::extended_connect(&mut parts)?;
        if gw.auth.oauth.as_ref().and_then(|o| o.issuer()).is_some() {
            if let Some(endpoint) = crate::auth::oauth::builtin::endpoint(&crate::path::normalize(parts.uri.path())) {
                ctx.endpoint = Some(endpoint);
                return Ok(None);
            }
        }
        let permit = super::decide::decide(gw, &mut ctx, &mut parts).await?;
        rates = super::rate::limit(gw, &mut ctx, &permit, false).await?;
        if gw.routes()[permit.route()].websocket && super::upgrade::websocket_requested(&parts) {
            super::upgrade::handshake(&parts)?;
        }
        Ok::<_, crate::error::Refusal>(Some(permit))
    }
    .await;
    let route = ctx.route.map(|i| &gw.routes()[i]);
    let mut out = Explanation {
        route: route.map(|r| {
            (
                r.plan.clone(),
                r.integration.clone(),
                r.path.clone(),
                r.methods.iter().map(|m| m.to_string()).collect(),
            )
        }),
        methods: route.map(|r| r.auth.clone()).unwrap_or_default(),
        principal: None,
        named: ctx
            .principal
            .as_deref()
            .zip(ctx.auth_method)
            .map(|(p, m)| (p.to_string(), m)),
        decision: Err((0, "", String::new())),
        endpoint: ctx.endpoint,
        rates: Vec::new(),
        rules: std::mem::take(&mut ctx.judged),
    };
    out.rates = rates;
    out.decision = match decided {
        Ok(None) => Ok(String::new()),
        Ok(Some(permit)) => {
            out.principal = permit.principal().cloned();
            let r = &gw.routes()[permit.route()];
            match &r.upstream {
                Upstream::Echo => Ok("builtin:echo".to_string()),
                Upstream::Http {
                    scheme,
                    authority,
                    base_path,
                    ..
                } => {
                    let host = headers::HostPort::of(authority);
                    Ok(format!("{scheme}://{host}{base_path}{}", parts.uri.path()))
                }
            }
        }
        Err(refusal) => Err((
            refusal.status().as_u16(),
            refusal.reason(),
            refusal.message().into_owned(),
        )),
    };
    out
}
