//! TLS termination with rustls: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`.
//!
//! Each config generation builds its own `ServerConfig` from the key the config loaded,
//! so a reload gives new handshakes the new certificate while open connections keep
//! theirs.

use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::util::provider;

#[derive(Debug)]
struct Single(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for Single {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A server config for one certificate, offering HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(key: Arc<CertifiedKey>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Single(key)));
    // http/1.0 too: rustls refuses a handshake whose ALPN offer matches nothing (RFC 7301),
    // and HTTP/1.0 clients such as `curl --http1.0` or ab offer only that.
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    Ok(Arc::new(cfg))
}
