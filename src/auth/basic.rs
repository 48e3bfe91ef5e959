//! `basic`: a `[[users]]` name and password, verified with argon2id.
//!
//! A verified (user, password) pair is cached under a keyed SHA-256 of the two, never the
//! password, so a repeated valid request runs no argon2. Failures are never cached. The
//! cache belongs to one config generation: a reload starts with an empty one.

use std::collections::HashMap;
use std::sync::Arc;

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use hmac::{Hmac, Mac};
use prometheus::{IntCounter, IntGauge};
use sha2::Sha256;

use super::{Principal, Reason, UserEntry};
use crate::config::{AuthMethod, Cache};
use crate::metrics::Metrics;

/// argon2id of a random password, verified for unknown users so that a wrong user name
/// costs the same time as a wrong password.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Ee4b8bnhqt0d/8VC4h+9GQTZ1wcHmySUrmlnjqSESWs";

pub struct Basic {
    users: Arc<HashMap<String, Arc<UserEntry>>>,
    cache: moka::future::Cache<[u8; 32], Arc<UserEntry>>,
    cache_key: [u8; 32],
    /// argon2id takes ~19 MiB and milliseconds of CPU per check: bound how many run at
    /// once, so a flood of wrong passwords queues instead of exhausting memory.
    hashing: Arc<tokio::sync::Semaphore>,
    hits: IntCounter,
    misses: IntCounter,
    entries: IntGauge,
}

impl Basic {
    pub fn new(users: Arc<HashMap<String, Arc<UserEntry>>>, cache: &Cache, metrics: &Metrics) -> Self {
        let entries = metrics.cache_entries.with_label_values(&["basic"]);
        entries.set(0);
        Basic {
            users,
            cache: moka::future::Cache::builder()
                .max_capacity(cache.max_entries)
                .time_to_live(cache.ttl)
                .build(),
            cache_key: rand::random(),
            hashing: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get() * 2),
            )),
            hits: metrics.cache_requests.with_label_values(&["basic", "hit"]),
            misses: metrics.cache_requests.with_label_values(&["basic", "miss"]),
            entries,
        }
    }

    fn cache_id(&self, user: &str, password: &str) -> [u8; 32] {
        // HMAC accepts keys of any length.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.cache_key).expect("HMAC takes any key length");
        mac.update(&(user.len() as u64).to_be_bytes());
        mac.update(user.as_bytes());
        mac.update(password.as_bytes());
        mac.finalize().into_bytes().into()
    }

    pub async fn verify(&self, user: &str, password: &str) -> Result<Principal, Reason> {
        let id = self.cache_id(user, password);
        // Concurrent requests with the same credentials share one argon2 run; only a
        // success is stored.
        let mut ran = false;
        let result = self
            .cache
            .try_get_with(id, async {
                ran = true;
                self.check(user, password).await
            })
            .await;
        if ran {
            self.misses.inc();
            // Misses already paid for argon2; settling the count here is cheap beside it.
            self.cache.run_pending_tasks().await;
            self.entries.set(self.cache.entry_count() as i64);
        } else {
            self.hits.inc();
        }
        let entry = result.map_err(|r| *r)?;
        entry.standing(true)?;
        Ok(entry.principal(AuthMethod::Basic))
    }

    /// The argon2id verification itself, bounded by the semaphore.
    async fn check(&self, user: &str, password: &str) -> Result<Arc<UserEntry>, Reason> {
        let entry = self.users.get(user).cloned();
        let hash = entry
            .as_ref()
            .and_then(|e| e.password_hash.clone())
            .unwrap_or_else(|| DUMMY_HASH.to_string());
        let password = password.to_string();
        // The semaphore is never closed, so acquiring only waits.
        let permit = self.hashing.clone().acquire_owned().await.ok();
        let verified = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            PasswordHash::new(&hash)
                .map(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        let Some(entry) = entry else {
            return Err(Reason::UnknownUser);
        };
        if entry.password_hash.is_none() {
            return Err(Reason::NoPassword);
        }
        if !verified {
            return Err(Reason::BadPassword);
        }
        entry.standing(true)?;
        Ok(entry)
    }

    pub fn clear(&self) {
        self.cache.invalidate_all();
        self.entries.set(0);
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
