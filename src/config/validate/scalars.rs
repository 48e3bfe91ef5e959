//! The checks every section uses: addresses, durations, counts, URLs, secrets, names
//! and duplicates.

use super::*;
impl Validator<'_> {
    pub(super) fn address(&mut self, s: &Str) -> Option<SocketAddr> {
        match s.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.error(
                    sp(s),
                    format!(
                        "invalid address `{}`: expected IP:PORT such as 127.0.0.1:8080",
                        s.get_ref()
                    ),
                );
                None
            }
        }
    }

    pub(super) fn duration(&mut self, s: Option<&Str>, default: Duration, key: &str) -> Duration {
        s.and_then(|s| self.duration_of(s, key)).unwrap_or(default)
    }

    /// A duration, or `None` after an error naming `key`.
    pub(super) fn duration_of(&mut self, s: &Str, key: &str) -> Option<Duration> {
        match humantime::parse_duration(s.get_ref()) {
            // Every duration is added to a clock somewhere: keep it far from overflow.
            Ok(d) if d > MAX_DURATION => {
                self.error(sp(s), format!("{key} `{}` is longer than 10 years", s.get_ref()));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.error(
                    sp(s),
                    format!(
                        "invalid duration `{}` for {key}: {e} (use e.g. \"250ms\", \"10s\", \"5m\")",
                        s.get_ref()
                    ),
                );
                None
            }
        }
    }

    pub(super) fn count(&mut self, n: &Spanned<i64>, min: i64, max: i64, key: &str) -> Option<u64> {
        let v = *n.get_ref();
        if v < min || v > max {
            self.error(sp(n), format!("{key} must be between {min} and {max}, not {v}"));
            None
        } else {
            Some(v as u64)
        }
    }

    pub(super) fn url(&mut self, s: &Str, what: &str) -> Option<url::Url> {
        match url::Url::parse(s.get_ref()) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
            Ok(_) => {
                self.error(
                    sp(s),
                    format!(
                        "invalid URL `{}` for {what}: expected http:// or https:// with a host",
                        s.get_ref()
                    ),
                );
                None
            }
            Err(e) => {
                self.error(sp(s), format!("invalid URL `{}` for {what}: {e}", s.get_ref()));
                None
            }
        }
    }

    pub(super) fn secret(&mut self, s: &Spanned<raw::Secret>, what: &str) -> Option<Secret> {
        self.secret_at(s.get_ref(), s.span(), what)
    }

    pub(super) fn secret_at(&mut self, s: &raw::Secret, span: Span, what: &str) -> Option<Secret> {
        let sp = |_: &raw::Secret| Some(span.clone());
        if let raw::Secret::File(r) = s {
            self.watched.push((PathBuf::from(&r.file), super::FileKind::Secret));
        }
        match s {
            raw::Secret::Literal(v) => {
                self.warn(
                    sp(s),
                    format!("{what} is a literal secret in the config file; prefer {{ env = \"NAME\" }} or {{ file = \"path\" }}"),
                );
                Some(Secret::new(v.as_bytes()))
            }
            raw::Secret::Env(r) => match std::env::var(&r.env) {
                Ok(v) if !v.is_empty() => Some(Secret::new(v.into_bytes())),
                Ok(_) => {
                    self.error(sp(s), format!("environment variable `{}` for {what} is empty", r.env));
                    None
                }
                Err(_) => {
                    self.error(sp(s), format!("environment variable `{}` for {what} is not set", r.env));
                    None
                }
            },
            raw::Secret::File(r) => match super::secret::read_text(r.file.as_ref(), super::FileKind::Secret) {
                Ok(v) => {
                    let v = v.trim_end_matches(['\r', '\n']);
                    if v.is_empty() {
                        self.error(sp(s), format!("secret file `{}` for {what} is empty", r.file));
                        None
                    } else {
                        Some(Secret::new(v.as_bytes()))
                    }
                }
                Err(e) => {
                    self.error(sp(s), format!("cannot read secret file `{}` for {what}: {e}", r.file));
                    None
                }
            },
        }
    }

    pub(super) fn name(&mut self, s: &Str, what: &str) -> String {
        let n = s.get_ref();
        if n.is_empty()
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            self.error(
                sp(s),
                format!("invalid {what} name `{n}`: use letters, digits, `-`, `_` and `.`"),
            );
        }
        n.clone()
    }

    /// User names and roles travel in headers (roles comma-separated) and in Basic
    /// credentials (split at the first `:`), so they are visible ASCII without `:` or `,`.
    pub(super) fn principal_word(&mut self, s: &Str, what: &str) -> String {
        let n = s.get_ref();
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_graphic() && b != b':' && b != b',') {
            self.error(
                sp(s),
                format!("invalid {what} `{n}`: use visible ASCII without `:` or `,`"),
            );
        }
        n.clone()
    }

    pub(super) fn duplicate(&mut self, seen: &mut HashMap<String, Span>, name: &str, span: Span, what: &str) {
        if let Some(first) = seen.get(name) {
            let line = self.line_of(first);
            self.error(
                Some(span),
                format!("duplicate {what} `{name}` (first defined on line {line})"),
            );
        } else {
            seen.insert(name.to_string(), span);
        }
    }
}
