//! Throttling of failed credentials per (user or key id, client IP).
//!
//! `max_failures` failures within `window` lock the pair for `duration`; while locked,
//! even the right credentials get 429. The table is keyed by a keyed hash of the pair,
//! and bounded without ever evicting a live entry: an entry leaves only once idle past
//! its window and lock. At most `cache.max_entries` entries in all, and at most
//! `lockout.max_entries_per_address` for one client address (an IPv6 /64), so one client
//! cannot fill the table for everyone. A pair that has no entry and finds no room cannot
//! be counted, so it is not verified at all: 429, counted in
//! `portcullis_table_full_total{table="lockout"}`, whatever the credentials (a guess that
//! cannot be counted must not be answered). A pair that already has an entry is
//! unaffected, and so is a credential found in a cache of verified ones.
//!
//! What other replicas count comes through [`crate::shared::Lockouts`], chosen once at
//! start: alone ([`crate::shared::NoSharedLockout`]) nothing comes, and this table
//! decides. With Redis (`[shared] backend = "redis"`), failures are also counted in Redis
//! so that `max_failures` holds across every replica: a verification that costs time
//! (argon2) first asks Redis whether the pair is locked, and every failure is counted
//! there. Locks are announced to all replicas, so the fast paths (a cached password, an
//! API key) see them without a round trip: a success never waits for Redis. When Redis
//! cannot answer, the local counters decide alone (counted in
//! `portcullis_shared_errors_total`). Redis's counters are not authenticated: forging
//! one high only locks sooner, and forging one low (or deleting a lock) cannot undo this
//! table, which counts every failure this replica sees. A lock read from Redis or
//! announced by another replica lasts at most `duration` here.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config;
use crate::shared::{Lockouts, NoSharedLockout, Recorded};
use crate::util::Clock;

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
/// How long a client whose pair finds no room in the table should wait.
const FULL_RETRY: Duration = Duration::from_secs(10);

/// Whose share of the table an entry takes: an IPv4 address, or an IPv6 /64 (one
/// client usually holds a whole /64; an IPv4 address mapped into IPv6 is that address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Group {
    V4(u32),
    V6(u64),
}

impl Group {
    fn of(ip: IpAddr) -> Group {
        match ip {
            IpAddr::V4(a) => Group::V4(a.into()),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Group::V4(v4.into()),
                None => Group::V6((u128::from(a) >> 64) as u64),
            },
        }
    }
}

/// One pair's counter, and whose share it takes.
struct Entry {
    group: Group,
    counter: Mutex<Counter>,
}

/// The places of the table: taken when an entry is made, given back when it leaves.
struct Room {
    cap: u64,
    per_address: AtomicU64,
    used: Mutex<(u64, HashMap<Group, u64>)>,
    full: Option<prometheus::IntCounterVec>,
}

impl Room {
    /// Takes a place for `group`, or says which limit refuses it.
    fn take(&self, group: Group) -> Result<(), &'static str> {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per) = &mut *used;
        let mine = per.get(&group).copied().unwrap_or(0);
        if mine >= self.per_address.load(Ordering::Relaxed) {
            return Err("per_client");
        }
        if *total >= self.cap {
            return Err("total");
        }
        *total += 1;
        *per.entry(group).or_insert(0) += 1;
        Ok(())
    }

    /// Whether a place could be taken for `group` now.
    fn refuses(&self, group: Group) -> Option<&'static str> {
        let used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let mine = used.1.get(&group).copied().unwrap_or(0);
        if mine >= self.per_address.load(Ordering::Relaxed) {
            Some("per_client")
        } else if used.0 >= self.cap {
            Some("total")
        } else {
            None
        }
    }

    fn give_back(&self, group: Group) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per) = &mut *used;
        *total = total.saturating_sub(1);
        if let Some(n) = per.get_mut(&group) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per.remove(&group);
            }
        }
    }

    fn count_full(&self, limit: &'static str) {
        if let Some(full) = &self.full {
            debug_assert!(crate::metrics::FULL_TABLES.contains(&("lockout", limit)));
            full.with_label_values(&["lockout", limit]).inc();
        }
    }
}

/// Clones share one table.
#[derive(Clone)]
pub struct Lockout {
    settings: config::Lockout,
    table: moka::sync::Cache<u64, Arc<Entry>>,
    room: Arc<Room>,
    hasher: std::collections::hash_map::RandomState,
    shared: Arc<dyn Lockouts>,
    /// The process state's clock (tests move it past a lock).
    clock: Clock,
}

/// Carries the table across config generations, so a reload does not forgive failures.
#[derive(Default)]
pub struct Carried(Mutex<Option<(u64, Lockout)>>);

