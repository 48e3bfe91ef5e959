//! Accepting connections and serving HTTP on them, with every limit of `[limits]`.
//!
//! One loop per listener: accept, enforce `max_connections` (a connection over the cap is
//! closed at once and counted), finish the TLS handshake within `header_read_timeout`,
//! then let hyper serve HTTP/1.1 or HTTP/2 (by ALPN or preface) until the client leaves,
//! the connection idles past `idle_timeout`, or shutdown asks it to finish.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

use super::activity::{Activity, InFlight, Observed, Observer};
use super::shutdown::Shutdown;
use crate::config::Limits;
use crate::error::Body;
use crate::metrics::Metrics;

/// What a handler knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
    /// The peer's IP address as a header value, made once per connection (it goes into
    /// every request's `X-Forwarded-For`).
    pub ip_header: http::HeaderValue,
    /// The client certificate the TLS handshake verified, if any.
    pub client_cert: Option<Arc<super::tls::ClientCert>>,
    /// The listener's `max_connections` places, for what holds a socket of its own
    /// without a connection of its own (a WebSocket tunnel over HTTP/2).
    pub places: Option<Places>,
}

/// A listener's places in `max_connections`. Each connection holds one, and so does each
/// WebSocket tunnel an HTTP/2 connection opens (one upstream socket apiece): streams
/// multiply tunnels per connection, places keep their sum bounded.
#[derive(Debug, Clone)]
pub struct Places {
    active: Arc<AtomicUsize>,
    gauge: prometheus::IntGauge,
    rejected: prometheus::IntCounter,
    max: usize,
}

impl Places {
    /// A place, held until the guard drops; `None` when all are taken.
    pub fn take(&self) -> Option<ConnGuard> {
        if self.active.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.active.fetch_sub(1, Ordering::AcqRel);
            self.rejected.inc();
            return None;
        }
        self.gauge.inc();
        Some(ConnGuard {
            active: self.active.clone(),
            gauge: self.gauge.clone(),
        })
    }
}

impl ConnInfo {
    pub fn new(remote: SocketAddr, local: SocketAddr, tls: bool) -> Self {
        let ip_header = http::HeaderValue::from_str(&remote.ip().to_string())
            .unwrap_or_else(|_| http::HeaderValue::from_static("unknown"));
        ConnInfo {
            remote,
            local,
            tls,
            ip_header,
            client_cert: None,
            places: None,
        }
    }
}

/// Per-connection settings, read from the current config at accept time.
#[derive(Clone)]
pub struct ConnSettings {
    pub limits: Limits,
    pub tls: Option<TlsAcceptor>,
}

/// Serves `listener` until `shutdown` fires; connections run on `tracker`. `active`
/// counts the listener's places in `max_connections`: one counter for every socket of
/// the listener (the per-core workers share it).
#[allow(clippy::too_many_arguments)]
pub async fn serve<S, H, F>(
    listener: TcpListener,
    name: &'static str,
    settings: S,
    handler: H,
    metrics: Metrics,
    tracker: TaskTracker,
    mut shutdown: Shutdown,
    active: Arc<AtomicUsize>,
) where
    S: Fn() -> ConnSettings + Send + Sync + 'static,
    H: Fn(Request<Incoming>, Arc<ConnInfo>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    debug_assert!(
        crate::metrics::LISTENERS.contains(&name),
        "listener {name} not pre-created"
    );
    let gauge = metrics.connections_active.with_label_values(&[name]);
    let rejected = metrics.connections_rejected.with_label_values(&[name]);
    loop {
        let (stream, remote) = tokio::select! {
            _ = shutdown.fired() => break,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let settings = settings();
        if active.fetch_add(1, Ordering::AcqRel) >= settings.limits.max_connections {
            active.fetch_sub(1, Ordering::AcqRel);
            rejected.inc();
            tracing::warn!(listener = name, %remote, "max_connections reached; connection closed");
            drop(stream);
            continue;
        }
        let guard = ConnGuard {
            active: active.clone(),
            gauge: gauge.clone(),
        };
        gauge.inc();
        let local = stream.local_addr().unwrap_or(remote);
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        let refused = Refused {
            listener: name,
            malformed: metrics.malformed_heads.clone(),
            requests: metrics.requests.with_label_values(&["", "", "", "bad_request"]),
        };
        let places = Places {
            active: active.clone(),
            gauge: gauge.clone(),
            rejected: rejected.clone(),
            max: settings.limits.max_connections,
        };
        let mut info = ConnInfo::new(remote, local, settings.tls.is_some());
        info.places = Some(places);
        let accounting = Accounting {
            abuse: metrics.h2_reset_abuse.clone(),
            guard: Some(guard),
            refused,
        };
        let tls_failures = metrics.tls_handshake_failures.clone();
        tracker.spawn(async move {
            let limits = &settings.limits;
            match settings.tls.clone() {
                Some(acceptor) => {
                    if let Some((tls, info, h2)) = handshake(acceptor, stream, info, limits, name, &tls_failures).await
                    {
                        serve_connection(tls, info, limits, h2, handler, shutdown, accounting).await
                    }
                }
                None => serve_connection(stream, Arc::new(info), limits, false, handler, shutdown, accounting).await,
            }
        });
    }
    tracing::info!(listener = name, "stopped accepting");
}

/// The TLS handshake of an accepted connection, within `header_read_timeout`: the
/// stream, what the handler learns of the connection (with the client certificate the
/// handshake verified), and whether ALPN chose HTTP/2. A failure is counted and logged,
/// and ends the connection.
async fn handshake(
    acceptor: TlsAcceptor,
    stream: tokio::net::TcpStream,
    mut info: ConnInfo,
    limits: &Limits,
    name: &'static str,
    failures: &prometheus::IntCounter,
) -> Option<(
    tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    Arc<ConnInfo>,
    bool,
)> {
    let remote = info.remote;
    match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            info.client_cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|leaf| super::tls::ClientCert::from_der(leaf.as_ref()))
                .map(Arc::new);
            Some((tls, Arc::new(info), h2))
        }
        Ok(Err(e)) => {
            failures.inc();
            tracing::debug!(listener = name, %remote, error = %crate::util::Escaped(&e), "TLS handshake failed");
            None
        }
        Err(_) => {
            failures.inc();
            tracing::debug!(listener = name, %remote, "TLS handshake timed out");
            None
        }
    }
}

