//! TLS termination with rustls: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`.
//!
//! Each config generation builds its own `ServerConfig` from the files, so a reload
//! gives new handshakes the new certificate while open connections keep theirs.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;

/// Which of the two files could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    Cert(String),
    Key(String),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Cert(m) | LoadError::Key(m) => f.write_str(m),
        }
    }
}

/// The process's crypto provider (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain and private key, and checks that they belong together.
pub fn load_certified_key(files: &TlsFiles) -> Result<Arc<CertifiedKey>, LoadError> {
    let cert_path = files.cert.display();
    let key_path = files.key.display();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| LoadError::Cert(format!("cannot read certificate `{cert_path}`: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| LoadError::Cert(format!("cannot parse certificate `{cert_path}`: {e}")))?;
    if certs.is_empty() {
        return Err(LoadError::Cert(format!("no PEM certificate found in `{cert_path}`")));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| LoadError::Key(format!("cannot read private key `{key_path}`: {e}")))?;
    CertifiedKey::from_der(certs, key, &provider())
        .map(Arc::new)
        .map_err(|e| {
            LoadError::Key(format!(
                "private key `{key_path}` does not fit certificate `{cert_path}`: {e}"
            ))
        })
}

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

/// When the leaf certificate of `key` stops being valid, in Unix seconds.
pub fn not_after(key: &CertifiedKey) -> Option<i64> {
    let leaf = key.cert.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}
