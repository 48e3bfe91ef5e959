//! State that outlives a request and, with `[shared] backend = "redis"`, is shared by
//! replicas: lockout counts and locks, the builtin issuer's refresh-token families and
//! revoked access tokens, its generated signing key, and egress OAuth2 tokens.
//!
//! One trait per concern — [`Lockouts`], [`RefreshFamilies`], [`Revocations`], [`Keys`],
//! [`EgressTokens`] — each with two implementations side by side in its file (or
//! folder): the memory one (this process alone) and the Redis one (on [`Store`]).
//! [`Backend`] holds one of each, chosen once at start from `[shared] backend`; the code that uses them (the
//! builtin issuer, the lockout, egress tokens) calls one API and never asks which.
//!
//! | file | owns |
//! | --- | --- |
//! | `store.rs` | the Redis connection, one command under the timeout, keyed names, MACs, sealing, the mirrors |
//! | `events.rs` | the events channel: locks and revocations announced by other replicas |
//! | `lockout.rs` | [`Lockouts`]: nothing to share alone; counters and locks in Redis |
//! | `refresh/` | [`RefreshFamilies`]: refresh tokens, rotation, reuse detection, family revocation (`memory.rs`, `redis.rs`) |
//! | `revocation.rs` | [`Revocations`]: revoked access tokens; the bounded [`Table`] both memory tables use |
//! | `keys.rs` | [`Keys`]: the signing key every replica agrees on |
//! | `egress.rs` | [`EgressTokens`]: egress tokens sealed in Redis, one fetch among replicas |
//! | `rate.rs` | [`Rates`]: rate-limit budgets (GCRA), one script step each in Redis; the replicas seen |
//! | `withdrawn.rs` | [`Withdrawals`]: credentials a reload on any replica withdrew, refused by all |
//! | `link.rs` | where commands go: one server, the master a Sentinel set names, or a Cluster |
//!
//! The memory side keeps its bounds: a full table refuses, it never drops an entry in
//! force. The rest of this note is about the Redis side.
//!
//! Nothing secret is stored in clear: key names are keyed hashes
//! (HMAC-SHA256 under `shared.secret`) of what they describe, refresh tokens are stored
//! by such a hash, and secret values (a signing key, an egress token) are sealed with
//! AES-256-GCM under a key derived from the same secret.
//!
//! Redis is not trusted to keep what decides identity or standing intact: whoever can
//! write to it without holding `shared.secret` must not be able to make a value this
//! process acts on. Every such value (a refresh grant with its subject, client, family
//! and expiry; a family's end; a revocation; an event on the channel) carries an
//! HMAC-SHA256 under a key derived from the secret with its own label, computed over the
//! key name it is stored under and the value ([`Store::sign`]), checked in constant time
//! when read back ([`Store::verify`]). A value that fails (forged, flipped, moved under
//! another name, or in the unsealed format of older versions) is refused, counted in
//! `portcullis_shared_integrity_failures_total{kind}` and logged, never used.
//!
//! What a MAC cannot see: a value deleted, or an older sealed value of the same key put
//! back (a rollback). Deleting a family or a lock only makes things stricter; deleting a
//! revocation from Redis does not reach a replica that already holds it. Putting back the
//! unused state of a refresh grant lets a holder of that (used) refresh token rotate it
//! once more, for the same user, client and family, never past the family's end: the MAC
//! binds those, so a rollback can replay a grant but never change whom it names.
//! Lockout counters are plain counters that Redis increments: forging one high only
//! locks sooner; forging one low (or deleting it) cannot undo the local table, which
//! counts every failure a replica sees on its own.
//!
//! Every command runs under `command_timeout`; a failure is counted in
//! `portcullis_shared_errors_total{op}` and reported to the caller, which decides: the
//! lockout falls back to its local counters, token rotation and revocation fail closed.
//! The connections are redis-rs connection managers, which reconnect by themselves with
//! backoff. One subscriber task follows the events channel (locks and revocations from
//! other replicas) and resubscribes with backoff when the connection drops; after each
//! (re)subscription it reads every live revocation back from Redis, so one missed while
//! the channel was down, or made before this replica started, is not missed for good.
//! Until the first read succeeds, this replica answers its builtin tokens with 503. The
//! credentials withdrawn by any replica's reload (`withdrawn.rs`) travel the same way:
//! announced on the channel, stored in a MAC'd table, read back after each subscription.
//!
//! Where Redis is (`link.rs`): one server (connection managers), a Sentinel set (the
//! master the sentinels name, asked again when a command fails as a moved master would:
//! a failover needs no restart), or a Cluster (the crate's cluster connection; the keys
//! of one script share a slot through a hash tag after the prefix). The writes a failover
//! must not lose wait for `shared.wait_replicas` replicas (`WAIT`); fewer is a failure,
//! so nothing a failover can lose is ever acknowledged.

mod egress;
mod events;
mod keys;
mod link;
mod lockout;
mod rate;
mod refresh;
mod revocation;
mod store;
mod withdrawn;

use std::sync::Arc;

pub use egress::{EgressTokens, NoEgressSharing};
pub use keys::{Agreed, Keys, OwnKeys};
pub use lockout::{Counted, Lockouts, NoSharedLockout, Recorded};
pub use rate::{Budget, Cell, MemoryRates, RateError, Rates, RedisRates, Step};
pub use refresh::{Issued, MemoryRefresh, NewRefresh, Peeked, RefreshFamilies, Rotation, Taken};
pub use revocation::{
    Kept, MemoryRevocations, Revocation, RevocationLimits, Revocations, RevokeRefused, Standing, Table,
};
pub use store::Store;
pub use withdrawn::{
    api_key_stored, credential_change, credentials, Credential, CredentialChange, CredentialKind, NoWithdrawals,
    Withdrawals,
};

