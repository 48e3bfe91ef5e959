//! Listeners: binding, TLS, limits and shutdown. Inbound, admin and (later) egress are
//! separate listeners sharing one shutdown signal and one connection tracker.

pub mod listener;
pub mod shutdown;
pub mod tls;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::gateway::{self, State};
use listener::ConnSettings;
pub use shutdown::Shutdown;

/// The bound sockets of a gateway; bind port 0 and read the addresses back in tests.
pub struct Bound {
    pub inbound: TcpListener,
    pub admin: Option<TcpListener>,
    pub egress: Option<TcpListener>,
}

impl Bound {
    pub fn bind(config: &Config) -> io::Result<Self> {
        let at = |addr: SocketAddr, what: &str| {
            listener::bind(addr)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot bind {what} listener on {addr}: {e}")))
        };
        Ok(Bound {
            inbound: at(config.listen.address, "inbound")?,
            admin: config.admin.map(|a| at(a, "admin")).transpose()?,
            egress: config.egress.map(|a| at(a, "egress")).transpose()?,
        })
    }

    pub fn inbound_addr(&self) -> SocketAddr {
        self.inbound.local_addr().expect("bound socket has an address")
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn egress_addr(&self) -> Option<SocketAddr> {
        self.egress.as_ref().and_then(|l| l.local_addr().ok())
    }
}

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
        move |req, conn| gateway::handle(state.clone(), req, conn)
    };
    loops.spawn(listener::serve(
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
            move |req, conn| crate::admin::handle(state.clone(), req, conn)
        };
        loops.spawn(serve_plain(admin, "admin", &state, handler, &tracker, &shutdown));
    }
    if let Some(egress) = bound.egress {
        let handler = {
            let state = state.clone();
            move |req, conn| crate::egress::handle(state.clone(), req, conn)
        };
        loops.spawn(serve_plain(egress, "egress", &state, handler, &tracker, &shutdown));
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
    H: Fn(http::Request<hyper::body::Incoming>, Arc<listener::ConnInfo>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = http::Response<crate::error::Body>> + Send + 'static,
{
    let settings = {
        let state = state.clone();
        move || ConnSettings {
            limits: state.gateway().config.limits.clone(),
            tls: None,
        }
    };
    listener::serve(
        listener,
        name,
        settings,
        handler,
        state.metrics.clone(),
        tracker.clone(),
        shutdown.clone(),
    )
}
