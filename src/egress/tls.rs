//! TLS to egress endpoints: the web PKI roots by default; `trust_self_signed` also
//! accepts a self-signed certificate as people really make them (`openssl req -x509`:
//! `CA:TRUE`, often with the host in the Common Name only): a chain of exactly one
//! certificate whose signature verifies with its own key, within its validity dates, that
//! names the base URL's host (a subjectAltName when it has any, else the Common Name,
//! case-insensitive, `*.` for one label). The handshake signature is verified with its
//! key as usual. `pin_sha256` narrows trust to exactly one certificate (SHA-256 of its
//! DER), with or without `trust_self_signed`. A refusal names its cause: expired, not yet
//! valid, name mismatch (with the names the certificate has), not self-signed, bad
//! signature, pin mismatch. Everything such a message quotes from the certificate (its
//! subject, issuer and names, which the peer chose) is escaped, so it cannot forge a log
//! line or drive a terminal wherever the message goes (the log, the caller's 502, the
//! `endpoint test` output).

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::util::Escaped;

#[derive(Debug)]
pub struct Verifier {
    webpki: Arc<WebPkiServerVerifier>,
    provider: Arc<CryptoProvider>,
    trust_self_signed: bool,
    pin: Option<[u8; 32]>,
    /// SHA-256 of the last certificate presented, for `endpoint test`.
    pub seen: Mutex<Option<[u8; 32]>>,
    /// The last certificate presented (DER), for `endpoint test` to describe.
    pub seen_cert: Mutex<Option<Vec<u8>>>,
}

fn web_pki_roots() -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    Arc::new(roots)
}

impl Verifier {
    pub fn new(trust_self_signed: bool, pin: Option<[u8; 32]>) -> Result<Self, rustls::Error> {
        let provider = crate::util::provider();
        let webpki = WebPkiServerVerifier::builder_with_provider(web_pki_roots(), provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        Ok(Verifier {
            webpki,
            provider,
            trust_self_signed,
            pin,
            seen: Mutex::new(None),
            seen_cert: Mutex::new(None),
        })
    }
}

fn unknown_issuer(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
            | rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature)
    )
}

fn refuse(msg: String) -> rustls::Error {
    rustls::Error::General(msg)
}

/// Whether a certificate names itself as its issuer (the first test of self-signed).
fn self_issued(der: &[u8]) -> bool {
    x509_parser::parse_x509_certificate(der).is_ok_and(|(_, c)| c.issuer().as_raw() == c.subject().as_raw())
}

