//! Refresh tokens in this process: a bounded cache of tokens by hash, and a [`Table`] of
//! revoked families that refuses when full and never drops one in force.

use std::sync::Arc;
use std::time::Duration;

use super::{Issued, NewRefresh, Peeked, RefreshFamilies, Rotation, Taken};
use crate::config::SecretHash;
use crate::shared::revocation::{count_full, Kept, Revocation, Table};
use crate::shared::{Pending, Unavailable};

/// One refresh token in memory.
#[derive(Clone)]
struct Held {
    family: Arc<str>,
    family_ends_at: u64,
    client: Arc<str>,
    grant: Arc<str>,
    expires_at: u64,
    /// Rotated once already: a second use is a reuse.
    used: bool,
}

/// Refresh tokens in this process, by SHA-256, with rotation and reuse detection;
/// bounded.
///
/// An evicted token only stops working (it is unknown, so refused). Revoked families are
/// a security table: kept until the family ends, never evicted, bounded by
/// `oauth.max_revocations` (with the access-token revocations' per-client share); a full
/// one refuses.
pub struct MemoryRefresh {
    tokens: moka::sync::Cache<[u8; 32], Held>,
    revoked: Table<Arc<str>>,
    full: Option<prometheus::IntCounterVec>,
}

impl MemoryRefresh {
    pub fn new(full: Option<prometheus::IntCounterVec>) -> Self {
        MemoryRefresh {
            tokens: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(Duration::from_secs(90 * 86400))
                .build(),
            revoked: Table::default(),
            full,
        }
    }

    fn id(token: &str) -> [u8; 32] {
        *SecretHash::of(token.as_bytes()).bytes()
    }

    /// What taking `held` answers; `Granted` marks it used.
    fn verdict(&self, held: &Held, r: &Rotation<'_>) -> Taken {
        if held.used {
            return match self
                .revoked
                .insert(held.family.clone(), held.family_ends_at, &held.client, r.limits)
            {
                Ok(()) => Taken::Reused,
                Err(_) => {
                    // The reused token is refused whatever happens; the family's other
                    // token then lives on: counted and logged.
                    if let Some(full) = &self.full {
                        full.with_label_values(&["revocations", "total"]).inc();
                    }
                    tracing::error!(client_id = %crate::util::Escaped(&r.client), "oauth: a reused refresh token's family cannot be revoked: the revocation table is full");
                    Taken::ReusedUnrevoked
                }
            };
        }
        if self.revoked.contains(&*held.family) {
            Taken::Revoked
        } else if r.now >= held.expires_at || r.now >= held.family_ends_at {
            Taken::Expired
        } else if &*held.client != r.client {
            Taken::OtherClient
        } else {
            Taken::Granted {
                family: held.family.to_string(),
                fields: held.grant.to_string(),
                family_ends_at: held.family_ends_at,
            }
        }
    }
}

impl RefreshFamilies for MemoryRefresh {
    fn issue<'a>(&'a self, r: NewRefresh<'a>) -> Pending<'a, Result<Issued, Unavailable>> {
        let issued = if !r.new_family && self.revoked.contains(r.family) {
            Issued::FamilyGone
        } else {
            let held = Held {
                family: Arc::from(r.family),
                family_ends_at: r.family_ends_at,
                client: Arc::from(r.client),
                grant: Arc::from(r.grant),
                expires_at: r.expires_at,
                used: false,
            };
            self.tokens.insert(Self::id(r.token), held);
            Issued::Stored
        };
        Box::pin(std::future::ready(Ok(issued)))
    }

    fn take<'a>(&'a self, r: Rotation<'a>) -> Pending<'a, Result<Taken, Unavailable>> {
        use moka::ops::compute::Op;
        let mut outcome = Taken::Unknown;
        let mut next = None;
        self.tokens.entry(Self::id(r.token)).and_compute_with(|current| {
            let Some(entry) = current else { return Op::Nop };
            let held = entry.into_value();
            outcome = self.verdict(&held, &r);
            if !matches!(outcome, Taken::Granted { .. }) {
                return Op::Nop;
            }
            next = Some(Held {
                expires_at: r.now.saturating_add(r.ttl_secs).min(held.family_ends_at),
                ..held.clone()
            });
            Op::Put(Held { used: true, ..held })
        });
        if let Some(held) = next {
            self.tokens.insert(Self::id(r.next), held);
        }
        Box::pin(std::future::ready(Ok(outcome)))
    }

