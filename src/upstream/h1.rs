//! HTTP/1.1 to `http://` upstreams for the per-core workers: a pool per thread, and each
//! connection driven inside the task of the request using it. No connection task, no
//! pool lock, no hand-off to another thread: the request's task writes the request, reads
//! the response head, and its response body (polled by the inbound connection) reads the
//! rest; then the connection goes back to this thread's pool.
//!
//! The rules of the shared client stay: an idle connection is reused for at most
//! [`IDLE_TIMEOUT`], at most [`MAX_IDLE_PER_HOST`] wait per upstream, and a request is
//! retried once on a new connection only when a reused one had closed before the
//! request was written (never after).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::error::{Body, BoxError};

/// How long an idle connection may wait in the pool.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per upstream, per thread.
pub const MAX_IDLE_PER_HOST: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type Conn = Connection<TokioIo<TcpStream>, Body>;

/// A connection and the sender of its requests.
struct Pooled {
    send: SendRequest<Body>,
    /// `None` once the connection future has finished (closed).
    conn: Option<Conn>,
}

struct Idle {
    pooled: Pooled,
    since: Instant,
}

thread_local! {
    /// Per upstream (`host:port`), its idle connections. A handful of upstreams: a list
    /// searched by pointer first (every route's key is one `Arc`) costs less than hashing.
    static POOL: RefCell<Vec<(Arc<str>, VecDeque<Idle>)>> = const { RefCell::new(Vec::new()) };
}

/// Why the upstream gave no response: `connect` when no connection could be made.
#[derive(Debug)]
pub struct Error {
    pub connect: bool,
    pub source: BoxError,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.source.fmt(f)
    }
}

impl std::error::Error for Error {}

impl Pooled {
    /// Drives the connection's I/O; `false` once it has closed.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(conn) = self.conn.as_mut() {
            if Pin::new(conn).poll(cx).is_ready() {
                self.conn = None;
            }
        }
        self.conn.is_some()
    }

    /// Whether a pooled connection can take a request now. One that closed unseen
    /// gives the request back unwritten, and [`send`] retries it.
    fn usable(&mut self) -> bool {
        // A turn for the connection first: a close from its upstream is seen only when
        // it reads (tokio answers from its readiness flags, no system call when idle).
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if !self.drive(&mut cx) || self.send.is_closed() {
            return false;
        }
        self.send.is_ready() || matches!(self.send.poll_ready(&mut cx), Poll::Ready(Ok(())))
    }
}

/// An idle connection to `authority` from this thread's pool, if one is still usable.
fn entry<'p>(pool: &'p mut [(Arc<str>, VecDeque<Idle>)], authority: &Arc<str>) -> Option<&'p mut VecDeque<Idle>> {
    pool.iter_mut()
        .find(|(k, _)| Arc::ptr_eq(k, authority) || **k == **authority)
        .map(|(_, idle)| idle)
}

fn checkout(authority: &Arc<str>) -> Option<Pooled> {
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        let idle = entry(&mut pool, authority)?;
        // The most recently used first: its peer is the least likely to have closed it.
        while let Some(mut i) = idle.pop_back() {
            if i.since.elapsed() < IDLE_TIMEOUT && i.pooled.usable() {
                return Some(i.pooled);
            }
        }
        None
    })
}

/// Drops the idle connections of this thread's pool that waited past [`IDLE_TIMEOUT`]
/// or that their upstream closed, and the upstreams left with none.
pub fn sweep() {
    let now = Instant::now();
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        for (_, idle) in pool.iter_mut() {
            idle.retain_mut(|i| now.duration_since(i.since) < IDLE_TIMEOUT && i.pooled.usable());
        }
        pool.retain(|(_, idle)| !idle.is_empty());
    })
}

/// Runs [`sweep`] on this thread every `period`, for as long as the task lives.
pub async fn sweep_every(period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        sweep();
    }
}

/// Gives a connection whose exchange is complete back to this thread's pool.
fn checkin(authority: &Arc<str>, pooled: Pooled) {
    let now = Instant::now();
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        let at = match pool
            .iter()
            .position(|(k, _)| Arc::ptr_eq(k, authority) || **k == **authority)
        {
            Some(at) => at,
            None => {
                pool.push((authority.clone(), VecDeque::new()));
                pool.len() - 1
            }
        };
        let idle = &mut pool[at].1;
        // The oldest wait at the front: expired ones leave from there, and the oldest
        // goes when the upstream's share is full.
        while idle
            .front()
            .is_some_and(|i| now.duration_since(i.since) >= IDLE_TIMEOUT || idle.len() >= MAX_IDLE_PER_HOST)
        {
            idle.pop_front();
        }
        idle.push_back(Idle { pooled, since: now });
    })
}

async fn connect(authority: &str) -> Result<Pooled, Error> {
    let failed = |source: BoxError| Error { connect: true, source };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(authority))
        .await
        .map_err(|_| failed("connect timed out".into()))?
        .map_err(|e| failed(e.into()))?;
    let _ = stream.set_nodelay(true);
    // As the shared client: TCP keep-alive probes find a peer that vanished while idle.
    let _ = socket2::SockRef::from(&stream)
        .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(Duration::from_secs(60)));
    let (send, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| failed(e.into()))?;
    Ok(Pooled { send, conn: Some(conn) })
}

