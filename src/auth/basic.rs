//! `basic`: a `[[users]]` name and password, verified with argon2id.
//!
//! A verified (user, password) pair is cached under a keyed SHA-256 of the two and of a
//! fingerprint of the user's entry (name, roles, password hash, expiry, disabled), never
//! the password, so a repeated valid request runs no argon2. Failures are never cached.
//!
//! The cache outlives config generations ([`Carried`]): after a reload, a user whose entry
//! is unchanged keeps their cached decision, while a user whose entry changed (a rotated
//! password, new roles, disabled) no longer finds it, because the fingerprint is part of
//! the key; such stale entries are also evicted when the new generation is built.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::Argon2;
use hmac::{Hmac, Mac};

use sha2::Sha256;

use std::net::IpAddr;

use super::hasher::{Busy, Hasher};
use super::lockout::Lockout;
use super::{Failure, Principal, Reason, UserEntry};
use crate::config::{AuthMethod, Cache};
use crate::metrics::{CacheCounters, Metrics};

/// argon2id of a random password, verified for unknown users so that a wrong user name
/// costs the same time as a wrong password.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Ee4b8bnhqt0d/8VC4h+9GQTZ1wcHmySUrmlnjqSESWs";

/// A verified credential: the entry it was verified against, and when.
#[derive(Clone)]
struct Verified {
    entry: Arc<UserEntry>,
    at: Instant,
}

/// Per-entry expiry from the *current* `[cache] ttl`, so a reload that changes the ttl
/// applies to entries already cached.
struct Ttl(Arc<AtomicU64>);

impl moka::Expiry<[u8; 32], Verified> for Ttl {
    fn expire_after_create(&self, _k: &[u8; 32], _v: &Verified, _now: Instant) -> Option<Duration> {
        Some(Duration::from_nanos(self.0.load(Ordering::Relaxed)))
    }
}

/// The verified-credential cache, kept across config generations.
struct Shared {
    cache: moka::future::Cache<[u8; 32], Verified>,
    /// Random per process: cache keys reveal nothing about passwords.
    key: [u8; 32],
    ttl: Arc<AtomicU64>,
    max_entries: u64,
}

/// The slot in the process state that carries the cache from one generation to the next.
#[derive(Default)]
pub struct Carried(Mutex<Option<Arc<Shared>>>);

impl Carried {
    /// The cache for a new generation with `users`: the existing one unless its capacity
    /// changed, with entries of changed or removed users evicted.
    fn take(&self, cache: &Cache, users: &Arc<HashMap<String, Arc<UserEntry>>>) -> Arc<Shared> {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let ttl_nanos = u64::try_from(cache.ttl.as_nanos()).unwrap_or(u64::MAX);
        if let Some(s) = slot.as_ref().filter(|s| s.max_entries == cache.max_entries) {
            s.ttl.store(ttl_nanos, Ordering::Relaxed);
            let users = users.clone();
            // Only fails when closures are not enabled, and they are.
            let _ = s.cache.invalidate_entries_if(move |_, v| {
                users
                    .get(&*v.entry.name)
                    .is_none_or(|now| now.fingerprint != v.entry.fingerprint)
            });
            return s.clone();
        }
        let ttl = Arc::new(AtomicU64::new(ttl_nanos));
        let shared = Arc::new(Shared {
            cache: moka::future::Cache::builder()
                .max_capacity(cache.max_entries)
                .expire_after(Ttl(ttl.clone()))
                .support_invalidation_closures()
                .build(),
            key: rand::random(),
            ttl,
            max_entries: cache.max_entries,
        });
        *slot = Some(shared.clone());
        shared
    }
}

pub struct Basic {
    users: Arc<HashMap<String, Arc<UserEntry>>>,
    shared: Arc<Shared>,
    /// argon2id takes ~19 MiB and milliseconds of CPU per check: it runs on a fixed pool
    /// with a bounded queue, so a flood of wrong passwords cannot exhaust memory.
    hasher: Arc<Hasher>,
    counters: CacheCounters,
    /// Passwords another replica's reload withdrew (`[shared]`).
    withdrawals: Arc<dyn crate::shared::Withdrawals>,
}

impl Basic {
    pub fn new(
        users: Arc<HashMap<String, Arc<UserEntry>>>,
        cache: &Cache,
        carried: &Carried,
        hasher: Arc<Hasher>,
        metrics: &Metrics,
        withdrawals: Arc<dyn crate::shared::Withdrawals>,
    ) -> Self {
        let shared = carried.take(cache, &users);
        let counters = CacheCounters::new(metrics, "basic");
        counters.set_entries(shared.cache.entry_count());
        Basic {
            users,
            shared,
            hasher,
            counters,
            withdrawals,
        }
    }

    /// Whether another replica's reload withdrew the password `entry` holds (or this
    /// replica cannot tell: then it is refused too).
    fn withdrawn(&self, entry: &UserEntry) -> bool {
        let Some(hash) = &entry.password_hash else { return false };
        let kind = crate::shared::CredentialKind::Password;
        self.withdrawals.withdrawn(kind, &entry.name, hash.as_bytes()) != Ok(false)
    }

