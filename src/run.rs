//! The composition root: which handler each listener serves, over the process state.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::server::listener::ConnSettings;
use crate::server::{self, Bound, Inbound, Shutdown};
use crate::state::State;
use crate::{admin, egress, inbound, upstream};

/// Serves until `shutdown` fires, then waits up to `shutdown_timeout` for the requests in
/// flight to finish.
pub async fn run(state: Arc<State>, bound: Bound, shutdown: Shutdown) {
    let tracker = TaskTracker::new();
    let mut loops = tokio::task::JoinSet::new();
    let inbound_settings = {
        let state = state.clone();
        move || {
            let gw = state.gateway();
            ConnSettings {
                limits: gw.config.limits.clone(),
                tls: gw.tls.clone(),
            }
        }
    };
    let grace = || state.gateway().config.limits.shutdown_timeout;
    let mut workers = Vec::new();
    match bound.inbound {
        Inbound::One(listener) => {
            let handler = {
                let state = state.clone();
                let env = state.env.clone();
                move |req, conn| inbound::handle(env.clone(), state.gateway(), req, conn)
            };
            loops.spawn(server::listener::serve(
                listener,
                "inbound",
                inbound_settings,
                handler,
                state.metrics.clone(),
                tracker.clone(),
                shutdown.clone(),
                Arc::new(AtomicUsize::new(0)),
            ));
        }
        Inbound::PerCore { sockets, .. } => {
            // One place count for all workers: max_connections is the listener's.
            let active = Arc::new(AtomicUsize::new(0));
            for (i, socket) in sockets.into_iter().enumerate() {
                let state = state.clone();
                let settings = inbound_settings.clone();
                let shutdown = shutdown.clone();
                let active = active.clone();
                let (done, finished) = tokio::sync::oneshot::channel::<()>();
                let spawned = std::thread::Builder::new()
                    .name(format!("portcullis-worker-{i}"))
                    .spawn(move || worker(state, socket, settings, shutdown, active, done));
                match spawned {
                    Ok(_) => workers.push(finished),
                    Err(e) => tracing::error!(worker = i, error = %e, "cannot start an inbound worker thread"),
                }
            }
        }
    }
    if let Some(admin) = bound.admin {
        let handler = {
            let state = state.clone();
            move |req, conn| admin::handle(state.clone(), req, conn)
        };
        loops.spawn(serve_plain(admin, "admin", &state, handler, &tracker, &shutdown));
    }
    if let Some(egress) = bound.egress {
        let handler = {
            let state = state.clone();
            move |req, conn| {
                let gw = state.gateway();
                async move { egress::handle(&gw.egress, gw.signer(), req, conn).await }
            }
        };
        loops.spawn(serve_plain(egress, "egress", &state, handler, &tracker, &shutdown));
    }
    if let Some(fa) = bound.forward_auth {
        let handler = {
            let state = state.clone();
            let env = state.env.clone();
            move |req, conn| inbound::forward_auth(env.clone(), state.gateway(), req, conn)
        };
        loops.spawn(serve_plain(fa, "forward_auth", &state, handler, &tracker, &shutdown));
    }
    state.set_ready(true);
    while loops.join_next().await.is_some() {}
    // Per-core workers stop accepting on the same signal and drain their own
    // connections within the same grace period.
    for w in workers {
        let _ = w.await;
    }
    state.set_ready(false);
    tracker.close();
    if tokio::time::timeout(grace(), tracker.wait()).await.is_err() {
        tracing::warn!(
            open = tracker.len(),
            "shutdown_timeout passed with requests in flight; closing them"
        );
    } else {
        tracing::info!("all connections finished");
    }
}

/// One per-core worker: a single-threaded runtime serving its own inbound socket with its
/// own upstream clients; after `shutdown` it drains its connections for up to
/// `shutdown_timeout`, then says it is `done`.
fn worker<S>(
    state: Arc<State>,
    socket: std::net::TcpListener,
    settings: S,
    shutdown: Shutdown,
    active: Arc<AtomicUsize>,
    done: tokio::sync::oneshot::Sender<()>,
) where
    S: Fn() -> ConnSettings + Send + Sync + 'static,
{
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start an inbound worker's runtime");
            return;
        }
    };
    rt.block_on(async move {
        let listener = match TcpListener::from_std(socket) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "an inbound worker cannot listen");
                return;
            }
        };
        let env = Arc::new(state.env.for_worker());
        // Idle upstream connections of this worker's pool that expired, or that their
        // upstream closed, leave it even when no request goes to that upstream again.
        let sweeper = tokio::spawn(upstream::h1::sweep_every(upstream::h1::IDLE_TIMEOUT / 4));
        let handler = {
            let state = state.clone();
            move |req, conn| inbound::handle(env.clone(), state.gateway(), req, conn)
        };
        let tracker = TaskTracker::new();
        server::listener::serve(
            listener,
            "inbound",
            settings,
            handler,
            state.metrics.clone(),
            tracker.clone(),
            shutdown,
            active,
        )
        .await;
        tracker.close();
        let grace = state.gateway().config.limits.shutdown_timeout;
        let _ = tokio::time::timeout(grace, tracker.wait()).await;
        sweeper.abort();
    });
    let _ = done.send(());
}

/// A loopback-side listener (admin, egress): plain HTTP with the inbound limits.
fn serve_plain<H, F>(
    listener: TcpListener,
    name: &'static str,
    state: &Arc<State>,
    handler: H,
    tracker: &TaskTracker,
    shutdown: &Shutdown,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    H: Fn(http::Request<hyper::body::Incoming>, Arc<server::listener::ConnInfo>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = http::Response<crate::error::Body>> + Send + 'static,
{
    let settings = {
        let state = state.clone();
        move || ConnSettings {
            limits: state.gateway().config.limits.clone(),
            tls: None,
        }
    };
    server::listener::serve(
        listener,
        name,
        settings,
        handler,
        state.metrics.clone(),
        tracker.clone(),
        shutdown.clone(),
        Arc::new(AtomicUsize::new(0)),
    )
}
