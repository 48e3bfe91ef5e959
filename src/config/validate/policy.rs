//! `when` (a CEL expression, compiled here once per config generation, its errors at
//! their position inside the string) and `claim_headers`.

use super::*;

/// The `X-Portcullis-*` headers Portcullis sets itself: no claim may take their name.
const RESERVED: [&str; 8] = [
    "x-portcullis-user",
    "x-portcullis-roles",
    "x-portcullis-auth-method",
    "x-portcullis-plan",
    "x-portcullis-integration",
    "x-portcullis-client-id",
    "x-portcullis-assertion",
    "x-portcullis-issuer",
];

impl Validator<'_> {
    /// Compiles `when` of `what`; an error is reported where it is in the expression.
    pub(super) fn policy(&mut self, s: Option<&Str>, what: &str) -> Option<crate::policy::Policy> {
        let s = s?;
        match crate::policy::compile(s.get_ref()) {
            Ok(p) => Some(p),
            Err(e) => {
                let at = self.inside_string(s.span(), s.get_ref(), e.offset);
                self.error(Some(at..at + 1), format!("`when` of {what}: {}", e.message));
                None
            }
        }
    }

    /// The file offset of byte `offset` of the string `value` written at `span`: past its
    /// opening quotes (and the newline a multi-line string trims). A string whose text
    /// differs from its value (escapes) gives its own start.
    fn inside_string(&self, span: Span, value: &str, offset: usize) -> usize {
        let raw = self.text.get(span.clone()).unwrap_or("");
        let delim = if raw.starts_with("'''") || raw.starts_with("\"\"\"") {
            3
        } else {
            1
        };
        let mut start = span.start + delim;
        let mut body = raw.get(delim..raw.len().saturating_sub(delim)).unwrap_or("");
        if delim == 3 {
            for nl in ["\r\n", "\n"] {
                if let Some(b) = body.strip_prefix(nl) {
                    start += nl.len();
                    body = b;
                    break;
                }
            }
        }
        if body == value {
            start + offset
        } else {
            span.start
        }
    }

    /// `claim_headers` of integration `full`: `X-Portcullis-*` names that Portcullis does
    /// not set itself, each once, and a dotted claim path. (Errors are at the entry's
    /// value, on its name's line: TOML keys carry no position here.)
    pub(super) fn claim_headers(
        &mut self,
        c: Option<&Spanned<std::collections::BTreeMap<String, Str>>>,
        full: &str,
    ) -> Vec<ClaimHeader> {
        let Some(c) = c else {
            return Vec::new();
        };
        let mut out: Vec<ClaimHeader> = Vec::new();
        for (text, claim) in c.get_ref() {
            let name = claim;
            let lower = text.to_ascii_lowercase();
            let bad = |m: &str| format!("integration `{full}`: claim_headers `{text}`: {m}");
            let header = match http::HeaderName::from_bytes(text.as_bytes()) {
                Ok(h) if lower.starts_with("x-portcullis-") && lower.len() > "x-portcullis-".len() => h,
                Ok(_) => {
                    self.error(
                        sp(name),
                        bad("only X-Portcullis-* names may carry claims (the client cannot send those: they are stripped)"),
                    );
                    continue;
                }
                Err(_) => {
                    self.error(sp(name), bad("not a valid header name"));
                    continue;
                }
            };
            if RESERVED.contains(&lower.as_str()) {
                self.error(sp(name), bad("Portcullis sets this header itself"));
                continue;
            }
            if out.iter().any(|h| h.name == header) {
                self.error(sp(name), bad("named twice"));
                continue;
            }
            let path = claim.get_ref();
            if path.is_empty() || path.split('.').any(str::is_empty) {
                self.error(
                    sp(claim),
                    bad("the claim must be a name or a dotted path such as `org.id`"),
                );
                continue;
            }
            out.push(ClaimHeader {
                name: header,
                claim: path.clone(),
            });
        }
        out
    }
}
