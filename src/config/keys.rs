//! Key material, parsed once when the config is loaded: the inbound TLS certificate and
//! key, the builtin issuer's Ed25519 signing key, and egress signature keys. `check` and
//! `serve` therefore see the same bytes, and the rest of the crate gets parsed keys.

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine;
use hmac::{Hmac, Mac};
use ring::signature::KeyPair;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Sha256;

use super::secret::{read_file, FileError};
use super::{FileKind, Secret, SecretHash, SignatureAlgorithm, TlsFiles};
use crate::util::provider;

// === inbound TLS ===

/// Which of the two files could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Cert(String),
    #[error("{0}")]
    Key(String),
}

/// Why a signing or signature key cannot be made or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot generate an Ed25519 key")]
    Generate,
    #[error("oauth.signing_key is not a PKCS#8 PEM private key: {0}")]
    SigningKeyPem(rustls_pki_types::pem::Error),
    #[error("oauth.signing_key is not an Ed25519 key")]
    SigningKeyNotEd25519,
    /// The public half does not make a JWK (ring made it: not expected).
    #[error("{0}")]
    PublicKey(jsonwebtoken::errors::Error),
    #[error("signature key is not valid base64: {0}")]
    SignatureBase64(base64::DecodeError),
    #[error("hmac-sha256 signature key is shorter than 16 bytes")]
    HmacTooShort,
    #[error("ed25519 signature key is not a PKCS#8 PEM private key: {0}")]
    SignaturePem(rustls_pki_types::pem::Error),
    #[error("ed25519 signature key is not an Ed25519 key")]
    SignatureNotEd25519,
}

/// Reads a PEM certificate chain and private key (each a plain file within
/// [`FileKind::Tls`]'s limit), and checks that they belong together.
pub fn load_certified_key(files: &TlsFiles) -> Result<Arc<CertifiedKey>, LoadError> {
    let cert_path = files.cert.display();
    let key_path = files.key.display();
    let cert_pem = read_file(&files.cert, FileKind::Tls)
        .map_err(|e| LoadError::Cert(format!("cannot read certificate `{cert_path}`: {e}")))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| LoadError::Cert(format!("cannot parse certificate `{cert_path}`: {e}")))?;
    if certs.is_empty() {
        return Err(LoadError::Cert(format!("no PEM certificate found in `{cert_path}`")));
    }
    let key_pem = zeroize::Zeroizing::new(
        read_file(&files.key, FileKind::Tls)
            .map_err(|e| LoadError::Key(format!("cannot read private key `{key_path}`: {e}")))?,
    );
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| LoadError::Key(format!("cannot read private key `{key_path}`: {e}")))?;
    CertifiedKey::from_der(certs, key, &provider())
        .map(Arc::new)
        .map_err(|e| {
            LoadError::Key(format!(
                "private key `{key_path}` does not fit certificate `{cert_path}`: {e}"
            ))
        })
}

/// Why the client certificate verifier cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientCaError {
    #[error("cannot read client_ca `{}`: {source}", path.display())]
    ReadCa { path: PathBuf, source: FileError },
    #[error("cannot parse client_ca `{}`: {source}", path.display())]
    ParseCa {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("no PEM certificate in client_ca `{}`", path.display())]
    NoCa { path: PathBuf },
    #[error("client_ca `{}`: {source}", path.display())]
    AddCa { path: PathBuf, source: rustls::Error },
    #[error("cannot read client_crl `{}`: {source}", path.display())]
    ReadCrl { path: PathBuf, source: FileError },
    #[error("cannot parse client_crl `{}`: {source}", path.display())]
    ParseCrl {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("client certificates: {0}")]
    Build(rustls::server::VerifierBuilderError),
}

/// The verifier of client certificates: they must chain to `ca` (PEM bundle, within
/// [`FileKind::Tls`]'s limit) and not be in `crl` (PEM, within [`FileKind::Crl`]'s);
/// `required` refuses a handshake without one.
pub fn client_verifier(
    ca: &std::path::Path,
    crl: Option<&std::path::Path>,
    required: bool,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, ClientCaError> {
    let path = || ca.to_path_buf();
    let mut roots = rustls::RootCertStore::empty();
    let ca_pem = read_file(ca, FileKind::Tls).map_err(|source| ClientCaError::ReadCa { path: path(), source })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&ca_pem)
        .collect::<Result<_, _>>()
        .map_err(|source| ClientCaError::ParseCa { path: path(), source })?;
    if certs.is_empty() {
        return Err(ClientCaError::NoCa { path: path() });
    }
    for c in certs {
        roots
            .add(c)
            .map_err(|source| ClientCaError::AddCa { path: path(), source })?;
    }
    let mut b = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    if let Some(crl) = crl {
        let path = || crl.to_path_buf();
        let crl_pem =
            read_file(crl, FileKind::Crl).map_err(|source| ClientCaError::ReadCrl { path: path(), source })?;
        let crls: Vec<rustls_pki_types::CertificateRevocationListDer<'static>> =
            rustls_pki_types::CertificateRevocationListDer::pem_slice_iter(&crl_pem)
                .collect::<Result<_, _>>()
                .map_err(|source| ClientCaError::ParseCrl { path: path(), source })?;
        b = b.with_crls(crls);
    }
    if !required {
        b = b.allow_unauthenticated();
    }
    b.build().map_err(ClientCaError::Build)
}

