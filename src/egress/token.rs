//! OAuth2 tokens for egress endpoints (`password` and `client_credentials` grants,
//! through the oauth2 crate). A token is cached until shortly before it expires;
//! concurrent callers wait for one fetch; a 401 from the target drops it.
//!
//! Every source goes through the backend of [`crate::shared::EgressTokens`] chosen at
//! start. With Redis, replicas share the token: a replica without a fresh copy reads the
//! one in Redis (sealed there); when there is none, one replica takes a short lock and
//! fetches while the others wait for its result, so N replicas cause one fetch. Each
//! keeps its local copy until shortly before expiry. Redis unavailable: each replica
//! fetches for itself. Alone, the backend holds nothing and the lock is always free, so
//! the source fetches for itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use oauth2::basic::BasicClient;
use oauth2::{
    ClientId, ClientSecret, EndpointNotSet, EndpointSet, ResourceOwnerPassword, ResourceOwnerUsername, Scope,
    TokenResponse, TokenUrl,
};
use prometheus::IntCounter;
use tokio::sync::Mutex;

use crate::config::{OAuthGrant, Secret};
use crate::shared::EgressTokens;

use crate::upstream::OAuthHttp;

type Client = BasicClient<EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

struct Cached {
    token: Arc<str>,
    refresh_at: Option<Instant>,
}

pub struct TokenSource {
    client: Client,
    http: OAuthHttp,
    grant: OAuthGrant,
    username: Option<String>,
    password: Option<Secret>,
    scopes: Vec<String>,
    current: Mutex<Option<Cached>>,
    ok: IntCounter,
    failed: IntCounter,
    /// Where replicas share the token, and its name there.
    shared: Arc<dyn EgressTokens>,
    name: String,
}

/// How long a replica holds the fetch lock, and how long the others wait for its token.
const FETCH_LOCK: Duration = Duration::from_secs(10);

/// The longest lifetime believed from a token server: `expires_in` is a remote party's
/// number, and an absurd one must neither overflow `Instant` nor pin a token for years.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// When to fetch again a token that lives `lifetime`: a little before expiry (a tenth of
/// the lifetime, at most 30 s), with checked arithmetic on the remote number.
fn refresh_time(lifetime: Duration) -> Instant {
    let l = lifetime.min(MAX_LIFETIME);
    let now = Instant::now();
    now.checked_add(l - (l / 10).min(Duration::from_secs(30)))
        .unwrap_or(now)
}

/// A failed fetch, with the token server's RFC 6749 error when it gave one.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct FetchError(pub String);

pub struct Settings<'a> {
    pub endpoint: &'a str,
    pub grant: OAuthGrant,
    pub token_url: &'a url::Url,
    pub client_id: &'a str,
    pub client_secret: Option<&'a Secret>,
    pub username: Option<&'a str>,
    pub password: Option<&'a Secret>,
    pub scopes: &'a [String],
}

impl TokenSource {
    pub fn new(
        s: Settings<'_>,
        http: crate::upstream::Client,
        metrics: &crate::metrics::Metrics,
        shared: &Arc<dyn EgressTokens>,
    ) -> Self {
        let scopes = s.scopes.join(" ");
        let name = shared.name(&[
            s.endpoint.as_bytes(),
            s.token_url.as_str().as_bytes(),
            s.client_id.as_bytes(),
            s.username.unwrap_or("").as_bytes(),
            scopes.as_bytes(),
        ]);
        let mut client = BasicClient::new(ClientId::new(s.client_id.to_string()))
            .set_token_uri(TokenUrl::from_url(s.token_url.clone()));
        if let Some(secret) = s.client_secret {
            client = client.set_client_secret(ClientSecret::new(secret.expose_str().to_string()));
        }
        TokenSource {
            client,
            http: OAuthHttp(http),
            grant: s.grant,
            username: s.username.map(str::to_string),
            password: s.password.cloned(),
            scopes: s.scopes.to_vec(),
            current: Mutex::new(None),
            ok: metrics.egress_token_fetches.with_label_values(&[s.endpoint, "success"]),
            failed: metrics.egress_token_fetches.with_label_values(&[s.endpoint, "failure"]),
            shared: shared.clone(),
            name,
        }
    }

    /// The cached token, or a new one; one fetch at a time.
    pub async fn get(&self) -> Result<(Arc<str>, bool), FetchError> {
        let mut current = self.current.lock().await;
        if let Some(c) = current.as_ref() {
            if c.refresh_at.is_none_or(|t| Instant::now() < t) {
                return Ok((c.token.clone(), false));
            }
        }
        match self.fetch_shared().await {
            Ok((token, lifetime)) => {
                let refresh_at = lifetime.map(refresh_time);
                *current = Some(Cached {
                    token: token.clone(),
                    refresh_at,
                });
                Ok((token, true))
            }
            Err(e) => {
                *current = None;
                Err(e)
            }
        }
    }

    async fn fetch_counted(&self) -> Result<(Arc<str>, Option<Duration>), FetchError> {
        let r = self.fetch().await;
        match &r {
            Ok(_) => self.ok.inc(),
            Err(_) => self.failed.inc(),
        }
        r
    }

