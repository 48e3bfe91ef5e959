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
mod policy;
mod scalars;
mod shared;
pub(super) mod suggest;
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
        let message = match suggest::did_you_mean(segs) {
            Some(meant) => format!("unknown key `{}`: did you mean `{meant}`?", dotted(segs)),
            None => format!("unknown key `{}`", dotted(segs)),
        };
        v.error(span, message);
    }
    let raw = match parsed {
        Ok(raw) => raw,
        Err(e) => {
            v.error(e.span(), in_words(e.message().trim()));
            return Err(Errors(v.errors));
        }
    };
    // `[oauth]`'s position: its header, when it has one.
    let oauth_at = doc
        .as_table()
        .get("oauth")
        .and_then(|i| i.as_table())
        .and_then(|t| t.span());
    let config = v.config(raw, oauth_at);
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

/// The first line of the demo config (config/portcullis.toml), the one config that may
/// hold [`DEMO_CREDENTIALS`].
const DEMO_HEADER: &str = "# Portcullis demo configuration";

/// The stored forms of the demo's credentials, whose secrets README publishes: the
/// password hashes of `jira-integration` and `alice`, the API key secret's, alice's URL
/// key's and the OAuth client secret's. A unit test keeps this list equal to the demo's.
const DEMO_CREDENTIALS: [&str; 5] = [
    "$argon2id$v=19$m=19456,t=2,p=1$6CowCZFM+RCTr2yzSQgOzw$UfqVqy1VHevKcnXw/0lJckJ/rTxUXgs3b8LljRdwLms",
    "$argon2id$v=19$m=19456,t=2,p=1$8CLsTvTtCEW4t8hNRykVEQ$wuWSYYgt1J5qjhaEn9joDwZNaGJSz+h3vTM/YckFARg",
    "sha256:2a0a2af788316df57113bab770a23853f078682285bc131e293588eb1795044d",
    "sha256:9273e5a40957c1ee7b0d5ed46f459dc096e0aa0aa314913de96e7ae5cc8d7e06",
    "sha256:4171522f2d144c2e9187db8e62cc3d86df75769529eaf9577889e59b6e146ecb",
];

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

    /// Refuses one of the demo's published credentials (README prints their secrets)
    /// anywhere but in the demo config itself, which says so on its first line.
    fn not_published(&mut self, span: Option<Span>, what: &str, value: &str) {
        if self.text.starts_with(DEMO_HEADER) || !DEMO_CREDENTIALS.contains(&value) {
            return;
        }
        self.error(
            span,
            format!(
                "{what} is one of the demo's published credentials (README prints its secret): make your own with `portcullis hash-password`, `keygen` or `urlkey`"
            ),
        );
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

    fn config(&mut self, raw: raw::Raw, oauth_at: Option<Span>) -> Config {
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
        let issuers = raw.oauth.as_ref().map(|o| self.oauth(o, oauth_at)).unwrap_or_default();
        let mut plans = plans;
        self.integration_issuers(&raw.plans, &mut plans, &issuers);
        self.client_certificates(&listen, &users, &plans);
        if issuers.iter().any(|o| o.mode == OAuthMode::Builtin) {
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
            issuers,
            endpoints,
        }
    }
}

#[cfg(test)]
mod demo_credentials {
    use super::*;

    fn demo() -> String {
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/portcullis.toml")).unwrap()
    }

    /// The list is the demo's: every stored credential of config/portcullis.toml, and
    /// nothing else.
    #[test]
    fn the_list_is_the_demo_configs_credentials() {
        let text = demo();
        assert!(text.starts_with(DEMO_HEADER));
        let mut found: Vec<String> = text
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once('=')?;
                matches!(
                    k.trim(),
                    "password_hash" | "secret_hash" | "url_key_hash" | "client_secret_hash"
                )
                .then(|| v.trim().trim_matches('"').to_string())
            })
            .collect();
        found.sort();
        let mut list: Vec<String> = DEMO_CREDENTIALS.iter().map(|s| s.to_string()).collect();
        list.sort();
        assert_eq!(found, list);
    }

    /// The demo loads; the same file without its header (any other config) is refused at
    /// each published credential, with its position.
    #[test]
    fn published_credentials_are_refused_outside_the_demo() {
        let text = demo();
        assert!(run(Path::new("demo.toml"), &text).is_ok());
        let other = text.replacen(DEMO_HEADER, "# my gateway", 1);
        let errors = match run(Path::new("mine.toml"), &other) {
            Err(e) => e.0,
            Ok(_) => panic!("the demo's credentials were accepted in another config"),
        };
        let published: Vec<_> = errors
            .iter()
            .filter(|d| d.message.contains("one of the demo's published credentials"))
            .collect();
        assert_eq!(published.len(), 5, "{errors:?}");
        for (d, what) in published.iter().zip([
            "password_hash of user `jira-integration`",
            "password_hash of user `alice`",
            "url_key_hash of user `alice`",
            "secret_hash of api key `pk_demo_servicenow`",
            "client_secret_hash of client `demo-client`",
        ]) {
            assert!(d.message.starts_with(what), "{}", d.message);
            assert!(d.line > 1);
        }
    }
}