impl Carried {
    /// The lockout for a new generation: the running table with the new settings, unless
    /// the table's own shape (capacity, idle time) changed.
    pub fn take(
        &self,
        settings: &config::Lockout,
        max_entries: u64,
        metrics: &crate::metrics::Metrics,
        clock: &Clock,
    ) -> Lockout {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let idle = settings.window.max(settings.duration);
        if let Some((cap, old)) = slot.as_ref() {
            if *cap == max_entries && old.settings.window.max(old.settings.duration) == idle {
                old.room
                    .per_address
                    .store(settings.max_entries_per_address, Ordering::Relaxed);
                let l = Lockout {
                    settings: settings.clone(),
                    clock: clock.clone(),
                    ..old.clone()
                };
                *slot = Some((max_entries, l.clone()));
                return l;
            }
        }
        let mut l = Lockout::build(settings, max_entries, Some(metrics.table_full.clone()));
        l.clock = clock.clone();
        *slot = Some((max_entries, l.clone()));
        l
    }
}

/// One verification that holds a place in the budget until it is settled (or dropped).
pub struct Attempt {
    counter: Arc<Entry>,
    settings: config::Lockout,
    settled: bool,
    clock: Clock,
}

impl Attempt {
    /// Records the outcome: a failure counts (and may lock), a success clears the count.
    pub fn finish(mut self, ok: bool) {
        self.settled = true;
        let now = self.clock.instant();
        let mut c = self.counter.counter.lock().unwrap_or_else(|p| p.into_inner());
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
            let mut c = self.counter.counter.lock().unwrap_or_else(|p| p.into_inner());
            c.in_flight = c.in_flight.saturating_sub(1);
        }
    }
}

impl Lockout {
    pub fn new(settings: &config::Lockout, max_entries: u64) -> Self {
        Self::build(settings, max_entries, None)
    }

    fn build(settings: &config::Lockout, max_entries: u64, full: Option<prometheus::IntCounterVec>) -> Self {
        let room = Arc::new(Room {
            cap: max_entries,
            per_address: AtomicU64::new(settings.max_entries_per_address),
            used: Mutex::new((0, HashMap::new())),
            full,
        });
        let back = room.clone();
        Lockout {
            settings: settings.clone(),
            // No capacity: moka would evict live counters. An entry idle past its window
            // and its lock is over, and only then leaves (giving its place back).
            table: moka::sync::Cache::builder()
                .time_to_idle(settings.window.max(settings.duration))
                .eviction_listener(move |_, e: Arc<Entry>, _| back.give_back(e.group))
                .build(),
            room,
            hasher: Default::default(),
            shared: Arc::new(NoSharedLockout),
            clock: Clock::default(),
        }
    }

    /// The same table, counting across replicas in `shared` as well (alone, nothing is
    /// shared: [`NoSharedLockout`]).
    pub fn with_shared(mut self, shared: Arc<dyn Lockouts>) -> Self {
        // Room for the locks of a few replicas' tables.
        shared.set_cap(self.room.cap.saturating_mul(4));
        self.shared = shared;
        self
    }

    /// A lock another replica announced. When this replica holds too many announced
    /// locks to tell, every fast path is refused (fail closed) until they end.
    fn announced(&self, subject: &str, client: IpAddr) -> Result<(), Duration> {
        match self.shared.announced(subject, client) {
            Ok(Some(left)) => Err(left.min(self.settings.duration)),
            Ok(None) => Ok(()),
            Err(crate::shared::Incomplete) => Err(FULL_RETRY),
        }
    }

    /// The pair's entry, made when there is none and the table (and the client
    /// address's share) has room; `Err(retry_after)` when it has none.
    fn entry(&self, key: u64, client: IpAddr, now: Instant) -> Result<Arc<Entry>, Duration> {
        if let Some(e) = self.table.get(&key) {
            return Ok(e);
        }
        let group = Group::of(client);
        if self.room.take(group).is_err() {
            // Entries past their idle time give their place back on maintenance.
            self.table.run_pending_tasks();
            if let Err(limit) = self.room.take(group) {
                return Err(self.full(limit));
            }
        }
        let mut made = false;
        let e = self.table.get_with(key, || {
            made = true;
            Arc::new(Entry {
                group,
                counter: Mutex::new(Counter::new(now)),
            })
        });
        if !made {
            // Another request made it meanwhile: the place taken is not needed.
            self.room.give_back(group);
        }
        Ok(e)
    }

    fn full(&self, limit: &'static str) -> Duration {
        self.room.count_full(limit);
        tracing::warn!(
            limit,
            "lockout table full: a credential that cannot be counted is refused (429)"
        );
        FULL_RETRY
    }