    /// A used token names nothing here (its family is revoked only by a reuse).
    fn peek<'a>(&'a self, token: &'a str) -> Pending<'a, Result<Peeked, Unavailable>> {
        let peeked = match self.tokens.get(&Self::id(token)) {
            Some(held) if !held.used => Peeked::Found {
                family: held.family.to_string(),
                family_ends_at: held.family_ends_at,
                client: held.client.to_string(),
            },
            Some(_) | None => Peeked::Unknown,
        };
        Box::pin(std::future::ready(Ok(peeked)))
    }

    fn forget<'a>(&'a self, token: &'a str) -> Pending<'a, Result<(), Unavailable>> {
        self.tokens.invalidate(&Self::id(token));
        Box::pin(std::future::ready(Ok(())))
    }

    /// Takes a place in the bounded table: a full table refuses (counted), never forgets
    /// an older family.
    fn revoke_family<'a>(&'a self, r: Revocation<'a>) -> Pending<'a, Kept> {
        let kept = self.revoked.insert(Arc::from(r.key), r.ends_at, r.client, r.limits);
        if let Err(why) = kept {
            count_full(self.full.as_ref(), why);
        }
        Box::pin(std::future::ready(kept))
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;
    use crate::shared::revocation::{RevocationLimits, RevokeRefused};

    const LIMITS: RevocationLimits = RevocationLimits {
        total: 100,
        per_client: 100,
    };

    fn full_counter() -> prometheus::IntCounterVec {
        prometheus::IntCounterVec::new(prometheus::Opts::new("full", "full"), &["table", "limit"]).unwrap()
    }

    fn now() -> u64 {
        crate::util::unix_now()
    }

    /// When the families of these tests end: one instant, whenever it is read.
    static END: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| now() + 3600);

    /// Issues `token` for client `c1` in a new `family` ending in an hour.
    fn issue(store: &MemoryRefresh, token: &str, family: &str) {
        let issued = store
            .issue(NewRefresh {
                token,
                family,
                family_ends_at: *END,
                new_family: true,
                client: "c1",
                expires_at: now() + 600,
                grant: r#"{"sub":"alice"}"#,
                ttl: Duration::from_secs(600),
            })
            .now_or_never()
            .unwrap();
        assert_eq!(issued, Ok(Issued::Stored));
    }

    fn take(store: &MemoryRefresh, token: &str, client: &str, next: &str, limits: RevocationLimits) -> Taken {
        store
            .take(Rotation {
                token,
                client,
                now: now(),
                next,
                ttl_secs: 600,
                limits,
            })
            .now_or_never()
            .unwrap()
            .unwrap()
    }

    #[test]
    fn a_rotation_grants_once_and_a_reuse_revokes_the_family() {
        let store = MemoryRefresh::new(None);
        issue(&store, "a", "f1");
        let granted = take(&store, "a", "c1", "b", LIMITS);
        assert_eq!(
            granted,
            Taken::Granted {
                family: "f1".into(),
                fields: r#"{"sub":"alice"}"#.into(),
                family_ends_at: *END,
            }
        );
        // The used token again: a reuse, which revokes the family, so the next token
        // (stored by the rotation) is refused too.
        assert_eq!(take(&store, "a", "c1", "c", LIMITS), Taken::Reused);
        assert_eq!(take(&store, "b", "c1", "c", LIMITS), Taken::Revoked);
        assert_eq!(
            take(&store, "c", "c1", "d", LIMITS),
            Taken::Unknown,
            "nothing was stored for a refusal"
        );
    }

