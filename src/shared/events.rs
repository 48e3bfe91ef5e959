//! Events from other replicas: the subscriber and what it applies.

use std::sync::Arc;
use std::time::Duration;

use super::store::Store;
use super::SharedError;

impl Store {
    /// Subscribes to the events channel, then reads the revocations back from Redis
    /// (subscribed first, so none announced meanwhile falls between the two).
    async fn subscribe(&self) -> Result<redis::aio::PubSub, SharedError> {
        let mut ps = tokio::time::timeout(self.timeout * 4, self.client.get_async_pubsub())
            .await
            .map_err(|_| SharedError::ConnectTimedOut)?
            .map_err(SharedError::Subscribe)?;
        ps.subscribe(self.events_channel())
            .await
            .map_err(SharedError::Subscribe)?;
        self.load_revocations().await.map_err(|_| SharedError::Revocations)?;
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
