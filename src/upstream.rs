//! Upstream side: the pooled HTTP client, the builtin echo upstream, and request bodies
//! held to `max_body_bytes` while they stream.

pub mod h1;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::error::{full, Body, BoxError};

/// A request body the pipeline reads: hyper's `Incoming` from a listener, or any body a
/// test drives the pipeline with in process.
pub trait RequestBody: HttpBody<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static {}

impl<B: HttpBody<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static> RequestBody for B {}

/// The pooled client used for every upstream, plain or TLS (web PKI roots).
pub type Client = hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, Body>;

pub fn client() -> Client {
    build_client(Versions::Both)
}

/// The client for `h2c://` upstreams: HTTP/2 only, by prior knowledge.
pub fn h2c_client() -> Client {
    build_client(Versions::H2)
}

/// The client for upgrades (WebSocket): HTTP/1.1 only, also over TLS (ALPN offers
/// `http/1.1` alone), since HTTP/2 to the upstream cannot carry an `Upgrade`.
pub fn h1_client() -> Client {
    build_client(Versions::H1)
}

#[derive(Clone, Copy, PartialEq)]
enum Versions {
    Both,
    H1,
    H2,
}

fn build_client(versions: Versions) -> Client {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(crate::util::provider())
        // The ring provider supports the default protocol versions.
        .expect("ring supports TLS 1.2 and 1.3")
        .https_or_http()
        .enable_http1();
    let https = if versions == Versions::H1 {
        builder.wrap_connector(http)
    } else {
        builder.enable_http2().wrap_connector(http)
    };
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_only(versions == Versions::H2)
        .build(https)
}

// === impl echo ===

/// `builtin:echo`: answers with a JSON description of the request as it would have
/// reached an upstream. The body is counted as it streams, never held.
pub async fn echo(req: Request<Body>) -> Result<Response<Body>, BoxError> {
    let (parts, mut body) = req.into_parts();
    let mut body_length: u64 = 0;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            body_length += data.len() as u64;
        }
    }
    let mut headers = serde_json::Map::new();
    for name in parts.headers.keys() {
        let values: Vec<&str> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("<binary>"))
            .collect();
        headers.insert(name.as_str().to_string(), serde_json::Value::String(values.join(", ")));
    }
    let doc = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_length": body_length,
    });
    let mut resp = Response::new(full(doc.to_string()));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

// === impl body limits ===

/// Set when a streamed body went over its limit (so the caller answers 413, not 502) or
/// past its time (408).
///
/// A body that was complete on arrival (most GETs) shares one static, already finished
/// state instead of allocating its own.
#[derive(Debug, Clone, Default)]
pub struct Overflow(Option<Arc<[AtomicBool; 4]>>);

const OVER_LIMIT: usize = 0;
const TIMED_OUT: usize = 1;
const FINISHED: usize = 2;
const CLIENT_GONE: usize = 3;

impl Overflow {
    fn tracking() -> Self {
        Self(Some(Arc::default()))
    }

    fn get(&self, which: usize) -> bool {
        match &self.0 {
            Some(flags) => flags[which].load(Ordering::Acquire),
            None => which == FINISHED,
        }
    }

    pub fn happened(&self) -> bool {
        self.get(OVER_LIMIT)
    }

    /// The body stalled or was still arriving when its time was up.
    pub fn timed_out(&self) -> bool {
        self.get(TIMED_OUT)
    }

    /// The client's body broke off: it closed or reset before sending all of it.
    pub fn client_gone(&self) -> bool {
        self.get(CLIENT_GONE)
    }

    /// Whether the client's body was read to its end (always, for a body held whole).
    pub fn finished(&self) -> bool {
        self.get(FINISHED)
    }

