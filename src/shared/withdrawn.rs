//! [`Withdrawals`]: credentials that a reload on some replica withdrew (a user's
//! password, URL key or certificate name, an API key, or an OAuth client changed or
//! removed), refused by every replica before its own file changes.
//!
//! The replica whose reload withdrew them announces them on the events channel (signed
//! like every event), each as a keyed fingerprint of what its old file stored (the hash,
//! never a secret): HMAC-SHA256 under a key derived from `shared.secret`, over the kind,
//! whom it names and the stored value. Every replica keeps the fingerprints it hears in a
//! bounded table for [`KEPT`], and refuses a credential whose stored value has a
//! fingerprint there, even though its own file still holds it. When a replica's file
//! changes too, its credentials have new stored values whose fingerprints match nothing.
//! A reload that puts a credential back (a rotation undone, an entry restored after a bad
//! edit) announces it as reinstated, and every replica forgets its fingerprint: a
//! mistake does not lock a credential out of every replica for a day.
//! A table full of live entries cannot tell: then every credential checked against a
//! stored value is refused (failing closed) until the entry it could not keep would have
//! ended. The fingerprints are stored in Redis too (a sorted set by end, each member
//! MAC'd for the set's name), by the same script that announces them, and read back
//! after each (re)subscription with the revocations: a replica that was not listening
//! (starting, or Redis away) learns them before it vouches again.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hmac::Mac;

use super::store::Store;
use super::{Incomplete, Pending};
use crate::config::Config;

/// How long a withdrawal is kept: the time every replica's file has to catch up.
pub const KEPT: Duration = Duration::from_secs(24 * 3600);
/// At most this many fingerprints in one event.
const PER_EVENT: usize = 64;

/// What kind of credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CredentialKind {
    Password,
    UrlKey,
    CertName,
    ApiKey,
    Client,
}

impl CredentialKind {
    fn label(self) -> &'static [u8] {
        match self {
            CredentialKind::Password => b"password",
            CredentialKind::UrlKey => b"url_key",
            CredentialKind::CertName => b"cert_name",
            CredentialKind::ApiKey => b"api_key",
            CredentialKind::Client => b"client",
        }
    }
}

/// One credential as a config holds it: its kind, whom it names (a user, a key id, a
/// client id) and what is stored to check it (a hash; a certificate name; an API key's
/// hash with its binding).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Credential {
    pub kind: CredentialKind,
    pub id: String,
    pub stored: Vec<u8>,
}

/// An API key's stored value: its hash and what it is bound to (a key moved to another
/// user or integration is withdrawn from the old binding).
pub fn api_key_stored(hash: &[u8], user: &str, plan: &str, integration: &str) -> Vec<u8> {
    let mut v = hash.to_vec();
    for part in [user, plan, integration] {
        v.extend_from_slice(&(part.len() as u64).to_be_bytes());
        v.extend_from_slice(part.as_bytes());
    }
    v
}

/// Every credential `config` holds.
pub fn credentials(config: &Config) -> BTreeSet<Credential> {
    let mut out = BTreeSet::new();
    let mut add = |kind, id: &str, stored: Vec<u8>| {
        out.insert(Credential {
            kind,
            id: id.to_string(),
            stored,
        });
    };
    for u in &config.users {
        if let Some(h) = &u.password_hash {
            add(CredentialKind::Password, &u.name, h.as_bytes().to_vec());
        }
        if let Some(h) = &u.url_key_hash {
            add(CredentialKind::UrlKey, &u.name, h.bytes().to_vec());
        }
        for n in &u.cert_names {
            add(CredentialKind::CertName, &u.name, n.as_bytes().to_vec());
        }
    }
    for k in &config.api_keys {
        let stored = api_key_stored(k.secret_hash.bytes(), &k.user, &k.plan, &k.integration);
        add(CredentialKind::ApiKey, &k.key, stored);
    }
    for c in config.issuers.iter().flat_map(|o| &o.clients) {
        add(
            CredentialKind::Client,
            &c.client_id,
            c.client_secret_hash.bytes().to_vec(),
        );
    }
    out
}

