//! [`Keys`]: a value every replica agrees on (the builtin issuer's generated signing
//! key). Alone, the first proposal is the value; in Redis, the first writer wins and the
//! others read its value, sealed.

use super::store::Store;
use super::{Pending, Unavailable};

/// The agreed value, or the store could not answer (or its value did not open).
pub type Agreed = Result<zeroize::Zeroizing<Vec<u8>>, Unavailable>;

/// A secret value agreed on under a name.
pub trait Keys: Send + Sync {
    /// The value every replica holds under `kind`: the one already agreed, or
    /// `proposal` when there is none yet.
    fn agree<'a>(&'a self, kind: &'a str, proposal: &'a [u8]) -> Pending<'a, Agreed>;

    /// Who agrees on it, for the log line that names the key.
    fn agreed_by(&self) -> &'static str;
}

/// This process alone: the process-wide holder of the key (it asks once) keeps the
/// proposal.
pub struct OwnKeys;

impl Keys for OwnKeys {
    fn agree<'a>(&'a self, _kind: &'a str, proposal: &'a [u8]) -> Pending<'a, Agreed> {
        Box::pin(std::future::ready(Ok(zeroize::Zeroizing::new(proposal.to_vec()))))
    }

    fn agreed_by(&self) -> &'static str {
        "this process"
    }
}

impl Keys for Store {
    /// The sealed value under `kind`: `SET NX` then `GET`, so the first writer wins; a
    /// value that does not open (another `shared.secret`, a forgery) is counted and
    /// answered as unavailable.
    fn agree<'a>(&'a self, kind: &'a str, proposal: &'a [u8]) -> Pending<'a, Agreed> {
        Box::pin(async move {
            let name = self.plain_name("agreed", kind);
            let sealed = self.seal(&name, proposal);
            let key = name.clone();
            let (replicas, wait) = (self.wait_replicas, self.timeout / 2);
            let stored: Vec<u8> = self
                .run("agree", |mut c| async move {
                    let _: Option<String> = redis::cmd("SET")
                        .arg(&key)
                        .arg(sealed)
                        .arg("NX")
                        .query_async(&mut c)
                        .await?;
                    // The key every replica signs with should survive a failover; a set
                    // without its replicas (counted, logged) must still let one start.
                    if self.settle(&mut c, replicas, wait).await.is_err() {
                        tracing::warn!(
                            "shared store: no replica confirmed the agreed signing key; a failover now may lose it"
                        );
                    }
                    redis::cmd("GET").arg(&key).query_async(&mut c).await
                })
                .await?;
            self.open_checked("agreed", &name, &stored).ok_or(Unavailable)
        })
    }

    fn agreed_by(&self) -> &'static str {
        "all replicas through the shared store"
    }
}
