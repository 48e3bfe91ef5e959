//! State shared by replicas, on Redis or Valkey (`[shared] backend = "redis"`).
//!
//! What lives here: lockout counters and locks, the builtin issuer's refresh-token
//! families and revoked access tokens, the issuer's generated signing key, and egress
//! OAuth2 tokens. Nothing secret is stored in clear: key names are keyed hashes
//! (HMAC-SHA256 under `shared.secret`) of what they describe, refresh tokens are stored
//! by such a hash, and secret values (a signing key, an egress token) are sealed with
//! AES-256-GCM under a key derived from the same secret.
//!
//! Every command runs under `command_timeout`; a failure is counted in
//! `portcullis_shared_errors_total{op}` and reported to the caller, which decides: the
//! lockout falls back to its local counters, token rotation and revocation fail closed.
//! The connections are redis-rs connection managers, which reconnect by themselves with
//! backoff. One subscriber task follows the events channel (locks and revocations from
//! other replicas) and resubscribes with backoff when the connection drops.

use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
}

pub struct Store {
    conns: Vec<ConnectionManager>,
    next: AtomicUsize,
    client: redis::Client,
    prefix: String,
    names: [u8; 32],
    values: aead::LessSafeKey,
    timeout: Duration,
    errors: prometheus::IntCounterVec,
    /// Locks announced by other replicas, by key name, until when.
    remote_locks: moka::sync::Cache<String, Instant>,
    /// Revoked access-token ids announced by any replica.
    revoked: moka::sync::Cache<String, ()>,
    /// Unix ms until which some announced lock or revocation may still be in force: the
    /// fast path skips the hashing and lookups entirely when it has passed.
    announced_until: AtomicU64,
    last_warning: AtomicU64,
}

