//! Throttling of failed credentials per (user or key id, client IP).
//!
//! `max_failures` failures within `window` lock the pair for `duration`; while locked,
//! even the right credentials get 429. The table is a bounded moka cache keyed by a
//! keyed hash of the pair, so a flood of invented user names cannot grow memory.
//!
//! With a shared store (`[shared] backend = "redis"`), failures are also counted in Redis
//! so that `max_failures` holds across every replica: a verification that costs time
//! (argon2) first asks Redis whether the pair is locked, and every failure is counted
//! there. Locks are announced to all replicas, so the fast paths (a cached password, an
//! API key) see them without a round trip: a success never waits for Redis. When Redis
//! cannot answer, the local counters decide alone (counted in
//! `portcullis_shared_errors_total`).

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config;
use crate::shared::{Recorded, Store};

#[derive(Debug)]
struct Counter {
    window_start: Instant,
    failures: u32,
    /// Verifications started and not yet settled: they count against the budget, so
    /// parallel guesses cannot all be checked before the first failure is counted.
    in_flight: u32,
    locked_until: Option<Instant>,
}

impl Counter {
    fn new(now: Instant) -> Self {
        Counter {
            window_start: now,
            failures: 0,
            in_flight: 0,
            locked_until: None,
        }
    }

    /// Starts a new window once the old one (or the lock) is over.
    fn roll(&mut self, now: Instant, window: Duration) {
        let lock_over = self.locked_until.is_some_and(|u| now >= u);
        let window_over = self.locked_until.is_none() && now.duration_since(self.window_start) > window;
        if lock_over || window_over {
            self.window_start = now;
            self.failures = 0;
            self.locked_until = None;
        }
    }

    fn locked(&self, now: Instant) -> Option<Duration> {
        self.locked_until.filter(|u| now < *u).map(|u| u - now)
    }

    /// Whether one more verification may be answered now: `Err(retry_after)` while locked,
    /// or while failures plus attempts still running fill the budget.
    fn admit(&mut self, now: Instant, settings: &config::Lockout) -> Result<(), Duration> {
        self.roll(now, settings.window);
        if let Some(left) = self.locked(now) {
            return Err(left);
        }
        if self.failures.saturating_add(self.in_flight) >= settings.max_failures {
            return Err(BUSY_RETRY);
        }
        Ok(())
    }
}

/// How long a client whose budget is taken by attempts still running should wait.
const BUSY_RETRY: Duration = Duration::from_secs(1);

/// Clones share one table.
#[derive(Clone)]
pub struct Lockout {
    settings: config::Lockout,
    table: moka::sync::Cache<u64, Arc<Mutex<Counter>>>,
    hasher: std::collections::hash_map::RandomState,
    shared: Option<Arc<Store>>,
}

/// Carries the table across config generations, so a reload does not forgive failures.
#[derive(Default)]
pub struct Carried(Mutex<Option<(u64, Lockout)>>);

impl Carried {
    /// The lockout for a new generation: the running table with the new settings, unless
    /// the table's own shape (capacity, idle time) changed.
    pub fn take(&self, settings: &config::Lockout, max_entries: u64) -> Lockout {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let idle = settings.window.max(settings.duration);
        if let Some((cap, old)) = slot.as_ref() {
            if *cap == max_entries && old.settings.window.max(old.settings.duration) == idle {
                let l = Lockout {
                    settings: settings.clone(),
                    ..old.clone()
                };
                *slot = Some((max_entries, l.clone()));
                return l;
            }
        }
        let l = Lockout::new(settings, max_entries);
        *slot = Some((max_entries, l.clone()));
        l
    }
}

/// One verification that holds a place in the budget until it is settled (or dropped).
pub struct Attempt {
    counter: Arc<Mutex<Counter>>,
    settings: config::Lockout,
    settled: bool,
}