    /// Before a verification that takes time: the pair's lock as every replica sees it.
    /// Redis unavailable: the local table decides alone.
    pub async fn check_shared(&self, subject: &str, client: IpAddr) -> Result<(), Duration> {
        match self.shared.locked(subject, client).await {
            Ok(Some(left)) => {
                let left = left.min(self.settings.duration);
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
        if ok {
            if slow {
                self.shared.record_success(subject, client).await;
            }
            return Ok(());
        }
        match self.shared.record_failure(subject, client, &self.settings).await {
            Ok(Recorded::AlreadyLocked(left)) => {
                let left = left.min(self.settings.duration);
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

    /// Records a lock Redis reported, for at most `duration` (a value in Redis cannot
    /// lock a pair longer than this replica's settings would).
    fn lock_locally(&self, subject: &str, client: IpAddr, left: Duration) {
        let now = self.clock.instant();
        // Without room the lock still holds in Redis and is answered now.
        let Ok(entry) = self.entry(self.key(subject, client), client, now) else {
            return;
        };
        let mut c = entry.counter.lock().unwrap_or_else(|p| p.into_inner());
        let until = now + left.min(self.settings.duration);
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
        let Some(e) = self.table.get(&self.key(subject, client)) else {
            return Ok(());
        };
        let c = e.counter.lock().unwrap_or_else(|p| p.into_inner());
        c.locked(self.clock.instant()).map_or(Ok(()), Err)
    }

    /// Reserves a place in the budget before a verification that takes time (argon2):
    /// `Err(retry_after)` when the pair is locked, or when failures plus attempts still
    /// running already reach `max_failures`. However many guesses arrive at once, at most
    /// `max_failures` are verified per window.
    pub fn begin(&self, subject: &str, client: IpAddr) -> Result<Attempt, Duration> {
        let now = self.clock.instant();
        let counter = self.entry(self.key(subject, client), client, now)?;
        {
            let mut c = counter.counter.lock().unwrap_or_else(|p| p.into_inner());
            c.admit(now, &self.settings)?;
            c.in_flight += 1;
        }
        Ok(Attempt {
            counter,
            settings: self.settings.clone(),
            settled: false,
            clock: self.clock.clone(),
        })
    }

    /// Settles a verification that has already run without waiting (a hash lookup), in one
    /// step under the pair's lock: `Err(retry_after)` means answer 429 whatever the outcome,
    /// so a guess past the budget, right or wrong, tells the client nothing.
    pub fn settle(&self, subject: &str, client: IpAddr, ok: bool) -> Result<(), Duration> {
        self.announced(subject, client)?;
        let now = self.clock.instant();
        let key = self.key(subject, client);
        let entry = if ok {
            // A success with no record is the hot path: a read, no write. Unless the
            // table has no room for this pair: a guess that could not have been counted
            // is not answered, right or wrong.
            match self.table.get(&key) {
                Some(e) => e,
                None => {
                    let group = Group::of(client);
                    if self.room.refuses(group).is_none() {
                        return Ok(());
                    }
                    self.table.run_pending_tasks();
                    return match self.room.refuses(group) {
                        None => Ok(()),
                        Some(limit) => Err(self.full(limit)),
                    };
                }
            }
        } else {
            self.entry(key, client, now)?
        };
        let mut c = entry.counter.lock().unwrap_or_else(|p| p.into_inner());
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
                max_entries_per_address: entries,
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
        // The lock holds until its clock passes `duration`, not a moment before.
        l.clock.advance(Duration::from_millis(140));
        assert!(l.check("alice", ip).is_err());
        l.clock.advance(Duration::from_millis(20));
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

    #[test]
    fn a_full_table_keeps_live_counters_and_refuses_new_pairs() {
        let l = lockout(2, 10_000, 10_000, 3);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        l.fail("alice", ip);
        l.fail("alice", ip);
        assert!(l.check("alice", ip).is_err(), "locked");
        for i in 0..100 {
            l.fail(&format!("flood{i}"), ip);
        }
        l.table.run_pending_tasks();
        assert!(l.check("alice", ip).is_err(), "a flood does not evict the lock");
        // A new pair, right or wrong, cannot be counted: not answered.
        assert!(l.settle("bob", ip, true).is_err());
        assert!(l.begin("bob", ip).is_err());
        // The table is full for every address, not only the one that filled it.
        let other: IpAddr = "2001:db8::1".parse().unwrap();
        assert!(l.settle("bob", other, true).is_err());
        assert!(l.settle("bob", other, false).is_err());
    }

    #[test]
    fn one_address_or_one_ipv6_64_holds_only_its_share() {
        let l = lockout(5, 10_000, 10_000, 100);
        l.room.per_address.store(2, Ordering::Relaxed);
        let (a, b): (IpAddr, IpAddr) = ("2001:db8::1".parse().unwrap(), "2001:db8::ffff".parse().unwrap());
        l.fail("u1", a);
        l.fail("u2", b);
        assert!(l.settle("u3", a, false).is_err(), "the /64's share is full");
        assert!(
            l.settle("u3", "2001:db8:0:1::1".parse().unwrap(), false).is_ok(),
            "another /64"
        );
        assert!(l.settle("u3", "10.0.0.1".parse().unwrap(), false).is_ok());
        assert!(l.settle("u1", a, false).is_ok(), "a pair already counted is unaffected");
    }
}