/// What a connection counts against: the rapid-reset counter, and its place in
/// `max_connections` (held by the socket, so an upgraded tunnel keeps it).
struct Accounting {
    abuse: prometheus::IntCounter,
    guard: Option<ConnGuard>,
    refused: Refused,
}

/// Where a request head that the HTTP/1.1 parser refused itself is counted and logged:
/// the pipeline never saw it, but it is a refusal like any other.
struct Refused {
    listener: &'static str,
    malformed: prometheus::IntCounterVec,
    requests: prometheus::IntCounter,
}

impl Refused {
    /// Logs and counts the head hyper refused, once, with the status hyper answered
    /// (431, 414 or 400). Not a parse error: nothing to do.
    fn record(&self, error: &(dyn std::error::Error + 'static), remote: SocketAddr) {
        let Some(e) = error.downcast_ref::<hyper::Error>() else {
            return;
        };
        if !e.is_parse() || e.is_parse_version_h2() {
            return;
        }
        let (status, reason) = if e.is_parse_too_large() {
            // hyper's two "too large" kinds: the URI alone, or the head.
            if e.to_string().contains("URI") {
                (414, "uri_too_long")
            } else {
                (431, "headers_too_large")
            }
        } else {
            (400, "malformed_request")
        };
        self.malformed.with_label_values(&[self.listener, reason]).inc();
        self.requests.inc();
        let request_id = crate::headers::new_request_id();
        tracing::info!(
            target: "portcullis::access",
            request_id = request_id.to_str().unwrap_or(""),
            listener = self.listener,
            client = %remote.ip(),
            method = "",
            path = "",
            status,
            reason,
            protocol = "HTTP/1.1",
            "request head refused by the HTTP parser"
        );
    }
}

/// A connection's observer: its [`Activity`], and its place in `max_connections`, held
/// as long as its socket (an upgraded tunnel's too).
struct Conn {
    activity: Arc<Activity>,
    _place: Option<ConnGuard>,
}

impl Observer for Conn {
    fn read(&self, bytes: &[u8]) {
        self.activity.read(bytes);
    }

