//! Events from other replicas: the subscriber and what it applies.

use std::sync::Arc;
use std::time::Duration;

use super::store::Store;
use super::SharedError;

/// How often the events subscription is asked to answer a PING, so that one that went
/// quiet without closing is found and made again.
const LIVENESS: Duration = Duration::from_secs(1);

impl Store {
    /// Subscribes to the events channel, then reads the revocations back from Redis
    /// (subscribed first, so none announced meanwhile falls between the two).
    async fn subscribe(&self) -> Result<(redis::aio::PubSub, u64), SharedError> {
        let turn = self.subscriptions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let connect = async {
            let (client, generation) = self.link.subscriber(turn).await?;
            Ok::<_, redis::RedisError>((client.get_async_pubsub().await?, generation))
        };
        let (mut ps, generation) = match tokio::time::timeout(self.timeout * 4, connect).await {
            Ok(Ok(made)) => made,
            Ok(Err(e)) => {
                self.link.failed(None, Some(&e));
                return Err(SharedError::Subscribe(e));
            }
            Err(_) => {
                self.link.failed(None, None);
                return Err(SharedError::ConnectTimedOut);
            }
        };
        ps.subscribe(self.events_channel())
            .await
            .map_err(SharedError::Subscribe)?;
        self.load_revocations().await.map_err(|_| SharedError::Revocations)?;
        self.load_withdrawals().await.map_err(|_| SharedError::Withdrawals)?;
        Ok((ps, generation))
    }

    /// Subscribes once (so a replica that starts with Redis up knows every revocation
    /// before it serves), then follows the events channel until the process ends,
    /// resubscribing with backoff.
    ///
    /// While the subscription is down (lost, or not yet made again) this replica cannot
    /// hear of new revocations: it stops vouching for its mirror ([`Store::unsynced`]),
    /// so builtin tokens are answered 503 `revocation_unavailable` until it has
    /// subscribed again and read every live revocation back. A subscription that goes
    /// quiet without closing (a half-open connection) is found by a PING every
    /// [`LIVENESS`] that must be answered within the command timeout; on a Sentinel set,
    /// one made on a master that may have moved (its commands failed as a moved master's
    /// would) is made again on the master the sentinels name, within the same beat.
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
                let (ps, generation) = match subscribed {
                    Ok(made) => made,
                    Err(e) => {
                        store.unsynced();
                        store.errors.with_label_values(&["subscribe"]).inc();
                        tracing::debug!(error = %crate::util::Escaped(&e), "shared store: cannot subscribe; retrying");
                        drop(store);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                };
                backoff = Duration::from_millis(100);
                let ping_timeout = store.timeout;
                drop(store);
                let (mut sink, mut messages) = ps.split();
                let mut liveness = tokio::time::interval(LIVENESS);
                liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                use futures_util::StreamExt;
                loop {
                    tokio::select! {
                        msg = messages.next() => {
                            let Some(msg) = msg else { break };
                            let Some(store) = weak.upgrade() else { return };
                            store.apply(msg.get_payload_bytes());
                        }
                        _ = liveness.tick() => {
                            // On a Sentinel set, a master that may have moved: what the
                            // new one publishes would go unheard here.
                            let moved = weak.upgrade().is_some_and(|s| s.link.moved_from(generation));
                            let pong = tokio::time::timeout(ping_timeout, sink.ping::<redis::Value>()).await;
                            if moved || !matches!(pong, Ok(Ok(_))) {
                                break;
                            }
                        }
                    }
                }
                // The subscription is lost: what is announced now goes unheard.
                let Some(store) = weak.upgrade() else { return };
                store.unsynced();
                store.errors.with_label_values(&["subscribe"]).inc();
                tracing::warn!("shared store: events subscription lost; builtin tokens answer 503 until it is back and the revocations are read again");
                drop(store);
                tokio::time::sleep(backoff).await;
            }
        });
    }

    /// This replica no longer hears every revocation: its builtin tokens fail closed
    /// until [`Store::load_revocations`] succeeds after a new subscription.
    pub(super) fn unsynced(&self) {
        self.synced.store(false, std::sync::atomic::Ordering::Release);
    }

    /// One event from the channel, applied only when its MAC holds.
    pub(super) fn apply(&self, message: &[u8]) {
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
            (Some("withdrawn"), Some(until), Some(first), rest) => {
                // Announced KEPT before it ends; heard late (a replay), it is ignored.
                let at = until
                    .parse::<u64>()
                    .map(|u| u.saturating_sub(super::withdrawn::KEPT.as_millis() as u64));
                if at.is_ok_and(super::withdrawn::fresh) {
                    let rest = rest.into_iter().chain(parts);
                    self.note_withdrawn(until, std::iter::once(first).chain(rest));
                }
            }
            (Some("reinstated"), Some(at), Some(first), rest) => {
                if let Some(at) = at.parse::<u64>().ok().filter(|at| super::withdrawn::fresh(*at)) {
                    let rest = rest.into_iter().chain(parts);
                    self.note_reinstated(at, std::iter::once(first).chain(rest));
                }
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
