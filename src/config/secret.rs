//! Secrets: resolved from the config (`"literal"`, `{ env }`, `{ file }`), redacted in
//! `Debug`, compared in constant time. Stored hashes (`sha256:HEX`) live here too, and
//! the one way the config reads a file ([`read_file`]): the config file itself, secret
//! files, TLS files, the JWKS file and the CRL are all read, and watched, through it.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

// === files the config reads ===

/// What a file the config reads is for: each kind has its size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// The config file itself.
    Config,
    /// A `{ file = "..." }` secret.
    Secret,
    /// A PEM certificate chain, private key or client CA bundle.
    Tls,
    /// `oauth.jwks_file`.
    Jwks,
    /// `listen.tls.client_crl`.
    Crl,
}

impl FileKind {
    /// The largest file of this kind that is read, in bytes.
    pub const fn limit(self) -> u64 {
        const KIB: u64 = 1024;
        const MIB: u64 = 1024 * KIB;
        match self {
            FileKind::Config => 4 * MIB,
            FileKind::Secret => 64 * KIB,
            FileKind::Tls | FileKind::Jwks => MIB,
            FileKind::Crl => 16 * MIB,
        }
    }
}

/// Why a file the config names was not read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// A directory, FIFO, socket or device (also behind a symlink): reading it could
    /// block forever or never end.
    #[error("not a regular file (a {0}): only a plain file, or a symlink to one, is read")]
    NotRegular(&'static str),
    /// Over the kind's limit, by its size or by what it grew to while being read.
    #[error("larger than the {limit}-byte limit for this file ({size} bytes or more)")]
    TooLarge { size: u64, limit: u64 },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The file type a metadata describes, for [`FileError::NotRegular`].
fn file_type(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "FIFO";
        }
        if t.is_socket() {
            return "socket";
        }
        if t.is_char_device() {
            return "character device";
        }
        if t.is_block_device() {
            return "block device";
        }
    }
    if t.is_dir() {
        "directory"
    } else if t.is_file() {
        "regular file"
    } else {
        "special file"
    }
}

fn check(meta: &std::fs::Metadata, limit: u64) -> Result<(), FileError> {
    if !meta.is_file() {
        return Err(FileError::NotRegular(file_type(meta)));
    }
    if meta.len() > limit {
        return Err(FileError::TooLarge {
            size: meta.len(),
            limit,
        });
    }
    Ok(())
}

/// Opens `path` (a symlink is followed) for reading when it is a regular file within
/// `kind`'s limit, checked by metadata before a byte is read: first of the name, so a
/// FIFO or a device is never opened, then of the file actually opened, so a swap in
/// between changes nothing. Blocking: call it off the async runtime's threads.
pub fn open(path: &Path, kind: FileKind) -> Result<(std::fs::File, std::fs::Metadata), FileError> {
    let limit = kind.limit();
    check(&std::fs::metadata(path)?, limit)?;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // A FIFO swapped in after the check opens without waiting for a writer (and is
        // then refused); no terminal becomes the process's. Regular files ignore both.
        options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    let file = options.open(path)?;
    let meta = file.metadata()?;
    check(&meta, limit)?;
    Ok((file, meta))
}