impl Attempt {
    /// Records the outcome: a failure counts (and may lock), a success clears the count.
    pub fn finish(mut self, ok: bool) {
        self.settled = true;
        let now = Instant::now();
        let mut c = self.counter.lock().unwrap_or_else(|p| p.into_inner());
        c.in_flight = c.in_flight.saturating_sub(1);
        c.roll(now, self.settings.window);
        if ok {
            if c.locked_until.is_none() {
                c.failures = 0;
            }
        } else {
            c.failures = c.failures.saturating_add(1);
            if c.failures >= self.settings.max_failures {
                c.locked_until = Some(now + self.settings.duration);
            }
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.settled {
            // Abandoned (the client went away): give the place back, count nothing.
            let mut c = self.counter.lock().unwrap_or_else(|p| p.into_inner());
            c.in_flight = c.in_flight.saturating_sub(1);
        }
    }
}

impl Lockout {
    pub fn new(settings: &config::Lockout, max_entries: u64) -> Self {
        Lockout {
            settings: settings.clone(),
            table: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .time_to_idle(settings.window.max(settings.duration))
                .build(),
            hasher: Default::default(),
            shared: None,
        }
    }

    /// The same table, counting across replicas in `store` as well.
    pub fn with_shared(mut self, store: Option<Arc<Store>>) -> Self {
        self.shared = store;
        self
    }

    fn announced(&self, subject: &str, client: IpAddr) -> Result<(), Duration> {
        match self.shared.as_ref().and_then(|s| s.announced_lock(subject, client)) {
            Some(left) => Err(left),
            None => Ok(()),
        }
    }

    /// Before a verification that takes time: the pair's lock as every replica sees it.
    /// Redis unavailable: the local table decides alone.
    pub async fn check_shared(&self, subject: &str, client: IpAddr) -> Result<(), Duration> {
        let Some(s) = &self.shared else { return Ok(()) };
        match s.locked(subject, client).await {
            Ok(Some(left)) => {
                self.lock_locally(subject, client, left);
                Err(left)
            }
            Ok(None) | Err(_) => Ok(()),
        }
    }

    /// After a verification: a failure is counted across replicas (`Err` when another
    /// replica had locked the pair already, so the answer is 429); a success after an
    /// argon2 run (`slow`) clears the shared count. A fast success costs no round trip.
    pub async fn record_shared(&self, subject: &str, client: IpAddr, ok: bool, slow: bool) -> Result<(), Duration> {
        let Some(s) = &self.shared else { return Ok(()) };
        if ok {
            if slow {
                s.record_success(subject, client).await;
            }
            return Ok(());
        }
        match s.record_failure(subject, client, &self.settings).await {
            Ok(Recorded::AlreadyLocked(left)) => {
                self.lock_locally(subject, client, left);
                Err(left)
            }
            Ok(Recorded::LockedNow(left)) => {
                self.lock_locally(subject, client, left);
                Ok(())
            }
            Ok(Recorded::Counted) | Err(_) => Ok(()),
        }
    }

    fn lock_locally(&self, subject: &str, client: IpAddr, left: Duration) {
        let now = Instant::now();
        let counter = self
            .table
            .get_with(self.key(subject, client), || Arc::new(Mutex::new(Counter::new(now))));
        let mut c = counter.lock().unwrap_or_else(|p| p.into_inner());
        let until = now + left;
        if c.locked_until.is_none_or(|u| u < until) {
            c.locked_until = Some(until);
        }
    }

    fn key(&self, subject: &str, client: IpAddr) -> u64 {
        self.hasher.hash_one((subject, client))
    }

    /// `Err(retry_after)` while the pair is locked. Read-only: the fast path of a request
    /// whose credentials are already known good.
    pub fn check(&self, subject: &str, client: IpAddr) -> Result<(), Duration> {
        self.announced(subject, client)?;
        let Some(c) = self.table.get(&self.key(subject, client)) else {
            return Ok(());
        };
        let c = c.lock().unwrap_or_else(|p| p.into_inner());
        c.locked(Instant::now()).map_or(Ok(()), Err)
    }

