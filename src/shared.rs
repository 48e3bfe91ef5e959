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

    // === lockout ===

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

    // === refresh tokens ===

    fn refresh_name(&self, token: &str) -> String {
        self.name("rt", &[token.as_bytes()])
    }

    fn family_name(&self, family: &str) -> String {
        self.plain_name("rf", family)
    }

    /// A family's stored value: its end, signed for its name. Deterministic, so the
    /// scripts compare it with what they find.
    fn family_value(&self, family: &str, ends_at: u64) -> String {
        self.sign(&self.family_name(family), &ends_at.to_string())
    }

    /// Stores a refresh token (by its keyed hash) with its grant `fields`, in `family`
    /// (created when `new_family`, ending at `family_ends_at`, unix seconds). The grant,
    /// its client, expiry and family are one signed record.
    pub async fn refresh_issue(&self, r: NewRefresh<'_>) -> Result<Issued, Unavailable> {
        let NewRefresh {
            token,
            family,
            family_ends_at,
            new_family,
            client,
            expires_at,
            grant: fields,
            ttl,
        } = r;
        static SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                r#"
if ARGV[3] == '1' then
  redis.call('SET', KEYS[2], ARGV[2], 'EXAT', ARGV[5], 'NX')
end
local fam = redis.call('GET', KEYS[2])
if not fam then return 0 end
if fam ~= ARGV[2] then return -1 end
redis.call('HSET', KEYS[1], 'v', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"#,
            )
        });
        let key = self.refresh_name(token);
        let fam = self.family_name(family);
        let record = RefreshRecord {
            family: family.to_string(),
            client: client.to_string(),
            expires_at,
            family_ends_at,
            grant: fields.to_string(),
            spent: false,
        };
        let value = self.sign(&key, &record.payload());
        let fam_value = self.family_value(family, family_ends_at);
        let mut c = self.conn();
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let fam_name = fam.clone();
        let created: i64 = self
            .run("refresh", async move {
                SCRIPT
                    .key(key)
                    .key(fam)
                    .arg(value)
                    .arg(fam_value)
                    .arg(if new_family { "1" } else { "0" })
                    .arg(ttl_ms)
                    .arg(family_ends_at.max(1))
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(match created {
            1 => Issued::Stored,
            -1 => {
                self.forgery("family", &fam_name);
                Issued::FamilyForged
            }
            _ => Issued::FamilyGone,
        })
    }

    /// The signed record stored under a refresh token's name, checked: `Ok(None)` when
    /// there is none, `Err(())` when it fails its integrity check (counted).
    async fn refresh_record(&self, key: &str) -> Result<Result<Option<(Vec<u8>, RefreshRecord)>, ()>, Unavailable> {
        let mut c = self.conn();
        let k = key.to_string();
        let (raw, exists): (Option<Vec<u8>>, bool) = self
            .run("refresh", async move {
                redis::pipe()
                    .cmd("HGET")
                    .arg(&k)
                    .arg("v")
                    .cmd("EXISTS")
                    .arg(&k)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let raw = match (raw, exists) {
            (Some(raw), _) => raw,
            (None, false) => return Ok(Ok(None)),
            // Something is stored under the name, but not a sealed record (the format of
            // an older version, or a forgery).
            (None, true) => {
                self.forgery("refresh", key);
                return Ok(Err(()));
            }
        };
        let record = self.verify("refresh", key, &raw).and_then(RefreshRecord::parse);
        Ok(match record {
            Some(r) => Ok(Some((raw, r))),
            None => Err(()),
        })
    }

    /// Rotates a refresh token, atomically: of two replicas taking one token at once,
    /// exactly one gets the grant and its `next` token is stored in the same step; the
    /// other finds the token used, which revokes the family. `next` keeps the grant and
    /// lives `ttl_secs`, never past the family's end.
    ///
    /// The record is read and its MAC checked here first; the script then acts only if
    /// the record (compared byte for byte) and the family's signed value are still the
    /// ones checked, so nothing unchecked is ever copied into the next token.
    pub async fn refresh_take(
        &self,
        token: &str,
        client: &str,
        now: u64,
        next: &str,
        ttl_secs: u64,
    ) -> Result<Taken, Unavailable> {
        static SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                r#"
local v = redis.call('HGET', KEYS[1], 'v')
if v ~= ARGV[1] and v ~= ARGV[6] then return 'unknown' end
local fam = redis.call('GET', KEYS[3])
if not fam then return 'revoked' end
if fam ~= ARGV[2] then return 'family' end
if v == ARGV[6] then
  redis.call('DEL', KEYS[3])
  return 'reused'
end
if ARGV[5] ~= 'ok' then return ARGV[5] end
redis.call('HSET', KEYS[1], 'v', ARGV[6])
redis.call('HSET', KEYS[2], 'v', ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 'ok'
"#,
            )
        });
        let key = self.refresh_name(token);
        let (raw, record) = match self.refresh_record(&key).await? {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(Taken::Unknown),
            Err(()) => return Ok(Taken::Forged),
        };
        // Decided from the checked record; the script still detects a reuse first.
        let verdict = if record.expires_at <= now || record.family_ends_at <= now {
            "expired"
        } else if record.client != client {
            "client"
        } else {
            "ok"
        };
        let exp = now.saturating_add(ttl_secs).min(record.family_ends_at);
        // A used token's record says so under its MAC: rewriting the flag back is a
        // forgery, not a fresh token.
        let spent = self.sign(
            &key,
            &RefreshRecord {
                spent: true,
                ..record.clone()
            }
            .payload(),
        );
        let next_key = self.refresh_name(next);
        let next_value = self.sign(
            &next_key,
            &RefreshRecord {
                expires_at: exp,
                spent: false,
                ..record.clone()
            }
            .payload(),
        );
        let fam = self.family_name(&record.family);
        let fam_value = self.family_value(&record.family, record.family_ends_at);
        let ttl_ms = exp.saturating_sub(now).max(1).saturating_mul(1000);
        let mut c = self.conn();
        let fam_name = fam.clone();
        let outcome: String = self
            .run("refresh", async move {
                SCRIPT
                    .key(key)
                    .key(next_key)
                    .key(fam)
                    .arg(raw)
                    .arg(fam_value)
                    .arg(next_value)
                    .arg(ttl_ms)
                    .arg(verdict)
                    .arg(spent)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(match outcome.as_str() {
            "ok" => Taken::Granted {
                family: record.family,
                fields: record.grant,
                family_ends_at: record.family_ends_at,
            },
            "reused" => Taken::Reused,
            "revoked" => Taken::Revoked,
            "expired" => Taken::Expired,
            "client" => Taken::OtherClient,
            "family" => {
                self.forgery("family", &fam_name);
                Taken::Forged
            }
            _ => Taken::Unknown,
        })
    }

    /// The family and client of a refresh token, without taking it (for revocation).
    pub async fn refresh_peek(&self, token: &str) -> Result<Peeked, Unavailable> {
        let key = self.refresh_name(token);
        Ok(match self.refresh_record(&key).await? {
            Ok(Some((_, r))) => Peeked::Found {
                family: r.family,
                client: r.client,
            },
            Ok(None) => Peeked::Unknown,
            Err(()) => Peeked::Forged,
        })
    }

    /// Deletes what is stored under a refresh token (a forged record, on revocation).
    pub async fn refresh_forget(&self, token: &str) -> Result<(), Unavailable> {
        let key = self.refresh_name(token);
        let mut c = self.conn();
        self.run("refresh", async move {
            redis::cmd("DEL").arg(key).query_async::<i64>(&mut c).await
        })
        .await
        .map(|_| ())
    }

    /// Revokes a whole family, on every replica at once (they read it from Redis).
    pub async fn refresh_revoke_family(&self, family: &str) -> Result<(), Unavailable> {
        let fam = self.family_name(family);
        let mut c = self.conn();
        self.run("refresh", async move {
            redis::cmd("DEL").arg(fam).query_async::<i64>(&mut c).await
        })
        .await
        .map(|_| ())
    }

    // === access-token revocation ===

    fn revocations_name(&self) -> String {
        self.plain_name("revoked", "all")
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
    /// table refuses, it never drops one), then announced so that every replica refuses
    /// the token from its next request.
    pub async fn revoke_jti(
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
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 'ok' end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then return 'per_client' end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 'total' end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[6])
for i = 1, 2 do
  if redis.call('TTL', KEYS[i]) < tonumber(ARGV[3]) - now then
    redis.call('EXPIREAT', KEYS[i], ARGV[3])
  end
end
return 'ok'
"#,
            )
        });
        let exp = exp.max(1);
        let table = self.revocations_name();
        let by_client = self.name("revoked-by", &[client.as_bytes()]);
        let member = self.revocation_member(jti, exp);
        let mut c = self.conn();
        let now = crate::util::unix_now();
        let jti_arg = jti.to_string();
        let outcome: String = self
            .run("revoke", async move {
                SCRIPT
                    .key(table)
                    .key(by_client)
                    .arg(now)
                    .arg(member)
                    .arg(exp)
                    .arg(limits.total)
                    .arg(limits.per_client)
                    .arg(jti_arg)
                    .invoke_async(&mut c)
                    .await
            })
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
        self.publish(&format!("jti {jti} {exp}")).await;
        Ok(())
    }

    fn note_revoked(&self, jti: &str, exp: u64) {
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
    pub fn revocation(&self, jti: &str) -> Standing {
        if !self.synced.load(Ordering::Acquire) {
            return Standing::Unknown;
        }
        if self.nothing_announced() {
            return Standing::Clear;
        }
        let m = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        match m.get(jti, crate::util::unix_now_ms()) {
            Err(()) => Standing::Unknown,
            Ok(Some(_)) => Standing::Revoked,
            Ok(None) => Standing::Clear,
        }
    }

    /// Reads every live revocation back from Redis (at start and after each
    /// resubscription): what was announced while this replica was not listening.
    async fn load_revocations(&self) -> Result<(), Unavailable> {
        let table = self.revocations_name();
        let cap = {
            let m = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
            m.cap
        };
        let now = crate::util::unix_now();
        let mut c = self.conn();
        let members: Vec<Vec<u8>> = self
            .run("revoke", async move {
                redis::cmd("ZRANGEBYSCORE")
                    .arg(table)
                    .arg(format!("({now}"))
                    .arg("+inf")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(cap.saturating_add(1))
                    .query_async(&mut c)
                    .await
            })
            .await?;
        for m in members {
            if let Some((jti, exp)) = self.revocation_of(&m) {
                self.note_revoked(&jti, exp);
            }
        }
        self.synced.store(true, Ordering::Release);
        Ok(())
    }

    // === values agreed by all replicas ===

    /// The sealed value every replica agrees on under `kind`: the stored one, or `make()`
    /// when there is none yet (the first writer wins; the others read its value).
    pub async fn agree(
        &self,
        kind: &str,
        make: impl FnOnce() -> Vec<u8>,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, Unavailable> {
        let name = self.plain_name("agreed", kind);
        let sealed = self.seal(&name, &make());
        let mut c = self.conn();
        let key = name.clone();
        let stored: Vec<u8> = self
            .run("agree", async move {
                let _: Option<String> = redis::cmd("SET")
                    .arg(&key)
                    .arg(sealed)
                    .arg("NX")
                    .query_async(&mut c)
                    .await?;
                redis::cmd("GET").arg(&key).query_async(&mut c).await
            })
            .await?;
        self.open_checked("agreed", &name, &stored).ok_or(Unavailable)
    }

    // === egress tokens ===

    /// A sealed value and its remaining lifetime.
    pub async fn get_sealed(&self, name: &str) -> Result<Option<(zeroize::Zeroizing<Vec<u8>>, Duration)>, Unavailable> {
        let mut c = self.conn();
        let key = name.to_string();
        let (value, ms): (Option<Vec<u8>>, i64) = self
            .run("egress", async move {
                redis::pipe()
                    .cmd("GET")
                    .arg(&key)
                    .cmd("PTTL")
                    .arg(&key)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(value
            .and_then(|v| self.open_checked("egress", name, &v))
            .map(|v| (v, Duration::from_millis(ms.max(0) as u64))))
    }

    pub async fn set_sealed(&self, name: &str, plain: &[u8], ttl: Duration) -> Result<(), Unavailable> {
        let sealed = self.seal(name, plain);
        let mut c = self.conn();
        let key = name.to_string();
        let ms = ttl.as_millis().max(1) as u64;
        self.run("egress", async move {
            redis::cmd("SET")
                .arg(key)
                .arg(sealed)
                .arg("PX")
                .arg(ms)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    pub async fn delete(&self, name: &str) {
        let mut c = self.conn();
        let key = name.to_string();
        let _ = self
            .run("egress", async move {
                redis::cmd("DEL").arg(key).query_async::<i64>(&mut c).await
            })
            .await;
    }

    /// A short lock (`SET NX PX`): true when this replica holds it.
    pub async fn try_lock(&self, name: &str, ttl: Duration) -> Result<bool, Unavailable> {
        let mut c = self.conn();
        let key = format!("{name}:lock");
        let ms = ttl.as_millis().max(1) as u64;
        let set: Option<String> = self
            .run("egress", async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg("1")
                    .arg("NX")
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(set.is_some())
    }

    pub async fn unlock(&self, name: &str) {
        let mut c = self.conn();
        let key = format!("{name}:lock");
        let _ = self
            .run("egress", async move {
                redis::cmd("DEL").arg(key).query_async::<i64>(&mut c).await
            })
            .await;
    }

    // === events from other replicas ===

    /// Subscribes to the events channel, then reads the revocations back from Redis
    /// (subscribed first, so none announced meanwhile falls between the two).
    async fn subscribe(&self) -> Result<redis::aio::PubSub, String> {
        let mut ps = tokio::time::timeout(self.timeout * 4, self.client.get_async_pubsub())
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        ps.subscribe(self.events_channel()).await.map_err(|e| e.to_string())?;
        self.load_revocations()
            .await
            .map_err(|_| "cannot read the revocations".to_string())?;
        Ok(ps)
    }

    /// Subscribes once (so a replica that starts with Redis up knows every revocation
    /// before it serves), then follows the events channel until the process ends,
    /// resubscribing with backoff.
    pub async fn listen(self: &Arc<Self>) {
        let first = self.subscribe().await;
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            let mut next = Some(first);
            loop {
                let Some(store) = weak.upgrade() else { return };
                let subscribed = match next.take() {
                    Some(first) => first,
                    None => store.subscribe().await,
                };
                let mut ps = match subscribed {
                    Ok(ps) => ps,
                    Err(e) => {
                        store.errors.with_label_values(&["subscribe"]).inc();
                        tracing::debug!(error = %crate::util::Escaped(&e), "shared store: cannot subscribe; retrying");
                        drop(store);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                };
                backoff = Duration::from_millis(100);
                drop(store);
                let mut messages = ps.on_message();
                use futures_util::StreamExt;
                while let Some(msg) = messages.next().await {
                    let Some(store) = weak.upgrade() else { return };
                    store.apply(msg.get_payload_bytes());
                }
                if let Some(store) = weak.upgrade() {
                    store.errors.with_label_values(&["subscribe"]).inc();
                }
                tokio::time::sleep(backoff).await;
            }
        });
    }

    /// One event from the channel, applied only when its MAC holds.
    fn apply(&self, message: &[u8]) {
        let channel = self.events_channel();
        let Some(event) = self.verify("event", &channel, message) else {
            return;
        };
        let mut parts = event.split(' ');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("lock"), Some(name), Some(until), None) => {
                let Ok(until) = until.parse::<u64>() else { return };
                let now_ms = crate::util::unix_now_ms();
                if until <= now_ms {
                    return;
                }
                let kept = {
                    let mut m = self.remote_locks.lock().unwrap_or_else(|p| p.into_inner());
                    m.insert(name, until, now_ms)
                };
                if !kept {
                    self.full.with_label_values(&["remote_locks", "total"]).inc();
                    tracing::error!(
                        "more lockouts announced than this replica holds: its fast paths answer 429 until they end"
                    );
                }
                self.announce_until(until);
            }
            (Some("jti"), Some(jti), Some(exp), None) => {
                if let Ok(exp) = exp.parse::<u64>() {
                    self.note_revoked(jti, exp);
                }
            }
            _ => {}
        }
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