const EVENTS: &str = "events";

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
            values,
            timeout: s.command_timeout,
            errors: metrics.shared_errors.clone(),
            remote_locks: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(24 * 3600))
                .build(),
            revoked: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(24 * 3600))
                .build(),
            announced_until: AtomicU64::new(0),
            last_warning: AtomicU64::new(0),
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

    async fn publish(&self, message: String) {
        let channel = self.plain_name(EVENTS, "all");
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

    // === lockout ===

    fn lock_names(&self, subject: &str, client: IpAddr) -> (String, String) {
        let ip = client.to_string();
        (
            self.name("fail", &[subject.as_bytes(), ip.as_bytes()]),
            self.name("lock", &[subject.as_bytes(), ip.as_bytes()]),
        )
    }

    /// A lock another replica announced for this pair, without a round trip.
    pub fn announced_lock(&self, subject: &str, client: IpAddr) -> Option<Duration> {
        if self.nothing_announced() {
            return None;
        }
        let (_, lock) = self.lock_names(subject, client);
        let until = self.remote_locks.get(&lock)?;
        until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())
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
                self.publish(format!("lock {lock} {}", ms.max(0))).await;
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

    /// Stores a refresh token (by its keyed hash) with its grant `fields`, in `family`
    /// (created when `new_family`, ending at `family_ends_at`, unix seconds). `false`: the
    /// family is gone (revoked meanwhile, or ended), so no token was stored.
    pub async fn refresh_issue(&self, r: NewRefresh<'_>) -> Result<bool, Unavailable> {
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
if ARGV[4] == '1' then
  redis.call('SET', KEYS[2], ARGV[3], 'EXAT', ARGV[3], 'NX')
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'fam', ARGV[1], 'grant', ARGV[2], 'used', '0', 'client', ARGV[6], 'exp', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"#,
            )
        });
        let key = self.refresh_name(token);
        let fam = self.family_name(family);
        let mut c = self.conn();
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let (family, fields, client) = (family.to_string(), fields.to_string(), client.to_string());
        let created: i64 = self
            .run("refresh", async move {
                SCRIPT
                    .key(key)
                    .key(fam)
                    .arg(family)
                    .arg(fields)
                    .arg(family_ends_at)
                    .arg(if new_family { "1" } else { "0" })
                    .arg(ttl_ms)
                    .arg(client)
                    .arg(expires_at)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(created == 1)
    }

    /// Rotates a refresh token, atomically: of two replicas taking one token at once,
    /// exactly one gets the grant and its `next` token is stored in the same step; the
    /// other finds the token used, which revokes the family. `next` keeps the grant and
    /// lives `ttl_secs`, never past the family's end.
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
local f = redis.call('HMGET', KEYS[1], 'fam', 'grant', 'used', 'client', 'exp')
if not f[1] then return {'unknown'} end
local famkey = ARGV[1] .. f[1]
local ends = redis.call('GET', famkey)
if not ends then return {'revoked'} end
if f[3] == '1' then
  redis.call('DEL', famkey)
  return {'reused', f[1]}
end
local now = tonumber(ARGV[3])
if tonumber(f[5]) <= now or tonumber(ends) <= now then return {'expired'} end
if f[4] ~= ARGV[2] then return {'client'} end
redis.call('HSET', KEYS[1], 'used', '1')
local exp = math.min(now + tonumber(ARGV[4]), tonumber(ends))
redis.call('HSET', KEYS[2], 'fam', f[1], 'grant', f[2], 'used', '0', 'client', ARGV[2], 'exp', exp)
redis.call('PEXPIRE', KEYS[2], math.max(1, (exp - now) * 1000))
return {'ok', f[1], f[2], ends}
"#,
            )
        });
        let key = self.refresh_name(token);
        let next_key = self.refresh_name(next);
        let fam_prefix = self.family_name("");
        let mut c = self.conn();
        let client = client.to_string();
        let r: Vec<String> = self
            .run("refresh", async move {
                SCRIPT
                    .key(key)
                    .key(next_key)
                    .arg(fam_prefix)
                    .arg(client)
                    .arg(now)
                    .arg(ttl_secs)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(match r.first().map(String::as_str) {
            Some("ok") if r.len() == 4 => Taken::Granted {
                family: r[1].clone(),
                fields: r[2].clone(),
                family_ends_at: r[3].parse().unwrap_or(0),
            },
            Some("reused") => Taken::Reused,
            Some("revoked") => Taken::Revoked,
            Some("expired") => Taken::Expired,
            Some("client") => Taken::OtherClient,
            _ => Taken::Unknown,
        })
    }

    /// The family and client of a refresh token, without taking it (for revocation).
    pub async fn refresh_peek(&self, token: &str) -> Result<Option<(String, String)>, Unavailable> {
        let key = self.refresh_name(token);
        let mut c = self.conn();
        let (fam, client): (Option<String>, Option<String>) = self
            .run("refresh", async move {
                redis::cmd("HMGET")
                    .arg(key)
                    .arg("fam")
                    .arg("client")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(fam.zip(client))
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

    /// Revokes an access token by its `jti` until its `exp` (unix seconds): stored, and
    /// announced so that every replica refuses it from its next request.
    pub async fn revoke_jti(&self, jti: &str, exp: u64) -> Result<(), Unavailable> {
        let key = self.plain_name("rj", jti);
        let mut c = self.conn();
        self.run("revoke", async move {
            redis::cmd("SET")
                .arg(key)
                .arg("1")
                .arg("EXAT")
                .arg(exp.max(1))
                .query_async::<()>(&mut c)
                .await
        })
        .await?;
        self.note_revoked(jti, exp);
        self.publish(format!("jti {jti} {exp}")).await;
        Ok(())
    }

    fn note_revoked(&self, jti: &str, exp: u64) {
        self.revoked.insert(jti.to_string(), ());
        self.announce_until(exp.saturating_mul(1000));
    }

    /// Whether an access token was revoked (announced to this replica, or found at start).
    pub fn is_revoked(&self, jti: &str) -> bool {
        !self.nothing_announced() && self.revoked.contains_key(jti)
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
        self.open(&name, &stored).ok_or_else(|| {
            tracing::error!(key = %name, "a shared value cannot be opened: is shared.secret the same on every replica?");
            Unavailable
        })
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
            .and_then(|v| self.open(name, &v))
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

    /// Follows the events channel until the process ends, resubscribing with backoff.
    pub fn listen(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let client = self.client.clone();
        let channel = self.plain_name(EVENTS, "all");
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let Some(store) = weak.upgrade() else { return };
                let subscribed = async {
                    let mut ps = tokio::time::timeout(store.timeout * 4, client.get_async_pubsub())
                        .await
                        .map_err(|_| "connect timed out".to_string())?
                        .map_err(|e| e.to_string())?;
                    ps.subscribe(&channel).await.map_err(|e| e.to_string())?;
                    Ok::<_, String>(ps)
                }
                .await;
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
                    if let Ok(text) = msg.get_payload::<String>() {
                        store.apply(&text);
                    }
                }
                if let Some(store) = weak.upgrade() {
                    store.errors.with_label_values(&["subscribe"]).inc();
                }
                tokio::time::sleep(backoff).await;
            }
        });
    }

    fn apply(&self, event: &str) {
        let mut parts = event.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("lock"), Some(name), Some(ms)) => {
                let Ok(ms) = ms.parse::<u64>() else { return };
                let ms = ms.min(10 * 365 * 86400 * 1000);
                self.remote_locks
                    .insert(name.to_string(), Instant::now() + Duration::from_millis(ms));
                self.announce_until(crate::util::unix_now_ms().saturating_add(ms));
            }
            (Some("jti"), Some(jti), Some(exp)) => {
                if let Ok(exp) = exp.parse::<u64>() {
                    self.note_revoked(jti, exp);
                }
            }
            _ => {}
        }
    }
}
