//! Access-token revocation: the sealed table and its local mirror.

use super::*;

impl Store {
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
    pub(super) async fn load_revocations(&self) -> Result<(), Unavailable> {
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
}