    /// The token the replicas share, or one fetch among all of them.
    async fn fetch_shared(&self) -> Result<(Arc<str>, Option<Duration>), FetchError> {
        let (shared, name) = (&self.shared, self.name.as_str());
        let read = |v: zeroize::Zeroizing<Vec<u8>>| std::str::from_utf8(&v).ok().map(Arc::<str>::from);
        let deadline = Instant::now() + FETCH_LOCK;
        loop {
            match shared.get(name).await {
                Ok(Some((v, left))) if left > Duration::from_secs(1) => {
                    if let Some(t) = read(v) {
                        return Ok((t, Some(left)));
                    }
                }
                Ok(_) => {}
                // Redis cannot answer: fetch for this replica alone.
                Err(_) => return self.fetch_counted().await,
            }
            match shared.try_lock(name, FETCH_LOCK).await {
                Ok(true) => {
                    // Another replica may have stored its token and let go of the lock
                    // between our read and our lock: read again before fetching.
                    if let Ok(Some((v, left))) = shared.get(name).await {
                        if left > Duration::from_secs(1) {
                            if let Some(t) = read(v) {
                                shared.unlock(name).await;
                                return Ok((t, Some(left)));
                            }
                        }
                    }
                    let r = self.fetch_counted().await;
                    if let Ok((token, lifetime)) = &r {
                        // Stored for the others until shortly before expiry (an endless
                        // token is shared for at most MAX_LIFETIME).
                        let keep =
                            refresh_time(lifetime.unwrap_or(MAX_LIFETIME)).saturating_duration_since(Instant::now());
                        if !keep.is_zero() {
                            let _ = shared.set(name, token.as_bytes(), keep).await;
                        }
                    }
                    shared.unlock(name).await;
                    return r;
                }
                Ok(false) if Instant::now() < deadline => {
                    // Another replica is fetching: its token appears shortly.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(false) | Err(_) => return self.fetch_counted().await,
            }
        }
    }

    /// Drops `used` if it is still the cached token (the target refused it).
    pub async fn invalidate(&self, used: &str) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|c| &*c.token == used) {
            *current = None;
            // Only if the shared copy is the refused one.
            if let Ok(Some((v, _))) = self.shared.get(&self.name).await {
                if &v[..] == used.as_bytes() {
                    self.shared.delete(&self.name).await;
                }
            }
        }
    }

    /// Whether a token is cached and fresh (for the admin status).
    pub fn state(&self) -> &'static str {
        match self.current.try_lock() {
            Ok(c) => match c.as_ref() {
                Some(c) if c.refresh_at.is_none_or(|t| Instant::now() < t) => "cached",
                Some(_) => "expired",
                None => "none",
            },
            Err(_) => "fetching",
        }
    }

    async fn fetch(&self) -> Result<(Arc<str>, Option<Duration>), FetchError> {
        let scopes = self.scopes.iter().map(|s| Scope::new(s.clone()));
        let result = match self.grant {
            OAuthGrant::ClientCredentials => {
                let req = self.client.exchange_client_credentials().add_scopes(scopes);
                tokio::time::timeout(Duration::from_secs(10), req.request_async(&self.http)).await
            }
            OAuthGrant::Password => {
                let user = ResourceOwnerUsername::new(self.username.clone().unwrap_or_default());
                let pass = ResourceOwnerPassword::new(
                    self.password
                        .as_ref()
                        .map(|p| p.expose_str().to_string())
                        .unwrap_or_default(),
                );
                let req = self.client.exchange_password(&user, &pass).add_scopes(scopes);
                tokio::time::timeout(Duration::from_secs(10), req.request_async(&self.http)).await
            }
        };
        let resp = match result {
            Err(_) => return Err(FetchError("token request timed out".into())),
            Ok(Err(e)) => {
                // The token server's words (and the error chain of what it sent) are
                // the peer's: escaped before they reach a log line or the caller.
                return Err(FetchError(crate::util::escaped(match e {
                    oauth2::RequestTokenError::ServerResponse(r) => match r.error_description() {
                        Some(d) => format!("token server answered {}: {d}", r.error().as_ref()),
                        None => format!("token server answered {}", r.error().as_ref()),
                    },
                    oauth2::RequestTokenError::Request(e) => format!("token server unreachable: {e}"),
                    oauth2::RequestTokenError::Parse(e, _) => format!("token server response unparsable: {e}"),
                    oauth2::RequestTokenError::Other(m) => format!("token request failed: {m}"),
                })));
            }
            Ok(Ok(r)) => r,
        };
        Ok((Arc::from(resp.access_token().secret().as_str()), resp.expires_in()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_lifetimes_are_clamped_not_overflowed() {
        let at = refresh_time(Duration::from_secs(u64::MAX));
        assert!(at <= Instant::now() + MAX_LIFETIME);
        let at = refresh_time(Duration::MAX);
        assert!(at > Instant::now());
        let at = refresh_time(Duration::ZERO);
        assert!(at <= Instant::now());
    }
}
