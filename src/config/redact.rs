//! What is printed about a config never carries its secrets: URLs lose their user info
//! and query values, and every secret the file writes literally is replaced. Used by the
//! CLI's diagnostics and by the reload log and the admin page's last reload error.

/// Keys whose values are secrets or secret hashes wherever they appear, besides every
/// name that [`secret_name`] recognises.
pub const SECRET_KEYS: &[&str] = &[
    "key",
    "password_hash",
    "url_key_hash",
    "secret_hash",
    "client_secret_hash",
];

/// Whether a key's name says its value is a secret.
pub fn secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    SECRET_KEYS.contains(&n.as_str())
        || n.ends_with("secret")
        || n.ends_with("password")
        || n.ends_with("_hash")
        || n.ends_with("_key") && n != "api_key"
        || n == "token"
        || n.ends_with("_token")
}

/// A URL without its userinfo and with every query value replaced; other strings as
/// they are.
pub fn scrub_url(text: &str) -> String {
    // A URL the url crate does not parse (a Sentinel URL's host list, a bad port) is
    // scrubbed by its text: its user info and query values go all the same.
    let Ok(mut url) = url::Url::parse(text) else {
        return scrub_urls_in(text);
    };
    if url.cannot_be_a_base() || (url.username().is_empty() && url.password().is_none() && url.query().is_none()) {
        return text.to_string();
    }
    let _ = url.set_username("");
    let _ = url.set_password(None);
    if url.query().is_some() {
        let names: Vec<String> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
        url.query_pairs_mut()
            .clear()
            .extend_pairs(names.iter().map(|k| (k.as_str(), "REMOVED")));
    }
    url.to_string()
}