/// Sends `req` (absolute URI, `Host` set) to `authority` (`host:port`) over a connection
/// of this thread's pool, driven in this task.
pub async fn send(authority: &Arc<str>, mut req: Request<Body>) -> Result<Response<Body>, Error> {
    // HTTP/1.1 to an origin: the request target is the path and query.
    let target = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(target);
    let mut req = Some(req);
    loop {
        let (mut pooled, reused) = match checkout(authority) {
            Some(p) => (p, true),
            None => (connect(authority).await?, false),
        };
        let Some(r) = req.take() else {
            return Err(Error {
                connect: false,
                source: "request lost before sending".into(),
            });
        };
        let mut sent = std::pin::pin!(pooled.send.try_send_request(r));
        let outcome = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = sent.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
            pooled.drive(cx);
            sent.as_mut().poll(cx)
        })
        .await;
        match outcome {
            Ok(resp) => {
                let authority = authority.clone();
                // After an HTTP/1.0 answer hyper would write the connection's next
                // requests as HTTP/1.0 (no chunked bodies): such a connection is not
                // reused.
                let reuse = resp.version() == http::Version::HTTP_11;
                return Ok(resp.map(|body| {
                    http_body_util::BodyExt::boxed_unsync(Driven {
                        body,
                        pooled: Some(pooled),
                        authority,
                        reuse,
                    })
                }));
            }
            Err(mut e) => {
                // A reused connection that had closed before the request was written:
                // the request comes back untouched, and one new connection is tried.
                match e.take_message() {
                    Some(r) if reused => req = Some(r),
                    _ => {
                        return Err(Error {
                            connect: false,
                            source: e.into_error().into(),
                        })
                    }
                }
            }
        }
    }
}

/// A response body that drives its connection while it is read, and gives the
/// connection back to the pool once the body has ended. Dropped early, the connection
/// goes with it (its state is unknown).
struct Driven {
    body: Incoming,
    pooled: Option<Pooled>,
    authority: Arc<str>,
    /// Whether the connection may serve another request once this exchange is over.
    reuse: bool,
}

impl Driven {
    /// The response is over: the connection goes back to the pool, after one more turn
    /// that lets it settle into keep-alive (or notice a close), once the request is over
    /// too. An upstream may answer before it has read the whole request body; the rest
    /// of the body is still this request's to write, so until it is written the
    /// connection stays out of the pool, driven by a task of its own. Pooled earlier, it
    /// would write this client's remaining bytes in front of the next client's request.
    fn release(&mut self, cx: Option<&mut Context<'_>>) {
        let Some(mut p) = self.pooled.take() else {
            return;
        };
        let mut noop = Context::from_waker(std::task::Waker::noop());
        let cx = cx.unwrap_or(&mut noop);
        if !self.reuse || !p.drive(cx) || p.send.is_closed() {
            return;
        }
        if p.send.is_ready() || matches!(p.send.poll_ready(cx), Poll::Ready(Ok(()))) {
            checkin(&self.authority, p);
            return;
        }
        // Outside a runtime (the worker is stopping) the connection just closes.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let authority = self.authority.clone();
        runtime.spawn(async move {
            let idle = std::future::poll_fn(|cx| {
                if !p.drive(cx) {
                    return Poll::Ready(false);
                }
                p.send.poll_ready(cx).map(|r| r.is_ok())
            });
            // The request body's own deadlines end a stalled body well before this.
            if let Ok(true) = tokio::time::timeout(IDLE_TIMEOUT, idle).await {
                checkin(&authority, p);
            }
        });
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        // A body read to its end whose last (empty) frame nobody asked for: the
        // connection is still good. Any other early drop takes the connection along.
        if self.body.is_end_stream() {
            self.release(None);
        }
    }
}

impl http_body::Body for Driven {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(p) = this.pooled.as_mut() {
            p.drive(cx);
        }
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) || this.body.is_end_stream() {
            this.release(Some(cx));
        }
        frame.map_err(BoxError::from)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn idle(authority: &str) -> usize {
        POOL.with(|p| {
            p.borrow()
                .iter()
                .find(|(k, _)| &**k == authority)
                .map_or(0, |(_, i)| i.len())
        })
    }

    /// An upstream that answers one request per connection with keep-alive, then closes
    /// the connection once `close` fires.
    async fn upstream(close: tokio::sync::watch::Receiver<bool>) -> Arc<str> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let mut close = close.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(Bytes::from("ok"))))
                    });
                    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = close.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        addr.to_string().into()
    }

    async fn get(authority: &Arc<str>) -> String {
        let req = Request::get(format!("http://{authority}/x"))
            .body(crate::error::full(Bytes::new()))
            .unwrap();
        let resp = send(authority, req).await.unwrap();
        String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    /// A connection goes back to the pool when its response body ends, is reused by the
    /// next request, and leaves the pool on a sweep once its upstream has closed it.
    #[tokio::test(flavor = "current_thread")]
    async fn pooled_connections_are_reused_and_swept_once_closed() {
        let (close, closed) = tokio::sync::watch::channel(false);
        let authority = upstream(closed).await;
        assert_eq!(get(&authority).await, "ok");
        assert_eq!(idle(&authority), 1);
        assert_eq!(get(&authority).await, "ok");
        assert_eq!(idle(&authority), 1, "the second request reused the pooled connection");
        sweep();
        assert_eq!(idle(&authority), 1, "a live connection stays");
        close.send(true).unwrap();
        // The upstream's FIN reaches this side when the runtime next polls its sockets:
        // sweep until it has (long before the idle timeout would have).
        while idle(&authority) > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            sweep();
        }
    }
}
