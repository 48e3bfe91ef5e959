//! State shared by replicas, on Redis or Valkey (`[shared] backend = "redis"`).
//!
//! What lives here: lockout counters and locks, the builtin issuer's refresh-token
//! families and revoked access tokens, the issuer's generated signing key, and egress
//! OAuth2 tokens. Nothing secret is stored in clear: key names are keyed hashes
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
//! Until the first read succeeds, this replica answers its builtin tokens with 503.

mod events;
mod lockout;
mod refresh;
mod revocation;
mod sealed;

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::Mac;
use redis::aio::ConnectionManager;
use ring::aead;

use crate::config::RedisSettings;
use crate::metrics::Metrics;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Redis did not answer in time, or answered an error: the caller decides what failing
/// closed or open means for its operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

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

/// A refresh token to store: its family (new, or continued by a rotation), its client,
/// when it expires (unix seconds), what it grants, and how long Redis keeps it.
pub struct NewRefresh<'a> {
    pub token: &'a str,
    pub family: &'a str,
    pub family_ends_at: u64,
    pub new_family: bool,
    pub client: &'a str,
    pub expires_at: u64,
    pub grant: &'a str,
    pub ttl: Duration,
}

/// Storing a refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issued {
    Stored,
    /// The family is gone (revoked meanwhile, or ended): no token was stored.
    FamilyGone,
    /// The family's stored value failed its integrity check: no token was stored.
    FamilyForged,
}

/// What taking a refresh token did, atomically, in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// The token was active and is now used: its grant (`fields` as stored) and family.
    Granted {
        family: String,
        fields: String,
        family_ends_at: u64,
    },
    Unknown,
    Expired,
    /// Issued to another client: refused, and not marked used.
    OtherClient,
    Revoked,
    /// The token had been used already: its family is now revoked everywhere.
    Reused,
    /// The stored grant (or its family's value) failed its integrity check: refused,
    /// counted, nothing changed.
    Forged,
}

/// What a refresh token names, read without taking it (for revocation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peeked {
    Found {
        family: String,
        client: String,
    },
    Unknown,
    /// The stored grant failed its integrity check (counted): it can never be used.
    Forged,
}

/// Why an access token could not be revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeRefused {
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

/// Entries announced by other replicas (revocations, locks), each until a unix ms time:
/// bounded, and never dropped while in force. When one cannot be kept, the mirror says
/// so until that entry would have ended, and its readers fail closed meanwhile.
struct Mirror {
    entries: HashMap<String, u64>,
    cap: usize,
    /// Unix ms until which an entry that could not be kept may be in force.
    overflow_until: u64,
}

impl Mirror {
    fn new(cap: usize) -> Self {
        Mirror {
            entries: HashMap::new(),
            cap,
            overflow_until: 0,
        }
    }

