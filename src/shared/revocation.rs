//! [`Revocations`]: access tokens revoked before their `exp` (RFC 7009), by `jti`. In
//! memory, a bounded [`Table`] (the refresh families' memory table is one too); in Redis,
//! one sealed table of live revocations, bounded in total and per client, announced to
//! every replica and mirrored by each.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hmac::Mac;

use super::store::Store;
use super::{Pending, Unavailable};

/// Why an access token could not be revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeRefused {
    /// The shared store cannot answer.
    Unavailable,
    /// The table of live revocations is full (`oauth.max_revocations`).
    Full,
    /// This client's share of it is full (`oauth.max_revocations_per_client`).
    ClientFull,
}

/// Whether an access token is revoked, as this replica knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Clear,
    Revoked,
    /// This replica cannot tell: it has not yet read the revocations from Redis, or more
    /// were announced than its table holds. The caller fails closed.
    Unknown,
}

/// Bounds of the revocation table, from `[oauth]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevocationLimits {
    pub total: u64,
    pub per_client: u64,
}

/// An entry to revoke: an access token's `jti`, or a refresh family's id, until
/// `ends_at` (unix seconds), for `client`, within `limits`.
#[derive(Debug, Clone, Copy)]
pub struct Revocation<'a> {
    pub key: &'a str,
    pub ends_at: u64,
    pub client: &'a str,
    pub limits: RevocationLimits,
}

/// A revocation kept, or why not.
pub type Kept = Result<(), RevokeRefused>;

/// Revoked access tokens.
pub trait Revocations: Send + Sync {
    /// The bound of this replica's mirror of the table (`oauth.max_revocations`).
    fn set_cap(&self, total: u64);
    /// Revokes the access token `r.key` (its `jti`) until its `exp`: kept, or refused
    /// (a full table never drops a revocation in force).
    fn revoke<'a>(&'a self, r: Revocation<'a>) -> Pending<'a, Kept>;
    /// Whether `jti` is revoked, as this replica knows it.
    fn standing(&self, jti: &str) -> Standing;
}

/// Counts a refusal of a full memory table as the Redis side counts its own:
/// `portcullis_table_full_total{table="revocations",limit}`.
pub(super) fn count_full(full: Option<&prometheus::IntCounterVec>, why: RevokeRefused) {
    let limit = match why {
        RevokeRefused::Full => "total",
        RevokeRefused::ClientFull => "per_client",
        RevokeRefused::Unavailable => return,
    };
    if let Some(full) = full {
        full.with_label_values(&["revocations", limit]).inc();
    }
}

/// Revocations in this process: a [`Table`] by `jti`.
pub struct MemoryRevocations {
    table: Table<String>,
    full: Option<prometheus::IntCounterVec>,
}

impl MemoryRevocations {
    pub fn new(full: Option<prometheus::IntCounterVec>) -> Self {
        MemoryRevocations {
            table: Table::default(),
            full,
        }
    }
}

impl Revocations for MemoryRevocations {
    /// The table is bounded by the limits given with each revocation.
    fn set_cap(&self, _total: u64) {}

    fn revoke<'a>(&'a self, r: Revocation<'a>) -> Pending<'a, Kept> {
        let kept = self.table.insert(r.key.to_string(), r.ends_at, r.client, r.limits);
        if let Err(why) = kept {
            count_full(self.full.as_ref(), why);
        }
        Box::pin(std::future::ready(kept))
    }

    fn standing(&self, jti: &str) -> Standing {
        if self.table.contains(jti) {
            Standing::Revoked
        } else {
            Standing::Clear
        }
    }
}

/// A security table: entries kept until they end (unix seconds), never evicted, bounded
/// in total and per client. A new entry that does not fit is refused; the caller refuses
/// the request that needed it.
pub struct Table<K> {
    inner: Mutex<TableInner<K>>,
    /// Unix seconds until which any entry may be in force: the check on every request
    /// is one atomic load while nothing is in it.
    until: AtomicU64,
}

struct TableInner<K> {
    entries: HashMap<K, (u64, Arc<str>)>,
    per_client: HashMap<Arc<str>, u64>,
}

