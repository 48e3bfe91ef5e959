//! Listeners: binding, TLS, limits and shutdown, for any handler. What each listener
//! serves is wired above, in the `run` module.

pub mod listener;
pub mod shutdown;
pub mod tls;

use std::io;
use std::net::SocketAddr;
use tokio::net::TcpListener;

use crate::config::Config;
pub use shutdown::Shutdown;

/// The bound sockets of a gateway; bind port 0 and read the addresses back in tests.
pub struct Bound {
    pub inbound: TcpListener,
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
        Ok(Bound {
            inbound: at(config.listen.address, "inbound")?,
            admin: config.admin.map(|a| at(a, "admin")).transpose()?,
            egress: config.egress.map(|a| at(a, "egress")).transpose()?,
            forward_auth: config.forward_auth.map(|a| at(a, "forward_auth")).transpose()?,
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

    pub fn forward_auth_addr(&self) -> Option<SocketAddr> {
        self.forward_auth.as_ref().and_then(|l| l.local_addr().ok())
    }
}