use crate::config::SharedBackend;
use crate::metrics::Metrics;

/// What an operation of a backend answers: a boxed future, so that the traits can be
/// used as `dyn` objects (one is chosen at start).
pub type Pending<'a, T> = futures_util::future::BoxFuture<'a, T>;

/// Redis did not answer in time, or answered an error: the caller decides what failing
/// closed or open means for its operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the shared store (Redis) did not answer")]
pub struct Unavailable;

/// More entries were announced than a bounded mirror holds: its readers cannot tell, and
/// fail closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("more entries were announced than this replica holds")]
pub struct Incomplete;

/// Why the shared store could not be set up or followed.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("shared.url is not UTF-8")]
    UrlNotUtf8,
    #[error("shared.url: {0}")]
    Url(#[source] redis::RedisError),
    #[error("cannot derive the shared value key")]
    ValueKey,
    #[error("connect timed out")]
    ConnectTimedOut,
    #[error("{0}")]
    Subscribe(#[source] redis::RedisError),
    #[error("cannot read the revocations")]
    Revocations,
    #[error("cannot read the withdrawn credentials")]
    Withdrawals,
}

/// One implementation of each concern, chosen once at start (`[shared] backend`).
#[derive(Clone)]
pub struct Backend {
    pub lockouts: Arc<dyn Lockouts>,
    pub refresh: Arc<dyn RefreshFamilies>,
    pub revocations: Arc<dyn Revocations>,
    pub keys: Arc<dyn Keys>,
    pub egress: Arc<dyn EgressTokens>,
    pub rates: Arc<dyn Rates>,
    pub withdrawals: Arc<dyn Withdrawals>,
}

/// How many rate-limit budgets the memory backend keeps live at once (a budget lives
/// only until it is full again).
pub const RATE_TABLE_CAP: usize = 100_000;

impl Default for Backend {
    /// The memory backend, counting its full tables nowhere (tests, benches).
    fn default() -> Self {
        Backend::memory_counting(None)
    }
}

impl Backend {
    /// This process alone: refresh families and revocations in bounded tables here
    /// (full tables counted in `portcullis_table_full_total`), nothing else to share.
    pub fn memory(metrics: &Metrics) -> Self {
        Backend::memory_counting(Some(metrics.table_full.clone()))
    }

    fn memory_counting(full: Option<prometheus::IntCounterVec>) -> Self {
        Backend {
            lockouts: Arc::new(NoSharedLockout),
            refresh: Arc::new(MemoryRefresh::new(full.clone())),
            revocations: Arc::new(MemoryRevocations::new(full.clone())),
            keys: Arc::new(OwnKeys),
            egress: Arc::new(NoEgressSharing),
            rates: Arc::new(MemoryRates::new(
                RATE_TABLE_CAP,
                crate::util::Clock::default(),
                full.map(|f| f.with_label_values(&["rate", "total"])),
            )),
            withdrawals: Arc::new(NoWithdrawals),
        }
    }

    /// Every concern in `store`.
    pub fn redis(store: Arc<Store>) -> Self {
        Backend {
            lockouts: store.clone(),
            refresh: store.clone(),
            revocations: store.clone(),
            keys: store.clone(),
            rates: RedisRates::new(store.clone()),
            egress: store.clone(),
            withdrawals: store,
        }
    }

    /// The backend `[shared]` names: with Redis, connected lazily (a replica starts while
    /// Redis is down) and following the events channel.
    pub async fn start(config: &SharedBackend, metrics: &Metrics) -> Result<Self, SharedError> {
        Ok(match config {
            SharedBackend::Memory => Backend::memory(metrics),
            SharedBackend::Redis(settings) => {
                let store = Store::connect(settings, metrics)?;
                store.listen().await;
                Backend::redis(store)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::time::Duration;

    use futures_util::FutureExt;

    use super::*;

    /// Alone, nothing is shared: no lock comes from elsewhere, every failure is only
    /// counted by the lockout's own table, the egress lock is always this replica's and
    /// nothing is stored, and the proposed key is the key.
    #[test]
    fn the_memory_backend_shares_nothing_and_never_fails() {
        let b = Backend::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let settings = crate::config::Lockout {
            max_failures: 1,
            window: Duration::from_secs(60),
            duration: Duration::from_secs(60),
            max_entries_per_address: 10,
        };
        assert_eq!(b.lockouts.announced("alice", ip), Ok(None));
        assert_eq!(b.lockouts.locked("alice", ip).now_or_never().unwrap(), Ok(None));
        for _ in 0..3 {
            let counted = b
                .lockouts
                .record_failure("alice", ip, &settings)
                .now_or_never()
                .unwrap();
            assert_eq!(counted, Ok(Recorded::Counted));
        }
        assert!(b.egress.get("t").now_or_never().unwrap().unwrap().is_none());
        assert_eq!(
            b.egress.try_lock("t", Duration::from_secs(1)).now_or_never().unwrap(),
            Ok(true)
        );
        b.egress
            .set("t", b"token", Duration::from_secs(60))
            .now_or_never()
            .unwrap()
            .unwrap();
        assert!(
            b.egress.get("t").now_or_never().unwrap().unwrap().is_none(),
            "nothing kept"
        );
        let agreed = b.keys.agree("k", b"proposal").now_or_never().unwrap().unwrap();
        assert_eq!(&agreed[..], b"proposal");
    }
}
