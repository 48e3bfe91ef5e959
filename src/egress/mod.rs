//! The egress listener: local services call `/ENDPOINT/rest/of/path?query` and Portcullis
//! sends it to `base_url/rest/of/path?query` with the endpoint's credentials.
//!
//! ```text
//!  endpoint      404 unknown endpoint; 400 ambiguous path
//!  initiator     a valid X-Portcullis-Assertion names the initiating user; an invalid
//!                or expired one is 403; `callers` refuses others (and no initiator)
//!  rewrite       drop hop-by-hop, Authorization and X-Portcullis-*; target URI and Host
//!  credentials   none | basic (preemptive, or on a 401 challenge with replay) | oauth2
//!                (cached token, one refetch and replay on 401) | principal (the verified
//!                assertion) | signature (RFC 9421, with Content-Digest when covered)
//!  forward       streamed; 502 unreachable or TLS refused (the reason is said), 504 slow
//! ```

mod fail;
mod forward;
pub mod signer;
pub mod tls;
pub mod token;

pub use fail::{EgressError, Fail};
pub use forward::error_chain;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Request, Response, Uri};

use crate::assertion::Signer;
use crate::config::{self, EndpointAuth, Rule};
use crate::error::{Answer, Body, Refusal};
use crate::headers;
use crate::server::listener::ConnInfo;
use crate::upstream::RequestBody;
use crate::util::{Finish, Finishing};

/// Largest body held so that it can be sent again after a 401 (Basic challenge, OAuth2
/// token refresh); a larger body streams, and a 401 then gets a clear 502.
pub const REPLAY_LIMIT: usize = 1024 * 1024;

enum Credentials {
    None,
    Basic { header: HeaderValue, preemptive: bool },
    OAuth2(Box<token::TokenSource>),
    Principal,
    Signature(signer::Signer),
}

/// Why an endpoint of the config cannot be made ready.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("endpoint `{0}`: {1}")]
    Tls(String, rustls::Error),
    #[error("endpoint `{0}`: credentials cannot form a header")]
    Credentials(String),
}

/// One endpoint, ready to use.
pub struct Endpoint {
    pub name: String,
    base: url::Url,
    client: crate::upstream::Client,
    pub verifier: Arc<tls::Verifier>,
    callers: Option<Rule>,
    credentials: Credentials,
    timeout: Duration,
    /// The last status this endpoint answered (0: none yet), for the admin page.
    pub last_status: std::sync::atomic::AtomicU16,
}

/// The endpoints of one config generation.
pub struct Egress {
    pub endpoints: HashMap<String, Arc<Endpoint>>,
    /// `portcullis_egress_requests_total`.
    requests: prometheus::IntCounterVec,
    /// `[limits] max_headers` and `max_header_bytes` for a caller's request head (the
    /// parser holds more, so that the refusal is ours: JSON, X-Request-Id, logged).
    head_limits: (usize, usize),
    /// `[limits] body_read_timeout` and `request_timeout` for a caller's request body
    /// (none until [`Egress::with_limits`]).
    body_timeouts: (Duration, Duration),
}

impl Egress {
    pub fn new(
        cfg: &[config::Endpoint],
        metrics: &crate::metrics::Metrics,
        tokens: &Arc<dyn crate::shared::EgressTokens>,
    ) -> Result<Self, EndpointError> {
        let mut endpoints = HashMap::new();
        for e in cfg {
            let verifier = Arc::new(
                tls::Verifier::new(e.trust_self_signed, e.pin_sha256)
                    .map_err(|err| EndpointError::Tls(e.name.clone(), err))?,
            );
            let client = tls::client(verifier.clone()).map_err(|err| EndpointError::Tls(e.name.clone(), err))?;
            let credentials = match &e.auth {
                EndpointAuth::None => Credentials::None,
                EndpointAuth::Basic {
                    username,
                    password,
                    preemptive,
                } => {
                    let credentials = crate::config::Secret::basic(username, password);
                    let mut header = HeaderValue::from_str(&format!("Basic {}", credentials.expose_str()))
                        .map_err(|_| EndpointError::Credentials(e.name.clone()))?;
                    header.set_sensitive(true);
                    Credentials::Basic {
                        header,
                        preemptive: *preemptive,
                    }
                }
                EndpointAuth::OAuth2 {
                    grant,
                    token_url,
                    client_id,
                    client_secret,
                    username,
                    password,
                    scopes,
                } => Credentials::OAuth2(Box::new(token::TokenSource::new(
                    token::Settings {
                        endpoint: &e.name,
                        grant: *grant,
                        token_url,
                        client_id,
                        client_secret: client_secret.as_ref(),
                        username: username.as_deref(),
                        password: password.as_ref(),
                        scopes,
                    },
                    client.clone(),
                    metrics,
                    tokens,
                ))),
                EndpointAuth::Principal => Credentials::Principal,
                EndpointAuth::Signature {
                    key_id,
                    algorithm: _,
                    key,
                    components,
                } => Credentials::Signature(signer::Signer {
                    key_id: key_id.clone(),
                    key: key.clone(),
                    components: components.clone(),
                }),
            };
            endpoints.insert(
                e.name.clone(),
                Arc::new(Endpoint {
                    name: e.name.clone(),
                    base: e.base_url.clone(),
                    client,
                    verifier,
                    callers: e.callers.clone(),
                    credentials,
                    timeout: e.timeout,
                    last_status: Default::default(),
                }),
            );
        }
        Ok(Egress {
            endpoints,
            requests: metrics.egress_requests.clone(),
            head_limits: (usize::MAX, usize::MAX),
            body_timeouts: (Duration::MAX, Duration::MAX),
        })
    }