/// When the leaf certificate of `key` stops being valid, in Unix seconds.
pub fn not_after(key: &CertifiedKey) -> Option<i64> {
    let leaf = key.cert.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

// === the builtin issuer's signing key ===

/// An Ed25519 key pair with its public JWK.
pub struct SigningKey {
    pub encoding: jsonwebtoken::EncodingKey,
    pub decoding: jsonwebtoken::DecodingKey,
    pub kid: String,
    pub jwk: serde_json::Value,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey(kid {}, private part redacted)", self.kid)
    }
}

impl SigningKey {
    pub fn generate() -> Result<Self, KeyError> {
        Self::from_pkcs8(&Self::generate_pkcs8()?)
    }

    /// A new Ed25519 key as PKCS#8 DER (wiped when dropped).
    pub fn generate_pkcs8() -> Result<zeroize::Zeroizing<Vec<u8>>, KeyError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Generate)?;
        Ok(zeroize::Zeroizing::new(pkcs8.as_ref().to_vec()))
    }

    pub fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem).map_err(KeyError::SigningKeyPem)?;
        Self::from_pkcs8(der.secret_pkcs8_der())
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<Self, KeyError> {
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|_| KeyError::SigningKeyNotEd25519)?;
        let public = pair.public_key().as_ref();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public);
        let kid = hex::encode(&SecretHash::of(public).bytes()[..8]);
        Ok(SigningKey {
            encoding: jsonwebtoken::EncodingKey::from_ed_der(der),
            decoding: jsonwebtoken::DecodingKey::from_ed_components(&x).map_err(KeyError::PublicKey)?,
            jwk: serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}),
            kid,
        })
    }
}

// === egress signature keys ===

pub enum SignatureKey {
    Hmac(Vec<u8>),
    Ed25519(ring::signature::Ed25519KeyPair),
}

impl SignatureKey {
    /// `hmac-sha256`: the secret's bytes (or `base64:...` for a binary key).
    /// `ed25519`: a PKCS#8 PEM private key.
    pub fn parse(algorithm: SignatureAlgorithm, secret: &Secret) -> Result<SignatureKey, KeyError> {
        match algorithm {
            SignatureAlgorithm::HmacSha256 => {
                let s = secret.expose();
                let key = match s.strip_prefix(b"base64:") {
                    Some(b) => base64::engine::general_purpose::STANDARD
                        .decode(b)
                        .map_err(KeyError::SignatureBase64)?,
                    None => s.to_vec(),
                };
                if key.len() < 16 {
                    return Err(KeyError::HmacTooShort);
                }
                Ok(SignatureKey::Hmac(key))
            }
            SignatureAlgorithm::Ed25519 => {
                use rustls_pki_types::pem::PemObject;
                let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(secret.expose())
                    .map_err(KeyError::SignaturePem)?;
                ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
                    .map(SignatureKey::Ed25519)
                    .map_err(|_| KeyError::SignatureNotEd25519)
            }
        }
    }

    pub fn sign(&self, base: &[u8]) -> Vec<u8> {
        match self {
            SignatureKey::Hmac(k) => {
                let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(k).expect("HMAC takes any key length");
                mac.update(base);
                mac.finalize().into_bytes().to_vec()
            }
            SignatureKey::Ed25519(pair) => pair.sign(base).as_ref().to_vec(),
        }
    }

    pub fn alg(&self) -> &'static str {
        match self {
            SignatureKey::Hmac(_) => "hmac-sha256",
            SignatureKey::Ed25519(_) => "ed25519",
        }
    }
}

impl std::fmt::Debug for SignatureKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SignatureKey::Hmac(_) => "SignatureKey::Hmac(<redacted>)",
            SignatureKey::Ed25519(_) => "SignatureKey::Ed25519(<redacted>)",
        })
    }
}
