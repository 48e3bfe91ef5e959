//! The rate phase: after authorization, the plan's and the integration's rate limits
//! (both apply), each a GCRA budget counted in the shared store; past either, 429 with
//! `Retry-After`. Every answer of a limited route carries the IETF `RateLimit-Policy`
//! and `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers), one list item per limit.
//!
//! When Redis does not answer, a limit with `rate_fail = "local"` counts here against
//! this replica's share of the budget (the budget divided by the replicas last seen),
//! and `rate_fail = "closed"` refuses with 503.

use std::fmt::Write as _;
use std::time::Duration;

use http::HeaderValue;

use super::{Ctx, Refusal};
use crate::authz::Permit;
use crate::config::{RateFail, RateLimit};
use crate::gateway::{Gateway, RouteRate};
use crate::shared::{Budget, RateError, Step};

fn seconds_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// What each limit of a route decided: its scope, the limit and the step.
pub type Decided = Vec<(&'static str, RateLimit, Step)>;

/// Spends (with `take`) or looks at (for `explain`) the request's budgets; the
/// `RateLimit-Policy` and `RateLimit` fields go in `ctx` for the answer, refused or not.
///
/// Budgets of one width (a principal's, an address's, every caller's) are stepped at
/// once (one round trip to Redis); of several, the narrower first, and a refusal stops
/// there: a caller over its own limit never spends a budget it shares with others.
pub(super) async fn limit(gw: &Gateway, ctx: &mut Ctx, permit: &Permit, take: bool) -> Result<Decided, Refusal> {
    let route = &gw.routes()[permit.route()];
    let mut decided = Vec::new();
    if route.rates.is_empty() {
        return Ok(decided);
    }
    let policy: Vec<&str> = route.rates.iter().map(|r| r.policy.as_str()).collect();
    // Scope names and numbers: always a field value.
    ctx.rate_policy = HeaderValue::from_str(&policy.join(", ")).ok();
    let mut order: Vec<&RouteRate> = route.rates.iter().collect();
    order.sort_by_key(|r| r.width());
    let mut state = String::new();
    let mut refused: Option<Duration> = None;
    for group in order.chunk_by(|a, b| a.width() == b.width()) {
        let budgets: Vec<Budget> = group.iter().map(|r| r.budget(ctx.client, permit.principal())).collect();
        let steps = futures_util::future::join_all(
            group
                .iter()
                .zip(&budgets)
                .map(|(r, b)| gw.limiter.shared.step(b, r.cell, take)),
        )
        .await;
        for ((r, budget), step) in group.iter().zip(&budgets).zip(steps) {
            let step = counted(gw, r, budget, step, take)?;
            if !step.allowed && take {
                refused = Some(refused.map_or(step.retry_after, |d| d.max(step.retry_after)));
                r.limited.inc();
            }
            let sep = if state.is_empty() { "" } else { ", " };
            let _ = write!(
                state,
                "{sep}\"{}\";r={};t={}",
                r.scope,
                step.remaining,
                seconds_up(step.reset)
            );
            decided.push((r.scope, r.limit.clone(), step));
        }
        if refused.is_some() {
            break;
        }
    }
    ctx.rate_state = HeaderValue::from_str(&state).ok();
    match refused {
        Some(retry_after) => Err(Refusal::RateLimited { retry_after }),
        None => Ok(decided),
    }
}

/// The step the store answered, or, when Redis did not answer, what `rate_fail` says:
/// this replica's share of the budget, or 503.
fn counted(
    gw: &Gateway,
    r: &RouteRate,
    budget: &Budget,
    step: Result<Step, RateError>,
    take: bool,
) -> Result<Step, Refusal> {
    match step {
        Ok(step) => Ok(step),
        Err(RateError::Full) => Err(Refusal::Unavailable("rate_table_full")),
        Err(RateError::Unavailable) => match r.limit.fail {
            RateFail::Closed => Err(Refusal::Unavailable("rate_unavailable")),
            RateFail::Local => {
                r.local.inc();
                let share = r.cell.share(gw.limiter.shared.replicas());
                gw.limiter
                    .local
                    .step_now(budget, share, take)
                    .map_err(|_| Refusal::Unavailable("rate_table_full"))
            }
        },
    }
}
