//! [`Rates`]: rate-limit budgets, counted by GCRA (the generic cell rate algorithm, as
//! redis-cell counts it). A budget is one number, its theoretical arrival time (TAT):
//! a request at `now` moves it to `max(TAT, now) + interval` and passes if that is at
//! most `burst + 1` intervals ahead of `now`. A fresh budget so passes `burst + 1`
//! requests at once, then one per `interval` (`per / requests`).
//!
//! In memory the budgets of this process sit in a sharded, bounded table (a full table
//! refuses: [`RateError::Full`]); in Redis one script takes one step atomically, timed by
//! Redis's own clock so that replicas with skewed clocks share one budget. A budget whose
//! TAT has passed is full again, so it is simply forgotten (dropped from the table,
//! expired in Redis).
//!
//! Redis is trusted here as the lockout counters are: whoever can write to it can delete
//! a budget (more requests pass, up to the upstream) or push one ahead (fewer pass); no
//! value decides identity.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::store::Store;
use super::{Pending, Unavailable};

/// A limit as GCRA needs it, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    /// One request per `interval` (`per / requests`).
    pub interval: u64,
    /// How many requests a full budget passes at once beyond the first.
    pub burst: u64,
}

impl Cell {
    pub fn of(limit: &crate::config::RateLimit) -> Cell {
        Cell {
            interval: limit.interval_us(),
            burst: limit.burst,
        }
    }

    /// This replica's share when `replicas` count apart: one request per `replicas`
    /// intervals, and the burst divided among them.
    pub fn share(self, replicas: u64) -> Cell {
        let n = replicas.max(1);
        Cell {
            interval: self.interval.saturating_mul(n),
            burst: self.burst / n,
        }
    }

    /// The tolerance: how far ahead of now the TAT may be and a request still pass.
    fn tolerance(self) -> u64 {
        self.burst.saturating_mul(self.interval)
    }
}

/// A budget's name, and whether it is a client address's (those fill their own half of
/// the memory table: a flood of addresses cannot crowd out the principals' budgets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub name: String,
    pub by_address: bool,
}

/// What one step of a budget decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub allowed: bool,
    /// Requests that would pass right after this one (0 when refused).
    pub remaining: u64,
    /// When refused: how long until one request passes again.
    pub retry_after: Duration,
    /// How long until the budget is full again.
    pub reset: Duration,
}

impl Step {
    /// One GCRA step from `tat` (None: a fresh budget) at `now`; with `take`, the new TAT
    /// to store when the request passes (or, refused, the TAT brought back within the
    /// limit when it was further ahead). Without `take` (a look, for `explain`),
    /// `remaining` counts the requests that would pass now, this one included.
    pub fn at(tat: Option<u64>, now: u64, cell: Cell, take: bool) -> (Step, Option<u64>) {
        let limit = cell.tolerance().saturating_add(cell.interval);
        // A TAT further ahead than this limit allows was set under another (a reload
        // lowered `per` or raised `requests`): the new limit decides from now on.
        let stored = tat.unwrap_or(now);
        let tat = stored.clamp(now, now.saturating_add(limit));
        let ahead = tat - now;
        if !take {
            let remaining = limit.saturating_sub(ahead) / cell.interval;
            let step = Step {
                allowed: remaining > 0,
                remaining,
                retry_after: Duration::from_micros((ahead + cell.interval).saturating_sub(limit)),
                reset: Duration::from_micros(ahead),
            };
            return (step, None);
        }
        let next = tat.saturating_add(cell.interval);
        let diff = next - now;
        if diff > limit {
            let step = Step {
                allowed: false,
                remaining: 0,
                retry_after: Duration::from_micros(diff - limit),
                reset: Duration::from_micros(ahead),
            };
            return (step, (stored > tat).then_some(tat));
        }
        let step = Step {
            allowed: true,
            remaining: (limit - diff) / cell.interval,
            retry_after: Duration::ZERO,
            reset: Duration::from_micros(diff),
        };
        (step, Some(next))
    }
}

/// Why a budget could not be counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    #[error("the shared store (Redis) did not answer")]
    Unavailable,
    #[error("the rate-limit table is full")]
    Full,
}

impl From<Unavailable> for RateError {
    fn from(_: Unavailable) -> Self {
        RateError::Unavailable
    }
}

/// Rate-limit budgets, counted here or in Redis.
pub trait Rates: Send + Sync {
    /// One step of the budget `key` (with `take`, the request spends it).
    fn step<'a>(&'a self, budget: &'a Budget, cell: Cell, take: bool) -> Pending<'a, Result<Step, RateError>>;
    /// How many replicas share the budgets (1 alone; with Redis, those seen lately).
    fn replicas(&self) -> u64;
}

const SHARDS: usize = 16;

/// This process's budgets: at most `cap` live at once, half of them clients' addresses.
pub struct MemoryRates {
    shards: Vec<Mutex<HashMap<Box<str>, u64>>>,
    per_shard: usize,
    start: Instant,
    clock: crate::util::Clock,
    full: Option<prometheus::IntCounter>,
}

