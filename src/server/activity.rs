//! What a connection's bytes say: when it last moved one, whether a request head is due,
//! how many requests it has in flight and how many it abandoned. [`Observed`] is the one
//! IO wrapper that reports bytes moved, for a connection ([`Activity`]) and for an
//! upgraded tunnel alike ([`Stamp`]).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What an [`Observed`] IO reports to.
pub trait Observer {
    /// Bytes arrived.
    fn read(&self, bytes: &[u8]);
    /// Bytes went out.
    fn wrote(&self);
}

/// An IO that tells its observer of every byte read or written.
pub struct Observed<I, O> {
    pub inner: I,
    pub observer: O,
}

impl<I: AsyncRead + Unpin, O: Observer + Unpin> AsyncRead for Observed<I, O> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.observer.read(&buf.filled()[before..]);
        }
        r
    }
}

impl<I: AsyncWrite + Unpin, O: Observer + Unpin> AsyncWrite for Observed<I, O> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.observer.wrote();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.observer.wrote();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// When bytes last moved (milliseconds since `start`), shared by the two sides of a
/// tunnel.
#[derive(Clone)]
pub struct Stamp {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for Stamp {
    fn default() -> Self {
        Stamp {
            start: Instant::now(),
            last_ms: Arc::default(),
        }
    }
}

impl Stamp {
    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long nothing has moved.
    pub fn idle_for(&self) -> Duration {
        self.start
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

impl Observer for Stamp {
    fn read(&self, _: &[u8]) {
        self.touch();
    }

    fn wrote(&self) {
        self.touch();
    }
}

/// One request in flight on a connection, for as long as its future lives. Dropped
/// before its answer, it was reset or abandoned by the client: those are counted, and a
/// connection that abandons more than its budget is closed (the rapid-reset pattern of
/// CVE-2023-44487, counted as Envoy and nginx count it).
pub(super) struct InFlight {
    pub activity: Arc<Activity>,
    pub answered: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.activity;
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
        a.touch();
        if !self.answered && a.premature.fetch_add(1, Ordering::AcqRel) + 1 > a.premature_budget {
            a.abusive.notify_one();
        }
    }
}

/// When the connection last moved a byte, how many requests it has in flight, and by
/// when the request head being read must be complete.
///
/// The head deadline starts at accept (the first request) and whenever a byte arrives
/// while no request is in flight (the next request on a keep-alive connection); a request
/// reaching the service clears it. HTTP/2 connections (by ALPN or the prior-knowledge
/// preface) carry control frames between requests, so their heads are not timed here.
pub(super) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    pub in_flight: AtomicUsize,
    /// Milliseconds since `start`; 0: no head being read.
    head_deadline_ms: AtomicU64,
    head_timeout_ms: u64,
    h2: AtomicBool,
    first_read: AtomicBool,
    /// Requests dropped before their answer, and how many the connection may drop.
    premature: AtomicUsize,
    premature_budget: usize,
    pub abusive: tokio::sync::Notify,
}

impl Activity {
    pub(super) fn new(head_timeout: Duration, h2: bool, premature_budget: usize) -> Self {
        let head_timeout_ms = (head_timeout.as_millis() as u64).max(1);
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            head_deadline_ms: AtomicU64::new(if h2 { 0 } else { head_timeout_ms }),
            head_timeout_ms,
            h2: AtomicBool::new(h2),
            first_read: AtomicBool::new(true),
            premature: AtomicUsize::new(0),
            premature_budget,
            abusive: tokio::sync::Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub(super) fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Bytes arrived: note the activity, and start timing a new request head if none is
    /// in flight.
    pub(super) fn read(&self, bytes: &[u8]) {
        self.touch();
        if self.first_read.swap(false, Ordering::AcqRel) && bytes.starts_with(b"PRI ") {
            self.h2.store(true, Ordering::Release);
            self.head_deadline_ms.store(0, Ordering::Release);
        }
        if self.h2.load(Ordering::Acquire) || self.in_flight.load(Ordering::Acquire) > 0 {
            return;
        }
        let deadline = self.now_ms() + self.head_timeout_ms;
        let _ = self
            .head_deadline_ms
            .compare_exchange(0, deadline, Ordering::AcqRel, Ordering::Acquire);
    }

    /// A request head reached the service.
    pub(super) fn head_arrived(&self) {
        self.head_deadline_ms.store(0, Ordering::Release);
    }

    /// Resolves once a request head has been due for longer than header_read_timeout.
    pub(super) async fn head_overdue(&self) {
        let step = Duration::from_millis((self.head_timeout_ms / 4).max(10));
        loop {
            let deadline = self.head_deadline_ms.load(Ordering::Acquire);
            let now = self.now_ms();
            if deadline != 0 && now >= deadline {
                return;
            }
            let wait = if deadline != 0 {
                Duration::from_millis(deadline - now)
            } else {
                step
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Resolves once nothing has moved for `timeout` and no request is in flight.
    pub(super) async fn idle(&self, timeout: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + timeout;
            if Instant::now() >= deadline {
                if self.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
                tokio::time::sleep(timeout.min(Duration::from_secs(1))).await;
                continue;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}
