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
/// the names a `[[users]]` entry may match.
#[derive(Debug, Clone)]
pub struct ClientCert {
    pub sha256: [u8; 32],
    pub names: Names,
}

/// What a verified client certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Names {
    /// The names a user's `cert_names` may hold: the subjectAltName's DNS, URI and email
    /// entries when the certificate has a subjectAltName extension (of any type: an
    /// otherName such as a UPN, an IP address, a directoryName count just the same), else
    /// every Common Name of the subject. Possibly empty: no user can match it.
    Usable(Vec<String>),
    /// The certificate, its subjectAltName extension (repeated, empty, or not DER) or a
    /// Common Name cannot be read: what it names is unknown, so it names nobody.
    Unreadable(&'static str),
}

impl ClientCert {
    pub fn from_der(der: &[u8]) -> ClientCert {
        use sha2::Digest;
        ClientCert {
            sha256: sha2::Sha256::digest(der).into(),
            names: names(der),
        }
    }
}

/// The names of a certificate, failing closed on everything that cannot be read whole.
fn names(der: &[u8]) -> Names {
    use x509_parser::extensions::GeneralName;
    use x509_parser::oid_registry::OID_X509_EXT_SUBJECT_ALT_NAME;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Names::Unreadable("the certificate cannot be parsed");
    };
    let san_extensions = cert
        .extensions()
        .iter()
        .filter(|e| e.oid == OID_X509_EXT_SUBJECT_ALT_NAME)
        .count();
    if san_extensions > 0 {
        // Repeated or unparseable: `subject_alternative_name` says so (it refuses both).
        let san = match cert.subject_alternative_name() {
            Ok(Some(san)) => san.value,
            Ok(None) | Err(_) => return Names::Unreadable("the subjectAltName extension is repeated or malformed"),
        };
        if san.general_names.is_empty() {
            return Names::Unreadable("the subjectAltName extension is empty");
        }
        let mut names = Vec::new();
        for n in &san.general_names {
            match n {
                GeneralName::DNSName(s) | GeneralName::URI(s) | GeneralName::RFC822Name(s) => names.push(s.to_string()),
                // They name the holder too, so the Common Name does not count, but no
                // `cert_names` entry matches them.
                GeneralName::OtherName(..)
                | GeneralName::X400Address(_)
                | GeneralName::DirectoryName(_)
                | GeneralName::EDIPartyName(_)
                | GeneralName::IPAddress(_)
                | GeneralName::RegisteredID(_) => {}
            }
        }
        return Names::Usable(names);
    }
    let mut names = Vec::new();
    for cn in cert.subject().iter_common_name() {
        match cn.as_str() {
            Ok(s) => names.push(s.to_string()),
            Err(_) => return Names::Unreadable("a Common Name is not a string"),
        }
    }
    Names::Usable(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(sans: &[&str], cns: &[&str], extra_san: Option<Vec<u8>>) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        for cn in cns {
            p.distinguished_name.push(rcgen::DnType::CommonName, *cn);
        }
        if let Some(content) = extra_san {
            p.custom_extensions
                .push(rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 17], content));
        }
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    /// What the handshake cannot show (webpki refuses a repeated extension itself), the
    /// parser still fails closed on.
    #[test]
    fn names_fail_closed() {
        assert_eq!(
            ClientCert::from_der(&cert(&["a.example"], &["cn"], None)).names,
            Names::Usable(vec!["a.example".into()])
        );
        // A second SAN extension (DNS b.example): neither counts, nor the CN.
        let second = vec![
            0x30, 0x0b, 0x82, 0x09, b'b', b'.', b'e', b'x', b'a', b'm', b'p', b'l', b'e',
        ];
        assert!(matches!(
            ClientCert::from_der(&cert(&["a.example"], &["cn"], Some(second.clone()))).names,
            Names::Unreadable(_)
        ));
        // The only SAN extension, empty.
        assert!(matches!(
            ClientCert::from_der(&cert(&[], &["cn"], Some(vec![0x30, 0x00]))).names,
            Names::Unreadable(_)
        ));
        // No SAN: the CN (several CNs: tests/gateway/mtls.rs, rcgen keeps one per type).
        assert_eq!(
            ClientCert::from_der(&cert(&[], &["one"], None)).names,
            Names::Usable(vec!["one".into()])
        );
        assert!(matches!(ClientCert::from_der(b"not DER").names, Names::Unreadable(_)));
    }
}
