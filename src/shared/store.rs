//! The connection to Redis (or Valkey): connection managers, one command under the
//! command timeout, keyed names, integrity MACs, sealed values, the events channel, and
//! the bounded mirrors of what other replicas announce. Every concern (lockout, refresh
//! families, revocations, keys, egress tokens) builds on these.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::Mac;
use ring::aead;

use super::link::{Conn, Link};
use super::{Incomplete, SharedError, Unavailable};
use crate::config::RedisSettings;
use crate::metrics::Metrics;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Entries announced by other replicas (revocations, locks), each until a unix ms time:
/// bounded, and never dropped while in force. When one cannot be kept, the mirror says
/// so until that entry would have ended, and its readers fail closed meanwhile.
pub(super) struct Mirror {
    entries: HashMap<String, u64>,
    pub(super) cap: usize,
    /// Unix ms until which an entry that could not be kept may be in force.
    overflow_until: u64,
}

impl Mirror {
    pub(super) fn new(cap: usize) -> Self {
        Mirror {
            entries: HashMap::new(),
            cap,
            overflow_until: 0,
        }
    }

    /// Keeps `key` until `until_ms`; `false` when it could not (full of live entries).
    pub(super) fn insert(&mut self, key: &str, until_ms: u64, now_ms: u64) -> bool {
        if let Some(u) = self.entries.get_mut(key) {
            *u = (*u).max(until_ms);
            return true;
        }
        if self.entries.len() >= self.cap {
            self.entries.retain(|_, u| *u > now_ms);
        }
        if self.entries.len() >= self.cap {
            self.overflow_until = self.overflow_until.max(until_ms);
            return false;
        }
        self.entries.insert(key.to_string(), until_ms);
        true
    }

    /// Says an entry could not be kept until `until_ms` (another replica's table
    /// overflowed): readers fail closed until then.
    pub(super) fn overflowed(&mut self, until_ms: u64) {
        self.overflow_until = self.overflow_until.max(until_ms);
    }

