//! [`EgressTokens`]: egress OAuth2 tokens shared by replicas, so that N replicas cause
//! one fetch. Alone there is nothing to share (each token source keeps its own copy);
//! in Redis a token is sealed under a keyed name, with a short fetch lock beside it.

use std::time::Duration;

use super::store::Store;
use super::{Pending, Unavailable};

/// A sealed value and how long it still lives.
pub type SealedToken = (zeroize::Zeroizing<Vec<u8>>, Duration);

/// Tokens shared by replicas, by a name made from what identifies them.
pub trait EgressTokens: Send + Sync {
    /// The name of the token that `parts` (endpoint, token URL, client, user, scopes)
    /// identify; it reveals nothing of them.
    fn name(&self, parts: &[&[u8]]) -> String;
    /// The token stored under `name`, with its remaining lifetime.
    fn get<'a>(&'a self, name: &'a str) -> Pending<'a, Result<Option<SealedToken>, Unavailable>>;
    fn set<'a>(&'a self, name: &'a str, plain: &'a [u8], ttl: Duration) -> Pending<'a, Result<(), Unavailable>>;
    fn delete<'a>(&'a self, name: &'a str) -> Pending<'a, ()>;
    /// A short lock (`true`: this replica holds it, and fetches).
    fn try_lock<'a>(&'a self, name: &'a str, ttl: Duration) -> Pending<'a, Result<bool, Unavailable>>;
    fn unlock<'a>(&'a self, name: &'a str) -> Pending<'a, ()>;
}

/// This process alone: nothing is stored, and the lock is always this replica's, so a
/// token source fetches for itself.
pub struct NoEgressSharing;

impl EgressTokens for NoEgressSharing {
    fn name(&self, _parts: &[&[u8]]) -> String {
        String::new()
    }

    fn get<'a>(&'a self, _name: &'a str) -> Pending<'a, Result<Option<SealedToken>, Unavailable>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    fn set<'a>(&'a self, _name: &'a str, _plain: &'a [u8], _ttl: Duration) -> Pending<'a, Result<(), Unavailable>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn delete<'a>(&'a self, _name: &'a str) -> Pending<'a, ()> {
        Box::pin(std::future::ready(()))
    }

    fn try_lock<'a>(&'a self, _name: &'a str, _ttl: Duration) -> Pending<'a, Result<bool, Unavailable>> {
        Box::pin(std::future::ready(Ok(true)))
    }

    fn unlock<'a>(&'a self, _name: &'a str) -> Pending<'a, ()> {
        Box::pin(std::future::ready(()))
    }
}

impl EgressTokens for Store {
    fn name(&self, parts: &[&[u8]]) -> String {
        Store::name(self, "egress-token", parts)
    }

    /// The sealed value and its `PTTL`; a value that does not open is counted and
    /// answered as none.
    fn get<'a>(&'a self, name: &'a str) -> Pending<'a, Result<Option<SealedToken>, Unavailable>> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            pipe.cmd("GET").arg(name).cmd("PTTL").arg(name);
            let (value, ms): (Option<Vec<u8>>, i64) = self
                .run("egress", |mut c| async move { pipe.query_async(&mut c).await })
                .await?;
            Ok(value
                .and_then(|v| self.open_checked("egress", name, &v))
                .map(|v| (v, Duration::from_millis(ms.max(0) as u64))))
        })
    }

    fn set<'a>(&'a self, name: &'a str, plain: &'a [u8], ttl: Duration) -> Pending<'a, Result<(), Unavailable>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("SET");
            cmd.arg(name)
                .arg(self.seal(name, plain))
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64);
            self.query::<()>("egress", cmd).await
        })
    }

    fn delete<'a>(&'a self, name: &'a str) -> Pending<'a, ()> {
        Box::pin(async move {
            let _ = self.del("egress", name.to_string()).await;
        })
    }

    /// `SET NAME:lock 1 NX PX ttl`.
    fn try_lock<'a>(&'a self, name: &'a str, ttl: Duration) -> Pending<'a, Result<bool, Unavailable>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("SET");
            cmd.arg(format!("{name}:lock"))
                .arg("1")
                .arg("NX")
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64);
            let set: Option<String> = self.query("egress", cmd).await?;
            Ok(set.is_some())
        })
    }

    fn unlock<'a>(&'a self, name: &'a str) -> Pending<'a, ()> {
        Box::pin(async move {
            let _ = self.del("egress", format!("{name}:lock")).await;
        })
    }
}