    #[test]
    fn of_concurrent_takers_exactly_one_is_granted() {
        let store = Arc::new(MemoryRefresh::new(None));
        issue(&store, "a", "f1");
        let takers: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                std::thread::spawn(move || take(&store, "a", "c1", &format!("next{i}"), LIMITS))
            })
            .collect();
        let outcomes: Vec<Taken> = takers.into_iter().map(|t| t.join().unwrap()).collect();
        let granted = outcomes.iter().filter(|t| matches!(t, Taken::Granted { .. })).count();
        assert_eq!(granted, 1, "{outcomes:?}");
        assert!(outcomes
            .iter()
            .all(|t| matches!(t, Taken::Granted { .. } | Taken::Reused)));
    }

    #[test]
    fn another_client_expiry_and_unknown_tokens_are_refused_without_using_the_token() {
        let store = MemoryRefresh::new(None);
        issue(&store, "a", "f1");
        assert_eq!(take(&store, "a", "c2", "x", LIMITS), Taken::OtherClient);
        assert_eq!(take(&store, "nope", "c1", "x", LIMITS), Taken::Unknown);
        assert!(matches!(take(&store, "a", "c1", "b", LIMITS), Taken::Granted { .. }));
        // A token past its own expiry, and one past its family's end.
        for (expires_at, family_ends_at) in [(now() - 1, *END), (now() + 600, now() - 1)] {
            let issued = store
                .issue(NewRefresh {
                    token: "old",
                    family: "f2",
                    family_ends_at,
                    new_family: true,
                    client: "c1",
                    expires_at,
                    grant: "{}",
                    ttl: Duration::from_secs(600),
                })
                .now_or_never()
                .unwrap();
            assert_eq!(issued, Ok(Issued::Stored));
            assert_eq!(take(&store, "old", "c1", "x", LIMITS), Taken::Expired);
        }
    }

    #[test]
    fn peek_names_an_active_token_only() {
        let store = MemoryRefresh::new(None);
        issue(&store, "a", "f1");
        let peek = |t: &str| store.peek(t).now_or_never().unwrap().unwrap();
        assert_eq!(
            peek("a"),
            Peeked::Found {
                family: "f1".into(),
                family_ends_at: *END,
                client: "c1".into(),
            }
        );
        take(&store, "a", "c1", "b", LIMITS);
        assert_eq!(peek("a"), Peeked::Unknown);
        assert_eq!(peek("zzz"), Peeked::Unknown);
    }

    #[test]
    fn a_full_family_table_refuses_and_counts_never_drops() {
        let full = full_counter();
        let store = MemoryRefresh::new(Some(full.clone()));
        let one = RevocationLimits {
            total: 1,
            per_client: 1,
        };
        issue(&store, "a", "f1");
        take(&store, "a", "c1", "b", one);
        assert_eq!(take(&store, "a", "c1", "x", one), Taken::Reused);
        // A second family's reuse finds the table full: refused, counted, and the first
        // family stays revoked.
        issue(&store, "p", "f2");
        take(&store, "p", "c1", "q", one);
        assert_eq!(take(&store, "p", "c1", "x", one), Taken::ReusedUnrevoked);
        assert_eq!(full.with_label_values(&["revocations", "total"]).get(), 1);
        assert_eq!(take(&store, "b", "c1", "x", one), Taken::Revoked);
        // Revoking by request: the client's share, then the whole table.
        let revoke = |family: &str, client: &str, limits: RevocationLimits| {
            store
                .revoke_family(Revocation {
                    key: family,
                    ends_at: *END,
                    client,
                    limits,
                })
                .now_or_never()
                .unwrap()
        };
        assert_eq!(revoke("f2", "c1", one), Err(RevokeRefused::ClientFull));
        assert_eq!(full.with_label_values(&["revocations", "per_client"]).get(), 1);
        let wide = RevocationLimits {
            total: 1,
            per_client: 10,
        };
        assert_eq!(revoke("f2", "c2", wide), Err(RevokeRefused::Full));
        assert_eq!(full.with_label_values(&["revocations", "total"]).get(), 2);
        assert_eq!(revoke("f1", "c1", one), Ok(()), "one already held is kept, not refused");
        assert_eq!(
            take(&store, "q", "c1", "x", LIMITS),
            Taken::Granted {
                family: "f2".into(),
                fields: r#"{"sub":"alice"}"#.into(),
                family_ends_at: *END,
            },
            "the family that could not be revoked lives on (the refusal said so)"
        );
    }
}