    /// Forgets `key` (an entry that no longer holds).
    pub(super) fn remove(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// `Err(Incomplete)`: the mirror is incomplete now; else until when `key` is in force.
    pub(super) fn get(&self, key: &str, now_ms: u64) -> Result<Option<u64>, Incomplete> {
        if self.overflow_until > now_ms {
            return Err(Incomplete);
        }
        Ok(self.entries.get(key).copied().filter(|u| *u > now_ms))
    }
}

/// Default bound of the mirrors until a config generation sets them.
const DEFAULT_MIRROR_CAP: usize = 100_000;
/// Bound of the withdrawn credentials kept (each for a day).
pub(super) const WITHDRAWALS_CAP: usize = 10_000;

pub struct Store {
    pub(super) link: Link,
    pub(super) next: AtomicUsize,
    /// Subscriptions made: on a cluster, each tries the next seed.
    pub(super) subscriptions: AtomicUsize,
    /// Replicas that must confirm a write that has to survive a failover.
    pub(super) wait_replicas: u32,
    pub(super) prefix: String,
    pub(super) names: [u8; 32],
    pub(super) integrity: [u8; 32],
    pub(super) values: aead::LessSafeKey,
    pub(super) timeout: Duration,
    pub(super) errors: prometheus::IntCounterVec,
    pub(super) forged: prometheus::IntCounterVec,
    pub(super) full: prometheus::IntCounterVec,
    /// Locks announced by other replicas, by key name, until when (unix ms).
    pub(super) remote_locks: Mutex<Mirror>,
    /// Revoked access-token ids, announced by any replica or read back from Redis.
    pub(super) revoked: Mutex<Mirror>,
    /// Fingerprints of credentials withdrawn by any replica's reload.
    pub(super) withdrawals: Mutex<Mirror>,
    /// By fingerprint, when the last withdrawal or reinstatement applied here was
    /// announced (unix ms): an older event about it, replayed, changes nothing.
    pub(super) withdrawal_order: Mutex<std::collections::HashMap<String, u64>>,
    /// Unix ms until which some withdrawal may be in force (the fast path skips the rest).
    pub(super) withdrawn_until: AtomicU64,
    /// Keys the fingerprints of withdrawn credentials.
    pub(super) withdrawals_key: [u8; 32],
    /// The revocations were read from Redis at least once since start.
    pub(super) synced: AtomicBool,
    /// Unix ms until which some announced lock or revocation may still be in force: the
    /// fast path skips the hashing and lookups entirely when it has passed.
    pub(super) announced_until: AtomicU64,
    pub(super) last_warning: AtomicU64,
    pub(super) last_forgery: AtomicU64,
}

pub(super) const EVENTS: &str = "events";
/// Sealed values start with this: a value of another format (an older version's) is
/// refused like a forged one.
const SEALED: &str = "v1.";

impl Store {
    /// Connection managers are made lazily: a replica starts even when Redis is down, and
    /// connects (and reconnects) on use.
    pub fn connect(s: &RedisSettings, metrics: &Metrics) -> Result<Arc<Store>, SharedError> {
        let link = Link::open(s)?;
        let derive = |label: &[u8]| -> [u8; 32] {
            let mut mac = <HmacSha256 as Mac>::new_from_slice(s.secret.expose()).expect("HMAC takes any key length");
            mac.update(label);
            mac.finalize().into_bytes().into()
        };
        let values = aead::LessSafeKey::new(
            aead::UnboundKey::new(&aead::AES_256_GCM, &derive(b"portcullis shared: values"))
                .map_err(|_| SharedError::ValueKey)?,
        );
        Ok(Arc::new(Store {
            link,
            next: AtomicUsize::new(0),
            subscriptions: AtomicUsize::new(0),
            wait_replicas: s.wait_replicas,
            prefix: s.key_prefix.clone(),
            names: derive(b"portcullis shared: names"),
            integrity: derive(b"portcullis shared: integrity"),
            values,
            timeout: s.command_timeout,
            errors: metrics.shared_errors.clone(),
            forged: metrics.shared_integrity_failures.clone(),
            full: metrics.table_full.clone(),
            remote_locks: Mutex::new(Mirror::new(DEFAULT_MIRROR_CAP)),
            revoked: Mutex::new(Mirror::new(DEFAULT_MIRROR_CAP)),
            withdrawals: Mutex::new(Mirror::new(WITHDRAWALS_CAP)),
            withdrawal_order: Mutex::new(std::collections::HashMap::new()),
            withdrawn_until: AtomicU64::new(0),
            withdrawals_key: derive(b"portcullis shared: withdrawn credentials"),
            synced: AtomicBool::new(false),
            announced_until: AtomicU64::new(0),
            last_warning: AtomicU64::new(0),
            last_forgery: AtomicU64::new(0),
        }))
    }

