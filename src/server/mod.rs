//! Listeners: binding, TLS, limits and shutdown, for any handler. What each listener
//! serves is wired above, in the `run` module.

pub mod activity;
pub mod listener;
pub mod shutdown;
pub mod tls;

use std::io;
use std::net::SocketAddr;
use tokio::net::TcpListener;

use crate::config::{Config, RuntimeModel};
pub use shutdown::Shutdown;

/// The bound sockets of a gateway; bind port 0 and read the addresses back in tests.
pub struct Bound {
    /// The inbound listener; with `[runtime] model = "per_core"`, the first worker's.
    pub inbound: Inbound,
    pub admin: Option<TcpListener>,
    pub egress: Option<TcpListener>,
    pub forward_auth: Option<TcpListener>,
}

impl Bound {
    pub fn bind(config: &Config) -> io::Result<Self> {
        let at = |addr: SocketAddr, what: &str| {
            listener::bind(addr)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot bind {what} listener on {addr}: {e}")))
        };
        let inbound = match config.runtime.model {
            RuntimeModel::Shared => Inbound::One(at(config.listen.address, "inbound")?),
            RuntimeModel::PerCore => {
                let cannot = |e: io::Error| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot bind inbound listener on {}: {e}", config.listen.address),
                    )
                };
                // SO_REUSEPORT would let these sockets join another process's on the same
                // address (an old instance, with its old credentials, taking half the
                // connections). A plain bind first fails if anyone holds the address; it
                // also picks the port when the address says 0.
                let addr = listener::bind(config.listen.address)
                    .and_then(|probe| probe.local_addr())
                    .map_err(cannot)?;
                let mut sockets = Vec::new();
                for _ in 0..workers(config) {
                    sockets.push(listener::bind_shared(addr).map_err(cannot)?);
                }
                Inbound::PerCore { addr, sockets }
            }
        };
        Ok(Bound {
            inbound,
            admin: config.admin.map(|a| at(a, "admin")).transpose()?,
            egress: config.egress.map(|a| at(a, "egress")).transpose()?,
            forward_auth: config.forward_auth.map(|a| at(a, "forward_auth")).transpose()?,
        })
    }

    pub fn inbound_addr(&self) -> SocketAddr {
        match &self.inbound {
            Inbound::One(l) => l.local_addr().expect("bound socket has an address"),
            Inbound::PerCore { addr, .. } => *addr,
        }
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn egress_addr(&self) -> Option<SocketAddr> {
        self.egress.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn forward_auth_addr(&self) -> Option<SocketAddr> {
        self.forward_auth.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// The inbound listener's sockets.
pub enum Inbound {
    /// One listening socket, served by the shared runtime.
    One(TcpListener),
    /// One socket per worker on `addr` (`SO_REUSEPORT`), each to listen in its worker.
    PerCore {
        addr: SocketAddr,
        sockets: Vec<std::net::TcpListener>,
    },
}

/// How many threads serve inbound requests: `[runtime] worker_threads`, else the cores.
pub fn workers(config: &Config) -> usize {
    config
        .runtime
        .worker_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