    fn cache_id(&self, fingerprint: &[u8; 32], user: &str, password: &str) -> [u8; 32] {
        // HMAC accepts keys of any length.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.shared.key).expect("HMAC takes any key length");
        mac.update(fingerprint);
        mac.update(&(user.len() as u64).to_be_bytes());
        mac.update(user.as_bytes());
        mac.update(password.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Verifies `user`'s `password` under the lockout: a locked pair is refused before
    /// anything runs, a cached decision costs no argon2, and every argon2 run first takes
    /// a place in the pair's failure budget.
    pub async fn verify(
        &self,
        user: &str,
        password: &str,
        lockout: &Lockout,
        client: IpAddr,
    ) -> Result<Principal, Failure> {
        let method = AuthMethod::Basic;
        let locked = |retry_after| Failure::LockedOut { method, retry_after };
        let rejected = |reason| Failure::Rejected { method, reason };
        lockout.check(user, client).map_err(locked)?;
        let entry = self.users.get(user);
        let id = self.cache_id(entry.map_or(&[0; 32], |e| &e.fingerprint), user, password);
        let cache = &self.shared.cache;
        // The hot path: one lookup. An entry older than the current ttl (shortened by a
        // reload) is verified again.
        let ttl = Duration::from_nanos(self.shared.ttl.load(Ordering::Relaxed));
        if let Some(v) = cache.get(&id).await {
            if v.at.elapsed() < ttl && self.withdrawn(&v.entry) {
                // Withdrawn by another replica's reload: the cached decision is dropped.
                cache.invalidate(&id).await;
                return Err(rejected(Reason::CredentialWithdrawn));
            }
            if v.at.elapsed() < ttl {
                self.counters.hit();
                v.entry.standing(true).map_err(rejected)?;
                return Ok(Principal {
                    cached: true,
                    ..v.entry.principal(method)
                });
            }
            cache.invalidate(&id).await;
        }
        // Concurrent requests with the same credentials share one argon2 run; only a
        // success is stored. A request that shares a failed run still takes its own place
        // in the budget (below): at most `max_failures` refusals per window, whatever mix
        // of channels and passwords arrives at once.
        let mut ran = false;
        let result = cache
            .try_get_with(id, async {
                ran = true;
                lockout.check_shared(user, client).await.map_err(locked)?;
                let attempt = lockout.begin(user, client).map_err(locked)?;
                let entry = match self.check(user, password).await {
                    Ok(entry) => {
                        attempt.finish(true);
                        let _ = lockout.record_shared(user, client, true, true).await;
                        entry
                    }
                    Err(Ok(reason)) => {
                        attempt.finish(false);
                        lockout.record_shared(user, client, false, true).await.map_err(locked)?;
                        return Err(rejected(reason));
                    }
                    // Nothing was checked: the place in the budget is given back.
                    Err(Err(Busy::Overloaded)) => {
                        return Err(Failure::Unavailable {
                            method,
                            reason: "overloaded",
                        })
                    }
                };
                Ok::<_, Failure>(Verified {
                    entry,
                    at: Instant::now(),
                })
            })
            .await;
        if ran {
            // Misses already paid for argon2; settling the count here is cheap beside it.
            cache.run_pending_tasks().await;
            self.counters.miss(cache.entry_count());
        } else {
            self.counters.hit();
        }
        let verified = match result {
            Ok(v) => v,
            // Another request (on any channel: a Basic route, the password grant,
            // forward-auth) ran the check this one waited on, and it failed. This request
            // is a guess of its own: it takes its own place in the pair's budget before it
            // is answered, so every refusal that says "wrong password" counts one failure,
            // and past `max_failures` the answer is 429 (right or wrong, it tells nothing).
            Err(f) => match &*f {
                Failure::Rejected { .. } if !ran => {
                    lockout.settle(user, client, false).map_err(locked)?;
                    lockout
                        .record_shared(user, client, false, false)
                        .await
                        .map_err(locked)?;
                    return Err((*f).clone());
                }
                _ => return Err((*f).clone()),
            },
        };
        verified.entry.standing(true).map_err(rejected)?;
        Ok(Principal {
            cached: !ran,
            ..verified.entry.principal(method)
        })
    }

    /// The argon2id verification itself, on the fixed pool; `Err(Ok(reason))` for a
    /// refusal, `Err(Err(Busy))` when the pool is overloaded (nothing was checked).
    async fn check(&self, user: &str, password: &str) -> Result<Arc<UserEntry>, Result<Reason, Busy>> {
        let entry = self.users.get(user).cloned();
        let hash = entry
            .as_ref()
            .and_then(|e| e.password_hash.clone())
            .unwrap_or_else(|| DUMMY_HASH.to_string());
        let verified = self.hasher.verify(hash, password).await.map_err(Err)?;
        self.check_result(entry, verified).map_err(Ok)
    }

    fn check_result(&self, entry: Option<Arc<UserEntry>>, verified: bool) -> Result<Arc<UserEntry>, Reason> {
        let Some(entry) = entry else {
            return Err(Reason::UnknownUser);
        };
        if entry.password_hash.is_none() {
            return Err(Reason::NoPassword);
        }
        if !verified {
            return Err(Reason::BadPassword);
        }
        if self.withdrawn(&entry) {
            return Err(Reason::CredentialWithdrawn);
        }
        entry.standing(true)?;
        Ok(entry)
    }

    pub fn clear(&self) {
        self.shared.cache.invalidate_all();
        self.counters.set_entries(0);
    }
}

/// An argon2id PHC string for `password` with the crate's default (OWASP) parameters.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default().hash_password(password.as_bytes(), &salt)?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::{PasswordHash, PasswordVerifier};

    #[test]
    fn dummy_hash_parses() {
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
    }

    #[test]
    fn hashes_verify() {
        let h = hash_password("pw").unwrap();
        assert!(h.starts_with("$argon2id$"));
        let parsed = PasswordHash::new(&h).unwrap();
        assert!(Argon2::default().verify_password(b"pw", &parsed).is_ok());
        assert!(Argon2::default().verify_password(b"px", &parsed).is_err());
    }
}
