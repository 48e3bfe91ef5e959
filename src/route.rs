//! Path checks and routing: `(path, method)` to one integration, or a refusal.
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
//! refused too ([`Router::route`]).

use std::collections::HashMap;

use http::Method;

use crate::config::PathPattern;

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
                    decoded_bytes.push(b'/');
                    continue;
                }
                _ => b,
            }
        };
        seg_len += 1;
        decoded_bytes.push(decoded);
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

/// Where a route leads: the indexes of its plan and integration in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub plan: usize,
    pub integration: usize,
}

/// The outcome of routing a checked path.
#[derive(Debug, PartialEq, Eq)]
pub enum Match<'a> {
    Found(Target),
    /// The path exists, but not for this method; these are the allowed ones.
    MethodNotAllowed(&'a [Method]),
    NotFound,
}

#[derive(Debug)]
struct Entry {
    methods: Vec<Method>,
    target: Target,
}

/// The integrations of one path pattern, and the union of their methods (for `Allow`).
#[derive(Debug, Default)]
struct Group {
    entries: Vec<Entry>,
    allow: Vec<Method>,
}

impl Group {
    fn add(&mut self, methods: Vec<Method>, target: Target) {
        for m in &methods {
            if !self.allow.contains(m) {
                self.allow.push(m.clone());
            }
        }
        self.entries.push(Entry { methods, target });
    }

    fn find(&self, method: &Method) -> Option<Target> {
        self.entries
            .iter()
            .find(|e| e.methods.contains(method))
            .map(|e| e.target)
    }
}

/// Integrations by exact path, then by longest prefix. The config forbids overlaps, so at
/// most one integration matches any (path, method).
#[derive(Debug, Default)]
pub struct Router {
    exact: HashMap<String, Group>,
    /// `(base, group)`, longest base first.
    prefixes: Vec<(String, Group)>,
    /// The same routes compared the lenient way (see [`canonical`]), to detect paths that
    /// a lenient upstream would read as another integration's.
    lenient: Option<Box<Router>>,
}

/// A path as lenient servers compare it: ASCII case folded, trailing `/` removed.
fn canonical(path: &str) -> String {
    let t = path.trim_end_matches('/');
    let t = if t.is_empty() { "/" } else { t };
    t.to_ascii_lowercase()
}

impl Router {
    pub fn new(routes: impl IntoIterator<Item = (PathPattern, Vec<Method>, Target)>) -> Self {
        let mut r = Router::default();
        for (pattern, methods, target) in routes {
            match pattern {
                PathPattern::Exact(p) => r.exact.entry(p).or_default().add(methods, target),
                PathPattern::Prefix(base) => match r.prefixes.iter_mut().find(|(b, _)| *b == base) {
                    Some((_, group)) => group.add(methods, target),
                    None => {
                        let mut group = Group::default();
                        group.add(methods, target);
                        r.prefixes.push((base, group));
                    }
                },
            }
        }
        r.prefixes.sort_by_key(|(base, _)| std::cmp::Reverse(base.len()));
        r
    }

    /// Builds the router, with the lenient twin that [`Router::route`] checks against.
    pub fn new_checked(routes: Vec<(PathPattern, Vec<Method>, Target)>) -> Self {
        let lenient = Router::new(routes.iter().map(|(p, m, t)| {
            let p = match p {
                PathPattern::Exact(e) => PathPattern::Exact(canonical(e)),
                PathPattern::Prefix(b) => PathPattern::Prefix(b.to_ascii_lowercase().trim_end_matches('/').to_string()),
            };
            (p, m.clone(), *t)
        }));
        let mut r = Router::new(routes);
        r.lenient = Some(Box::new(lenient));
        r
    }