    /// The limits of `[limits]` for callers of the egress port: the request head's size,
    /// and the body's `body_read_timeout` and `request_timeout`, as inbound.
    pub fn with_limits(mut self, limits: &config::Limits) -> Self {
        self.head_limits = (limits.max_headers, limits.max_header_bytes);
        self.body_timeouts = (limits.body_read_timeout, limits.request_timeout);
        self
    }

    /// How a caller's request body that started at `started` is timed.
    fn body_timing(&self, started: Instant) -> crate::upstream::BodyTiming {
        let (idle, whole) = self.body_timeouts;
        let now = tokio::time::Instant::now();
        let until = tokio::time::Instant::from_std(started)
            .checked_add(whole)
            .unwrap_or(now + Duration::from_secs(86400 * 365));
        crate::upstream::BodyTiming {
            idle: idle.min(Duration::from_secs(86400 * 365)),
            until,
            spool_max: u64::MAX,
        }
    }
}

impl Endpoint {
    /// `basic`, `oauth2`, ... for the admin page.
    pub fn auth_type(&self) -> &'static str {
        match &self.credentials {
            Credentials::None => "none",
            Credentials::Basic { .. } => "basic",
            Credentials::OAuth2(_) => "oauth2",
            Credentials::Principal => "principal",
            Credentials::Signature(_) => "signature",
        }
    }

    /// The OAuth2 token state, if the endpoint uses OAuth2.
    pub fn token_state(&self) -> Option<&'static str> {
        match &self.credentials {
            Credentials::OAuth2(t) => Some(t.state()),
            _ => None,
        }
    }

    fn target(&self, rest: &str, query: Option<&str>) -> Result<Uri, Refusal> {
        let base_path = self.base.path().trim_end_matches('/');
        let mut s = format!("{}://{}", self.base.scheme(), self.base.host_str().unwrap_or(""));
        if let Some(p) = self.base.port() {
            s.push_str(&format!(":{p}"));
        }
        s.push_str(base_path);
        s.push_str(if rest.is_empty() && base_path.is_empty() {
            "/"
        } else {
            rest
        });
        if let Some(q) = query {
            s.push('?');
            s.push_str(q);
        }
        s.parse()
            .map_err(|_| Refusal::BadRequest("the target URL cannot be formed".into()))
    }
}

/// Serves one egress request; never fails. The call is logged and counted once, also
/// when the calling service goes away before the answer (status 499, `client_closed`).
pub async fn handle<B: RequestBody>(
    egress: &Egress,
    signer: &Signer,
    req: Request<B>,
    _conn: Arc<ConnInfo>,
) -> Response<Body> {
    let mut guard = Finish::default();
    let ctx = guard.start(Call {
        request_id: headers::request_id(req.headers()),
        started: Instant::now(),
        method: req.method().clone(),
        uri: req.uri().clone(),
        endpoint: None,
        initiator: None,
        status: None,
        reason: "",
        requests: egress.requests.clone(),
    });
    let mut resp = match forward::handle(egress, signer, req, ctx).await {
        Ok(r) => r,
        Err(f) => {
            ctx.reason = f.reason();
            crate::error::answer(&f, &ctx.request_id)
        }
    };
    resp.headers_mut().insert(headers::X_REQUEST_ID, ctx.request_id.clone());
    ctx.status = Some(resp.status().as_u16());
    drop(guard);
    resp
}