    /// Runs `f` on a pooled connection under the command timeout; a failure is counted
    /// and logged (at most once per second), and told to the link (on a Sentinel set,
    /// one that may mean the master moved makes the next command ask the sentinels).
    pub(super) async fn run<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, Unavailable>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let attempt = async {
            let (conn, generation) = self.link.conn(turn).await.map_err(|e| (None, e))?;
            f(conn).await.map_err(|e| (Some(generation), e))
        };
        let err = match tokio::time::timeout(self.timeout + Duration::from_millis(50), attempt).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err((generation, e))) => {
                if let Some(generation) = generation {
                    self.link.failed(Some(generation), Some(&e));
                }
                e.to_string()
            }
            Err(_) => {
                self.link.failed(None, None);
                "timed out".to_string()
            }
        };
        debug_assert!(crate::metrics::SHARED_OPS.contains(&op), "op {op} not pre-created");
        self.errors.with_label_values(&[op]).inc();
        let now = crate::util::unix_now();
        if self.last_warning.swap(now, Ordering::Relaxed) != now {
            tracing::warn!(op, error = %crate::util::Escaped(&err), "shared store (Redis) unavailable");
        }
        Err(Unavailable)
    }

    /// One command on a pooled connection, under [`Store::run`].
    pub(super) async fn query<T: redis::FromRedisValue + Send>(
        &self,
        op: &'static str,
        cmd: redis::Cmd,
    ) -> Result<T, Unavailable> {
        self.run(op, |mut c| async move { cmd.query_async(&mut c).await }).await
    }

    /// One script (its keys and arguments given) on a pooled connection, under [`Store::run`].
    #[allow(dead_code)] // for a write a failover may lose without harm
    pub(super) async fn invoke<T: redis::FromRedisValue + Send>(
        &self,
        op: &'static str,
        script: redis::ScriptInvocation<'static>,
    ) -> Result<T, Unavailable> {
        self.run(op, |mut c| async move { script.invoke_async(&mut c).await })
            .await
    }

    /// [`Store::invoke`] for a write that must survive a failover: then `WAIT` on the
    /// same connection until `wait_replicas` replicas confirm it. Fewer within the
    /// command timeout is a failure ([`Unavailable`]): the caller fails closed as for any
    /// error, and never acknowledges a write that a failover may lose.
    pub(super) async fn invoke_durable<T: redis::FromRedisValue + Send>(
        &self,
        op: &'static str,
        script: redis::ScriptInvocation<'static>,
    ) -> Result<T, Unavailable> {
        let replicas = self.wait_replicas;
        let wait = self.timeout / 2;
        self.run(op, |mut c| async move {
            let v = script.invoke_async(&mut c).await?;
            self.settle(&mut c, replicas, wait).await?;
            Ok(v)
        })
        .await
    }

    /// `WAIT replicas timeout` on `c`, when any are asked for.
    pub(super) async fn settle(&self, c: &mut Conn, replicas: u32, wait: Duration) -> redis::RedisResult<()> {
        if replicas == 0 {
            return Ok(());
        }
        let confirmed = super::link::wait_replicas(c, replicas, wait).await?;
        if confirmed < i64::from(replicas) {
            self.errors.with_label_values(&["replicate"]).inc();
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "fewer replicas than shared.wait_replicas confirmed the write",
            )));
        }
        Ok(())
    }

    /// Deletes `key`.
    pub(super) async fn del(&self, op: &'static str, key: String) -> Result<(), Unavailable> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(key);
        self.query::<i64>(op, cmd).await.map(|_| ())
    }

    /// `PREFIX` `kind` `:` hex(HMAC(names key, parts)): the name reveals nothing of what
    /// it describes.
    pub fn name(&self, kind: &str, parts: &[&[u8]]) -> String {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.names).expect("HMAC takes any key length");
        mac.update(kind.as_bytes());
        for p in parts {
            mac.update(&(p.len() as u64).to_be_bytes());
            mac.update(p);
        }
        format!("{}{kind}:{}", self.prefix, hex::encode(mac.finalize().into_bytes()))
    }

    /// `name` (one of this store's names) with the hash tag `{group}` after the prefix
    /// on a Redis Cluster, so that every key of one operation is in one slot; elsewhere
    /// `name` as it is (the names of one server or a Sentinel set stay as they were).
    pub(super) fn grouped(&self, group: &str, name: String) -> String {
        if !self.link.clustered() {
            return name;
        }
        let rest = name.strip_prefix(self.prefix.as_str()).unwrap_or(&name);
        format!("{}{{{group}}}{rest}", self.prefix)
    }

    pub(super) fn plain_name(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{id}", self.prefix)
    }

    pub(super) fn integrity_mac(&self, name: &str, payload: &str) -> HmacSha256 {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.integrity).expect("HMAC takes any key length");
        mac.update(&(name.len() as u64).to_be_bytes());
        mac.update(name.as_bytes());
        mac.update(payload.as_bytes());
        mac
    }

    /// `v1.` hex(HMAC(integrity key, name, payload)) `.` payload: deterministic, so a
    /// script can compare a stored value with the one expected.
    pub fn sign(&self, name: &str, payload: &str) -> String {
        let tag = hex::encode(self.integrity_mac(name, payload).finalize().into_bytes());
        format!("{SEALED}{tag}.{payload}")
    }

    /// The payload of a value stored under `name`, when its MAC holds (compared in
    /// constant time); else `None`, counted under `kind` and logged.
    pub fn verify<'v>(&self, kind: &'static str, name: &str, value: &'v [u8]) -> Option<&'v str> {
        let checked = (|| {
            let text = std::str::from_utf8(value).ok()?;
            let rest = text.strip_prefix(SEALED)?;
            let (tag, payload) = rest.split_once('.')?;
            let tag = hex::decode(tag).ok()?;
            self.integrity_mac(name, payload).verify_slice(&tag).ok()?;
            Some(payload)
        })();
        if checked.is_none() {
            self.forgery(kind, name);
        }
        checked
    }

    /// Counts and logs (at most once per second) a value that failed its integrity check.
    pub(super) fn forgery(&self, kind: &'static str, name: &str) {
        debug_assert!(
            crate::metrics::INTEGRITY_KINDS.contains(&kind),
            "kind {kind} not pre-created"
        );
        self.forged.with_label_values(&[kind]).inc();
        let now = crate::util::unix_now();
        if self.last_forgery.swap(now, Ordering::Relaxed) != now {
            tracing::error!(
                kind,
                key = %name,
                "a value in the shared store failed its integrity check and was refused: written by something without shared.secret, or by a replica with another secret"
            );
        }
    }

    /// AES-256-GCM with a random nonce, bound to the key name it is stored under.
    pub fn seal(&self, name: &str, plain: &[u8]) -> Vec<u8> {
        let nonce: [u8; 12] = rand::random();
        let mut buf = plain.to_vec();
        self.values
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(name.as_bytes()),
                &mut buf,
            )
            .expect("AES-GCM sealing of a small value");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        out
    }

    pub fn open(&self, name: &str, sealed: &[u8]) -> Option<zeroize::Zeroizing<Vec<u8>>> {
        if sealed.len() < 12 + aead::AES_256_GCM.tag_len() {
            return None;
        }
        let (nonce, rest) = sealed.split_at(12);
        let mut buf = zeroize::Zeroizing::new(rest.to_vec());
        let nonce = aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let n = self
            .values
            .open_in_place(nonce, aead::Aad::from(name.as_bytes()), &mut buf)
            .ok()?
            .len();
        buf.truncate(n);
        Some(buf)
    }

    /// [`Store::open`], counting and logging a value that does not open under `kind`.
    pub(super) fn open_checked(
        &self,
        kind: &'static str,
        name: &str,
        sealed: &[u8],
    ) -> Option<zeroize::Zeroizing<Vec<u8>>> {
        let opened = self.open(name, sealed);
        if opened.is_none() {
            self.forgery(kind, name);
        }
        opened
    }

    pub(super) fn events_channel(&self) -> String {
        self.plain_name(EVENTS, "all")
    }

    /// Publishes one event, signed for the channel.
    pub(super) async fn publish(&self, event: &str) {
        let channel = self.events_channel();
        let message = self.sign(&channel, event);
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(channel).arg(message);
        let _ = self.query::<i64>("publish", cmd).await;
    }

    pub(super) fn announce_until(&self, until_ms: u64) {
        self.announced_until.fetch_max(until_ms, Ordering::Relaxed);
    }

    pub(super) fn nothing_announced(&self) -> bool {
        let now_ms = crate::util::unix_now_ms();
        self.announced_until.load(Ordering::Relaxed) < now_ms
    }

    /// The bounds of the mirrors: the revocation table of `[oauth]`, and room for the
    /// locks of the lockout tables of several replicas.
    pub fn set_revocation_cap(&self, cap: u64) {
        let mut m = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        m.cap = usize::try_from(cap).unwrap_or(usize::MAX);
    }

    pub fn set_lock_cap(&self, cap: u64) {
        let mut m = self.remote_locks.lock().unwrap_or_else(|p| p.into_inner());
        m.cap = usize::try_from(cap).unwrap_or(usize::MAX);
    }
}