impl<K> Default for Table<K> {
    fn default() -> Self {
        Table {
            inner: Mutex::new(TableInner {
                entries: HashMap::new(),
                per_client: HashMap::new(),
            }),
            until: AtomicU64::new(0),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> Table<K> {
    pub fn insert(&self, key: K, ends: u64, client: &str, limits: RevocationLimits) -> Result<(), RevokeRefused> {
        let mut t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if t.entries.contains_key(&key) {
            return Ok(());
        }
        let t = &mut *t;
        let used = |t: &TableInner<K>| t.per_client.get(client).copied().unwrap_or(0);
        if t.entries.len() as u64 >= limits.total || used(t) >= limits.per_client {
            // Only what has ended leaves the table.
            let now = crate::util::unix_now();
            let per_client = &mut t.per_client;
            t.entries.retain(|_, (end, owner)| {
                let live = *end >= now;
                if !live {
                    if let Some(n) = per_client.get_mut(owner) {
                        *n = n.saturating_sub(1);
                    }
                }
                live
            });
            per_client.retain(|_, n| *n > 0);
        }
        if used(t) >= limits.per_client {
            return Err(RevokeRefused::ClientFull);
        }
        if t.entries.len() as u64 >= limits.total {
            return Err(RevokeRefused::Full);
        }
        let owner: Arc<str> = match t.per_client.get_key_value(client) {
            Some((k, _)) => k.clone(),
            None => Arc::from(client),
        };
        *t.per_client.entry(owner.clone()).or_insert(0) += 1;
        t.entries.insert(key, (ends, owner));
        self.until.fetch_max(ends, Ordering::Relaxed);
        Ok(())
    }

    pub fn contains<Q>(&self, key: &Q) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        if self.until.load(Ordering::Relaxed) < crate::util::unix_now() {
            return false;
        }
        let t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        t.entries
            .get(key)
            .is_some_and(|(end, _)| *end >= crate::util::unix_now())
    }
}

impl Revocations for Store {
    fn set_cap(&self, total: u64) {
        self.set_revocation_cap(total);
    }

    fn revoke<'a>(&'a self, r: Revocation<'a>) -> Pending<'a, Kept> {
        Box::pin(self.revoke_jti(r.key, r.ends_at, r.client, r.limits))
    }

    fn standing(&self, jti: &str) -> Standing {
        self.revocation(jti)
    }
}

impl Store {
    fn revocations_name(&self) -> String {
        self.grouped("revoked", self.plain_name("revoked", "all"))
    }

    /// A revocation as stored in the table: `JTI EXP MAC`, signed for the table's name.
    fn revocation_member(&self, jti: &str, exp: u64) -> String {
        let table = self.revocations_name();
        let payload = format!("{jti} {exp}");
        let tag = hex::encode(self.integrity_mac(&table, &payload).finalize().into_bytes());
        format!("{payload} {tag}")
    }

    /// `(jti, exp)` of a stored revocation whose MAC holds; else counted, `None`.
    fn revocation_of(&self, member: &[u8]) -> Option<(String, u64)> {
        let table = self.revocations_name();
        let checked = (|| {
            let text = std::str::from_utf8(member).ok()?;
            let (payload, tag) = text.rsplit_once(' ')?;
            let tag = hex::decode(tag).ok()?;
            self.integrity_mac(&table, payload).verify_slice(&tag).ok()?;
            let (jti, exp) = payload.split_once(' ')?;
            Some((jti.to_string(), exp.parse().ok()?))
        })();
        if checked.is_none() {
            self.forgery("revocation", &table);
        }
        checked
    }

    /// Revokes an access token by its `jti` until its `exp` (unix seconds), for `client`:
    /// stored in one table of live revocations, bounded in total and per client (a full
    /// table refuses, it never drops one), and announced so that every replica refuses
    /// the token from its next request. Storing and announcing are one script: `Ok` (the
    /// 200 of `POST /oauth/revoke`) means the revocation is in Redis and was published
    /// on the events channel; a replica that was not subscribed then fails closed until
    /// it has read the table again (see `events.rs`). A revocation already stored is
    /// announced again.
    async fn revoke_jti(
        &self,
        jti: &str,
        exp: u64,
        client: &str,
        limits: RevocationLimits,
    ) -> Result<(), RevokeRefused> {
        static SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                r#"
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  redis.call('PUBLISH', ARGV[7], ARGV[8])
  return 'ok'
end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then return 'per_client' end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 'total' end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[6])
for i = 1, 2 do
  if redis.call('TTL', KEYS[i]) < tonumber(ARGV[3]) - now then
    redis.call('EXPIREAT', KEYS[i], ARGV[3])
  end
end
redis.call('PUBLISH', ARGV[7], ARGV[8])
return 'ok'
"#,
            )
        });
        let exp = exp.max(1);
        let table = self.revocations_name();
        let by_client = self.grouped("revoked", self.name("revoked-by", &[client.as_bytes()]));
        let member = self.revocation_member(jti, exp);
        let channel = self.events_channel();
        let event = self.sign(&channel, &format!("jti {jti} {exp}"));
        let mut script = SCRIPT.key(table);
        script
            .key(by_client)
            .arg(crate::util::unix_now())
            .arg(member)
            .arg(exp)
            .arg(limits.total)
            .arg(limits.per_client)
            .arg(jti)
            .arg(channel)
            .arg(event);
        let outcome: String = self
            .invoke_durable("revoke", script)
            .await
            .map_err(|_| RevokeRefused::Unavailable)?;
        match outcome.as_str() {
            "ok" => {}
            "per_client" => {
                self.full.with_label_values(&["revocations", "per_client"]).inc();
                return Err(RevokeRefused::ClientFull);
            }
            _ => {
                self.full.with_label_values(&["revocations", "total"]).inc();
                return Err(RevokeRefused::Full);
            }
        }
        self.note_revoked(jti, exp);
        Ok(())
    }

    pub(super) fn note_revoked(&self, jti: &str, exp: u64) {
        let until = exp.saturating_mul(1000);
        let now_ms = crate::util::unix_now_ms();
        let kept = {
            let mut m = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
            m.insert(jti, until, now_ms)
        };
        if !kept {
            self.full.with_label_values(&["revocations_mirror", "total"]).inc();
            tracing::error!("more revocations announced than oauth.max_revocations holds: this replica refuses its builtin tokens (503) until they expire; give every replica the same [oauth] limits");
        }
        self.announce_until(until);
    }

    /// Whether an access token was revoked, as announced to this replica or read back
    /// from Redis. `Unknown` until the revocations were read once, and while more were
    /// announced than the table holds.
    fn revocation(&self, jti: &str) -> Standing {
        if !self.synced.load(Ordering::Acquire) {
            return Standing::Unknown;
        }
        if self.nothing_announced() {
            return Standing::Clear;
        }
        let m = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        match m.get(jti, crate::util::unix_now_ms()) {
            Err(_) => Standing::Unknown,
            Ok(Some(_)) => Standing::Revoked,
            Ok(None) => Standing::Clear,
        }
    }

    /// Reads every live revocation back from Redis (at start and after each
    /// resubscription): what was announced while this replica was not listening.
    pub(super) async fn load_revocations(&self) -> Result<(), Unavailable> {
        let table = self.revocations_name();
        let cap = {
            let m = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
            m.cap
        };
        let mut cmd = redis::cmd("ZRANGEBYSCORE");
        cmd.arg(table)
            .arg(format!("({}", crate::util::unix_now()))
            .arg("+inf")
            .arg("LIMIT")
            .arg(0)
            .arg(cap.saturating_add(1));
        let members: Vec<Vec<u8>> = self.query("revoke", cmd).await?;
        for m in members {
            if let Some((jti, exp)) = self.revocation_of(&m) {
                self.note_revoked(&jti, exp);
            }
        }
        self.synced.store(true, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    fn revoke(r: &MemoryRevocations, jti: &str, ends_at: u64, client: &str, total: u64, per_client: u64) -> Kept {
        r.revoke(Revocation {
            key: jti,
            ends_at,
            client,
            limits: RevocationLimits { total, per_client },
        })
        .now_or_never()
        .unwrap()
    }

    #[test]
    fn a_full_table_refuses_counts_and_keeps_what_it_holds() {
        let full = prometheus::IntCounterVec::new(prometheus::Opts::new("full", "full"), &["table", "limit"]).unwrap();
        let r = MemoryRevocations::new(Some(full.clone()));
        let end = crate::util::unix_now() + 3600;
        assert_eq!(revoke(&r, "j1", end, "a", 2, 1), Ok(()));
        assert_eq!(revoke(&r, "j2", end, "a", 2, 1), Err(RevokeRefused::ClientFull));
        assert_eq!(full.with_label_values(&["revocations", "per_client"]).get(), 1);
        assert_eq!(revoke(&r, "j2", end, "b", 2, 1), Ok(()));
        assert_eq!(revoke(&r, "j3", end, "c", 2, 1), Err(RevokeRefused::Full));
        assert_eq!(full.with_label_values(&["revocations", "total"]).get(), 1);
        assert_eq!(revoke(&r, "j1", end, "a", 2, 1), Ok(()), "held already");
        assert_eq!(r.standing("j1"), Standing::Revoked);
        assert_eq!(r.standing("j2"), Standing::Revoked);
        assert_eq!(r.standing("j3"), Standing::Clear);
    }

    #[test]
    fn an_ended_revocation_leaves_and_gives_its_place_back() {
        let r = MemoryRevocations::new(None);
        let now = crate::util::unix_now();
        assert_eq!(revoke(&r, "old", now - 10, "a", 1, 1), Ok(()));
        assert_eq!(r.standing("old"), Standing::Clear, "ended");
        assert_eq!(revoke(&r, "new", now + 3600, "a", 1, 1), Ok(()));
        assert_eq!(r.standing("new"), Standing::Revoked);
    }
}
