//! `introspection` mode: RFC 7662 through the oauth2 crate, over Portcullis's own pooled
//! client. Results are cached by the token's SHA-256: active ones until
//! `min(exp, [cache] ttl)`, inactive ones for `[cache] negative_ttl`. Concurrent requests
//! with one token share a single call (moka's `try_get_with`). A server that is down,
//! slow (5 s) or erroring is never cached and gives 503: nothing passes on doubt.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::metrics::CacheCounters;
use oauth2::basic::{BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenResponse, BasicTokenType};
use oauth2::{
    AccessToken, ClientId, ClientSecret, EndpointNotSet, EndpointSet, IntrospectionUrl, StandardRevocableToken,
    StandardTokenIntrospectionResponse, TokenIntrospectionResponse,
};
use serde::{Deserialize, Serialize};

use super::{TokenFacts, Verdict};
use crate::auth::Reason;
use crate::config;
use crate::config::SecretHash;

/// Every response member beyond RFC 7662's, for `roles_claim` and custom username claims.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Extra {
    #[serde(flatten)]
    fields: HashMap<String, serde_json::Value>,
}
impl oauth2::ExtraTokenFields for Extra {}

type Response = StandardTokenIntrospectionResponse<Extra, BasicTokenType>;
type Client = oauth2::Client<
    BasicErrorResponse,
    BasicTokenResponse,
    Response,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
>;

#[derive(Clone)]
enum Cached {
    Active { facts: Arc<TokenFacts>, ttl: Duration },
    Inactive { reason: Reason, ttl: Duration },
}

struct PerEntry;

impl moka::Expiry<[u8; 32], Cached> for PerEntry {
    fn expire_after_create(&self, _k: &[u8; 32], v: &Cached, _now: std::time::Instant) -> Option<Duration> {
        Some(match v {
            Cached::Active { ttl, .. } | Cached::Inactive { ttl, .. } => *ttl,
        })
    }
}

/// What a cached verdict depends on: the server, the checks applied to its answers, and
/// the cache's shape. While these are unchanged, a reload keeps the cache.
fn shape(cfg: &config::OAuth, cache: &config::Cache) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let text = format!(
        "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{}",
        cfg.introspection_url.as_ref().map(|u| u.as_str()),
        cfg.client_id,
        cfg.issuer,
        cfg.audience,
        cfg.username_claim,
        cfg.roles_claim,
        cfg.allowed_client_ids,
        cache.ttl,
        cache.negative_ttl,
        cache.max_entries,
    );
    let mut h = Sha256::new();
    h.update(text.as_bytes());
    // A new client secret may change what the server answers.
    h.update(cfg.client_secret.as_ref().map_or(&[][..], |s| s.expose()));
    h.finalize().into()
}

/// Carries the introspection cache across config generations with the same [`shape`].
#[derive(Default)]
pub struct Carried(std::sync::Mutex<Option<([u8; 32], Verdicts)>>);

type Verdicts = moka::future::Cache<[u8; 32], Cached>;

impl Carried {
    fn take(&self, cfg: &config::OAuth, cache: &config::Cache) -> Verdicts {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let shape = shape(cfg, cache);
        if let Some((s, c)) = slot.as_ref() {
            if *s == shape {
                return c.clone();
            }
        }
        let c = moka::future::Cache::builder()
            .max_capacity(cache.max_entries)
            .expire_after(PerEntry)
            .build();
        *slot = Some((shape, c.clone()));
        c
    }
}

/// Introspection calls in flight at once, per config generation.
const MAX_CALLS: usize = 32;

pub struct Introspector {
    calls: tokio::sync::Semaphore,
    client: Client,
    http: crate::upstream::OAuthHttp,
    cache: Verdicts,
    ttl: Duration,
    negative_ttl: Duration,
    issuer: Option<String>,
    audience: Option<String>,
    username_claim: String,
    roles_claim: Option<String>,
    allowed_client_ids: Vec<String>,
    counters: CacheCounters,
}

/// Why the authorization server gave no usable answer.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CallError(String);

/// `oauth.mode = "introspection"` without an `introspection_url`.
#[derive(Debug, thiserror::Error)]
#[error("oauth.mode = \"introspection\" needs introspection_url")]
pub struct NoIntrospectionUrl;

