//! Refresh tokens in Redis: signed records under keyed names, a family's signed end,
//! and scripts that issue and rotate atomically (of two replicas taking one token,
//! exactly one is granted).

use super::{Issued, NewRefresh, Peeked, RefreshFamilies, Rotation, Taken};
use crate::shared::revocation::{Kept, Revocation, RevokeRefused};
use crate::shared::store::Store;
use crate::shared::{Pending, Unavailable};

impl RefreshFamilies for Store {
    fn issue<'a>(&'a self, r: NewRefresh<'a>) -> Pending<'a, Result<Issued, Unavailable>> {
        Box::pin(self.refresh_issue(r))
    }

    fn take<'a>(&'a self, r: Rotation<'a>) -> Pending<'a, Result<Taken, Unavailable>> {
        Box::pin(self.refresh_take(r.token, r.client, r.now, r.next, r.ttl_secs))
    }

    fn peek<'a>(&'a self, token: &'a str) -> Pending<'a, Result<Peeked, Unavailable>> {
        Box::pin(self.refresh_peek(token))
    }

    fn forget<'a>(&'a self, token: &'a str) -> Pending<'a, Result<(), Unavailable>> {
        Box::pin(self.del("refresh", self.refresh_name(token)))
    }

    /// Deletes the family, on every replica at once (they read it from Redis): it needs
    /// no room.
    fn revoke_family<'a>(&'a self, r: Revocation<'a>) -> Pending<'a, Kept> {
        Box::pin(async move {
            self.del("refresh", self.family_name(r.key))
                .await
                .map_err(|_| RevokeRefused::Unavailable)
        })
    }
}

impl Store {
    /// On a cluster the rotation script touches the token, the next one and the family:
    /// every refresh key shares one slot (`{rt}`).
    fn refresh_name(&self, token: &str) -> String {
        self.grouped("rt", self.name("rt", &[token.as_bytes()]))
    }

    fn family_name(&self, family: &str) -> String {
        self.grouped("rt", self.plain_name("rf", family))
    }

    /// A family's stored value: its end, signed for its name. Deterministic, so the
    /// scripts compare it with what they find.
    fn family_value(&self, family: &str, ends_at: u64) -> String {
        self.sign(&self.family_name(family), &ends_at.to_string())
    }

    /// Stores a refresh token (by its keyed hash) with its grant `fields`, in `family`
    /// (created when `new_family`, ending at `family_ends_at`, unix seconds). The grant,
    /// its client, expiry and family are one signed record.
    async fn refresh_issue(&self, r: NewRefresh<'_>) -> Result<Issued, Unavailable> {
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
        let mut script = SCRIPT.key(key);
        script
            .key(&fam)
            .arg(value)
            .arg(fam_value)
            .arg(if new_family { "1" } else { "0" })
            .arg(ttl.as_millis().max(1) as u64)
            .arg(family_ends_at.max(1));
        let created: i64 = self.invoke_durable("refresh", script).await?;
        Ok(match created {
            1 => Issued::Stored,
            -1 => {
                self.forgery("family", &fam);
                Issued::FamilyForged
            }
            _ => Issued::FamilyGone,
        })
    }

    /// The signed record stored under a refresh token's name, checked (a record that
    /// fails its integrity check is counted).
    async fn refresh_record(&self, key: &str) -> Result<Record, Unavailable> {
        let mut pipe = redis::pipe();
        pipe.cmd("HGET").arg(key).arg("v").cmd("EXISTS").arg(key);
        let (raw, exists): (Option<Vec<u8>>, bool) = self
            .run("refresh", |mut c| async move { pipe.query_async(&mut c).await })
            .await?;
        let raw = match (raw, exists) {
            (Some(raw), _) => raw,
            (None, false) => return Ok(Record::Absent),
            // Something is stored under the name, but not a sealed record (the format of
            // an older version, or a forgery).
            (None, true) => {
                self.forgery("refresh", key);
                return Ok(Record::Forged);
            }
        };
        let record = self.verify("refresh", key, &raw).and_then(RefreshRecord::parse);
        Ok(match record {
            Some(r) => Record::Found(raw, r),
            None => Record::Forged,
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
    async fn refresh_take(
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
            Record::Found(raw, record) => (raw, record),
            Record::Absent => return Ok(Taken::Unknown),
            Record::Forged => return Ok(Taken::Forged),
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
        let mut script = SCRIPT.key(key);
        script
            .key(next_key)
            .key(&fam)
            .arg(raw)
            .arg(fam_value)
            .arg(next_value)
            .arg(ttl_ms)
            .arg(verdict)
            .arg(spent);
        let outcome: String = self.invoke_durable("refresh", script).await?;
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
                self.forgery("family", &fam);
                Taken::Forged
            }
            _ => Taken::Unknown,
        })
    }

    /// The family and client of a refresh token, without taking it (for revocation).
    async fn refresh_peek(&self, token: &str) -> Result<Peeked, Unavailable> {
        let key = self.refresh_name(token);
        Ok(match self.refresh_record(&key).await? {
            Record::Found(_, r) => Peeked::Found {
                family: r.family,
                family_ends_at: r.family_ends_at,
                client: r.client,
            },
            Record::Absent => Peeked::Unknown,
            Record::Forged => Peeked::Forged,
        })
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

/// What is stored under a refresh token's name.
enum Record {
    Absent,
    /// Something that is not a record whose MAC holds (counted).
    Forged,
    /// The record as stored (compared byte for byte by the rotation script) and read.
    Found(Vec<u8>, RefreshRecord),
}
