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

/// A server config for one certificate, offering HTTP/2 and HTTP/1.1 by ALPN, asking for
/// client certificates when a verifier is given.
pub fn server_config(
    key: Arc<CertifiedKey>,
    clients: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let b = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let b = match clients {
        Some(v) => b.with_client_cert_verifier(v),
        None => b.with_no_client_auth(),
    };
    let mut cfg = b.with_cert_resolver(Arc::new(Single(key)));
    // http/1.0 too: rustls refuses a handshake whose ALPN offer matches nothing (RFC 7301),
    // and HTTP/1.0 clients such as `curl --http1.0` or ab offer only that.
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    Ok(Arc::new(cfg))
}

/// A client certificate the handshake verified: its SHA-256 (RFC 8705 `x5t#S256`) and
/// the names a `[[users]]` entry may match (SAN DNS, URI and email entries; the subject
/// CN when there is no SAN).
#[derive(Debug, Clone)]
pub struct ClientCert {
    pub sha256: [u8; 32],
    pub names: Vec<String>,
}

impl ClientCert {
    pub fn from_der(der: &[u8]) -> Option<ClientCert> {
        use sha2::Digest;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    x509_parser::extensions::GeneralName::DNSName(s)
                    | x509_parser::extensions::GeneralName::URI(s)
                    | x509_parser::extensions::GeneralName::RFC822Name(s) => names.push(s.to_string()),
                    _ => {}
                }
            }
        }
        if names.is_empty() {
            names.extend(
                cert.subject()
                    .iter_common_name()
                    .filter_map(|cn| cn.as_str().ok().map(str::to_string)),
            );
        }
        Some(ClientCert {
            sha256: sha2::Sha256::digest(der).into(),
            names,
        })
    }
}
