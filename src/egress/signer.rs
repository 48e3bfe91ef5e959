//! RFC 9421 HTTP Message Signatures (`hmac-sha256`, `ed25519`) and RFC 9530
//! `Content-Digest` (sha-256) for egress requests.
//!
//! The signature base is built exactly as RFC 9421 section 2.5 says; the unit tests check
//! it, and the signatures, against the RFC's own examples (appendix B.2.5 and B.2.6).

use base64::Engine;
use http::{HeaderMap, Method, Uri};
use sha2::{Digest, Sha256};

/// Largest body whose `Content-Digest` is computed (the body is held to hash it).
pub const DIGEST_LIMIT: usize = 1024 * 1024;

pub use crate::config::keys::SignatureKey as Key;

/// The parts of a request a signature can cover.
pub struct Message<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
}

fn authority(uri: &Uri) -> Option<String> {
    let host = uri.host()?.to_ascii_lowercase();
    let default = match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    let port = uri.port_u16().filter(|p| *p != default);
    Some(crate::headers::HostPort { host: &host, port }.to_string())
}

/// Why a request cannot be signed as configured.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SignError {
    #[error("the target has no authority")]
    NoAuthority,
    #[error("header `{0}` is not text")]
    NotText(String),
    #[error("covered header `{0}` is missing from the request")]
    Missing(String),
}

/// The value of one covered component (RFC 9421 sections 2.1 and 2.2).
fn component(name: &str, m: &Message<'_>) -> Result<String, SignError> {
    let uri = m.uri;
    Ok(match name {
        "@method" => m.method.as_str().to_string(),
        "@target-uri" => uri.to_string(),
        "@authority" => authority(uri).ok_or(SignError::NoAuthority)?,
        "@scheme" => uri.scheme_str().unwrap_or("http").to_ascii_lowercase(),
        "@request-target" => uri.path_and_query().map_or("/".to_string(), |p| p.as_str().to_string()),
        "@path" => match uri.path() {
            "" => "/".to_string(),
            p => p.to_string(),
        },
        "@query" => format!("?{}", uri.query().unwrap_or("")),
        header => {
            let values: Vec<&str> = m
                .headers
                .get_all(header)
                .iter()
                .map(|v| v.to_str().map(str::trim))
                .collect::<Result<_, _>>()
                .map_err(|_| SignError::NotText(header.to_string()))?;
            if values.is_empty() {
                return Err(SignError::Missing(header.to_string()));
            }
            values.join(", ")
        }
    })
}

/// `("a" "b");created=..;keyid="..";alg=".."`
pub fn params(components: &[String], created: u64, key_id: &str, alg: Option<&str>) -> String {
    let list: Vec<String> = components.iter().map(|c| format!("\"{c}\"")).collect();
    let mut p = format!("({});created={created};keyid=\"{key_id}\"", list.join(" "));
    if let Some(a) = alg {
        p.push_str(&format!(";alg=\"{a}\""));
    }
    p
}

/// The signature base of RFC 9421 section 2.5.
pub fn signature_base(components: &[String], m: &Message<'_>, params: &str) -> Result<String, SignError> {
    let mut base = String::new();
    for c in components {
        base.push_str(&format!("\"{c}\": {}\n", component(c, m)?));
    }
    base.push_str(&format!("\"@signature-params\": {params}"));
    Ok(base)
}

/// `sha-256=:BASE64:` (RFC 9530).
pub fn content_digest(body: &[u8]) -> String {
    format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body))
    )
}

/// Signs a request: returns the `Signature-Input` and `Signature` values (label `sig1`).
pub struct Signer {
    pub key_id: String,
    pub key: std::sync::Arc<Key>,
    pub components: Vec<String>,
}

impl Signer {
    pub fn covers_digest(&self) -> bool {
        self.components.iter().any(|c| c == "content-digest")
    }