    fn set(&self, which: usize) {
        if let Some(flags) = &self.0 {
            flags[which].store(true, Ordering::Release);
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("request body not received within body_read_timeout or request_timeout")]
pub struct BodyTimeout;

#[derive(Debug, thiserror::Error)]
#[error("request body exceeds max_body_bytes")]
pub struct TooLarge;

/// Why a request body could not be prepared for forwarding.
#[derive(Debug)]
pub enum BodyError {
    TooLarge,
    Timeout,
    Client(BoxError),
}

/// Largest unknown-length body held back before forwarding, to learn its size first.
pub const SPOOL_BYTES: u64 = 1024 * 1024;

/// Bytes of unknown-length request bodies held back across the whole process.
static SPOOLED: AtomicU64 = AtomicU64::new(0);

/// Bytes of the process-wide spool budget held by one request body, given back when the
/// held bytes are sent on (or dropped).
struct SpoolTicket(u64);

impl SpoolTicket {
    /// Takes `n` more bytes of the budget `max`, if they fit.
    fn grow(&mut self, n: u64, max: u64) -> bool {
        let mut used = SPOOLED.load(Ordering::Acquire);
        loop {
            if used.saturating_add(n) > max {
                return false;
            }
            match SPOOLED.compare_exchange_weak(used, used + n, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    self.0 += n;
                    return true;
                }
                Err(now) => used = now,
            }
        }
    }
}

impl Drop for SpoolTicket {
    fn drop(&mut self) {
        SPOOLED.fetch_sub(self.0, Ordering::AcqRel);
    }
}

/// How long a request body may take: `idle` without a byte, and all of it by `until`.
#[derive(Debug, Clone, Copy)]
pub struct BodyTiming {
    pub idle: Duration,
    pub until: tokio::time::Instant,
    /// The process-wide spool budget (`max_spool_bytes`).
    pub spool_max: u64,
}

impl BodyTiming {
    fn next_deadline(&self) -> tokio::time::Instant {
        (tokio::time::Instant::now() + self.idle).min(self.until)
    }
}

/// Prepares `body` for forwarding under `limit` (0 = none) and `timing`, without its
/// trailers: they arrive after every check has run, so a client could put any header in
/// them; the body ends where they would start.
///
/// A declared `Content-Length` over the limit is refused before a byte is read. A body of
/// unknown length is read until it ends or passes `min(limit, SPOOL_BYTES)` (less when the
/// process-wide `max_spool_bytes` is taken): one that ends over the limit within that
/// window is refused without anything reaching the upstream. A longer one streams on,
/// counted, and is cut with an error the moment it passes the limit, so the upstream never
/// receives a complete over-limit request. Every body, whatever its framing, is cut when it
/// sends nothing for `timing.idle` or is not complete by `timing.until` (`Timeout`, 408).
pub async fn limit_body<B: RequestBody>(
    body: B,
    limit: u64,
    declared: Option<u64>,
    timing: BodyTiming,
) -> Result<(Body, Overflow), BodyError> {
    if body.is_end_stream() {
        return Ok((body.map_err(Into::into).boxed_unsync(), Overflow::default()));
    }
    let overflow = Overflow::tracking();
    if declared.is_some_and(|n| limit > 0 && n > limit) {
        return Err(BodyError::TooLarge);
    }
    let streamed = |body, remaining, ticket, prefix| Prefixed {
        prefix,
        keep_trailers: false,
        rest: Some(body),
        remaining,
        overflow: overflow.clone(),
        timer: Some(Box::pin(tokio::time::sleep_until(timing.next_deadline()))),
        timing: Some(timing),
        ticket,
    };
    if limit == 0 || declared.is_some() {
        // hyper (HTTP/1) and h2 (HTTP/2) both hold the body to its declared length.
        let body = streamed(body, u64::MAX, None, None);
        return Ok((body.boxed_unsync(), overflow));
    }
    let window = limit.min(SPOOL_BYTES);
    let mut body = body;
    let mut held = BytesMut::new();
    let mut ticket = SpoolTicket(0);
    let mut ended = false;
    while (held.len() as u64) <= window {
        let frame = match tokio::time::timeout_at(timing.next_deadline(), body.frame()).await {
            Ok(f) => f,
            Err(_) => return Err(BodyError::Timeout),
        };
        match frame {
            None => {
                ended = true;
                break;
            }
            Some(Err(e)) => return Err(BodyError::Client(e.into())),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if !ticket.grow(data.len() as u64, timing.spool_max) {
                        // The process holds all it may: stream this body on, counted.
                        held.extend_from_slice(&data);
                        break;
                    }
                    held.extend_from_slice(&data);
                }
                // Trailers: dropped, and the body ends there.
                Err(_) => {
                    ended = true;
                    break;
                }
            },
        }
    }
    if held.len() as u64 > limit {
        return Err(BodyError::TooLarge);
    }
    if ended {
        overflow.set(FINISHED);
        let body = Prefixed::<B> {
            prefix: Some(held.freeze()),
            keep_trailers: false,
            rest: None,
            remaining: 0,
            overflow: overflow.clone(),
            timer: None,
            timing: None,
            ticket: Some(ticket),
        };
        return Ok((body.boxed_unsync(), overflow));
    }
    let remaining = limit - held.len() as u64;
    let body = streamed(body, remaining, Some(ticket), Some(held.freeze()));
    Ok((body.boxed_unsync(), overflow))
}

