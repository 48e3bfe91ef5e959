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
use crate::gateway::Gateway;
use crate::shared::{RateError, Step};

fn seconds_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// What each limit of a route decided: its scope, the limit and the step.
pub type Decided = Vec<(&'static str, RateLimit, Step)>;

/// Spends (with `take`) or looks at (for `explain`) the request's budgets; the
/// `RateLimit-Policy` and `RateLimit` fields go in `ctx` for the answer, refused or not.
pub(super) async fn limit(gw: &Gateway, ctx: &mut Ctx, permit: &Permit, take: bool) -> Result<Decided, Refusal> {
    let route = &gw.routes()[permit.route()];
    let mut decided = Vec::new();
    if route.rates.is_empty() {
        return Ok(decided);
    }
    let limiter = &gw.limiter;
    let keys: Vec<String> = route
        .rates
        .iter()
        .map(|r| r.key(ctx.client, permit.principal()))
        .collect();
    // Both budgets in flight at once: one round trip to Redis, not two.
    let steps = futures_util::future::join_all(
        route
            .rates
            .iter()
            .zip(&keys)
            .map(|(r, key)| limiter.shared.step(key, r.cell, take)),
    )
    .await;
    let mut policy = String::new();
    let mut state = String::new();
    let mut refused: Option<Duration> = None;
    for ((r, key), step) in route.rates.iter().zip(&keys).zip(steps) {
        let step = match step {
            Ok(step) => step,
            Err(RateError::Full) => return Err(Refusal::Unavailable("rate_table_full")),
            Err(RateError::Unavailable) => match r.limit.fail {
                RateFail::Closed => return Err(Refusal::Unavailable("rate_unavailable")),
                RateFail::Local => {
                    r.local.inc();
                    let share = r.cell.share(limiter.shared.replicas());
                    limiter
                        .local
                        .step_now(key, share, take)
                        .map_err(|_| Refusal::Unavailable("rate_table_full"))?
                }
            },
        };
        if !step.allowed && take {
            refused = Some(refused.map_or(step.retry_after, |d| d.max(step.retry_after)));
            r.limited.inc();
        }
        let sep = if policy.is_empty() { "" } else { ", " };
        let _ = write!(policy, "{sep}{}", r.policy);
        let _ = write!(
            state,
            "{sep}\"{}\";r={};t={}",
            r.scope,
            step.remaining,
            seconds_up(step.reset)
        );
        decided.push((r.scope, r.limit.clone(), step));
    }
    // Items of fixed scope names and numbers: always field values.
    ctx.rate_fields = HeaderValue::from_str(&policy)
        .ok()
        .zip(HeaderValue::from_str(&state).ok());
    match refused {
        Some(retry_after) => Err(Refusal::RateLimited { retry_after }),
        None => Ok(decided),
    }
}