    pub fn sign(&self, m: &Message<'_>, created: u64) -> Result<(String, String), SignError> {
        let p = params(&self.components, created, &self.key_id, Some(self.key.alg()));
        let base = signature_base(&self.components, m, &p)?;
        let sig = base64::engine::general_purpose::STANDARD.encode(self.key.sign(base.as_bytes()));
        Ok((format!("sig1={p}"), format!("sig1=:{sig}:")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Secret, SignatureAlgorithm};

    fn rfc_request() -> (Method, Uri, HeaderMap) {
        let mut h = HeaderMap::new();
        h.insert("date", "Tue, 20 Apr 2021 02:07:55 GMT".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        h.insert("content-length", "18".parse().unwrap());
        (
            Method::POST,
            "http://example.com/foo?param=Value&Pet=dog".parse().unwrap(),
            h,
        )
    }

    fn list(c: &[&str]) -> Vec<String> {
        c.iter().map(|s| s.to_string()).collect()
    }

    /// RFC 9421 appendix B.2.5: hmac-sha256 with the shared test secret.
    #[test]
    fn rfc9421_b25_hmac_sha256() {
        let (method, uri, headers) = rfc_request();
        let m = Message {
            method: &method,
            uri: &uri,
            headers: &headers,
        };
        let components = list(&["date", "@authority", "content-type"]);
        let p = params(&components, 1618884473, "test-shared-secret", None);
        let base = signature_base(&components, &m, &p).unwrap();
        assert_eq!(
            base,
            "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@authority\": example.com\n\"content-type\": application/json\n\"@signature-params\": (\"date\" \"@authority\" \"content-type\");created=1618884473;keyid=\"test-shared-secret\""
        );
        let secret = Secret::new(
            "base64:uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==",
        );
        let key = Key::parse(SignatureAlgorithm::HmacSha256, &secret).unwrap();
        let sig = base64::engine::general_purpose::STANDARD.encode(key.sign(base.as_bytes()));
        assert_eq!(sig, "pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=");
    }

    /// RFC 9421 appendix B.2.6: ed25519 with the RFC's test key (deterministic).
    #[test]
    fn rfc9421_b26_ed25519() {
        let (method, uri, headers) = rfc_request();
        let m = Message {
            method: &method,
            uri: &uri,
            headers: &headers,
        };
        let components = list(&[
            "date",
            "@method",
            "@path",
            "@authority",
            "content-type",
            "content-length",
        ]);
        let p = params(&components, 1618884473, "test-key-ed25519", None);
        let base = signature_base(&components, &m, &p).unwrap();
        assert_eq!(
            base,
            "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@method\": POST\n\"@path\": /foo\n\"@authority\": example.com\n\"content-type\": application/json\n\"content-length\": 18\n\"@signature-params\": (\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\""
        );
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n";
        let key = Key::parse(SignatureAlgorithm::Ed25519, &Secret::new(pem)).unwrap();
        let sig = base64::engine::general_purpose::STANDARD.encode(key.sign(base.as_bytes()));
        assert_eq!(
            sig,
            "wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw=="
        );
    }

    #[test]
    fn derived_components() {
        let (method, _, headers) = rfc_request();
        let uri: Uri = "https://Example.COM:443/a%20b?x=1".parse().unwrap();
        let m = Message {
            method: &method,
            uri: &uri,
            headers: &headers,
        };
        assert_eq!(component("@authority", &m).unwrap(), "example.com");
        assert_eq!(component("@scheme", &m).unwrap(), "https");
        assert_eq!(component("@path", &m).unwrap(), "/a%20b");
        assert_eq!(component("@query", &m).unwrap(), "?x=1");
        assert_eq!(component("@request-target", &m).unwrap(), "/a%20b?x=1");
        assert!(component("x-missing", &m).is_err());
    }

    #[test]
    fn content_digest_matches_rfc_9530_example() {
        // RFC 9530 section 2: {"hello": "world"}
        assert_eq!(
            content_digest(b"{\"hello\": \"world\"}"),
            "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
        );
    }
}