/// What a reload changed in the credentials.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CredentialChange {
    /// What the old config held and the new does not: each credential changed or removed.
    pub withdrawn: Vec<Credential>,
    /// What the new config holds and the old did not: a credential put back (a rotation
    /// undone, an entry removed by mistake and restored) is accepted again everywhere.
    pub reinstated: Vec<Credential>,
}

impl CredentialChange {
    pub fn is_empty(&self) -> bool {
        self.withdrawn.is_empty() && self.reinstated.is_empty()
    }
}

/// What a reload from `old` to `new` changes in the credentials.
pub fn credential_change(old: &Config, new: &Config) -> CredentialChange {
    let (old, new) = (credentials(old), credentials(new));
    CredentialChange {
        withdrawn: old.difference(&new).cloned().collect(),
        reinstated: new.difference(&old).cloned().collect(),
    }
}

/// Credentials withdrawn by any replica.
pub trait Withdrawals: Send + Sync {
    /// Announces what this replica's reload withdrew and put back, to every replica.
    fn announce(&self, change: CredentialChange) -> Pending<'_, ()>;
    /// Whether any replica withdrew this stored credential. `Err(Incomplete)`: more were
    /// announced than this replica keeps, so it cannot tell (the caller refuses).
    fn withdrawn(&self, kind: CredentialKind, id: &str, stored: &[u8]) -> Result<bool, Incomplete>;
}

/// This process alone: its own reload already dropped what it withdrew.
pub struct NoWithdrawals;

impl Withdrawals for NoWithdrawals {
    fn announce(&self, _change: CredentialChange) -> Pending<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    fn withdrawn(&self, _kind: CredentialKind, _id: &str, _stored: &[u8]) -> Result<bool, Incomplete> {
        Ok(false)
    }
}

/// The member of the shared table that says it could not hold every withdrawal.
const OVERFLOW: &str = "overflow";

/// How far an event's announce time may be from this replica's clock: an event is
/// heard as it is published, and one replayed later than this is ignored (replicas that
/// were not listening read the table instead).
pub const EVENT_WINDOW: Duration = Duration::from_secs(300);

/// Whether an event announced at `at` (unix ms) is within [`EVENT_WINDOW`] of now.
pub(super) fn fresh(at: u64) -> bool {
    crate::util::unix_now_ms().abs_diff(at) <= EVENT_WINDOW.as_millis() as u64
}

impl Store {
    /// Whether an event announced at `at` about `fp` is newer than the last one applied
    /// here; if so, it is the last one now. Bounded: entries older than [`KEPT`] go.
    fn newer(&self, fp: &str, at: u64) -> bool {
        let mut order = self.withdrawal_order.lock().unwrap_or_else(|p| p.into_inner());
        if order.get(fp).is_some_and(|last| *last >= at) {
            return false;
        }
        if order.len() >= 2 * super::store::WITHDRAWALS_CAP {
            let horizon = crate::util::unix_now_ms().saturating_sub(KEPT.as_millis() as u64);
            order.retain(|_, last| *last > horizon);
        }
        if order.len() < 2 * super::store::WITHDRAWALS_CAP {
            order.insert(fp.to_string(), at);
        }
        true
    }

