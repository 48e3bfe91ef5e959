//! Values agreed by all replicas (the signing key) and sealed egress tokens.

use super::*;

impl Store {
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
}