/// The bytes of `path`, by [`open`], read through a bound: a file that grows past its
/// limit while being read is refused, not read on.
pub fn read_file(path: &Path, kind: FileKind) -> Result<Vec<u8>, FileError> {
    let limit = kind.limit();
    let (file, meta) = open(path, kind)?;
    // The size was checked against the limit: the capacity is bounded.
    let mut bytes = Vec::with_capacity(meta.len() as usize + 1);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge {
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

/// [`read_file`] as UTF-8 text.
pub fn read_text(path: &Path, kind: FileKind) -> Result<String, FileError> {
    String::from_utf8(read_file(path, kind)?)
        .map_err(|_| FileError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text")))
}

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

    /// HTTP Basic credentials (RFC 7617): base64 of `username:password`, what follows
    /// `Basic ` in an `Authorization` header. The one place they are encoded: egress sends
    /// them, `endpoint test` keeps them out of what it prints.
    pub fn basic(username: &str, password: &Secret) -> Secret {
        use base64::Engine;
        let mut raw = zeroize::Zeroizing::new(Vec::with_capacity(username.len() + 1 + password.0.len()));
        raw.extend_from_slice(username.as_bytes());
        raw.push(b':');
        raw.extend_from_slice(&password.0);
        Secret::new(base64::engine::general_purpose::STANDARD.encode(&raw[..]))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Why a stored hash was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error("a stored hash must start with `sha256:`")]
    Prefix,
    #[error("`sha256:` must be followed by 64 lowercase hex digits")]
    Digits,
}

/// A stored `sha256:` hash of a random secret (API secrets, URL keys, client secrets).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretHash([u8; 32]);

impl SecretHash {
    /// Parses `sha256:` followed by 64 lowercase hex digits.
    pub fn parse(text: &str) -> Result<Self, HashError> {
        let hex_part = text.strip_prefix("sha256:").ok_or(HashError::Prefix)?;
        if hex_part.len() != 64 || !hex_part.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(HashError::Digits);
        }
        let mut out = [0u8; 32];
        // Checked just above: 64 lowercase hex digits decode into exactly 32 bytes.
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| HashError::Digits)?;
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
    fn basic_credentials_are_base64_of_user_colon_password() {
        let b = Secret::basic("svc", &Secret::new("p4ss:word"));
        assert_eq!(b.expose_str(), "c3ZjOnA0c3M6d29yZA==");
        assert_eq!(format!("{b:?}"), "Secret(<redacted>)");
    }

    #[test]
    fn bad_hashes_are_refused() {
        assert_eq!(SecretHash::parse("md5:abcd"), Err(HashError::Prefix));
        assert_eq!(SecretHash::parse("sha256:ABCD"), Err(HashError::Digits));
        assert!(SecretHash::parse(&format!("sha256:{}", "A".repeat(64))).is_err());
    }

    #[test]
    fn files_are_read_only_when_plain_and_small() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small");
        std::fs::write(&small, "s3cret\n").unwrap();
        assert_eq!(read_file(&small, FileKind::Secret).unwrap(), b"s3cret\n");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&small, &link).unwrap();
        assert_eq!(read_text(&link, FileKind::Secret).unwrap(), "s3cret\n");

        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; FileKind::Secret.limit() as usize + 1]).unwrap();
        assert!(matches!(
            read_file(&big, FileKind::Secret),
            Err(FileError::TooLarge { .. })
        ));
        // Exactly at the limit is fine; and the limit is the kind's.
        std::fs::write(&big, vec![b'a'; FileKind::Secret.limit() as usize]).unwrap();
        assert!(read_file(&big, FileKind::Secret).is_ok());

        for (special, kind) in [("/dev/zero", "character device"), ("/dev/null", "character device")] {
            let link = dir
                .path()
                .join(kind.replace(' ', "-") + special.replace('/', "-").as_str());
            std::os::unix::fs::symlink(special, &link).unwrap();
            match read_file(&link, FileKind::Secret) {
                Err(FileError::NotRegular(t)) => assert_eq!(t, kind),
                other => panic!("{special}: {other:?}"),
            }
        }
        match read_file(dir.path(), FileKind::Config) {
            Err(FileError::NotRegular(t)) => assert_eq!(t, "directory"),
            other => panic!("{other:?}"),
        }
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        // Returns at once (no writer is waited for), refused.
        match read_file(&fifo, FileKind::Secret) {
            Err(FileError::NotRegular(t)) => assert_eq!(t, "FIFO"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            read_file(&dir.path().join("absent"), FileKind::Secret),
            Err(FileError::Io(_))
        ));
        std::fs::write(&small, b"\xff\xfe").unwrap();
        assert!(read_text(&small, FileKind::Secret)
            .unwrap_err()
            .to_string()
            .contains("UTF-8"));
    }

    #[test]
    fn debug_is_redacted() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(<redacted>)");
    }
}