    /// Reserves a place in the budget before a verification that takes time (argon2):
    /// `Err(retry_after)` when the pair is locked, or when failures plus attempts still
    /// running already reach `max_failures`. However many guesses arrive at once, at most
    /// `max_failures` are verified per window.
    pub fn begin(&self, subject: &str, client: IpAddr) -> Result<Attempt, Duration> {
        let now = Instant::now();
        let counter = self
            .table
            .get_with(self.key(subject, client), || Arc::new(Mutex::new(Counter::new(now))));
        {
            let mut c = counter.lock().unwrap_or_else(|p| p.into_inner());
            c.admit(now, &self.settings)?;
            c.in_flight += 1;
        }
        Ok(Attempt {
            counter,
            settings: self.settings.clone(),
            settled: false,
        })
    }

    /// Settles a verification that has already run without waiting (a hash lookup), in one
    /// step under the pair's lock: `Err(retry_after)` means answer 429 whatever the outcome,
    /// so a guess past the budget, right or wrong, tells the client nothing.
    pub fn settle(&self, subject: &str, client: IpAddr, ok: bool) -> Result<(), Duration> {
        self.announced(subject, client)?;
        let now = Instant::now();
        let key = self.key(subject, client);
        let counter = if ok {
            // A success with no record is the hot path: a read, no write.
            match self.table.get(&key) {
                Some(c) => c,
                None => return Ok(()),
            }
        } else {
            self.table.get_with(key, || Arc::new(Mutex::new(Counter::new(now))))
        };
        let mut c = counter.lock().unwrap_or_else(|p| p.into_inner());
        c.admit(now, &self.settings)?;
        if ok {
            c.failures = 0;
        } else {
            c.failures += 1;
            if c.failures >= self.settings.max_failures {
                c.locked_until = Some(now + self.settings.duration);
            }
        }
        Ok(())
    }

    /// Counts one failure.
    #[cfg(test)]
    pub fn fail(&self, subject: &str, client: IpAddr) {
        let _ = self.settle(subject, client, false);
    }

    pub fn entries(&self) -> u64 {
        self.table.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lockout(max: u32, window_ms: u64, duration_ms: u64, entries: u64) -> Lockout {
        Lockout::new(
            &config::Lockout {
                max_failures: max,
                window: Duration::from_millis(window_ms),
                duration: Duration::from_millis(duration_ms),
            },
            entries,
        )
    }

    #[test]
    fn locks_after_max_failures_then_unlocks() {
        let l = lockout(3, 10_000, 150, 100);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..2 {
            l.fail("alice", ip);
            assert!(l.check("alice", ip).is_ok());
        }
        l.fail("alice", ip);
        assert!(l.check("alice", ip).is_err());
        // Another address and another user are not affected.
        assert!(l.check("alice", "127.0.0.2".parse().unwrap()).is_ok());
        assert!(l.check("bob", ip).is_ok());
        std::thread::sleep(Duration::from_millis(200));
        assert!(l.check("alice", ip).is_ok());
    }

    #[test]
    fn success_resets_the_count() {
        let l = lockout(2, 10_000, 10_000, 100);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        l.fail("alice", ip);
        assert!(l.settle("alice", ip, true).is_ok());
        l.fail("alice", ip);
        assert!(l.check("alice", ip).is_ok());
    }

    #[test]
    fn attempts_in_flight_count_against_the_budget() {
        let l = lockout(3, 10_000, 10_000, 100);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let held: Vec<Attempt> = (0..3).map(|_| l.begin("alice", ip).unwrap()).collect();
        // A fourth guess, and a sync guess, cannot start while three run.
        assert!(l.begin("alice", ip).is_err());
        assert!(l.settle("alice", ip, true).is_err());
        // An abandoned attempt gives its place back without counting.
        let mut held = held.into_iter();
        drop(held.next());
        let again = l.begin("alice", ip).unwrap();
        for a in held {
            a.finish(false);
        }
        again.finish(false);
        assert!(l.check("alice", ip).is_err(), "three failures lock");
    }

    #[test]
    fn a_flood_of_names_stays_bounded() {
        let l = lockout(5, 10_000, 10_000, 1000);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for i in 0..20_000 {
            l.fail(&format!("user{i}"), ip);
        }
        l.table.run_pending_tasks();
        assert!(l.entries() <= 1000, "{}", l.entries());
    }
}