impl MemoryRates {
    pub fn new(cap: usize, clock: crate::util::Clock, full: Option<prometheus::IntCounter>) -> Self {
        MemoryRates {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: cap.div_ceil(SHARDS).max(1),
            start: clock.instant(),
            clock,
            full,
        }
    }

    /// Microseconds since this table began, on the state's clock.
    fn now(&self) -> u64 {
        self.clock.instant().saturating_duration_since(self.start).as_micros() as u64
    }

    /// One step, in place.
    pub fn step_now(&self, budget: &Budget, cell: Cell, take: bool) -> Result<Step, RateError> {
        let key = budget.name.as_str();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let half = SHARDS / 2;
        let base = if budget.by_address { 0 } else { half };
        let shard = &self.shards[base + h.finish() as usize % half];
        let now = self.now();
        let mut m = shard.lock().unwrap_or_else(|p| p.into_inner());
        let (step, next) = Step::at(m.get(key).copied(), now, cell, take);
        if let Some(next) = next {
            if let Some(tat) = m.get_mut(key) {
                *tat = next;
            } else {
                if m.len() >= self.per_shard {
                    // A budget whose TAT has passed is full: forgetting it changes nothing.
                    m.retain(|_, tat| *tat > now);
                }
                if m.len() >= self.per_shard {
                    if let Some(c) = &self.full {
                        c.inc();
                    }
                    return Err(RateError::Full);
                }
                m.insert(key.into(), next);
            }
        }
        Ok(step)
    }
}

impl Rates for MemoryRates {
    fn step<'a>(&'a self, budget: &'a Budget, cell: Cell, take: bool) -> Pending<'a, Result<Step, RateError>> {
        Box::pin(std::future::ready(self.step_now(budget, cell, take)))
    }

    fn replicas(&self) -> u64 {
        1
    }
}

/// Budgets in Redis, one script step each, and a count of the replicas that use them.
pub struct RedisRates {
    store: Arc<Store>,
    /// This replica's id among those seen (random per process).
    id: String,
    seen: AtomicU64,
}

/// How often a replica says it is alive, and how long it counts as seen after.
const BEAT: Duration = Duration::from_secs(5);
const SEEN_FOR: Duration = Duration::from_secs(30);

impl RedisRates {
    /// The budgets on `store`; within a runtime, a task says every [`BEAT`] that this
    /// replica is alive and counts those seen, for as long as the budgets are in use.
    pub fn new(store: Arc<Store>) -> Arc<Self> {
        let rates = Arc::new(RedisRates {
            store,
            id: hex::encode(rand::random::<[u8; 16]>()),
            seen: AtomicU64::new(1),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&rates);
            runtime.spawn(async move {
                let mut tick = tokio::time::interval(BEAT);
                loop {
                    tick.tick().await;
                    let Some(rates) = weak.upgrade() else { return };
                    rates.beat().await;
                }
            });
        }
        rates
    }

    /// Says this replica is alive and counts those seen in the last [`SEEN_FOR`].
    async fn beat(&self) {
        static SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                r#"
local t = redis.call('TIME')
local now = tonumber(t[1])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return redis.call('ZCARD', KEYS[1])
"#,
            )
        });
        let mut script = SCRIPT.key(self.store.plain_name("replicas", "rate"));
        script.arg(&self.id).arg(SEEN_FOR.as_secs());
        if let Ok(n) = self.store.invoke::<u64>("rate", script).await {
            self.seen.store(n.max(1), Ordering::Relaxed);
        }
    }

    async fn step_redis(&self, budget: &Budget, cell: Cell, take: bool) -> Result<Step, RateError> {
        static SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            // Microseconds fit a Lua number (a double) exactly for the next 280 years.
            redis::Script::new(
                r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now) or now
local interval = tonumber(ARGV[1])
local limit = tonumber(ARGV[2]) + interval
if tat < now then tat = now end
local clamped = false
if tat > now + limit then
  tat = now + limit
  clamped = true
end
local ahead = tat - now
if ARGV[3] ~= '1' then
  return {0, ahead}
end
local diff = ahead + interval
if diff > limit then
  if clamped then
    redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil(limit / 1000) + 1)
  end
  return {0, ahead}
end
redis.call('SET', KEYS[1], string.format('%d', tat + interval), 'PX', math.ceil(diff / 1000) + 1)
return {1, ahead}
"#,
            )
        });
        let name = self.store.name("rate", &[budget.name.as_bytes()]);
        let mut script = SCRIPT.key(name);
        script
            .arg(cell.interval)
            .arg(cell.tolerance())
            .arg(if take { "1" } else { "0" });
        let (taken, ahead): (u8, u64) = self.store.invoke("rate", script).await?;
        // The step again here, from what Redis decided against its own clock: `ahead` is
        // the TAT before this request, relative to Redis's now.
        let (step, _) = Step::at(Some(ahead), 0, cell, take);
        if take && (taken == 1) != step.allowed {
            return Err(RateError::Unavailable);
        }
        Ok(step)
    }
}

