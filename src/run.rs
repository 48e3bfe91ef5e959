//! The composition root: which handler each listener serves, over the process state.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::server::listener::ConnSettings;
use crate::server::{self, Bound, Shutdown};
use crate::state::State;
use crate::{admin, egress, inbound};

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
    let inbound_handler = {
        let state = state.clone();
        let env = state.env.clone();
        move |req, conn| inbound::handle(env.clone(), state.gateway(), req, conn)
    };
    loops.spawn(server::listener::serve(
        bound.inbound,
        "inbound",
        inbound_settings,
        inbound_handler,
        state.metrics.clone(),
        tracker.clone(),
        shutdown.clone(),
    ));
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
    state.set_ready(false);
    tracker.close();
    let grace = state.gateway().config.limits.shutdown_timeout;
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            open = tracker.len(),
            "shutdown_timeout passed with requests in flight; closing them"
        );
    } else {
        tracing::info!("all connections finished");
    }
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
    )
}
