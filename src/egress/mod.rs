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

pub mod signer;
pub mod tls;
pub mod token;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::assertion::{Claims, Signer};
use crate::config::{self, EndpointAuth, Rule};
use crate::error::{full, json_error, Body, BoxError, Refusal};
use crate::headers;
use crate::server::listener::ConnInfo;

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
}

impl Egress {
    pub fn new(
        cfg: &[config::Endpoint],
        metrics: &crate::metrics::Metrics,
        tokens: &Arc<dyn crate::shared::EgressTokens>,
    ) -> Result<Self, String> {
        let mut endpoints = HashMap::new();
        for e in cfg {
            let verifier = Arc::new(
                tls::Verifier::new(e.trust_self_signed, e.pin_sha256)
                    .map_err(|err| format!("endpoint `{}`: {err}", e.name))?,
            );
            let client = tls::client(verifier.clone()).map_err(|err| format!("endpoint `{}`: {err}", e.name))?;
            let credentials = match &e.auth {
                EndpointAuth::None => Credentials::None,
                EndpointAuth::Basic {
                    username,
                    password,
                    preemptive,
                } => {
                    let raw = format!("{username}:{}", password.expose_str());
                    let mut header = HeaderValue::from_str(&format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(raw)
                    ))
                    .map_err(|_| format!("endpoint `{}`: credentials cannot form a header", e.name))?;
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
        })
    }