/// Every URL in free text (`scheme://...`, up to a space or a quote) without its user info
/// and with its query values replaced, whether or not the URL is valid: a diagnostic about
/// a malformed URL quotes it.
pub fn scrub_urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (before, url) = rest.split_at(i + 3);
        out.push_str(before);
        let end = url
            .find(|c: char| c.is_whitespace() || matches!(c, '`' | '"' | '\'' | '<' | '>'))
            .unwrap_or(url.len());
        let (url, after) = url.split_at(end);
        let auth_end = url.find(['/', '?', '#']).unwrap_or(url.len());
        let (authority, tail) = url.split_at(auth_end);
        out.push_str(authority.rsplit_once('@').map_or(authority, |(_, host)| host));
        let (path, query) = match tail.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (tail, None),
        };
        out.push_str(path);
        if let Some(q) = query {
            out.push('?');
            out.push_str(&query_names(q.split('#').next().unwrap_or("")));
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// The secrets a config's text writes literally, to remove from anything printed about
/// it (diagnostics quote values): strings under secret-bearing keys at any depth, and the
/// user info and query values of URLs. Plus any added later (resolved secrets).
#[derive(Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    pub fn of_file(path: &std::path::Path) -> Self {
        let mut r = Redactor::default();
        if let Some(doc) = super::secret::read_text(path, super::secret::FileKind::Config)
            .ok()
            .and_then(|t| t.parse::<toml::Value>().ok())
        {
            r.collect(&doc, false);
        }
        r
    }

    pub fn collect(&mut self, value: &toml::Value, secret: bool) {
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    if k == "api_keys" {
                        // An API key's `key` is its id (the Basic user part), which
                        // diagnostics name; its secret is `secret_hash`.
                        for key in v.as_array().into_iter().flatten().filter_map(|k| k.as_table()) {
                            for (field, value) in key.iter().filter(|(f, _)| *f != "key") {
                                self.collect(value, secret_name(field));
                            }
                        }
                        continue;
                    }
                    if k == "rate" {
                        // A rate limit's `key` says whose budget (`principal`, ...): a word
                        // of the config's own, not a key.
                        for (field, value) in v.as_table().into_iter().flatten().filter(|(f, _)| *f != "key") {
                            self.collect(value, secret_name(field));
                        }
                        continue;
                    }
                    // A `{ env }` or `{ file }` secret names where it is; nothing to hide.
                    let named_secret = secret_name(k) || k == "value";
                    self.collect(v, named_secret);
                }
            }
            toml::Value::Array(items) => items.iter().for_each(|v| self.collect(v, secret)),
            toml::Value::String(s) => {
                if secret {
                    self.add(s);
                }
                if let Some((_, rest)) = s.split_once("://") {
                    // By text, so that a URL too malformed to parse (which is what a
                    // diagnostic quotes) gives up its secrets too.
                    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
                    if let Some((userinfo, _)) = rest[..auth_end].rsplit_once('@') {
                        let password = userinfo.split_once(':').map_or(userinfo, |(_, p)| p);
                        self.add(password);
                        if let Some(decoded) = urlencoding_decode(password) {
                            self.add(&decoded);
                        }
                    }
                    if let Some((_, query)) = rest.split_once('?') {
                        let query = query.split('#').next().unwrap_or("");
                        for (_, v) in query.split('&').filter_map(|p| p.split_once('=')) {
                            self.add(v);
                            if let Some(decoded) = urlencoding_decode(v) {
                                self.add(&decoded);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }

    pub fn add(&mut self, secret: &str) {
        if !secret.is_empty() && !self.secrets.iter().any(|s| s == secret) {
            self.secrets.push(secret.to_string());
        }
    }

    /// `text` with URLs scrubbed and every known secret replaced: quoted wherever it is
    /// quoted, and anywhere when it is long enough not to be an ordinary word.
    pub fn text(&self, text: &str) -> String {
        let mut out = scrub_urls_in(text);
        // Longest first: a secret that contains another is removed whole.
        let mut secrets: Vec<&String> = self.secrets.iter().collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        for s in secrets {
            for (open, close) in [("`", "`"), ("\"", "\""), ("'", "'"), ("\\\"", "\\\"")] {
                out = out.replace(&format!("{open}{s}{close}"), &format!("{open}<redacted>{close}"));
            }
            if s.chars().count() >= 6 {
                out = out.replace(s.as_str(), "<redacted>");
            }
        }
        out
    }
}

/// Percent-decoding of URL user info.
pub fn urlencoding_decode(s: &str) -> Option<String> {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
}

/// A query with every value replaced: `apiKey=REMOVED&token=REMOVED`. Elements are
/// split at `&` and `;`. A name is kept only when it reads as a parameter name (short,
/// plain characters, few digits): a bare element, or a name that looks like a token
/// (`?eyJhbGci...=`), may be the secret itself and is replaced whole.
pub fn query_names(query: &str) -> String {
    let plain = |n: &str| {
        !n.is_empty()
            && n.len() <= 32
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'[' | b']'))
            && n.bytes().filter(u8::is_ascii_digit).count() < 6
    };
    let names: Vec<String> = query
        .split(['&', ';'])
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if plain(k) => format!("{k}=REMOVED"),
            None if pair.is_empty() => String::new(),
            _ => "REMOVED".to_string(),
        })
        .collect();
    names.join("&")
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_the_url_crate_cannot_parse_lose_their_user_info_too() {
        for (url, gone) in [
            (
                "redis+sentinel://u:TopSecretPW4@127.0.0.1:40020,127.0.0.1:40021/pm",
                "TopSecretPW4",
            ),
            ("rediss+sentinel://:pw-only@h1:1,h2:2/m", "pw-only"),
            ("redis://user:TopSecretPW2@127.0.0.1:notaport/0", "TopSecretPW2"),
            ("redis://h:1/0?password=qsecret", "qsecret"),
        ] {
            let out = super::scrub_url(url);
            assert!(!out.contains(gone), "{url} -> {out}");
        }
    }
    use super::*;

    #[test]
    fn queries_keep_their_names_only() {
        assert_eq!(query_names("apiKey=k1&token=t"), "apiKey=REMOVED&token=REMOVED");
        assert_eq!(query_names("eyJhbGciOiJIUzI1NiJ9"), "REMOVED");
        assert_eq!(query_names("a=1&&SECRET"), "a=REMOVED&&REMOVED");
        assert_eq!(query_names("demo-url-key-alice-7f3a9c2e51b84d06="), "REMOVED");
        assert_eq!(query_names("k7f3a9c2e51b8=1;x=2"), "REMOVED&x=REMOVED");
        assert_eq!(query_names("a+b=1"), "REMOVED");
        assert_eq!(
            scrub_urls_in("see https://u:p@h/x?SECRET&k=v#f"),
            "see https://h/x?REMOVED&k=REMOVED"
        );
    }
}
