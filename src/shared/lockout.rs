//! [`Lockouts`]: failed logins counted across replicas. Alone there is nothing to
//! share (the lockout's own table counts every failure this replica sees, in every
//! mode); in Redis, counters and locks kept by scripts, locks announced to every replica.

use std::net::IpAddr;
use std::time::Duration;

use super::store::Store;
use super::{Incomplete, Pending, Unavailable};
use crate::config::Lockout as Settings;

/// A failure counted, or the store could not answer.
pub type Counted = Result<Recorded, Unavailable>;

/// A failed login recorded across replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Counted; the pair is not locked.
    Counted,
    /// This failure reached `max_failures`: the pair is locked for this long.
    LockedNow(Duration),
    /// The pair was already locked (by any replica) for this long.
    AlreadyLocked(Duration),
}

/// Lockout counts and locks shared by replicas; the local table stays the lockout's own.
pub trait Lockouts: Send + Sync {
    /// The bound of the locks announced by other replicas that this replica holds.
    fn set_cap(&self, cap: u64);
    /// A lock another replica announced for this pair, without a round trip.
    /// `Err(Incomplete)`: more were announced than this replica holds, so it cannot tell.
    fn announced(&self, subject: &str, client: IpAddr) -> Result<Option<Duration>, Incomplete>;
    /// How long the pair stays locked, as every replica knows it.
    fn locked<'a>(&'a self, subject: &'a str, client: IpAddr) -> Pending<'a, Result<Option<Duration>, Unavailable>>;
    /// Counts a failure for the pair, locking it at `max_failures`.
    fn record_failure<'a>(&'a self, subject: &'a str, client: IpAddr, settings: &'a Settings) -> Pending<'a, Counted>;
    /// A verified password clears the pair's count (a lock stays until it ends).
    fn record_success<'a>(&'a self, subject: &'a str, client: IpAddr) -> Pending<'a, ()>;
}

/// This process alone: no other replica counts, locks or announces anything.
pub struct NoSharedLockout;

impl Lockouts for NoSharedLockout {
    fn set_cap(&self, _cap: u64) {}

    fn announced(&self, _subject: &str, _client: IpAddr) -> Result<Option<Duration>, Incomplete> {
        Ok(None)
    }

    fn locked<'a>(&'a self, _subject: &'a str, _client: IpAddr) -> Pending<'a, Result<Option<Duration>, Unavailable>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    fn record_failure<'a>(
        &'a self,
        _subject: &'a str,
        _client: IpAddr,
        _settings: &'a Settings,
    ) -> Pending<'a, Counted> {
        Box::pin(std::future::ready(Ok(Recorded::Counted)))
    }

    fn record_success<'a>(&'a self, _subject: &'a str, _client: IpAddr) -> Pending<'a, ()> {
        Box::pin(std::future::ready(()))
    }
}

impl Lockouts for Store {
    fn set_cap(&self, cap: u64) {
        self.set_lock_cap(cap);
    }

    fn announced(&self, subject: &str, client: IpAddr) -> Result<Option<Duration>, Incomplete> {
        self.announced_lock(subject, client)
    }

    fn locked<'a>(&'a self, subject: &'a str, client: IpAddr) -> Pending<'a, Result<Option<Duration>, Unavailable>> {
        Box::pin(Store::locked(self, subject, client))
    }

    fn record_failure<'a>(&'a self, subject: &'a str, client: IpAddr, settings: &'a Settings) -> Pending<'a, Counted> {
        Box::pin(Store::record_failure(self, subject, client, settings))
    }

    fn record_success<'a>(&'a self, subject: &'a str, client: IpAddr) -> Pending<'a, ()> {
        Box::pin(Store::record_success(self, subject, client))
    }
}

impl Store {
    fn lock_names(&self, subject: &str, client: IpAddr) -> (String, String) {
        let ip = client.to_string();
        let parts = [subject.as_bytes(), ip.as_bytes()];
        // On a cluster both keys of the pair share a slot: its keyed hash is the tag.
        let pair = self.name("pair", &parts);
        let tag = pair
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .get(..16)
            .unwrap_or_default();
        (
            self.grouped(tag, self.name("fail", &parts)),
            self.grouped(tag, self.name("lock", &parts)),
        )
    }

    fn announced_lock(&self, subject: &str, client: IpAddr) -> Result<Option<Duration>, Incomplete> {
        if self.nothing_announced() {
            return Ok(None);
        }
        let (_, lock) = self.lock_names(subject, client);
        let now_ms = crate::util::unix_now_ms();
        let m = self.remote_locks.lock().unwrap_or_else(|p| p.into_inner());
        Ok(m.get(&lock, now_ms)?.map(|until| Duration::from_millis(until - now_ms)))
    }

    /// How long the pair stays locked, as Redis knows it.
    async fn locked(&self, subject: &str, client: IpAddr) -> Result<Option<Duration>, Unavailable> {
        let (_, lock) = self.lock_names(subject, client);
        let mut cmd = redis::cmd("PTTL");
        cmd.arg(lock);
        let ms: i64 = self.query("lockout", cmd).await?;
        Ok((ms > 0).then(|| Duration::from_millis(ms as u64)))
    }

    /// Counts a failure for the pair across replicas, locking it at `max_failures`
    /// (atomically: a script) and announcing the lock to every replica.
    async fn record_failure(
        &self,
        subject: &str,
        client: IpAddr,
        settings: &crate::config::Lockout,
    ) -> Result<Recorded, Unavailable> {
        static SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                r#"
local left = redis.call('PTTL', KEYS[2])
if left > 0 then return {2, left} end
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if n >= tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
  redis.call('DEL', KEYS[1])
  return {1, tonumber(ARGV[3])}
end
return {0, 0}
"#,
            )
        });
        let (fail, lock) = self.lock_names(subject, client);
        let window = settings.window.as_millis().max(1) as u64;
        let duration = settings.duration.as_millis().max(1) as u64;
        let max = settings.max_failures;
        let mut script = SCRIPT.key(fail);
        script.key(&lock).arg(window).arg(max).arg(duration);
        let (state, ms): (i64, i64) = self.invoke_durable("lockout", script).await?;
        let left = Duration::from_millis(ms.max(0) as u64);
        Ok(match state {
            1 => {
                // The event names when the lock ends, not how long it lasts: replayed
                // later, it locks nothing.
                let until = crate::util::unix_now_ms().saturating_add(ms.max(0) as u64);
                self.publish(&format!("lock {lock} {until}")).await;
                Recorded::LockedNow(left)
            }
            2 => Recorded::AlreadyLocked(left),
            _ => Recorded::Counted,
        })
    }

    /// A verified password clears the pair's count (a lock stays until it ends).
    async fn record_success(&self, subject: &str, client: IpAddr) {
        let (fail, _) = self.lock_names(subject, client);
        let _ = self.del("lockout", fail).await;
    }
}