    /// Routes a checked path; `Err` when the lenient reading of the path reaches another
    /// integration than the exact one (or one where the exact reading reaches none).
    pub fn route(&self, path: &str, method: &Method) -> Result<Match<'_>, PathError> {
        let exact = self.route_exact(path, method);
        if let Some(lenient) = &self.lenient {
            let target = |m: &Match<'_>| match m {
                Match::Found(t) => Some(*t),
                _ => None,
            };
            let other = lenient.route_exact(&canonical(path), method);
            if target(&other).is_some() && target(&other) != target(&exact) {
                return Err(PathError::AmbiguousCase);
            }
        }
        Ok(exact)
    }

    fn route_exact(&self, path: &str, method: &Method) -> Match<'_> {
        let mut path_matched: Option<&[Method]> = None;
        if let Some(group) = self.exact.get(path) {
            if let Some(t) = group.find(method) {
                return Match::Found(t);
            }
            path_matched = Some(&group.allow);
        }
        for (base, group) in &self.prefixes {
            if !matches_prefix(base, path) {
                continue;
            }
            if let Some(t) = group.find(method) {
                return Match::Found(t);
            }
            path_matched = path_matched.or(Some(&group.allow));
        }
        match path_matched {
            Some(methods) => Match::MethodNotAllowed(methods),
            None => Match::NotFound,
        }
    }
}

/// Whether `path` is `base` or below it (`base` without its `/*`; empty matches all).
pub(crate) fn matches_prefix(base: &str, path: &str) -> bool {
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

    fn router() -> Router {
        let t = |i| Target {
            plan: 0,
            integration: i,
        };
        Router::new_checked(vec![
            (PathPattern::Exact("/inc/snow".into()), vec![Method::POST], t(0)),
            (PathPattern::Exact("/inc/snow".into()), vec![Method::GET], t(1)),
            (
                PathPattern::Prefix("/inc/jira".into()),
                vec![Method::POST, Method::PUT],
                t(2),
            ),
            (
                PathPattern::Prefix("/inc/jira/admin".into()),
                vec![Method::DELETE],
                t(3),
            ),
            (PathPattern::Prefix("".into()), vec![Method::PATCH], t(4)),
        ])
    }

    #[test]
    fn a_path_that_reads_as_another_integration_is_refused() {
        let r = router();
        // Case and a trailing slash would reach /inc/snow on a lenient upstream, while
        // the exact comparison would send them to the catch-all.
        assert_eq!(r.route("/INC/snow", &Method::GET), Err(PathError::AmbiguousCase));
        assert_eq!(r.route("/inc/snow/", &Method::GET), Err(PathError::AmbiguousCase));
        assert_eq!(r.route("/Inc/Jira/x", &Method::PUT), Err(PathError::AmbiguousCase));
        // Unrelated paths with capitals are fine.
        assert_eq!(
            r.route("/Other/Thing", &Method::PATCH),
            Ok(Match::Found(Target {
                plan: 0,
                integration: 4
            }))
        );
    }

    #[test]
    fn routes_by_path_and_method() {
        let r = router();
        let t = |i| {
            Match::Found(Target {
                plan: 0,
                integration: i,
            })
        };
        assert_eq!(r.route("/inc/snow", &Method::POST), Ok(t(0)));
        assert_eq!(r.route("/inc/snow", &Method::GET), Ok(t(1)));
        assert_eq!(r.route("/inc/jira", &Method::PUT), Ok(t(2)));
        assert_eq!(r.route("/inc/jira/x/y", &Method::POST), Ok(t(2)));
        assert_eq!(r.route("/inc/jira/admin/x", &Method::DELETE), Ok(t(3)));
        assert_eq!(r.route("/inc/jira/admin/x", &Method::POST), Ok(t(2)));
        // Only the catch-all (PATCH) holds these paths.
        assert_eq!(
            r.route("/inc/jiraX", &Method::POST),
            Ok(Match::MethodNotAllowed(&[Method::PATCH]))
        );
        assert_eq!(
            r.route("/nope", &Method::POST),
            Ok(Match::MethodNotAllowed(&[Method::PATCH]))
        );
        assert_eq!(
            Router::new(Vec::new()).route_exact("/nope", &Method::GET),
            Match::NotFound
        );
        match r.route("/inc/snow", &Method::DELETE).unwrap() {
            Match::MethodNotAllowed(m) => assert_eq!(m, &[Method::POST, Method::GET]),
            other => panic!("{other:?}"),
        }
        match r.route("/inc/jira/admin", &Method::GET).unwrap() {
            Match::MethodNotAllowed(m) => assert_eq!(m, &[Method::DELETE]),
            other => panic!("{other:?}"),
        }
    }
}