    /// Keeps `key` until `until_ms`; `false` when it could not (full of live entries).
    fn insert(&mut self, key: &str, until_ms: u64, now_ms: u64) -> bool {
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

    /// `Err(())`: the mirror is incomplete now; else until when `key` is in force.
    fn get(&self, key: &str, now_ms: u64) -> Result<Option<u64>, ()> {
        if self.overflow_until > now_ms {
            return Err(());
        }
        Ok(self.entries.get(key).copied().filter(|u| *u > now_ms))
    }
}

/// Default bound of the mirrors until a config generation sets them.
const DEFAULT_MIRROR_CAP: usize = 100_000;

pub struct Store {
    conns: Vec<ConnectionManager>,
    next: AtomicUsize,
    client: redis::Client,
    prefix: String,
    names: [u8; 32],
    integrity: [u8; 32],
    values: aead::LessSafeKey,
    timeout: Duration,
    errors: prometheus::IntCounterVec,
    forged: prometheus::IntCounterVec,
    full: prometheus::IntCounterVec,
    /// Locks announced by other replicas, by key name, until when (unix ms).
    remote_locks: Mutex<Mirror>,
    /// Revoked access-token ids, announced by any replica or read back from Redis.
    revoked: Mutex<Mirror>,
    /// The revocations were read from Redis at least once since start.
    synced: AtomicBool,
    /// Unix ms until which some announced lock or revocation may still be in force: the
    /// fast path skips the hashing and lookups entirely when it has passed.
    announced_until: AtomicU64,
    last_warning: AtomicU64,
    last_forgery: AtomicU64,
}

const EVENTS: &str = "events";
/// Sealed values start with this: a value of another format (an older version's) is
/// refused like a forged one.
const SEALED: &str = "v1.";

impl Store {
    /// Connection managers are made lazily: a replica starts even when Redis is down, and
    /// connects (and reconnects) on use.
    pub fn connect(s: &RedisSettings, metrics: &Metrics) -> Result<Arc<Store>, String> {
        let url = std::str::from_utf8(s.url.expose()).map_err(|_| "shared.url is not UTF-8".to_string())?;
        let client = redis::Client::open(url).map_err(|e| format!("shared.url: {e}"))?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(s.connect_timeout))
            .set_response_timeout(Some(s.command_timeout))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(5))
            .set_number_of_retries(3);
        let conns = (0..s.pool_size.max(1))
            .map(|_| client.get_connection_manager_lazy(cfg.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("shared.url: {e}"))?;
        let derive = |label: &[u8]| -> [u8; 32] {
            let mut mac = <HmacSha256 as Mac>::new_from_slice(s.secret.expose()).expect("HMAC takes any key length");
            mac.update(label);
            mac.finalize().into_bytes().into()
        };
        let values = aead::LessSafeKey::new(
            aead::UnboundKey::new(&aead::AES_256_GCM, &derive(b"portcullis shared: values"))
                .map_err(|_| "cannot derive the shared value key".to_string())?,
        );
        Ok(Arc::new(Store {
            conns,
            next: AtomicUsize::new(0),
            client,
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
            synced: AtomicBool::new(false),
            announced_until: AtomicU64::new(0),
            last_warning: AtomicU64::new(0),
            last_forgery: AtomicU64::new(0),
        }))
    }

    fn conn(&self) -> ConnectionManager {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        self.conns[i].clone()
    }

    /// Runs one command (or script) under the command timeout; a failure is counted and
    /// logged (at most once per second).
    async fn run<T>(&self, op: &'static str, f: impl Future<Output = redis::RedisResult<T>>) -> Result<T, Unavailable> {
        let err = match tokio::time::timeout(self.timeout + Duration::from_millis(50), f).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_string(),
        };
        self.errors.with_label_values(&[op]).inc();
        let now = crate::util::unix_now();
        if self.last_warning.swap(now, Ordering::Relaxed) != now {
            tracing::warn!(op, error = %crate::util::Escaped(&err), "shared store (Redis) unavailable");
        }
        Err(Unavailable)
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

    fn plain_name(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{id}", self.prefix)
    }

    fn integrity_mac(&self, name: &str, payload: &str) -> HmacSha256 {
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
    fn forgery(&self, kind: &'static str, name: &str) {
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
    fn open_checked(&self, kind: &'static str, name: &str, sealed: &[u8]) -> Option<zeroize::Zeroizing<Vec<u8>>> {
        let opened = self.open(name, sealed);
        if opened.is_none() {
            self.forgery(kind, name);
        }
        opened
    }

    fn events_channel(&self) -> String {
        self.plain_name(EVENTS, "all")
    }

    /// Publishes one event, signed for the channel.
    async fn publish(&self, event: &str) {
        let channel = self.events_channel();
        let message = self.sign(&channel, event);
        let mut c = self.conn();
        let _ = self
            .run("publish", async move {
                redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(message)
                    .query_async::<i64>(&mut c)
                    .await
            })
            .await;
    }

    fn announce_until(&self, until_ms: u64) {
        self.announced_until.fetch_max(until_ms, Ordering::Relaxed);
    }

    fn nothing_announced(&self) -> bool {
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

/// A refresh token's grant as stored (signed, under the token's keyed name): whom it
/// names and for which client, its family and when it and its family end.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct RefreshRecord {
    #[serde(rename = "fam")]
    family: String,
    client: String,
    #[serde(rename = "exp")]
    expires_at: u64,
    #[serde(rename = "fend")]
    family_ends_at: u64,
    grant: String,
    /// Used: rotated once already (a second use is a reuse, which revokes the family).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    spent: bool,
}

impl RefreshRecord {
    fn payload(&self) -> String {
        // Serializing a struct of strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    fn parse(payload: &str) -> Option<RefreshRecord> {
        serde_json::from_str(payload).ok()
    }
}
