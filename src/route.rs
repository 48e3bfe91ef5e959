//! Routing: `(path, method)` to one integration, or a refusal. Paths reach it checked
//! and normalised by [`crate::path`]; a path that would reach another integration when
//! compared the lenient way (case, trailing `/`) is refused here.

use std::collections::HashMap;

use http::Method;

use crate::config::PathPattern;
use crate::path::{matches_prefix, PathError};

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
fn canonical(path: &str) -> std::borrow::Cow<'_, str> {
    let t = path.trim_end_matches('/');
    let t = if t.is_empty() { "/" } else { t };
    if t.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(t.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(t)
    }
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
                PathPattern::Exact(e) => PathPattern::Exact(canonical(e).into_owned()),
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

#[cfg(test)]
mod tests {
    use super::*;

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
