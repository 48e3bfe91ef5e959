//! Lockout counted across replicas: scripts, announced locks.

use super::*;

impl Store {
    fn lock_names(&self, subject: &str, client: IpAddr) -> (String, String) {
        let ip = client.to_string();
        (
            self.name("fail", &[subject.as_bytes(), ip.as_bytes()]),
            self.name("lock", &[subject.as_bytes(), ip.as_bytes()]),
        )
    }

    /// A lock another replica announced for this pair, without a round trip. `Err(())`:
    /// more locks were announced than this replica can hold, so it cannot tell.
    #[allow(clippy::result_unit_err)]
    pub fn announced_lock(&self, subject: &str, client: IpAddr) -> Result<Option<Duration>, ()> {
        if self.nothing_announced() {
            return Ok(None);
        }
        let (_, lock) = self.lock_names(subject, client);
        let now_ms = crate::util::unix_now_ms();
        let m = self.remote_locks.lock().unwrap_or_else(|p| p.into_inner());
        Ok(m.get(&lock, now_ms)?.map(|until| Duration::from_millis(until - now_ms)))
    }

    /// How long the pair stays locked, as Redis knows it.
    pub async fn locked(&self, subject: &str, client: IpAddr) -> Result<Option<Duration>, Unavailable> {
        let (_, lock) = self.lock_names(subject, client);
        let mut c = self.conn();
        let ms: i64 = self
            .run("lockout", async move {
                redis::cmd("PTTL").arg(lock).query_async(&mut c).await
            })
            .await?;
        Ok((ms > 0).then(|| Duration::from_millis(ms as u64)))
    }

    /// Counts a failure for the pair across replicas, locking it at `max_failures`
    /// (atomically: a script) and announcing the lock to every replica.
    pub async fn record_failure(
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
        let mut c = self.conn();
        let window = settings.window.as_millis().max(1) as u64;
        let duration = settings.duration.as_millis().max(1) as u64;
        let max = settings.max_failures;
        let lock_name = lock.clone();
        let (state, ms): (i64, i64) = self
            .run("lockout", async move {
                SCRIPT
                    .key(fail)
                    .key(lock_name)
                    .arg(window)
                    .arg(max)
                    .arg(duration)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
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
    pub async fn record_success(&self, subject: &str, client: IpAddr) {
        let (fail, _) = self.lock_names(subject, client);
        let mut c = self.conn();
        let _ = self
            .run("lockout", async move {
                redis::cmd("DEL").arg(fail).query_async::<i64>(&mut c).await
            })
            .await;
    }
}