/// The names a certificate answers to: its subjectAltName DNS and IP entries, or, when it
/// has none, its Common Names.
fn names(cert: &x509_parser::certificate::X509Certificate<'_>) -> (Vec<String>, bool) {
    use x509_parser::extensions::GeneralName;
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for n in &ext.value.general_names {
            match n {
                GeneralName::DNSName(d) => sans.push(d.to_string()),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => sans.push(std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string()),
                    16 => {
                        let mut b = [0u8; 16];
                        b.copy_from_slice(ip);
                        sans.push(std::net::Ipv6Addr::from(b).to_string());
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    if !sans.is_empty() {
        return (sans, true);
    }
    let cns = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    (cns, false)
}

/// RFC 6125 matching of `host` against one certificate name: exact, case-insensitive, or a
/// leading `*.` standing for exactly one label (never for an IP address).
fn name_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim_end_matches('.');
    let host = host.trim_end_matches('.');
    if pattern.eq_ignore_ascii_case(host) {
        return true;
    }
    let Some(suffix) = pattern.strip_prefix("*.") else {
        return false;
    };
    if host.parse::<std::net::IpAddr>().is_ok() || suffix.is_empty() || suffix.contains('*') {
        return false;
    }
    match host.split_once('.') {
        Some((label, rest)) => !label.is_empty() && rest.eq_ignore_ascii_case(suffix),
        None => false,
    }
}

/// Verifies a self-signed certificate for `server_name` at `now`, whatever its
/// basicConstraints or key usage.
fn verify_self_signed(der: &[u8], server_name: &ServerName<'_>, now: UnixTime) -> Result<(), rustls::Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| refuse(format!("the certificate cannot be parsed: {}", Escaped(e))))?;
    if cert.issuer().as_raw() != cert.subject().as_raw() {
        return Err(refuse(format!(
            "certificate for `{}` is not self-signed: issued by `{}`, which is not trusted",
            Escaped(cert.subject()),
            Escaped(cert.issuer())
        )));
    }
    cert.verify_signature(None).map_err(|_| {
        refuse(format!(
            "certificate `{}` names itself as issuer but its signature does not verify with its own key (bad signature)",
            Escaped(cert.subject())
        ))
    })?;
    dates(&cert, now)?;
    let host = match server_name {
        ServerName::DnsName(d) => d.as_ref().to_string(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        _ => String::new(),
    };
    let (names, from_san) = names(&cert);
    if !names.iter().any(|n| name_matches(n, &host)) {
        // `{:?}` quotes and escapes each name.
        return Err(refuse(format!(
            "certificate name mismatch: `{host}` is not among the certificate's {} {:?}",
            if from_san { "subjectAltNames" } else { "Common Names" },
            names
        )));
    }
    Ok(())
}

/// notBefore and notAfter, each refusal named.
fn dates(cert: &x509_parser::certificate::X509Certificate<'_>, now: UnixTime) -> Result<(), rustls::Error> {
    let at = now.as_secs() as i64;
    let validity = cert.validity();
    if at < validity.not_before.timestamp() {
        return Err(refuse(format!(
            "certificate is not yet valid: valid from {}",
            validity.not_before
        )));
    }
    if at > validity.not_after.timestamp() {
        return Err(refuse(format!("certificate expired on {}", validity.not_after)));
    }
    Ok(())
}

fn check_dates(der: &[u8], now: UnixTime) -> Result<(), rustls::Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| refuse(format!("the certificate cannot be parsed: {}", Escaped(e))))?;
    dates(&cert, now)
}

/// A one-line description of a certificate for `endpoint test`: subject, names, validity,
/// whether it is self-signed, SHA-256.
pub fn describe(der: &[u8]) -> String {
    let fp = hex::encode(Sha256::digest(der));
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return format!("unparsable certificate, sha256 {fp}");
    };
    let (names, from_san) = names(&cert);
    let names: Vec<String> = names.iter().map(crate::util::escaped).collect();
    let self_signed = cert.issuer().as_raw() == cert.subject().as_raw() && cert.verify_signature(None).is_ok();
    format!(
        "subject: {}\n{}: {}\nvalid: {} to {}\nissuer: {}{}\nsha256: {fp}",
        Escaped(cert.subject()),
        if from_san {
            "subjectAltNames"
        } else {
            "Common Name (no subjectAltName)"
        },
        names.join(", "),
        cert.validity().not_before,
        cert.validity().not_after,
        Escaped(cert.issuer()),
        if self_signed { " (self-signed)" } else { "" },
    )
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fingerprint: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(fingerprint);
        }
        if let Ok(mut seen) = self.seen_cert.lock() {
            *seen = Some(end_entity.as_ref().to_vec());
        }
        if let Some(pin) = &self.pin {
            // A pin is its own trust anchor: exactly this certificate, within its dates,
            // whoever issued it.
            if *pin != fingerprint {
                return Err(refuse(format!(
                    "certificate sha256 {} does not match pin_sha256",
                    hex::encode(fingerprint)
                )));
            }
            check_dates(end_entity.as_ref(), now)?;
            return Ok(ServerCertVerified::assertion());
        }
        if self.trust_self_signed && intermediates.is_empty() && self_issued(end_entity.as_ref()) {
            verify_self_signed(end_entity.as_ref(), server_name, now)?;
            return Ok(ServerCertVerified::assertion());
        }
        match self
            .webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Ok(v) => Ok(v),
            Err(e) if self.trust_self_signed && unknown_issuer(&e) => {
                let issuer = x509_parser::parse_x509_certificate(end_entity.as_ref())
                    .map(|(_, c)| crate::util::escaped(c.issuer()))
                    .unwrap_or_default();
                Err(refuse(format!(
                    "certificate is not self-signed and its issuer `{issuer}` is not trusted by the web PKI"
                )))
            }
            Err(_) if !self.trust_self_signed && self_issued(end_entity.as_ref()) => Err(refuse(
                "the certificate is self-signed and the endpoint does not trust self-signed certificates \
                 (set trust_self_signed = true, or pin_sha256)"
                    .into(),
            )),
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A pooled client for one endpoint, verifying its certificates with `verifier`.
pub fn client(verifier: Arc<Verifier>) -> Result<crate::upstream::Client, rustls::Error> {
    let cfg = rustls::ClientConfig::builder_with_provider(crate::util::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(cfg)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .build(https),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_as_rfc_6125_says() {
        assert!(name_matches("svc.test", "SVC.test"));
        assert!(name_matches("*.svc.test", "a.svc.test"));
        assert!(!name_matches("*.svc.test", "a.b.svc.test"));
        assert!(!name_matches("*.svc.test", "svc.test"));
        assert!(!name_matches("*.test", "127.0.0.1"));
        assert!(!name_matches("svc.test", "evil-svc.test"));
        assert!(!name_matches("*", "svc"));
        assert!(name_matches("127.0.0.1", "127.0.0.1"));
    }
}