    /// The request-head limits of `[limits]` for callers of the egress port.
    pub fn with_head_limits(mut self, max_headers: usize, max_header_bytes: usize) -> Self {
        self.head_limits = (max_headers, max_header_bytes);
        self
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

/// A request body that can be sent more than once, or only once.
enum Payload {
    Held(Bytes),
    Stream(Body),
}

impl Payload {
    fn body(&mut self) -> Option<Body> {
        match std::mem::replace(self, Payload::Held(Bytes::new())) {
            Payload::Held(b) => {
                *self = Payload::Held(b.clone());
                Some(full(b))
            }
            Payload::Stream(s) => {
                *self = Payload::Stream(full(Bytes::new()));
                Some(s)
            }
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, Payload::Held(_))
    }
}

/// Reads up to `limit` bytes: the whole body if it fits, else the held part and the rest.
async fn hold(body: Incoming, limit: usize) -> Result<Payload, BoxError> {
    let mut body = body;
    let mut held = BytesMut::new();
    while held.len() <= limit {
        match body.frame().await {
            None => return Ok(Payload::Held(held.freeze())),
            Some(frame) => {
                if let Ok(data) = frame?.into_data() {
                    held.extend_from_slice(&data);
                }
            }
        }
    }
    Ok(Payload::Stream(crate::upstream::prefixed(held.freeze(), body)))
}

/// Serves one egress request; never fails.
pub async fn handle(egress: &Egress, signer: &Signer, req: Request<Incoming>, _conn: Arc<ConnInfo>) -> Response<Body> {
    let started = Instant::now();
    let request_id = match req.headers().get(headers::X_REQUEST_ID) {
        Some(v) if headers::valid_request_id(v) => v.clone(),
        _ => headers::new_request_id(),
    };
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mut endpoint_name = String::new();
    let mut initiator = String::new();
    let result = handle_inner(egress, signer, req, &request_id, &mut endpoint_name, &mut initiator).await;
    let (mut resp, reason) = match result {
        Ok(r) => (r, ""),
        Err(Fail::Refusal(r)) => {
            let reason = r.reason();
            (r.into_response(&request_id), reason)
        }
        Err(Fail::Egress(e)) => (json_error(e.status(), &e.message(), &request_id), e.reason()),
    };
    resp.headers_mut().insert(headers::X_REQUEST_ID, request_id.clone());
    let status = resp.status().as_u16();
    if let Some(e) = egress.endpoints.get(&endpoint_name) {
        egress
            .requests
            .with_label_values(&[&endpoint_name, &status.to_string()])
            .inc();
        e.last_status.store(status, std::sync::atomic::Ordering::Relaxed);
    }
    tracing::info!(
        target: "portcullis::egress",
        request_id = request_id.to_str().unwrap_or(""),
        endpoint = endpoint_name.as_str(),
        initiator = initiator.as_str(),
        method = method.as_str(),
        path = path.as_str(),
        status,
        reason,
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        "egress"
    );
    resp
}

enum Fail {
    /// What egress answers like the inbound side (400, 403, 504...).
    Refusal(Refusal),
    /// What only egress has, by source.
    Egress(EgressError),
}

/// Why an egress call was refused or failed, by source; each has its status, its log
/// reason and a message for the calling service.
#[derive(Debug, Clone)]
pub enum EgressError {
    /// 404: no endpoint of that name.
    UnknownEndpoint(String),
    /// 413: the body is over the largest whose Content-Digest is computed.
    BodyTooLargeToDigest,
    /// 400: the request cannot be signed as configured (the signer's reason).
    CannotSign(String),
    /// 502: a signature header could not be formed.
    BadHeader,
    /// 502: the token server gave a token that cannot be a header.
    BadToken,
    /// 502: the token server refused or failed (its RFC 6749 error when it gave one).
    TokenServer(String),
    /// 502: the target asked for credentials again and the body was not kept to replay.
    BodyTooLargeToReplay(&'static str),
    /// 502: connect or TLS failure, with the chain of causes.
    Unreachable { endpoint: String, detail: String },
}

impl EgressError {
    pub fn status(&self) -> StatusCode {
        match self {
            EgressError::UnknownEndpoint(_) => StatusCode::NOT_FOUND,
            EgressError::BodyTooLargeToDigest => StatusCode::PAYLOAD_TOO_LARGE,
            EgressError::CannotSign(_) => StatusCode::BAD_REQUEST,
            EgressError::BadHeader
            | EgressError::BadToken
            | EgressError::TokenServer(_)
            | EgressError::BodyTooLargeToReplay(_)
            | EgressError::Unreachable { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            EgressError::UnknownEndpoint(_) => "unknown_endpoint",
            EgressError::BodyTooLargeToDigest => "body_too_large_to_digest",
            EgressError::CannotSign(_) => "cannot_sign",
            EgressError::BadHeader => "bad_header",
            EgressError::BadToken => "bad_token",
            EgressError::TokenServer(_) => "token_fetch_failed",
            EgressError::BodyTooLargeToReplay(_) => "body_too_large_to_replay",
            EgressError::Unreachable { .. } => "target_unreachable",
        }
    }

    pub fn message(&self) -> String {
        match self {
            EgressError::UnknownEndpoint(name) => format!("no endpoint named `{}`", crate::util::Escaped(name)),
            EgressError::BodyTooLargeToDigest => format!(
                "the body is over {} bytes, the largest whose Content-Digest is computed",
                signer::DIGEST_LIMIT
            ),
            EgressError::CannotSign(why) => why.clone(),
            EgressError::BadHeader => "a signature header could not be formed".into(),
            EgressError::BadToken => "the token server gave an unusable token".into(),
            EgressError::TokenServer(why) => why.clone(),
            EgressError::BodyTooLargeToReplay(why) => format!(
                "the target answered 401 and {why} needs the request sent again, but its body is over {REPLAY_LIMIT} bytes and was not kept"
            ),
            EgressError::Unreachable { endpoint, detail } => format!("endpoint `{endpoint}` unreachable: {detail}"),
        }
    }
}

impl From<EgressError> for Fail {
    fn from(e: EgressError) -> Self {
        Fail::Egress(e)
    }
}

impl From<Refusal> for Fail {
    fn from(r: Refusal) -> Self {
        Fail::Refusal(r)
    }
}

fn forbidden(reason: &'static str) -> Fail {
    Fail::Refusal(Refusal::Forbidden {
        reason,
        challenge: None,
    })
}

async fn handle_inner(
    egress: &Egress,
    signer: &Signer,
    req: Request<Incoming>,
    request_id: &HeaderValue,
    endpoint_name: &mut String,
    initiator: &mut String,
) -> Result<Response<Body>, Fail> {
    let (mut parts, body) = req.into_parts();
    let (max_headers, max_bytes) = egress.head_limits;
    if parts.headers.len() > max_headers || headers::size(&parts.headers) > max_bytes {
        return Err(Refusal::HeadersTooLarge.into());
    }
    let path = parts.uri.path();
    crate::path::check_path(path).map_err(|e| Refusal::BadRequest(e.to_string().into()))?;
    let trimmed = &path[1..];
    let (name, rest) = match trimmed.find('/') {
        Some(i) => (&trimmed[..i], &trimmed[i..]),
        None => (trimmed, ""),
    };
    let Some(endpoint) = egress.endpoints.get(name).cloned() else {
        crate::upstream::drain(body);
        return Err(EgressError::UnknownEndpoint(name.to_string()).into());
    };
    *endpoint_name = name.to_string();

    // The initiator: a valid assertion, or none; an invalid one is refused outright.
    let claims: Option<Claims> = match parts.headers.get(headers::X_PORTCULLIS_ASSERTION) {
        None => None,
        Some(v) => match v.to_str().ok().map(|t| signer.verify(t)) {
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => {
                crate::upstream::drain(body);
                let reason = match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => "assertion_expired",
                    _ => "assertion_invalid",
                };
                return Err(forbidden(reason));
            }
            None => {
                crate::upstream::drain(body);
                return Err(forbidden("assertion_invalid"));
            }
        },
    };
    if let Some(c) = &claims {
        *initiator = c.sub.clone();
    }
    if let Some(rule) = &endpoint.callers {
        match &claims {
            None => {
                crate::upstream::drain(body);
                return Err(forbidden("no_initiator"));
            }
            Some(c) if !rule.allows(&c.sub, &c.roles) => {
                crate::upstream::drain(body);
                return Err(forbidden("not_a_caller"));
            }
            Some(_) => {}
        }
    }
    let assertion = parts.headers.get(headers::X_PORTCULLIS_ASSERTION).cloned();
    if matches!(endpoint.credentials, Credentials::Principal) && claims.is_none() {
        crate::upstream::drain(body);
        return Err(forbidden("no_initiator"));
    }

    // The outbound head.
    let query = parts.uri.query().map(str::to_string);
    let target = endpoint.target(rest, query.as_deref())?;
    let h = &mut parts.headers;
    headers::remove_hop_by_hop(h);
    headers::strip_portcullis(h);
    h.remove(header::AUTHORIZATION);
    h.remove(header::HOST);
    h.insert(headers::X_REQUEST_ID, request_id.clone());
    parts.uri = target;
    parts.version = http::Version::HTTP_11;

    let needs_replay = matches!(
        endpoint.credentials,
        Credentials::Basic { preemptive: false, .. } | Credentials::OAuth2(_)
    );
    let mut payload = match &endpoint.credentials {
        Credentials::Signature(s) if s.covers_digest() => match hold(body, signer::DIGEST_LIMIT).await {
            Ok(p @ Payload::Held(_)) => p,
            Ok(Payload::Stream(_)) => return Err(EgressError::BodyTooLargeToDigest.into()),
            Err(_) => return Err(Refusal::BadRequest("request body could not be read".into()).into()),
        },
        _ if needs_replay => hold(body, REPLAY_LIMIT)
            .await
            .map_err(|_| Fail::Refusal(Refusal::BadRequest("request body could not be read".into())))?,
        _ => Payload::Stream(body.map_err(BoxError::from).boxed_unsync()),
    };

    endpoint
        .dispatch(&mut parts, &mut payload, assertion)
        .await
        .map(|mut resp| {
            headers::remove_hop_by_hop(resp.headers_mut());
            resp
        })
}

impl Endpoint {
    /// Adds the endpoint's credentials and sends, replaying once where the scheme asks.
    async fn dispatch(
        &self,
        parts: &mut http::request::Parts,
        payload: &mut Payload,
        assertion: Option<HeaderValue>,
    ) -> Result<Response<Body>, Fail> {
        let endpoint = self;
        match &endpoint.credentials {
            Credentials::None => send(endpoint, parts, payload).await,
            Credentials::Principal => {
                if let Some(a) = assertion {
                    parts.headers.insert(headers::X_PORTCULLIS_ASSERTION, a);
                }
                send(endpoint, parts, payload).await
            }
            Credentials::Basic {
                header: auth,
                preemptive: true,
            } => {
                parts.headers.insert(header::AUTHORIZATION, auth.clone());
                send(endpoint, parts, payload).await
            }
            Credentials::Basic {
                header: auth,
                preemptive: false,
            } => {
                let first = send(endpoint, parts, payload).await?;
                if !(first.status() == StatusCode::UNAUTHORIZED && basic_challenge(&first)) {
                    return Ok(first);
                }
                if !payload.replayable() {
                    return Err(too_large_to_replay("a Basic challenge"));
                }
                parts.headers.insert(header::AUTHORIZATION, auth.clone());
                send(endpoint, parts, payload).await
            }
            Credentials::OAuth2(source) => {
                let (token, fresh) = source.get().await.map_err(token_failure)?;
                parts.headers.insert(header::AUTHORIZATION, bearer(&token)?);
                let first = send(endpoint, parts, payload).await?;
                if first.status() != StatusCode::UNAUTHORIZED {
                    return Ok(first);
                }
                source.invalidate(&token).await;
                if fresh {
                    // A token fetched for this very request was refused: no second fetch.
                    return Ok(first);
                }
                if !payload.replayable() {
                    return Err(too_large_to_replay("an OAuth2 token refresh"));
                }
                let (token, _) = source.get().await.map_err(token_failure)?;
                parts.headers.insert(header::AUTHORIZATION, bearer(&token)?);
                send(endpoint, parts, payload).await
            }
            Credentials::Signature(s) => {
                if s.covers_digest() {
                    if let Payload::Held(b) = &payload {
                        let digest = HeaderValue::from_str(&signer::content_digest(b)).map_err(|_| bad_header())?;
                        parts.headers.insert("content-digest", digest);
                    }
                }
                let created = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                let m = signer::Message {
                    method: &parts.method,
                    uri: &parts.uri,
                    headers: &parts.headers,
                };
                let (input, sig) = s
                    .sign(&m, created)
                    .map_err(|e| Fail::from(EgressError::CannotSign(e)))?;
                parts.headers.insert(
                    "signature-input",
                    HeaderValue::from_str(&input).map_err(|_| bad_header())?,
                );
                parts
                    .headers
                    .insert("signature", HeaderValue::from_str(&sig).map_err(|_| bad_header())?);
                send(endpoint, parts, payload).await
            }
        }
    }

    /// `portcullis endpoint test`: one GET of the base URL with the credentials.
    pub async fn probe(&self) -> Result<Response<Body>, String> {
        let mut parts = Request::get(
            self.target("", self.base.query())
                .map_err(|r| r.message().into_owned())?,
        )
        .body(())
        .map_err(|e| e.to_string())?
        .into_parts()
        .0;
        let mut payload = Payload::Held(Bytes::new());
        self.dispatch(&mut parts, &mut payload, None)
            .await
            .map_err(|f| match f {
                Fail::Refusal(r) => format!("{} ({})", r.message(), r.reason()),
                Fail::Egress(e) => e.message(),
            })
    }

    /// Fetches a token, for `endpoint test` on OAuth2 endpoints; `None` for other kinds.
    pub async fn test_token(&self) -> Option<Result<(), String>> {
        match &self.credentials {
            Credentials::OAuth2(t) => Some(t.get().await.map(|_| ()).map_err(|e| e.0)),
            _ => None,
        }
    }
}

fn bad_header() -> Fail {
    EgressError::BadHeader.into()
}

fn bearer(token: &str) -> Result<HeaderValue, Fail> {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| Fail::from(EgressError::BadToken))?;
    v.set_sensitive(true);
    Ok(v)
}

fn token_failure(e: token::FetchError) -> Fail {
    EgressError::TokenServer(e.0).into()
}

fn too_large_to_replay(why: &'static str) -> Fail {
    EgressError::BodyTooLargeToReplay(why).into()
}

fn basic_challenge(resp: &Response<Body>) -> bool {
    resp.headers()
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .any(|v| v.as_bytes().len() >= 5 && v.as_bytes()[..5].eq_ignore_ascii_case(b"basic"))
}

async fn send(
    endpoint: &Endpoint,
    parts: &http::request::Parts,
    payload: &mut Payload,
) -> Result<Response<Body>, Fail> {
    let mut head = Request::new(payload.body().unwrap_or_else(|| full(Bytes::new())));
    *head.method_mut() = parts.method.clone();
    *head.uri_mut() = parts.uri.clone();
    *head.version_mut() = parts.version;
    *head.headers_mut() = parts.headers.clone();
    match tokio::time::timeout(endpoint.timeout, endpoint.client.request(head)).await {
        Err(_) => Err(Refusal::GatewayTimeout.into()),
        Ok(Err(e)) => {
            let detail = error_chain(&e);
            tracing::warn!(endpoint = %endpoint.name, error = %detail, "egress: target unreachable");
            Err(EgressError::Unreachable {
                endpoint: endpoint.name.clone(),
                detail,
            }
            .into())
        }
        Ok(Ok(resp)) => Ok(resp.map(|b| b.map_err(BoxError::from).boxed_unsync())),
    }
}

/// An error and its sources on one line, escaped, e.g. "client error (Connect): invalid
/// peer certificate: Expired": a TLS error quotes the names the peer's
/// certificate presented, a connection error what the peer sent.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    crate::util::escaped(chain(e))
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