/// `prefix` (already read), then the rest of `body`, without a limit.
pub fn prefixed<B: RequestBody>(prefix: Bytes, body: B) -> Body {
    Prefixed {
        prefix: Some(prefix),
        keep_trailers: true,
        rest: Some(body),
        remaining: u64::MAX,
        overflow: Overflow::default(),
        timer: None,
        timing: None,
        ticket: None,
    }
    .boxed_unsync()
}

/// Held bytes first, then the rest of the client's body, cut past the limit or its time.
struct Prefixed<B> {
    prefix: Option<Bytes>,
    /// Inbound bodies drop the client's trailers; egress passes a local service's on.
    keep_trailers: bool,
    rest: Option<B>,
    remaining: u64,
    overflow: Overflow,
    /// Fires at the body's next deadline (idle, or the whole request's).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    timing: Option<BodyTiming>,
    /// The held prefix's share of the spool budget, given back once it is sent.
    ticket: Option<SpoolTicket>,
}

impl<B: RequestBody> HttpBody for Prefixed<B> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(p) = self.prefix.take() {
            self.ticket = None;
            if !p.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(p))));
            }
        }
        let Some(rest) = self.rest.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(rest).poll_frame(cx);
        if polled.is_pending() {
            if let Some(timer) = self.timer.as_mut() {
                if timer.as_mut().poll(cx).is_ready() {
                    self.timer = None;
                    self.rest = None;
                    self.overflow.set(TIMED_OUT);
                    return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
                }
            }
            return Poll::Pending;
        }
        if let Some(timing) = self.timing {
            if let Some(timer) = self.timer.as_mut() {
                timer.as_mut().reset(timing.next_deadline());
            }
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() && !self.keep_trailers => {
                self.rest = None;
                self.timer = None;
                self.overflow.set(FINISHED);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > self.remaining {
                        self.overflow.set(OVER_LIMIT);
                        self.rest = None;
                        return Poll::Ready(Some(Err(Box::new(TooLarge))));
                    }
                    self.remaining -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let e: BoxError = e.into();
                if client_gone(&e) {
                    self.overflow.set(CLIENT_GONE);
                }
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.rest = None;
                self.timer = None;
                self.overflow.set(FINISHED);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self
            .rest
            .as_ref()
            .map(|r| r.size_hint())
            .unwrap_or_else(|| SizeHint::with_exact(0));
        let p = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let lower = hint.lower() + p;
        if let Some(u) = hint.upper() {
            hint.set_upper(u + p);
        }
        hint.set_lower(lower);
        hint
    }
}

/// Whether a request body's error means the client broke off (closed or reset the
/// connection or the stream before the end), not that it sent something malformed: a
/// body that stops is the client going away, a parse error is a bad request.
pub fn client_gone(e: &BoxError) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            return !(h.is_parse() || h.is_user() || h.is_timeout());
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        cur = err.source();
    }
    false
}

/// Reads and discards what is left of a refused request's body, within bounds, so the
/// client reads our answer instead of a reset connection (the "lingering close" of
/// nginx); past the bounds the connection is simply closed.
pub fn drain<B: RequestBody>(body: B) {
    if body.is_end_stream() {
        return;
    }
    tokio::spawn(async move {
        let mut body = body;
        let mut left: u64 = 16 * 1024 * 1024;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while left > 0 {
            match tokio::time::timeout_at(deadline, body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                    left = left.saturating_sub(n);
                }
                _ => break,
            }
        }
    });
}

// === impl OAuthHttp ===

/// The oauth2 crate's HTTP client, over a Portcullis pooled client (loopback, web PKI or
/// an endpoint's own trust settings). Bodies are capped at 1 MiB.
pub struct OAuthHttp(pub Client);

/// Why an OAuth server could not be asked.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OAuthHttpError(String);

impl<'c> oauth2::AsyncHttpClient<'c> for OAuthHttp {
    type Error = OAuthHttpError;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<oauth2::HttpResponse, OAuthHttpError>> + Send + 'c>>;

    fn call(&'c self, req: oauth2::HttpRequest) -> Self::Future {
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let req = http::Request::from_parts(parts, full(body));
            let resp = self.0.request(req).await.map_err(|e| {
                let detail = std::error::Error::source(&e)
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default();
                OAuthHttpError(format!("{e}{detail}"))
            })?;
            let (parts, body) = resp.into_parts();
            let body = http_body_util::Limited::new(body, 1024 * 1024)
                .collect()
                .await
                .map_err(|e| OAuthHttpError(format!("response body: {e}")))?
                .to_bytes()
                .to_vec();
            Ok(http::Response::from_parts(parts, body))
        })
    }
}