impl Rates for RedisRates {
    fn step<'a>(&'a self, budget: &'a Budget, cell: Cell, take: bool) -> Pending<'a, Result<Step, RateError>> {
        Box::pin(self.step_redis(budget, cell, take))
    }

    fn replicas(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000;

    #[test]
    fn a_fresh_budget_passes_burst_plus_one_then_one_per_interval() {
        let cell = Cell {
            interval: SECOND / 10,
            burst: 4,
        };
        let mut tat = None;
        let mut passed = 0;
        for _ in 0..10 {
            let (step, next) = Step::at(tat, 0, cell, true);
            if step.allowed {
                passed += 1;
                tat = next;
                assert_eq!(step.remaining, 5 - passed);
            } else {
                assert_eq!(step.remaining, 0);
                assert_eq!(step.retry_after, Duration::from_micros(SECOND / 10));
            }
        }
        assert_eq!(passed, 5, "burst 4 passes 5 at once");
        // One interval later, exactly one more.
        let (step, next) = Step::at(tat, SECOND / 10, cell, true);
        assert!(step.allowed && step.remaining == 0);
        let (step, _) = Step::at(next, SECOND / 10, cell, true);
        assert!(!step.allowed);
        // Long after, full again.
        let (step, _) = Step::at(next, 100 * SECOND, cell, false);
        assert_eq!(step.remaining, 5);
        assert_eq!(step.reset, Duration::ZERO);
    }

    #[test]
    fn a_look_spends_nothing() {
        let cell = Cell { interval: 10, burst: 0 };
        let (look, next) = Step::at(None, 0, cell, false);
        assert!(look.allowed && look.remaining == 1 && next.is_none());
        let (step, next) = Step::at(None, 0, cell, true);
        assert!(step.allowed && next == Some(10));
        let (look, _) = Step::at(next, 0, cell, false);
        assert!(!look.allowed && look.remaining == 0 && look.retry_after == Duration::from_micros(10));
    }

    #[test]
    fn a_share_divides_the_rate_and_the_burst() {
        let cell = Cell {
            interval: 100,
            burst: 10,
        };
        assert_eq!(
            cell.share(3),
            Cell {
                interval: 300,
                burst: 3
            }
        );
        assert_eq!(cell.share(0), cell);
    }

    #[test]
    fn the_memory_table_refuses_when_full_and_forgets_full_budgets() {
        let clock = crate::util::Clock::default();
        let rates = MemoryRates::new(SHARDS, clock.clone(), None);
        let cell = Cell {
            interval: SECOND,
            burst: 0,
        };
        let mut refused = 0;
        for i in 0..(4 * SHARDS) {
            match rates.step_now(&principal(&format!("k{i}")), cell, true) {
                Ok(step) => assert!(step.allowed),
                Err(e) => {
                    assert_eq!(e, RateError::Full);
                    refused += 1;
                }
            }
        }
        assert!(refused > 0, "a full table refuses");
        assert!(
            !rates.step_now(&principal("k0"), cell, true).unwrap().allowed,
            "a budget in the table stays spent"
        );
        clock.advance(Duration::from_secs(2));
        for i in 0..(4 * SHARDS) {
            let _ = rates.step_now(&principal(&format!("again{i}")), cell, true);
        }
        assert!(rates.step_now(&principal("late"), cell, false).unwrap().allowed);
    }

    fn principal(name: &str) -> Budget {
        Budget {
            name: name.to_string(),
            by_address: false,
        }
    }

    /// Addresses fill their own half: a flood of them leaves the principals' budgets room.
    #[test]
    fn a_flood_of_addresses_cannot_fill_the_principals_half() {
        let rates = MemoryRates::new(SHARDS * 4, Default::default(), None);
        let cell = Cell {
            interval: SECOND,
            burst: 0,
        };
        let mut full = 0;
        for i in 0..1000 {
            let b = Budget {
                name: format!("ip{i}"),
                by_address: true,
            };
            full += usize::from(rates.step_now(&b, cell, true) == Err(RateError::Full));
        }
        assert!(full > 900, "the addresses' half is full");
        for i in 0..10 {
            assert!(
                rates
                    .step_now(&principal(&format!("p{i}")), cell, true)
                    .unwrap()
                    .allowed
            );
        }
    }

    /// A budget spent under a slower limit obeys a faster one at once (a reload raised it).
    #[test]
    fn a_raised_limit_applies_to_budgets_spent_under_the_old_one() {
        let slow = Cell {
            interval: 3600 * SECOND,
            burst: 0,
        };
        let (_, tat) = Step::at(None, 0, slow, true);
        let fast = Cell {
            interval: SECOND / 1000,
            burst: 10,
        };
        let (step, clamped) = Step::at(tat, 0, fast, true);
        assert!(!step.allowed);
        assert!(step.retry_after <= Duration::from_millis(1), "{:?}", step.retry_after);
        assert!(clamped < tat, "the TAT brought back within the new limit is stored");
        let (step, _) = Step::at(clamped, SECOND / 1000, fast, true);
        assert!(step.allowed);
    }
}
