//! TLS to egress endpoints: the web PKI roots by default; `trust_self_signed` also
//! accepts a self-signed leaf certificate when it names the base URL's host and is within
//! its validity dates; `pin_sha256` narrows trust to exactly one certificate (SHA-256 of
//! its DER). A refusal says why (unknown issuer, wrong name, expired, pin mismatch).

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

#[derive(Debug)]
pub struct Verifier {
    webpki: Arc<WebPkiServerVerifier>,
    provider: Arc<CryptoProvider>,
    trust_self_signed: bool,
    pin: Option<[u8; 32]>,
    /// SHA-256 of the last certificate presented, for `endpoint test`.
    pub seen: Mutex<Option<[u8; 32]>>,
}

fn web_pki_roots() -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    Arc::new(roots)
}

impl Verifier {
    pub fn new(trust_self_signed: bool, pin: Option<[u8; 32]>) -> Result<Self, rustls::Error> {
        let provider = crate::server::tls::provider();
        let webpki = WebPkiServerVerifier::builder_with_provider(web_pki_roots(), provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        Ok(Verifier {
            webpki,
            provider,
            trust_self_signed,
            pin,
            seen: Mutex::new(None),
        })
    }

    /// Verifies `end_entity` with itself as the only trust anchor: passes only for a
    /// self-signed certificate, and checks its name and dates like any other.
    fn as_self_signed(
        &self,
        end_entity: &CertificateDer<'_>,
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots
            .add(end_entity.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("unusable certificate: {e}")))?;
        let v = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        v.verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }
}

fn unknown_issuer(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
            | rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature)
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
        let verified = match self
            .webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Ok(v) => v,
            Err(e) if self.trust_self_signed && unknown_issuer(&e) => {
                match self.as_self_signed(end_entity, server_name, ocsp, now) {
                    Ok(v) => v,
                    // Not self-signed after all: the web PKI's answer stands.
                    Err(e2) if unknown_issuer(&e2) => return Err(e),
                    Err(e2) => return Err(e2),
                }
            }
            Err(e) => return Err(e),
        };
        if let Some(pin) = &self.pin {
            if *pin != fingerprint {
                return Err(rustls::Error::General(format!(
                    "certificate sha256 {} does not match pin_sha256",
                    hex::encode(fingerprint)
                )));
            }
        }
        Ok(verified)
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
    let cfg = rustls::ClientConfig::builder_with_provider(crate::server::tls::provider())
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
