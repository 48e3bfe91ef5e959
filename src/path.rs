//! Path checks: one meaning for every request path, or a refusal. A leaf: imports nothing
//! of the crate, so the config, the router and egress all use the same rules.
//!
//! Routing sees the request path exactly as it will be forwarded. Any path whose meaning
//! could differ between Portcullis and the upstream is refused with 400 before routing:
//! dot segments (raw or encoded), path parameters (`;`, raw or `%3B`, which Tomcat, Jetty
//! and Spring strip), empty segments (`//`, which many servers merge), encoded slashes and
//! backslashes, double encoding (any `%25`), control bytes, and escapes
//! that do not decode to UTF-8 (overlong forms). Escapes of unreserved characters
//! (`%73` for `s`) are decoded first ([`normalize`]), and the decoded path is both routed
//! and forwarded. Finally a path that would reach another integration when compared
//! without case or trailing `/` (as case-insensitive or lenient upstreams compare) is
//! refused too (`route::Router::route`).

/// Why a request path was refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path must start with `/`")]
    NotOriginForm,
    #[error("path contains a dot segment (`.` or `..`, raw or percent-encoded)")]
    DotSegment,
    #[error("path contains an encoded slash (`%2F`)")]
    EncodedSlash,
    #[error("path contains an encoded backslash (`%5C`)")]
    EncodedBackslash,
    #[error("path contains a backslash")]
    Backslash,
    #[error("path contains a control byte")]
    ControlByte,
    #[error("path contains a malformed percent-encoding")]
    BadPercent,
    #[error("path contains a path parameter (`;`, raw or `%3B`)")]
    Semicolon,
    #[error("path contains an empty segment (`//`)")]
    EmptySegment,
    #[error("path contains an encoded percent sign (`%25`), a double encoding")]
    DoubleEncoded,
    #[error("path does not decode to UTF-8")]
    NotUtf8,
    #[error("path differs only in case or a trailing `/` from another integration's path")]
    AmbiguousCase,
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 section 6.2.2.2: escapes of unreserved characters decoded (`%7E` to `~`),
/// every other byte as it was. Borrowed when there is nothing to decode.
pub fn normalize(path: &str) -> std::borrow::Cow<'_, str> {
    let b = path.as_bytes();
    let decodable = |i: usize| -> Option<u8> {
        let d = hex_val(*b.get(i + 1)?)? << 4 | hex_val(*b.get(i + 2)?)?;
        unreserved(d).then_some(d)
    };
    let Some(first) = (0..b.len()).find(|&i| b[i] == b'%' && decodable(i).is_some()) else {
        return std::borrow::Cow::Borrowed(path);
    };
    let mut out = String::with_capacity(path.len());
    out.push_str(&path[..first]);
    let mut i = first;
    while i < b.len() {
        if b[i] == b'%' {
            if let Some(d) = decodable(i) {
                out.push(d as char);
                i += 3;
                continue;
            }
        }
        // Escapes are ASCII and unreserved bytes are ASCII, so `i` is a char boundary
        // whenever the byte is ASCII; copy multi-byte characters whole.
        let ch = path[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8();
    }
    std::borrow::Cow::Owned(out)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Checks that `path` means the same thing to every server that could read it.
pub fn check_path(path: &str) -> Result<(), PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    // One pass: bytes and escapes, and whether the current segment is only dots.
    let mut i = 0;
    let mut seg_dots = 0usize; // dots (raw or %2E) in the current segment
    let mut seg_other = false; // anything else in the current segment
    let mut seg_len = 0usize;
    // Only an escaped path can decode to something that is not UTF-8 (`path` itself is a
    // `&str`), so only then is the decoded form collected.
    let escaped = bytes.contains(&b'%');
    let mut decoded_bytes = Vec::new();
    while i < bytes.len() {
        let b = bytes[i];
        let decoded = if b == b'%' {
            let (h, l) = match (
                bytes.get(i + 1).copied().and_then(hex_val),
                bytes.get(i + 2).copied().and_then(hex_val),
            ) {
                (Some(h), Some(l)) => (h, l),
                _ => return Err(PathError::BadPercent),
            };
            i += 3;
            let d = h << 4 | l;
            match d {
                b'/' => return Err(PathError::EncodedSlash),
                b'\\' => return Err(PathError::EncodedBackslash),
                b';' => return Err(PathError::Semicolon),
                // An encoded `%` lets a server that decodes twice see anything at all.
                b'%' => return Err(PathError::DoubleEncoded),
                _ => d,
            }
        } else {
            i += 1;
            match b {
                b'\\' => return Err(PathError::Backslash),
                b';' => return Err(PathError::Semicolon),
                b'/' => {
                    if seg_dots > 0 && seg_dots <= 2 && !seg_other {
                        return Err(PathError::DotSegment);
                    }
                    if seg_len == 0 && i > 1 {
                        return Err(PathError::EmptySegment);
                    }
                    seg_dots = 0;
                    seg_other = false;
                    seg_len = 0;
                    if escaped {
                        decoded_bytes.push(b'/');
                    }
                    continue;
                }
                _ => b,
            }
        };
        seg_len += 1;
        if escaped {
            decoded_bytes.push(decoded);
        }
        if decoded < 0x20 || decoded == 0x7f {
            return Err(PathError::ControlByte);
        }
        if decoded == b'.' {
            seg_dots += 1;
        } else {
            seg_other = true;
        }
    }
    if seg_dots > 0 && seg_dots <= 2 && !seg_other {
        return Err(PathError::DotSegment);
    }
    if std::str::from_utf8(&decoded_bytes).is_err() {
        return Err(PathError::NotUtf8);
    }
    Ok(())
}

