//! Throttling of failed credentials per (user or key id, client IP).
//!
//! `max_failures` failures within `window` lock the pair for `duration`; while locked,
//! even the right credentials get 429. The table is a bounded moka cache keyed by a
//! keyed hash of the pair, so a flood of invented user names cannot grow memory.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config;

#[derive(Debug)]
struct Counter {
    window_start: Instant,
    failures: u32,
    locked_until: Option<Instant>,
}

/// Clones share one table.
#[derive(Clone)]
pub struct Lockout {
    settings: config::Lockout,
    table: moka::sync::Cache<u64, Arc<Mutex<Counter>>>,
    hasher: std::collections::hash_map::RandomState,
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

impl Lockout {
    pub fn new(settings: &config::Lockout, max_entries: u64) -> Self {
        Lockout {
            settings: settings.clone(),
            table: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .time_to_idle(settings.window.max(settings.duration))
                .build(),
            hasher: Default::default(),
        }
    }

    fn key(&self, subject: &str, client: IpAddr) -> u64 {
        self.hasher.hash_one((subject, client))
    }

    /// `Err(retry_after)` while the pair is locked.
    pub fn check(&self, subject: &str, client: IpAddr) -> Result<(), Duration> {
        let Some(c) = self.table.get(&self.key(subject, client)) else {
            return Ok(());
        };
        let c = c.lock().unwrap_or_else(|p| p.into_inner());
        match c.locked_until {
            Some(until) => {
                let now = Instant::now();
                if now < until {
                    Err(until - now)
                } else {
                    Ok(())
                }
            }
            None => Ok(()),
        }
    }

    pub fn fail(&self, subject: &str, client: IpAddr) {
        let now = Instant::now();
        let entry = self.table.get_with(self.key(subject, client), || {
            Arc::new(Mutex::new(Counter {
                window_start: now,
                failures: 0,
                locked_until: None,
            }))
        });
        let mut c = entry.lock().unwrap_or_else(|p| p.into_inner());
        if c.locked_until.is_some_and(|u| now >= u) || now.duration_since(c.window_start) > self.settings.window {
            c.window_start = now;
            c.failures = 0;
            c.locked_until = None;
        }
        c.failures += 1;
        if c.failures >= self.settings.max_failures {
            c.locked_until = Some(now + self.settings.duration);
        }
    }

    pub fn succeed(&self, subject: &str, client: IpAddr) {
        self.table.invalidate(&self.key(subject, client));
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
        l.succeed("alice", ip);
        l.fail("alice", ip);
        assert!(l.check("alice", ip).is_ok());
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