/// One egress call, as its finish reports it.
pub(crate) struct Call {
    pub request_id: HeaderValue,
    started: Instant,
    method: http::Method,
    uri: http::Uri,
    /// The endpoint named, once it is known to exist.
    pub endpoint: Option<Arc<Endpoint>>,
    /// The initiating user a valid assertion named.
    pub initiator: Option<String>,
    /// The answer's status; `None` while the call is in flight.
    status: Option<u16>,
    reason: &'static str,
    requests: prometheus::IntCounterVec,
}

impl Finishing for Call {
    /// `portcullis_egress_requests_total{endpoint,status}`, the endpoint's last status
    /// for the admin page, and one `portcullis::egress` log line.
    fn finish(&mut self) {
        let (status, reason) = match self.status {
            Some(s) => (s, self.reason),
            None => (499, "client_closed"),
        };
        let name = self.endpoint.as_ref().map_or("", |e| e.name.as_str());
        // Refused before an endpoint was named: counted under `endpoint=""` (one label
        // value, whatever the caller sent).
        self.requests.with_label_values(&[name, &status.to_string()]).inc();
        if let Some(e) = &self.endpoint {
            e.last_status.store(status, std::sync::atomic::Ordering::Relaxed);
        }
        tracing::info!(
            target: "portcullis::egress",
            request_id = self.request_id.to_str().unwrap_or(""),
            endpoint = name,
            initiator = self.initiator.as_deref().unwrap_or(""),
            method = self.method.as_str(),
            path = self.uri.path(),
            status,
            reason,
            latency_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            "egress"
        );
    }
}

impl Endpoint {
    /// `portcullis endpoint test`: one GET of the base URL with the credentials.
    pub async fn probe(&self) -> Result<Response<Body>, Fail> {
        let mut parts = Request::get(self.target("", self.base.query())?)
            .body(())
            .map_err(|_| Refusal::BadRequest("the target URL cannot be formed".into()))?
            .into_parts()
            .0;
        let mut payload = forward::Payload::Held(Bytes::new());
        self.dispatch(&mut parts, &mut payload, None).await
    }

    /// Fetches a token, for `endpoint test` on OAuth2 endpoints; `None` for other kinds.
    pub async fn test_token(&self) -> Option<Result<(), EgressError>> {
        match &self.credentials {
            Credentials::OAuth2(t) => Some(t.get().await.map(|_| ()).map_err(forward::token_failure)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;

    /// An egress call whose caller goes away while the target holds the answer back is
    /// logged and counted once, as 499.
    #[tokio::test]
    async fn a_call_whose_caller_goes_away_is_counted_once_as_499() {
        // A target that accepts and never answers.
        let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = target.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((s, _)) = target.accept().await {
                open.push(s);
            }
        });
        let text = format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n\n[egress]\naddress = \"127.0.0.1:0\"\n\n\
             [[endpoints]]\nname = \"slow\"\nbase_url = \"http://{addr}/api\"\nauth = {{ type = \"none\" }}\n"
        );
        let config = match config::parse(std::path::Path::new("egress.toml"), &text) {
            Ok(l) => l.config,
            Err(e) => panic!("{e}"),
        };
        let metrics = crate::metrics::Metrics::new();
        let egress = Egress::new(
            &config.endpoints,
            &metrics,
            &crate::shared::Backend::memory(&metrics).egress,
        )
        .unwrap();
        let signer = Signer::new(&[1; 32], Duration::from_secs(60));
        let conn = Arc::new(ConnInfo::new(
            "127.0.0.1:5000".parse().unwrap(),
            "127.0.0.1:9902".parse().unwrap(),
            false,
        ));
        let req = Request::get("/slow/x")
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        let mut call = Box::pin(handle(&egress, &signer, req, conn));
        let polled = std::future::poll_fn(|cx| std::task::Poll::Ready(call.as_mut().poll(cx).is_ready())).await;
        assert!(!polled, "the target never answers");
        drop(call);
        let text = metrics.render();
        assert!(
            text.contains("portcullis_egress_requests_total{endpoint=\"slow\",status=\"499\"} 1"),
            "{text}"
        );
        assert_eq!(
            egress.endpoints["slow"]
                .last_status
                .load(std::sync::atomic::Ordering::Relaxed),
            499
        );
        held.abort();
    }
}
