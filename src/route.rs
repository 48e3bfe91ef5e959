//! Path checks and routing: `(path, method)` to one integration, or a refusal.
//!
//! Routing sees the raw request path, byte for byte as it will be forwarded: nothing is
//! decoded or normalised, so any path whose meaning could differ between Portcullis and the
//! upstream (dot segments, encoded slashes, backslashes, control bytes) is refused with 400
//! before routing.

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
                _ => d,
            }
        } else {
            i += 1;
            if b == b'\\' {
                return Err(PathError::Backslash);
            }
            if b == b'/' {
                if seg_dots > 0 && seg_dots <= 2 && !seg_other {
                    return Err(PathError::DotSegment);
                }
                seg_dots = 0;
                seg_other = false;
                continue;
            }
            b
        };
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

    pub fn route(&self, path: &str, method: &Method) -> Match<'_> {
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
        ] {
            assert_eq!(check_path(p), Err(e), "{p}");
        }
    }

    #[test]
    fn ordinary_paths_pass() {
        for p in [
            "/", "/a/b", "/a/...", "/a/.b", "/a/b.", "/a..b", "/a/%41", "/a/b/", "//a",
        ] {
            assert_eq!(check_path(p), Ok(()), "{p}");
        }
    }

    fn router() -> Router {
        let t = |i| Target {
            plan: 0,
            integration: i,
        };
        Router::new([
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
        ])
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
        assert_eq!(r.route("/inc/snow", &Method::POST), t(0));
        assert_eq!(r.route("/inc/snow", &Method::GET), t(1));
        assert_eq!(r.route("/inc/jira", &Method::PUT), t(2));
        assert_eq!(r.route("/inc/jira/x/y", &Method::POST), t(2));
        assert_eq!(r.route("/inc/jira/admin/x", &Method::DELETE), t(3));
        assert_eq!(r.route("/inc/jira/admin/x", &Method::POST), t(2));
        assert_eq!(r.route("/inc/jiraX", &Method::POST), Match::NotFound);
        assert_eq!(r.route("/inc/snow/", &Method::POST), Match::NotFound);
        assert_eq!(r.route("/nope", &Method::GET), Match::NotFound);
        match r.route("/inc/snow", &Method::DELETE) {
            Match::MethodNotAllowed(m) => assert_eq!(m, &[Method::POST, Method::GET]),
            other => panic!("{other:?}"),
        }
        match r.route("/inc/jira/admin", &Method::GET) {
            Match::MethodNotAllowed(m) => assert_eq!(m, &[Method::DELETE]),
            other => panic!("{other:?}"),
        }
    }
}