/// Whether `path` is `base` or below it (`base` without its `/*`; empty matches all).
pub fn matches_prefix(base: &str, path: &str) -> bool {
    base.is_empty()
        || path == base
        || (path.len() > base.len() && path.starts_with(base) && path.as_bytes()[base.len()] == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ambiguous_paths_are_refused() {
        for (p, e) in [
            ("/a/../b", PathError::DotSegment),
            ("/a/./b", PathError::DotSegment),
            ("/a/..", PathError::DotSegment),
            ("/a/%2e%2E/b", PathError::DotSegment),
            ("/a/.%2e", PathError::DotSegment),
            ("/a/%2E", PathError::DotSegment),
            ("/a%2fb", PathError::EncodedSlash),
            ("/a%2Fb", PathError::EncodedSlash),
            ("/a%5cb", PathError::EncodedBackslash),
            ("/a\\b", PathError::Backslash),
            ("/a%00b", PathError::ControlByte),
            ("/a%0ab", PathError::ControlByte),
            ("/a\tb", PathError::ControlByte),
            ("/a%7Fb", PathError::ControlByte),
            ("/a%zz", PathError::BadPercent),
            ("/a%2", PathError::BadPercent),
            ("a/b", PathError::NotOriginForm),
            ("*", PathError::NotOriginForm),
            ("/pub/..;/protected", PathError::Semicolon),
            ("/pub/x;jsessionid=1", PathError::Semicolon),
            ("/pub/.%3b/x", PathError::Semicolon),
            ("/pub/%3B", PathError::Semicolon),
            ("//admin", PathError::EmptySegment),
            ("/a//b", PathError::EmptySegment),
            ("/a/%252e%252e/b", PathError::DoubleEncoded),
            ("/a/%252F", PathError::DoubleEncoded),
            ("/a/%25%32%65", PathError::DoubleEncoded),
            ("/a/%25", PathError::DoubleEncoded),
            ("/a/%c0%ae%c0%ae/b", PathError::NotUtf8),
            ("/a/%ff", PathError::NotUtf8),
        ] {
            assert_eq!(check_path(p), Err(e), "{p}");
        }
    }

    #[test]
    fn ordinary_paths_pass() {
        for p in [
            "/",
            "/a/b",
            "/a/...",
            "/a/.b",
            "/a/b.",
            "/a..b",
            "/a/%41",
            "/a/b/",
            "/caf%C3%A9",
        ] {
            assert_eq!(check_path(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded() {
        assert_eq!(normalize("/inc/%73now"), "/inc/snow");
        assert_eq!(normalize("/a%7E%2Fb%20c"), "/a~%2Fb%20c");
        assert!(matches!(normalize("/plain/caf\u{e9}"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(normalize("/%C3%A9%41"), "/%C3%A9A");
    }
}