impl Introspector {
    pub fn new(
        cfg: &config::OAuth,
        cache: &config::Cache,
        http: crate::upstream::Client,
        carried: &Carried,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Self, NoIntrospectionUrl> {
        let url = cfg.introspection_url.as_ref().ok_or(NoIntrospectionUrl)?;
        let mut client = oauth2::Client::new(ClientId::new(cfg.client_id.clone().unwrap_or_default()))
            .set_introspection_url(IntrospectionUrl::from_url(url.clone()));
        if let Some(s) = &cfg.client_secret {
            client = client.set_client_secret(ClientSecret::new(s.expose_str().to_string()));
        }
        let verdicts = carried.take(cfg, cache);
        let counters = CacheCounters::new(metrics, "introspection");
        counters.set_entries(verdicts.entry_count());
        Ok(Introspector {
            calls: tokio::sync::Semaphore::new(MAX_CALLS),
            client,
            cache: verdicts,
            http: crate::upstream::OAuthHttp(http),
            ttl: cache.ttl,
            negative_ttl: cache.negative_ttl,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            username_claim: cfg.username_claim.clone(),
            roles_claim: cfg.roles_claim.clone(),
            allowed_client_ids: cfg.allowed_client_ids.clone(),
            counters,
        })
    }

    pub fn clear(&self) {
        self.cache.invalidate_all();
        self.counters.set_entries(0);
    }

    /// With the facts, whether they came from the introspection cache.
    pub async fn verify(&self, token: &str) -> Result<(Arc<TokenFacts>, bool), Verdict> {
        let key = *SecretHash::of(token.as_bytes()).bytes();
        let mut called = false;
        let result = self
            .cache
            .try_get_with(key, async {
                called = true;
                self.introspect(token).await
            })
            .await;
        if called {
            self.cache.run_pending_tasks().await;
            self.counters.miss(self.cache.entry_count());
        } else {
            self.counters.hit();
        }
        match result {
            Ok(Cached::Active { facts, .. }) => Ok((facts, !called)),
            Ok(Cached::Inactive { reason, .. }) => Err(Verdict::Rejected(reason)),
            Err(e) => {
                tracing::warn!(error = %crate::util::Escaped(&e), "oauth: introspection failed; refusing with 503");
                Err(Verdict::Unavailable("introspection_unavailable"))
            }
        }
    }

    async fn introspect(&self, token: &str) -> Result<Cached, CallError> {
        // A bounded number of calls at once: a flood of random tokens waits briefly for a
        // place, then fails closed, instead of becoming one server call each.
        let _permit = tokio::time::timeout(Duration::from_secs(1), self.calls.acquire())
            .await
            .map_err(|_| CallError("too many introspection calls in flight".into()))?
            .map_err(|_| CallError("introspection closed".into()))?;
        let token = AccessToken::new(token.to_string());
        let sent = self
            .client
            .introspect(&token)
            .set_token_type_hint("access_token")
            .request_async(&self.http);
        let resp = tokio::time::timeout(Duration::from_secs(5), sent)
            .await
            .map_err(|_| CallError("introspection timed out".into()))?
            .map_err(|e| match e {
                oauth2::RequestTokenError::ServerResponse(r) => CallError(format!("server error: {r}")),
                oauth2::RequestTokenError::Request(e) => CallError(e.to_string()),
                oauth2::RequestTokenError::Parse(e, _) => CallError(format!("unparsable response: {e}")),
                oauth2::RequestTokenError::Other(m) => CallError(m),
            })?;
        Ok(self.judge(&resp))
    }

    fn judge(&self, r: &Response) -> Cached {
        let inactive = |reason| Cached::Inactive {
            reason,
            ttl: self.negative_ttl,
        };
        if !r.active() {
            return inactive(Reason::TokenInactive);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        let exp = r.exp().map(|t| t.timestamp());
        if exp.is_some_and(|e| e <= now) {
            return inactive(Reason::TokenExpired);
        }
        if let Some(iss) = &self.issuer {
            if r.iss().is_some_and(|i| i != iss) {
                return inactive(Reason::WrongIssuer);
            }
        }
        if let Some(aud) = &self.audience {
            if !r.aud().is_some_and(|a| a.contains(aud)) {
                return inactive(Reason::WrongAudience);
            }
        }
        let extra = &r.extra_fields().fields;
        let user = match self.username_claim.as_str() {
            "sub" => r.sub().map(str::to_string),
            "username" => r.username().map(str::to_string),
            other => extra.get(other).and_then(|v| v.as_str()).map(str::to_string),
        }
        .or_else(|| r.username().map(str::to_string));
        let Some(user) = user else {
            return inactive(Reason::MissingClaim);
        };
        let client_id = r.client_id().map(|c| c.as_str().to_string());
        if !self.allowed_client_ids.is_empty()
            && !client_id.as_ref().is_some_and(|c| self.allowed_client_ids.contains(c))
        {
            return inactive(Reason::ClientNotAllowed);
        }
        let until_exp = exp.map_or(self.ttl, |e| Duration::from_secs((e - now).max(0) as u64));
        Cached::Active {
            facts: TokenFacts::new(
                user,
                super::roles_from(self.roles_claim.as_ref().and_then(|c| extra.get(c))),
                client_id,
                // The answer's members as the token's claims (RFC 7662 section 2.2).
                match serde_json::to_value(r) {
                    Ok(serde_json::Value::Object(m)) => Some(m),
                    _ => None,
                },
            ),
            ttl: self.ttl.min(until_exp),
        }
    }
}