    /// Forgets the fingerprints of credentials put back (`reinstated AT FP...`, verified)
    /// whose last event here is older than `at`.
    pub(super) fn note_reinstated<'a>(&self, at: u64, fingerprints: impl Iterator<Item = &'a str>) {
        let fps: Vec<&str> = fingerprints.take(PER_EVENT).filter(|fp| self.newer(fp, at)).collect();
        let mut m = self.withdrawals.lock().unwrap_or_else(|p| p.into_inner());
        for fp in fps {
            m.remove(fp);
        }
    }

    /// The keyed fingerprint of a stored credential (hex).
    fn credential_fingerprint(&self, kind: CredentialKind, id: &str, stored: &[u8]) -> String {
        let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.withdrawals_key)
            .expect("HMAC takes any key length");
        for part in [kind.label(), id.as_bytes(), stored] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// Keeps the fingerprints of `event` (`withdrawn UNTIL FP...`, already verified).
    pub(super) fn note_withdrawn<'a>(&self, until: &str, fingerprints: impl Iterator<Item = &'a str>) {
        let Ok(until) = until.parse::<u64>() else { return };
        let now_ms = crate::util::unix_now_ms();
        // Announced KEPT before it ends: a withdrawal older than the last event applied
        // about a fingerprint (a reinstatement after it, replayed before) changes nothing.
        let at = until.saturating_sub(KEPT.as_millis() as u64);
        // An event names when its entries end; one from the past keeps nothing, and
        // nothing is kept longer than KEPT from now.
        let until = until.min(now_ms.saturating_add(KEPT.as_millis() as u64));
        if until <= now_ms {
            return;
        }
        let fps: Vec<&str> = fingerprints
            .take(PER_EVENT)
            .filter(|fp| fp.len() == 64 && fp.bytes().all(|b| b.is_ascii_hexdigit()))
            .filter(|fp| self.newer(fp, at))
            .collect();
        let mut lost = false;
        {
            let mut m = self.withdrawals.lock().unwrap_or_else(|p| p.into_inner());
            for fp in fps {
                lost |= !m.insert(fp, until, now_ms);
            }
        }
        self.withdrawn_until.fetch_max(until, Ordering::Relaxed);
        if lost {
            self.full.with_label_values(&["withdrawals", "total"]).inc();
            tracing::error!("more withdrawn credentials announced than this replica keeps: it refuses every credential checked against a stored value until they end");
        }
    }
}

impl Store {
    fn withdrawals_name(&self) -> String {
        self.grouped("withdrawn", self.plain_name("withdrawn", "all"))
    }

    /// A stored withdrawal: `FP UNTIL MAC`, signed for the table's name.
    fn withdrawal_member(&self, fp: &str, until: u64) -> String {
        let payload = format!("{fp} {until}");
        let tag = hex::encode(
            self.integrity_mac(&self.withdrawals_name(), &payload)
                .finalize()
                .into_bytes(),
        );
        format!("{payload} {tag}")
    }

    /// Stores the fingerprints of one event in the table of live withdrawals (bounded:
    /// past [`WITHDRAWALS_CAP`](super::store::WITHDRAWALS_CAP) it keeps what it holds)
    /// and publishes the event, in one script: a replica that was not listening reads
    /// them back when it subscribes.
    async fn store_withdrawals(&self, fps: &[String], until: u64) -> Result<(), super::Unavailable> {
        static SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                r#"
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local room = tonumber(ARGV[2]) - redis.call('ZCARD', KEYS[1])
local lost = 0
for i = 7, #ARGV do
  if room > 0 then
    redis.call('ZADD', KEYS[1], ARGV[3], ARGV[i])
    room = room - 1
  else
    lost = lost + 1
  end
end
if lost > 0 then
  -- The mark (MAC'd) that the table is incomplete until these would have ended.
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[6])
end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) - now then
  redis.call('PEXPIREAT', KEYS[1], ARGV[3])
end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return lost
"#,
            )
        });
        let channel = self.events_channel();
        let event = self.sign(&channel, &format!("withdrawn {until} {}", fps.join(" ")));
        let mut script = SCRIPT.key(self.withdrawals_name());
        script
            .arg(crate::util::unix_now_ms())
            .arg(super::store::WITHDRAWALS_CAP)
            .arg(until)
            .arg(channel)
            .arg(event)
            .arg(self.withdrawal_member(OVERFLOW, until));
        for fp in fps {
            script.arg(self.withdrawal_member(fp, until));
        }
        let lost: i64 = self.invoke_durable("publish", script).await?;
        if lost > 0 {
            self.full.with_label_values(&["withdrawals", "total"]).inc();
            tracing::error!(lost, "the shared table of withdrawn credentials is full: replicas that read it back refuse every credential checked against a stored value until these end");
        }
        Ok(())
    }

    /// Removes the fingerprints of credentials put back from the table and publishes
    /// them, in one script.
    async fn forget_withdrawals(&self, at: u64, fps: &[String]) -> Result<(), super::Unavailable> {
        static SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                r#"
local back = {}
for i = 3, #ARGV do back[ARGV[i]] = true end
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if back[string.sub(m, 1, 64)] then redis.call('ZREM', KEYS[1], m) end
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"#,
            )
        });
        let channel = self.events_channel();
        let event = self.sign(&channel, &format!("reinstated {at} {}", fps.join(" ")));
        let mut script = SCRIPT.key(self.withdrawals_name());
        script.arg(channel).arg(event);
        for fp in fps {
            script.arg(fp);
        }
        self.invoke_durable("publish", script).await.map(|_: i64| ())
    }

    /// Reads every live withdrawal back from Redis (at start and after each
    /// resubscription): what was announced while this replica was not listening. A
    /// member whose MAC fails is refused and counted.
    pub(super) async fn load_withdrawals(&self) -> Result<(), super::Unavailable> {
        let table = self.withdrawals_name();
        let mut cmd = redis::cmd("ZRANGEBYSCORE");
        cmd.arg(&table)
            .arg(format!("({}", crate::util::unix_now_ms()))
            .arg("+inf")
            .arg("LIMIT")
            .arg(0)
            .arg(super::store::WITHDRAWALS_CAP + PER_EVENT);
        let members: Vec<Vec<u8>> = self.query("subscribe", cmd).await?;
        for m in members {
            let checked = (|| {
                let text = std::str::from_utf8(&m).ok()?;
                let (payload, tag) = text.rsplit_once(' ')?;
                let tag = hex::decode(tag).ok()?;
                self.integrity_mac(&table, payload).verify_slice(&tag).ok()?;
                payload.split_once(' ')
            })();
            match checked {
                // The table could not hold every withdrawal: fail closed as if this
                // replica's own table had overflowed.
                Some((OVERFLOW, until)) => {
                    if let Ok(until) = until.parse::<u64>() {
                        let mut m = self.withdrawals.lock().unwrap_or_else(|p| p.into_inner());
                        m.overflowed(until);
                        self.withdrawn_until.fetch_max(until, Ordering::Relaxed);
                    }
                }
                Some((fp, until)) => self.note_withdrawn(until, std::iter::once(fp)),
                None => self.forgery("event", &table),
            }
        }
        Ok(())
    }
}