    fn wrote(&self) {
        self.activity.touch();
    }
}

/// One place in `max_connections`, given back on drop.
pub struct ConnGuard {
    active: Arc<AtomicUsize>,
    gauge: prometheus::IntGauge,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

/// How many header fields hyper's HTTP/1 parser holds: twice `max_headers` (at least 100).
fn parser_max_headers(limits: &Limits) -> usize {
    limits.max_headers.saturating_mul(2).max(100)
}

/// hyper's HTTP/1 read buffer: room for `max_header_bytes` plus the request line, so that
/// our own check answers 431 with the JSON body; past that hyper answers 431 itself.
fn read_buf_size(limits: &Limits) -> usize {
    (limits.max_header_bytes + 16 * 1024).max(8192)
}

/// hyper's HTTP/1.1 and HTTP/2 settings for a connection under `limits`.
fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Request heads are timed by `Activity` instead: hyper's timer also runs while a
        // keep-alive connection waits for its next request, which would make
        // header_read_timeout the idle timeout.
        .header_read_timeout(None)
        .max_buf_size(read_buf_size(limits))
        // Room for twice max_headers, so that our own check answers a head with too many
        // fields (431 with the JSON body and X-Request-Id); past that hyper answers a bare
        // 431 itself, which `Refused` logs and counts. Up to 100 the parser's header array
        // lives on the stack; past it hyper allocates two arrays of this many entries per
        // request head, so it is a limit, not a hint.
        .max_headers(parser_max_headers(limits))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(read_buf_size(limits) as u32)
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        // CVE-2023-44487 (rapid reset): streams reset before the service saw them, and
        // streams the server had to reset for protocol errors, are budgeted per
        // connection; past either budget the connection ends with GOAWAY.
        .max_pending_accept_reset_streams(limits.h2_max_pending_resets)
        .max_local_error_reset_streams(limits.h2_max_pending_resets)
        // RFC 8441: WebSockets over HTTP/2 (extended CONNECT); the pipeline lets them
        // through only where an integration allows WebSocket upgrades.
        .enable_connect_protocol();
    builder
}

/// The connection's service: each request counted in flight (and as abandoned when
/// hyper drops it before its answer), its credentials marked sensitive, then the handler.
fn service<H, F>(
    handler: H,
    info: Arc<ConnInfo>,
    activity: Arc<Activity>,
) -> TowerToHyperService<
    tower_http::sensitive_headers::SetSensitiveRequestHeaders<
        impl tower::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible, Future: Send> + Clone,
    >,
>
where
    H: Fn(Request<Incoming>, Arc<ConnInfo>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let handle = tower::service_fn(move |req: Request<Incoming>| {
        let handler = handler.clone();
        let info = info.clone();
        let activity = activity.clone();
        async move {
            activity.in_flight.fetch_add(1, Ordering::AcqRel);
            activity.head_arrived();
            // Decrements even when hyper drops this future (a reset stream, a client
            // gone): idle and drain logic must not see a request that no longer exists.
            let mut in_flight = InFlight {
                activity: activity.clone(),
                answered: false,
            };
            // The pipeline's future is several KB: boxed, so that this future stays small
            // and hyper's service plumbing moves a few words at each hand-over, not the
            // pipeline's whole state.
            let resp = Box::pin(handler(req, info)).await;
            in_flight.answered = true;
            Ok::<_, Infallible>(resp)
        }
    });
    // Credentials are marked sensitive before anything can log or debug-print a request.
    let svc = tower::ServiceBuilder::new()
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::PROXY_AUTHORIZATION,
            header::COOKIE,
        ]))
        .service(handle);
    TowerToHyperService::new(svc)
}

async fn serve_connection<I, H, F>(
    io: I,
    info: Arc<ConnInfo>,
    limits: &Limits,
    h2: bool,
    handler: H,
    mut shutdown: Shutdown,
    accounting: Accounting,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>, Arc<ConnInfo>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let activity = Arc::new(Activity::new(
        limits.header_read_timeout,
        h2,
        limits.h2_max_pending_resets,
    ));
    let Accounting { abuse, guard, refused } = accounting;
    let io = TokioIo::new(Observed {
        inner: io,
        observer: Conn {
            activity: activity.clone(),
            _place: guard,
        },
    });
    let builder = http_builder(limits);
    let info_remote = info.remote;
    let svc = service(handler, info, activity.clone());
    // With upgrades: an authorized WebSocket upgrade hands the connection to a tunnel.
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let mut draining = false;
    // A connection asked to close (GOAWAY) that does not finish closing, as a client
    // that never answers HTTP/2's PING, is cut after another idle_timeout.
    let drain_cut = tokio::time::sleep(Duration::from_secs(365 * 86400));
    tokio::pin!(drain_cut);
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    refused.record(e.as_ref(), info_remote);
                    tracing::debug!(error = %crate::util::Escaped(&e), "connection ended with an error");
                }
                break;
            }
            _ = shutdown.fired(), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            _ = activity.idle(limits.idle_timeout), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
                drain_cut.as_mut().reset(tokio::time::Instant::now() + limits.idle_timeout);
            }
            _ = drain_cut.as_mut() => {
                tracing::debug!(remote = %info_remote, "idle connection did not close after GOAWAY; cut");
                break;
            }
            _ = activity.abusive.notified() => {
                abuse.inc();
                tracing::warn!(remote = %info_remote, "too many requests abandoned before their answer; connection closed");
                break;
            }
            _ = activity.head_overdue() => {
                // A request head that trickles in past header_read_timeout: cut.
                tracing::debug!(remote = %info_remote, "request head not received within header_read_timeout");
                break;
            }
        }
    }
}

/// Binds a TCP listener with a large backlog.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    socket(addr, false)?.listen(1024)
}

/// A listening socket on `addr` that other sockets of this process may bind too
/// (`SO_REUSEPORT`: the kernel spreads new connections over them). It listens from here
/// on, so no connection is refused before its worker starts; the worker registers it
/// with its own runtime (`TcpListener::from_std`).
pub fn bind_shared(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    socket(addr, true)?.listen(1024)?.into_std()
}

fn socket(addr: SocketAddr, shared: bool) -> io::Result<tokio::net::TcpSocket> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    if shared {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    Ok(socket)
}
