//! Secrets: resolved from the config (`"literal"`, `{ env }`, `{ file }`), redacted in
//! `Debug`, compared in constant time. Stored hashes (`sha256:HEX`) live here too.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A secret value. Its `Debug` never prints it; compare with [`Secret::ct_eq`].
#[derive(Clone)]
pub struct Secret(Box<[u8]>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into().into_boxed_slice())
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The secret as UTF-8 text (passwords and client secrets are text).
    pub fn expose_str(&self) -> &str {
        // Secrets are built from TOML strings, environment variables or files read as
        // UTF-8, so the bytes are valid UTF-8; fall back to "" rather than panic.
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    pub fn ct_eq(&self, other: &[u8]) -> bool {
        self.0.ct_eq(other).into()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A stored `sha256:` hash of a random secret (API secrets, URL keys, client secrets).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretHash([u8; 32]);

impl SecretHash {
    /// Parses `sha256:` followed by 64 lowercase hex digits.
    pub fn parse(text: &str) -> Result<Self, String> {
        let hex_part = text
            .strip_prefix("sha256:")
            .ok_or_else(|| "a stored hash must start with `sha256:`".to_string())?;
        if hex_part.len() != 64 || !hex_part.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err("`sha256:` must be followed by 64 lowercase hex digits".into());
        }
        let mut out = [0u8; 32];
        // Checked just above: 64 lowercase hex digits decode into exactly 32 bytes.
        hex::decode_to_slice(hex_part, &mut out).map_err(|e| e.to_string())?;
        Ok(Self(out))
    }

    pub fn of(secret: &[u8]) -> Self {
        Self(Sha256::digest(secret).into())
    }

    /// Constant-time check that `candidate` hashes to this value.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(candidate).into();
        self.0.ct_eq(&digest).into()
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Display for SecretHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl std::fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretHash(sha256:..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_round_trip_and_match() {
        let h = SecretHash::of(b"s3cret");
        let parsed = SecretHash::parse(&h.to_string()).unwrap();
        assert!(parsed.matches(b"s3cret"));
        assert!(!parsed.matches(b"s3cret "));
    }

    #[test]
    fn bad_hashes_are_refused() {
        assert!(SecretHash::parse("md5:abcd").is_err());
        assert!(SecretHash::parse("sha256:ABCD").is_err());
        assert!(SecretHash::parse(&format!("sha256:{}", "A".repeat(64))).is_err());
    }

    #[test]
    fn debug_is_redacted() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(<redacted>)");
    }
}
