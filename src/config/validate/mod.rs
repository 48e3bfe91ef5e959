//! From `raw` to [`Config`]: every value checked, every error collected with its position.
//!
//! This file owns the run (TOML, unknown keys, then the sections in order) and the
//! [`Validator`] that collects diagnostics; each section's checks live in a file of its
//! own: `listen` (and the other listeners), `limits` (with `[auth]`, `[cache]`,
//! `[lockout]`), `shared` (and `[assertion]`), `tracing` (and `[runtime]`), `users` (and
//! rules, API keys), `plans`, `oauth`, `endpoints`; `scalars` holds the checks they share
//! and `locate` turns serde's paths into positions.

mod endpoints;
mod limits;
mod listen;
pub(super) mod locate;
mod oauth;
mod plans;
mod scalars;
mod shared;
mod tracing;
mod users;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::keys;
use super::raw::{self, Str};
use super::*;
use locate::{dotted, locate, segments, Segment};

pub(super) fn run(file: &Path, text: &str) -> Result<Loaded, Errors> {
    let mut v = Validator {
        file: file.to_owned(),
        text,
        errors: Vec::new(),
        warnings: Vec::new(),
        watched: Vec::new(),
    };
    let doc = match toml_edit::ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            v.error(e.span(), format!("invalid TOML: {}", e.message().trim()));
            return Err(Errors(v.errors));
        }
    };
    let mut unknown: Vec<Vec<Segment>> = Vec::new();
    let parsed: Result<raw::Raw, _> =
        serde_ignored::deserialize(toml::Deserializer::new(text), |path| unknown.push(segments(&path)));
    for segs in &unknown {
        let span = locate(doc.as_item(), segs);
        v.error(span, format!("unknown key `{}`", dotted(segs)));
    }
    let raw = match parsed {
        Ok(raw) => raw,
        Err(e) => {
            v.error(e.span(), in_words(e.message().trim()));
            return Err(Errors(v.errors));
        }
    };
    let config = v.config(raw);
    if v.errors.is_empty() {
        Ok(Loaded {
            config,
            warnings: v.warnings,
        })
    } else {
        Err(Errors(v.errors))
    }
}

/// A type error as an operator reads it: "expected an integer", not "expected i64".
fn in_words(message: &str) -> String {
    const WORDS: [(&str, &str); 13] = [
        ("expected i64", "expected an integer"),
        ("expected i32", "expected an integer"),
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected u32", "expected a whole number, 0 or more"),
        ("expected u16", "expected a whole number, 0 or more"),
        ("expected u8", "expected a whole number, 0 or more"),
        ("expected usize", "expected a whole number, 0 or more"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
        ("expected a borrowed string", "expected a string"),
        ("expected a sequence", "expected a list (`[...]`)"),
        ("expected a map", "expected a table"),
        ("expected struct ", "expected a table: "),
    ];
    let mut out = message.to_string();
    for (code, words) in WORDS {
        if let Some(i) = out.find(code) {
            let end = i + code.len();
            // Whole words only: `expected u8` must not rewrite `expected u80`.
            if code.ends_with(' ') || !out[end..].starts_with(|c: char| c.is_ascii_alphanumeric()) {
                out.replace_range(i..end, words);
            }
        }
    }
    out
}

struct Validator<'a> {
    file: PathBuf,
    text: &'a str,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    /// Files the config reads besides itself (secret files, a JWKS file).
    watched: Vec<(PathBuf, super::FileKind)>,
}

/// The longest duration any key accepts.
const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86400);

/// The most clock skew `oauth.leeway` may allow.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

fn sp<T>(s: &Spanned<T>) -> Option<Span> {
    Some(s.span())
}

impl Validator<'_> {
    fn diag(&self, span: Option<Span>, message: String) -> Diagnostic {
        let (line, column) = span.map_or((1, 1), |s| line_col(self.text, s.start));
        Diagnostic {
            file: self.file.clone(),
            line,
            column,
            message,
        }
    }

    fn error(&mut self, span: Option<Span>, message: impl Into<String>) {
        let d = self.diag(span, message.into());
        self.errors.push(d);
    }

    fn warn(&mut self, span: Option<Span>, message: impl Into<String>) {
        let d = self.diag(span, format!("warning: {}", message.into()));
        self.warnings.push(d);
    }

    fn line_of(&self, span: &Span) -> usize {
        line_col(self.text, span.start).0
    }

    fn config(&mut self, raw: raw::Raw) -> Config {
        let listen = self.listen_section(raw.listen.as_ref());
        let limits = self.limits(raw.limits.as_ref());
        let listeners = self.listeners(&raw);
        let cache = self.cache(raw.cache.as_ref());
        let lockout = self.lockout(raw.lockout.as_ref());
        let shared = self.shared(raw.shared.as_ref());
        let tracing = self.tracing(raw.tracing.as_ref());
        let runtime = self.runtime(raw.runtime.as_ref());
        let auth = self.auth_settings(raw.auth.as_ref());
        let assertion = self.assertion(raw.assertion.as_ref());
        let users = self.users(&raw.users);
        let plans = self.plans(&raw.plans, &users);
        self.overlaps(&raw.plans, &plans);
        let api_keys = self.api_keys(&raw.api_keys, &users, &plans);
        let oauth = raw.oauth.as_ref().map(|o| self.oauth(o));
        self.client_certificates(&listen, &users, &plans);
        if oauth.as_ref().is_some_and(|o| o.mode == OAuthMode::Builtin) {
            self.reserved_paths(&raw.plans, &plans);
        }
        let endpoints = self.endpoints(&raw.endpoints, &users);
        Config {
            file: self.file.clone(),
            watched: std::mem::take(&mut self.watched),
            listen,
            limits,
            admin: listeners.admin,
            egress: listeners.egress,
            forward_auth: listeners.forward_auth,
            forward_auth_ingress: listeners.forward_auth_ingress,
            cache,
            lockout,
            runtime,
            tracing,
            shared,
            auth,
            assertion,
            users,
            plans,
            api_keys,
            oauth,
            endpoints,
        }
    }
}