impl Withdrawals for Store {
    /// Stores and publishes the fingerprints, [`PER_EVENT`] to an event, and keeps them
    /// here too; then those put back, the same way.
    fn announce(&self, change: CredentialChange) -> Pending<'_, ()> {
        Box::pin(async move {
            let at = crate::util::unix_now_ms();
            let until = at.saturating_add(KEPT.as_millis() as u64);
            let fingerprints = |list: &[Credential]| -> Vec<String> {
                list.iter()
                    .map(|c| self.credential_fingerprint(c.kind, &c.id, &c.stored))
                    .collect()
            };
            let (gone, back) = (fingerprints(&change.withdrawn), fingerprints(&change.reinstated));
            let mut unconfirmed = 0;
            for chunk in gone.chunks(PER_EVENT) {
                self.note_withdrawn(&until.to_string(), chunk.iter().map(String::as_str));
                if self.store_withdrawals(chunk, until).await.is_err() {
                    // Redis cannot take it now: at least every replica listening hears it.
                    self.publish(&format!("withdrawn {until} {}", chunk.join(" "))).await;
                    unconfirmed += chunk.len();
                }
            }
            for chunk in back.chunks(PER_EVENT) {
                self.note_reinstated(at, chunk.iter().map(String::as_str));
                if self.forget_withdrawals(at, chunk).await.is_err() {
                    self.publish(&format!("reinstated {at} {}", chunk.join(" "))).await;
                    unconfirmed += chunk.len();
                }
            }
            if unconfirmed > 0 {
                tracing::warn!(
                    withdrawn = gone.len(),
                    reinstated = back.len(),
                    unconfirmed,
                    "credential changes not confirmed by the shared store: this replica applies them, other replicas may not have heard them; reload again once Redis answers"
                );
            } else if !change.is_empty() {
                tracing::info!(
                    withdrawn = gone.len(),
                    reinstated = back.len(),
                    "credentials withdrawn and put back announced to every replica"
                );
            }
        })
    }

    fn withdrawn(&self, kind: CredentialKind, id: &str, stored: &[u8]) -> Result<bool, Incomplete> {
        let now_ms = crate::util::unix_now_ms();
        if self.withdrawn_until.load(Ordering::Relaxed) < now_ms {
            return Ok(false);
        }
        let fp = self.credential_fingerprint(kind, id, stored);
        let m = self.withdrawals.lock().unwrap_or_else(|p| p.into_inner());
        Ok(m.get(&fp, now_ms)?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RedisNode, RedisSettings, RedisTopology, Secret};

    /// A store on a Sentinel set that is never asked (connections are made on use).
    fn store(secret: &str) -> std::sync::Arc<Store> {
        let s = RedisSettings {
            topology: RedisTopology::Sentinel {
                sentinels: vec![RedisNode {
                    host: "127.0.0.1".into(),
                    port: 1,
                }],
                master_name: "m".into(),
                tls: false,
                db: 0,
            },
            username: None,
            password: None,
            sentinel_password: None,
            key_prefix: "t:".into(),
            secret: Secret::new(secret),
            connect_timeout: Duration::from_millis(10),
            command_timeout: Duration::from_millis(10),
            pool_size: 1,
            wait_replicas: 0,
            tls_ca: None,
        };
        Store::connect(&s, &crate::metrics::Metrics::new()).unwrap()
    }

    /// A fingerprint heard refuses exactly that stored credential of that user, and only
    /// under the same `shared.secret`; one that ended, or a malformed one, refuses nothing.
    #[test]
    fn a_withdrawal_refuses_exactly_the_stored_value_it_names() {
        let a = store("a-shared-secret-of-at-least-32-bytes-0123");
        let b = store("another-shared-secret-of-32-bytes-or-more");
        let until = (crate::util::unix_now_ms() + 60_000).to_string();
        assert_eq!(
            a.withdrawn(CredentialKind::Password, "alice", b"h1"),
            Ok(false),
            "nothing heard"
        );
        let fp = a.credential_fingerprint(CredentialKind::Password, "alice", b"h1");
        assert_ne!(
            fp,
            b.credential_fingerprint(CredentialKind::Password, "alice", b"h1"),
            "keyed"
        );
        a.note_withdrawn(&until, [fp.as_str(), "not-hex", "ab"].into_iter());
        assert_eq!(a.withdrawn(CredentialKind::Password, "alice", b"h1"), Ok(true));
        assert_eq!(
            a.withdrawn(CredentialKind::Password, "alice", b"h2"),
            Ok(false),
            "the new hash"
        );
        assert_eq!(
            a.withdrawn(CredentialKind::Password, "bob", b"h1"),
            Ok(false),
            "another user"
        );
        assert_eq!(
            a.withdrawn(CredentialKind::UrlKey, "alice", b"h1"),
            Ok(false),
            "another kind"
        );
        a.note_reinstated(crate::util::unix_now_ms(), std::iter::once(fp.as_str()));
        assert_eq!(
            a.withdrawn(CredentialKind::Password, "alice", b"h1"),
            Ok(false),
            "put back"
        );
        let old = crate::util::unix_now_ms().saturating_sub(1).to_string();
        let fp2 = a.credential_fingerprint(CredentialKind::ApiKey, "k", b"x");
        a.note_withdrawn(&old, std::iter::once(fp2.as_str()));
        assert_eq!(
            a.withdrawn(CredentialKind::ApiKey, "k", b"x"),
            Ok(false),
            "ended before it came"
        );
    }

    /// Events name any number of fingerprints (up to [`PER_EVENT`]); every one is applied,
    /// put back as well as withdrawn, and only under a MAC that holds.
    #[test]
    fn events_withdraw_and_put_back_every_fingerprint_they_name() {
        let a = store("a-shared-secret-of-at-least-32-bytes-0123");
        let channel = a.events_channel();
        let until = crate::util::unix_now_ms() + KEPT.as_millis() as u64;
        let ids: Vec<String> = (0..6).map(|i| format!("u{i}")).collect();
        let fps: Vec<String> = ids
            .iter()
            .map(|id| a.credential_fingerprint(CredentialKind::Password, id, b"h"))
            .collect();
        let all = |a: &Store| {
            ids.iter()
                .map(|id| a.withdrawn(CredentialKind::Password, id, b"h"))
                .collect::<Vec<_>>()
        };
        let event = format!("withdrawn {until} {}", fps.join(" "));
        a.apply(event.as_bytes());
        assert_eq!(all(&a), vec![Ok(false); 6], "unsigned: ignored");
        a.apply(a.sign(&channel, &event).as_bytes());
        assert_eq!(all(&a), vec![Ok(true); 6]);
        let reinstated = a.sign(
            &channel,
            // Announced after the withdrawal (a later reload).
            &format!("reinstated {} {}", crate::util::unix_now_ms() + 1, fps[..5].join(" ")),
        );
        a.apply(reinstated.as_bytes());
        assert_eq!(all(&a), [vec![Ok(false); 5], vec![Ok(true)]].concat());
        // Replayed, the old withdrawal changes nothing: a newer event about each
        // fingerprint was applied.
        a.apply(a.sign(&channel, &event).as_bytes());
        assert_eq!(all(&a), [vec![Ok(false); 5], vec![Ok(true)]].concat());
        // A later withdrawal applies; the old reinstatement replayed does not undo it.
        let later = crate::util::unix_now_ms() + 5 + KEPT.as_millis() as u64;
        a.apply(a.sign(&channel, &format!("withdrawn {later} {}", fps[0])).as_bytes());
        a.apply(reinstated.as_bytes());
        assert_eq!(a.withdrawn(CredentialKind::Password, "u0", b"h"), Ok(true));
        // An event announced long ago (a capture replayed) is ignored altogether.
        let stale = crate::util::unix_now_ms() - EVENT_WINDOW.as_millis() as u64 - 60_000;
        a.apply(a.sign(&channel, &format!("reinstated {stale} {}", fps[5])).as_bytes());
        assert_eq!(a.withdrawn(CredentialKind::Password, "u5", b"h"), Ok(true));
    }

    /// Past its bound the table cannot tell: every credential is refused (fail closed),
    /// and the overflow is counted.
    #[test]
    fn a_full_table_refuses_every_credential() {
        let a = store("a-shared-secret-of-at-least-32-bytes-0123");
        let until = (crate::util::unix_now_ms() + 60_000).to_string();
        let fps: Vec<String> = (0..super::super::store::WITHDRAWALS_CAP + 1)
            .map(|i| a.credential_fingerprint(CredentialKind::Password, &i.to_string(), b"h"))
            .collect();
        for chunk in fps.chunks(PER_EVENT) {
            a.note_withdrawn(&until, chunk.iter().map(String::as_str));
        }
        assert_eq!(a.withdrawn(CredentialKind::Password, "carol", b"h"), Err(Incomplete));
        assert_eq!(a.full.with_label_values(&["withdrawals", "total"]).get(), 1);
    }

    fn cred(kind: CredentialKind, id: &str, stored: &[u8]) -> Credential {
        Credential {
            kind,
            id: id.into(),
            stored: stored.to_vec(),
        }
    }

    /// Changed and removed credentials are withdrawn, kept and added ones are not.
    #[test]
    fn withdrawn_is_what_the_old_config_held_and_the_new_does_not() {
        let old: BTreeSet<_> = [
            cred(CredentialKind::Password, "alice", b"h1"),
            cred(CredentialKind::Password, "bob", b"h2"),
            cred(CredentialKind::CertName, "bob", b"bob.example"),
        ]
        .into();
        let new: BTreeSet<_> = [
            cred(CredentialKind::Password, "alice", b"h1b"),
            cred(CredentialKind::Password, "bob", b"h2"),
            cred(CredentialKind::Client, "c", b"x"),
        ]
        .into();
        let gone: Vec<_> = old.iter().filter(|c| !new.contains(c)).cloned().collect();
        assert_eq!(
            gone,
            vec![
                cred(CredentialKind::Password, "alice", b"h1"),
                cred(CredentialKind::CertName, "bob", b"bob.example")
            ]
        );
        assert_ne!(
            api_key_stored(b"h", "u", "p", "i"),
            api_key_stored(b"h", "u", "p", "j"),
            "a rebinding withdraws the old binding"
        );
    }
}
