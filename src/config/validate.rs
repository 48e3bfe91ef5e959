//! From `raw` to [`Config`]: every value checked, every error collected with its position.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::keys;
use super::raw::{self, Str};
use super::*;

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
            v.error(e.span(), e.message().trim().to_string());
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

// === serde_ignored paths to positions ===

#[derive(Debug)]
enum Segment {
    Key(String),
    Index(usize),
}

fn segments(path: &serde_ignored::Path<'_>) -> Vec<Segment> {
    use serde_ignored::Path as P;
    let mut out = match path {
        P::Root => return Vec::new(),
        P::Seq { parent, .. }
        | P::Map { parent, .. }
        | P::Some { parent }
        | P::NewtypeStruct { parent }
        | P::NewtypeVariant { parent } => segments(parent),
    };
    match path {
        P::Seq { index, .. } => out.push(Segment::Index(*index)),
        // `toml::Spanned` deserializes through a private map; its keys are not the user's.
        P::Map { key, .. } if !key.starts_with("$__serde_spanned_private") => out.push(Segment::Key(key.clone())),
        _ => {}
    }
    out
}

fn dotted(segs: &[Segment]) -> String {
    let mut s = String::new();
    for seg in segs {
        match seg {
            Segment::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Segment::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

fn locate(root: &toml_edit::Item, segs: &[Segment]) -> Option<Span> {
    let mut item = root;
    let mut span = None;
    for seg in segs {
        match seg {
            Segment::Key(k) => {
                let (key, next) = match item {
                    toml_edit::Item::Table(t) => t.get_key_value(k)?,
                    toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => t.get_key_value(k)?,
                    _ => return span,
                };
                span = key.span().or(span);
                item = next;
            }
            Segment::Index(i) => match item {
                toml_edit::Item::ArrayOfTables(a) => {
                    let t = a.get(*i)?;
                    span = t.span().or(span);
                    // Array-of-tables entries are tables; continue through a temporary view.
                    return locate_in(t, segs_after(segs, seg)).or(span);
                }
                toml_edit::Item::Value(toml_edit::Value::Array(a)) => {
                    let v = a.get(*i)?;
                    span = v.span().or(span);
                    if let toml_edit::Value::InlineTable(t) = v {
                        return locate_in(t, segs_after(segs, seg)).or(span);
                    }
                    return span;
                }
                _ => return span,
            },
        }
    }
    span
}

fn segs_after<'a>(segs: &'a [Segment], seg: &Segment) -> &'a [Segment] {
    let pos = segs
        .iter()
        .position(|s| std::ptr::eq(s, seg))
        .map_or(segs.len(), |p| p + 1);
    &segs[pos..]
}

fn locate_in(t: &dyn toml_edit::TableLike, segs: &[Segment]) -> Option<Span> {
    let Some((Segment::Key(k), rest)) = segs.split_first() else {
        return None;
    };
    let (key, item) = t.get_key_value(k)?;
    if rest.is_empty() {
        return key.span();
    }
    locate(item, rest).or(key.span())
}

// === Validator ===

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
        let listen = match &raw.listen {
            Some(l) => self.listen(l),
            None => {
                self.error(None, "missing [listen] section with `address`");
                Listen {
                    address: SocketAddr::from(([127, 0, 0, 1], 0)),
                    tls: None,
                    tls_key: None,
                    client_verifier: None,
                    trusted_proxies: Vec::new(),
                }
            }
        };
        let limits = self.limits(raw.limits.as_ref());
        let admin = raw.admin.as_ref().and_then(|a| match &a.get_ref().address {
            Some(addr) => self.address(addr),
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9901))),
        });
        let egress = raw.egress.as_ref().and_then(|a| match &a.get_ref().address {
            Some(addr) => self.address(addr),
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9902))),
        });
        let forward_auth = raw.forward_auth.as_ref().and_then(|a| match &a.get_ref().address {
            Some(addr) => self.address(addr),
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9903))),
        });
        let forward_auth_ingress = match raw.forward_auth.as_ref().and_then(|a| a.get_ref().ingress.as_ref()) {
            None => {
                if let Some(fa) = &raw.forward_auth {
                    self.warn(
                        Some(fa.span()),
                        "[forward_auth] has no `ingress`: \"detect\" believes X-Original-* or X-Forwarded-* whenever the subrequest's own target is no route; behind Envoy, or an ingress that passes client headers on, name it (\"nginx\", \"traefik\", \"envoy\")",
                    );
                }
                Ingress::Detect
            }
            Some(i) => match i.get_ref().as_str() {
                "detect" => Ingress::Detect,
                "nginx" => Ingress::Nginx,
                "traefik" => Ingress::Traefik,
                "envoy" => Ingress::Envoy,
                other => {
                    self.error(
                        sp(i),
                        format!(
                            "forward_auth.ingress `{other}`: expected \"nginx\", \"traefik\", \"envoy\" or \"detect\""
                        ),
                    );
                    Ingress::Detect
                }
            },
        };
        if forward_auth.is_some()
            && raw
                .listen
                .as_ref()
                .is_none_or(|l| l.get_ref().trusted_proxies.is_empty())
        {
            self.warn(
                raw.forward_auth.as_ref().map(|a| a.span()),
                "[forward_auth] answers only peers in [listen] trusted_proxies, and there are none: every subrequest gets 403",
            );
        }
        let cache = self.cache(raw.cache.as_ref());
        let lockout = self.lockout(raw.lockout.as_ref());
        let shared = self.shared(raw.shared.as_ref());
        let tracing = {
            let t = raw.tracing.as_ref();
            let otlp_endpoint = t.and_then(|t| t.otlp_endpoint.as_ref()).and_then(|e| {
                match url::Url::parse(e.get_ref()) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Some(u),
                    _ => {
                        self.error(
                            sp(e),
                            "tracing.otlp_endpoint must be the collector's http:// or https:// URL (OTLP/HTTP, e.g. http://127.0.0.1:4318)",
                        );
                        None
                    }
                }
            });
            let protocol = match t.and_then(|t| t.protocol.as_ref()) {
                None => OtlpProtocol::Protobuf,
                Some(p) => match p.get_ref().as_str() {
                    "http/protobuf" => OtlpProtocol::Protobuf,
                    "http/json" => OtlpProtocol::Json,
                    _ => {
                        self.error(sp(p), "tracing.protocol must be \"http/protobuf\" or \"http/json\"");
                        OtlpProtocol::Protobuf
                    }
                },
            };
            let sample_ratio = match t.and_then(|t| t.sample_ratio.as_ref()) {
                None => 1.0,
                Some(r) if (0.0..=1.0).contains(r.get_ref()) => *r.get_ref(),
                Some(r) => {
                    self.error(sp(r), "tracing.sample_ratio must be between 0.0 and 1.0");
                    1.0
                }
            };
            Tracing {
                otlp_endpoint,
                protocol,
                sample_ratio,
                service_name: t
                    .and_then(|t| t.service_name.as_ref())
                    .map_or_else(|| "portcullis".to_string(), |s| s.get_ref().clone()),
            }
        };
        let runtime = Runtime {
            worker_threads: raw
                .runtime
                .as_ref()
                .and_then(|r| r.worker_threads.as_ref())
                .and_then(|n| self.count(n, 1, 1024, "runtime.worker_threads"))
                .map(|n| n as usize),
            model: match raw.runtime.as_ref().and_then(|r| r.model.as_ref()) {
                None => RuntimeModel::default(),
                Some(m) => match m.get_ref().as_str() {
                    "shared" => RuntimeModel::Shared,
                    "per_core" => RuntimeModel::PerCore,
                    other => {
                        self.error(
                            sp(m),
                            format!("runtime.model `{other}`: expected \"shared\" or \"per_core\""),
                        );
                        RuntimeModel::default()
                    }
                },
            },
        };
        let auth = self.auth_settings(raw.auth.as_ref());
        let assertion = self.assertion(raw.assertion.as_ref());
        let users = self.users(&raw.users);
        let plans = self.plans(&raw.plans, &users);
        self.overlaps(&raw.plans, &plans);
        let api_keys = self.api_keys(&raw.api_keys, &users, &plans);
        let oauth = raw.oauth.as_ref().map(|o| self.oauth(o));
        // Client certificates: `mtls` needs a CA to verify them, and a name is one user's.
        let mtls = plans
            .iter()
            .flat_map(|p| p.integrations.iter())
            .any(|i| i.auth.contains(&AuthMethod::Mtls));
        if mtls && listen.client_verifier.is_none() {
            self.error(
                None,
                "an integration has auth = \"mtls\" but [listen] tls has no client_ca to verify client certificates",
            );
        }
        let mut cert_owner: HashMap<&str, &str> = HashMap::new();
        for u in &users {
            for n in &u.cert_names {
                if let Some(other) = cert_owner.insert(n, &u.name) {
                    self.error(
                        None,
                        format!("cert_names `{n}` belongs to both `{other}` and `{}`", u.name),
                    );
                }
            }
        }
        if oauth.as_ref().is_some_and(|o| o.mode == OAuthMode::Builtin) {
            self.reserved_paths(&raw.plans, &plans);
        }
        let endpoints = self.endpoints(&raw.endpoints);
        Config {
            file: self.file.clone(),
            watched: std::mem::take(&mut self.watched),
            listen,
            limits,
            admin,
            egress,
            forward_auth,
            forward_auth_ingress,
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

    // --- scalars ---

    fn address(&mut self, s: &Str) -> Option<SocketAddr> {
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

    fn duration(&mut self, s: Option<&Str>, default: Duration, key: &str) -> Duration {
        let Some(s) = s else { return default };
        match humantime::parse_duration(s.get_ref()) {
            // Every duration is added to a clock somewhere: keep it far from overflow.
            Ok(d) if d > MAX_DURATION => {
                self.error(sp(s), format!("{key} `{}` is longer than 10 years", s.get_ref()));
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.error(
                    sp(s),
                    format!(
                        "invalid duration `{}` for {key}: {e} (use e.g. \"250ms\", \"10s\", \"5m\")",
                        s.get_ref()
                    ),
                );
                default
            }
        }
    }

    fn count(&mut self, n: &Spanned<i64>, min: i64, max: i64, key: &str) -> Option<u64> {
        let v = *n.get_ref();
        if v < min || v > max {
            self.error(sp(n), format!("{key} must be between {min} and {max}, not {v}"));
            None
        } else {
            Some(v as u64)
        }
    }

    fn url(&mut self, s: &Str, what: &str) -> Option<url::Url> {
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

    fn secret(&mut self, s: &Spanned<raw::Secret>, what: &str) -> Option<Secret> {
        self.secret_at(s.get_ref(), s.span(), what)
    }

    fn secret_at(&mut self, s: &raw::Secret, span: Span, what: &str) -> Option<Secret> {
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

    fn name(&mut self, s: &Str, what: &str) -> String {
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
    fn principal_word(&mut self, s: &Str, what: &str) -> String {
        let n = s.get_ref();
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_graphic() && b != b':' && b != b',') {
            self.error(
                sp(s),
                format!("invalid {what} `{n}`: use visible ASCII without `:` or `,`"),
            );
        }
        n.clone()
    }

    fn duplicate(&mut self, seen: &mut HashMap<String, Span>, name: &str, span: Span, what: &str) {
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

    // --- sections ---

    fn listen(&mut self, l: &Spanned<raw::Listen>) -> Listen {
        let r = l.get_ref();
        let address = self
            .address(&r.address)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let tls = r.tls.as_ref().and_then(|t| {
            let t = t.get_ref();
            let client_auth_required = match t.client_auth.as_ref().map(|a| (a, a.get_ref().as_str())) {
                None | Some((_, "optional")) => false,
                Some((_, "required")) => true,
                Some((a, other)) => {
                    self.error(
                        sp(a),
                        format!("listen.tls.client_auth `{other}`: expected \"optional\" or \"required\""),
                    );
                    false
                }
            };
            if t.client_ca.is_none() && (t.client_auth.is_some() || t.client_crl.is_some()) {
                self.error(sp(&t.cert), "listen.tls: client_auth and client_crl need client_ca");
            }
            let files = TlsFiles {
                cert: PathBuf::from(t.cert.get_ref()),
                key: PathBuf::from(t.key.get_ref()),
                client_ca: t.client_ca.as_ref().map(|c| PathBuf::from(c.get_ref())),
                client_auth_required,
                client_crl: t.client_crl.as_ref().map(|c| PathBuf::from(c.get_ref())),
            };
            match keys::load_certified_key(&files) {
                Ok(key) => Some((files, key)),
                Err(keys::LoadError::Cert(m)) => {
                    self.error(sp(&t.cert), m);
                    None
                }
                Err(keys::LoadError::Key(m)) => {
                    self.error(sp(&t.key), m);
                    None
                }
            }
        });
        let (tls, tls_key) = match tls {
            Some((files, key)) => (Some(files), Some(key)),
            None => (None, None),
        };
        let client_verifier = tls.as_ref().and_then(|f| {
            let ca = f.client_ca.as_ref()?;
            self.watched.push((ca.clone(), super::FileKind::Tls));
            self.watched
                .extend(f.client_crl.iter().map(|c| (c.clone(), super::FileKind::Crl)));
            match keys::client_verifier(ca, f.client_crl.as_deref(), f.client_auth_required) {
                Ok(v) => Some(v),
                Err(m) => {
                    self.error(r.tls.as_ref().and_then(|t| sp(&t.get_ref().cert)), m);
                    None
                }
            }
        });
        let mut trusted_proxies = Vec::new();
        for t in &r.trusted_proxies {
            let text = t.get_ref();
            let parsed = text
                .parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(n) => trusted_proxies.push(n),
                Err(_) => self.error(
                    sp(t),
                    format!("listen.trusted_proxies: `{text}` is not an address or CIDR such as 10.0.0.0/8"),
                ),
            }
        }
        Listen {
            address,
            tls,
            tls_key,
            client_verifier,
            trusted_proxies,
        }
    }

    fn limits(&mut self, l: Option<&raw::Limits>) -> Limits {
        let d = Limits::default();
        let Some(l) = l else { return d };
        Limits {
            header_read_timeout: self.duration(
                l.header_read_timeout.as_ref(),
                d.header_read_timeout,
                "limits.header_read_timeout",
            ),
            request_timeout: self.duration(l.request_timeout.as_ref(), d.request_timeout, "limits.request_timeout"),
            idle_timeout: self.duration(l.idle_timeout.as_ref(), d.idle_timeout, "limits.idle_timeout"),
            shutdown_timeout: self.duration(
                l.shutdown_timeout.as_ref(),
                d.shutdown_timeout,
                "limits.shutdown_timeout",
            ),
            drain_delay: self.duration(l.drain_delay.as_ref(), d.drain_delay, "limits.drain_delay"),
            max_header_bytes: l
                .max_header_bytes
                .as_ref()
                .and_then(|n| self.count(n, 1024, 16 * 1024 * 1024, "limits.max_header_bytes"))
                .map_or(d.max_header_bytes, |n| n as usize),
            max_headers: l
                .max_headers
                .as_ref()
                .and_then(|n| self.count(n, 8, 1000, "limits.max_headers"))
                .map_or(d.max_headers, |n| n as usize),
            max_body_bytes: l
                .max_body_bytes
                .as_ref()
                .and_then(|n| self.count(n, 0, i64::MAX, "limits.max_body_bytes"))
                .unwrap_or(d.max_body_bytes),
            max_connections: l
                .max_connections
                .as_ref()
                .and_then(|n| self.count(n, 1, 10_000_000, "limits.max_connections"))
                .map_or(d.max_connections, |n| n as usize),
            body_read_timeout: self.duration(
                l.body_read_timeout.as_ref(),
                d.body_read_timeout,
                "limits.body_read_timeout",
            ),
            max_spool_bytes: l
                .max_spool_bytes
                .as_ref()
                .and_then(|n| self.count(n, 0, i64::MAX, "limits.max_spool_bytes"))
                .unwrap_or(d.max_spool_bytes),
            h2_max_concurrent_streams: l
                .h2_max_concurrent_streams
                .as_ref()
                .and_then(|n| self.count(n, 1, 10_000, "limits.h2_max_concurrent_streams"))
                .map_or(d.h2_max_concurrent_streams, |n| n as u32),
            h2_max_pending_resets: l
                .h2_max_pending_resets
                .as_ref()
                .and_then(|n| self.count(n, 1, 100_000, "limits.h2_max_pending_resets"))
                .map_or(d.h2_max_pending_resets, |n| n as usize),
            upgrade_idle_timeout: self.duration(
                l.upgrade_idle_timeout.as_ref(),
                d.upgrade_idle_timeout,
                "limits.upgrade_idle_timeout",
            ),
            upgrade_max_lifetime: self.duration(
                l.upgrade_max_lifetime.as_ref(),
                d.upgrade_max_lifetime,
                "limits.upgrade_max_lifetime",
            ),
        }
    }

    fn auth_settings(&mut self, a: Option<&raw::AuthSection>) -> AuthSettings {
        let d = AuthSettings::default();
        let Some(a) = a else { return d };
        AuthSettings {
            hash_workers: a
                .hash_workers
                .as_ref()
                .and_then(|n| self.count(n, 1, 256, "auth.hash_workers"))
                .map_or(d.hash_workers, |n| n as usize),
            hash_queue: a
                .hash_queue
                .as_ref()
                .and_then(|n| self.count(n, 1, 1_000_000, "auth.hash_queue"))
                .map_or(d.hash_queue, |n| n as usize),
            hash_queue_timeout: self.duration(
                a.hash_queue_timeout.as_ref(),
                d.hash_queue_timeout,
                "auth.hash_queue_timeout",
            ),
        }
    }

    fn cache(&mut self, c: Option<&raw::Cache>) -> Cache {
        let default = raw::Cache::default();
        let c = c.unwrap_or(&default);
        Cache {
            ttl: self.duration(c.ttl.as_ref(), Duration::from_secs(60), "cache.ttl"),
            negative_ttl: self.duration(c.negative_ttl.as_ref(), Duration::from_secs(5), "cache.negative_ttl"),
            max_entries: c
                .max_entries
                .as_ref()
                .and_then(|n| self.count(n, 1, i64::MAX, "cache.max_entries"))
                .unwrap_or(100_000),
        }
    }

    fn lockout(&mut self, l: Option<&raw::Lockout>) -> Lockout {
        let default = raw::Lockout::default();
        let l = l.unwrap_or(&default);
        Lockout {
            max_failures: l
                .max_failures
                .as_ref()
                .and_then(|n| self.count(n, 1, 1_000_000, "lockout.max_failures"))
                .map_or(10, |n| n as u32),
            window: self.duration(l.window.as_ref(), Duration::from_secs(300), "lockout.window"),
            duration: self.duration(l.duration.as_ref(), Duration::from_secs(900), "lockout.duration"),
            max_entries_per_address: l
                .max_entries_per_address
                .as_ref()
                .and_then(|n| self.count(n, 1, i64::MAX, "lockout.max_entries_per_address"))
                .unwrap_or(1000),
        }
    }

    fn shared(&mut self, s: Option<&raw::Shared>) -> SharedBackend {
        let Some(s) = s else { return SharedBackend::Memory };
        let redis = match s.backend.as_ref().map(|b| (b, b.get_ref().as_str())) {
            None | Some((_, "memory")) => false,
            Some((_, "redis")) => true,
            Some((b, other)) => {
                self.error(
                    sp(b),
                    format!("unknown shared.backend `{other}`: expected \"memory\" or \"redis\""),
                );
                false
            }
        };
        if !redis {
            for (set, key) in [
                (s.url.is_some(), "url"),
                (s.secret.is_some(), "secret"),
                (s.key_prefix.is_some(), "key_prefix"),
            ] {
                if set {
                    self.warn(None, format!("shared.{key} is ignored: shared.backend is \"memory\""));
                }
            }
            return SharedBackend::Memory;
        }
        let url = match &s.url {
            Some(u) => self.secret(u, "shared.url"),
            None => {
                self.error(
                    None,
                    "shared.backend = \"redis\" needs shared.url (redis://HOST:PORT/DB or rediss://...)",
                );
                None
            }
        };
        if let Some(u) = &url {
            let ok = std::str::from_utf8(u.expose())
                .ok()
                .and_then(|t| url::Url::parse(t).ok())
                .is_some_and(|p| {
                    matches!(p.scheme(), "redis" | "rediss") && p.host_str().is_some_and(|h| !h.is_empty())
                });
            if !ok {
                self.error(
                    s.url.as_ref().map(|u| u.span()),
                    "shared.url must be redis://[USER:PASSWORD@]HOST[:PORT][/DB] or rediss://... (TLS)",
                );
            }
        }
        let secret = match &s.secret {
            Some(k) => self.secret(k, "shared.secret"),
            None => {
                self.error(
                    None,
                    "shared.backend = \"redis\" needs shared.secret (at least 32 bytes, the same on every replica): it keys the names and encrypts the secrets stored in Redis",
                );
                None
            }
        };
        if let Some(k) = &secret {
            if k.expose().len() < 32 {
                self.error(
                    s.secret.as_ref().map(|k| k.span()),
                    "shared.secret must be at least 32 bytes",
                );
            }
        }
        let key_prefix = s
            .key_prefix
            .as_ref()
            .map_or_else(|| "portcullis:".to_string(), |p| p.get_ref().clone());
        let connect_timeout = self.duration(
            s.connect_timeout.as_ref(),
            Duration::from_secs(1),
            "shared.connect_timeout",
        );
        let command_timeout = self.duration(
            s.command_timeout.as_ref(),
            Duration::from_millis(500),
            "shared.command_timeout",
        );
        let pool_size = s
            .pool_size
            .as_ref()
            .and_then(|n| self.count(n, 1, 64, "shared.pool_size"))
            .map_or(2, |n| n as usize);
        match (url, secret) {
            (Some(url), Some(secret)) => SharedBackend::Redis(RedisSettings {
                url,
                key_prefix,
                secret,
                connect_timeout,
                command_timeout,
                pool_size,
            }),
            _ => SharedBackend::Memory,
        }
    }

    fn assertion(&mut self, a: Option<&raw::Assertion>) -> Assertion {
        let default = raw::Assertion::default();
        let a = a.unwrap_or(&default);
        let key = a.key.as_ref().and_then(|k| self.secret(k, "assertion.key"));
        if let (Some(k), Some(raw_key)) = (&key, &a.key) {
            if k.expose().len() < 32 {
                // A short HMAC key is guessable, and a placeholder left in place: refuse both.
                self.error(sp(raw_key), "assertion.key must be at least 32 bytes");
            }
        }
        Assertion {
            key,
            ttl: self.duration(a.ttl.as_ref(), Duration::from_secs(300), "assertion.ttl"),
        }
    }

    fn users(&mut self, raw_users: &[Spanned<raw::User>]) -> Vec<User> {
        let mut seen = HashMap::new();
        let mut users = Vec::new();
        for u in raw_users {
            let r = u.get_ref();
            let name = self.principal_word(&r.name, "user name");
            self.duplicate(&mut seen, &name, r.name.span(), "user name");
            let roles = r.roles.iter().map(|x| self.principal_word(x, "role")).collect();
            let password_hash = r
                .password_hash
                .as_ref()
                .and_then(|h| match argon2::PasswordHash::new(h.get_ref()) {
                    Ok(p) if p.algorithm.as_str() == "argon2id" => Some(h.get_ref().clone()),
                    Ok(p) => {
                        self.error(
                            sp(h),
                            format!("password_hash of user `{name}` uses {}, expected argon2id", p.algorithm),
                        );
                        None
                    }
                    Err(e) => {
                        self.error(
                            sp(h),
                            format!("password_hash of user `{name}` is not an argon2id PHC string: {e}"),
                        );
                        None
                    }
                });
            let password_expires_at = r
                .password_expires_at
                .as_ref()
                .and_then(|t| match humantime::parse_rfc3339_weak(t.get_ref()) {
                    Ok(at) => Some(at),
                    Err(e) => {
                        self.error(
                            sp(t),
                            format!(
                                "invalid password_expires_at `{}`: {e} (expected e.g. \"2027-06-30T00:00:00Z\")",
                                t.get_ref()
                            ),
                        );
                        None
                    }
                });
            let url_key_hash = r
                .url_key_hash
                .as_ref()
                .and_then(|h| match SecretHash::parse(h.get_ref()) {
                    Ok(x) => Some(x),
                    Err(e) => {
                        self.error(sp(h), format!("url_key_hash of user `{name}`: {e}"));
                        None
                    }
                });
            users.push(User {
                name,
                roles,
                password_hash,
                password_expires_at,
                url_key_hash,
                disabled: r.disabled,
                cert_names: r.cert_names.iter().map(|n| n.get_ref().clone()).collect(),
            });
        }
        users
    }

    /// A rule as written; `absent` when the key is missing (plan `access`: nobody;
    /// integration `senders`: everyone the plan admits).
    fn rule(&mut self, r: Option<&Spanned<raw::Rule>>, users: &[User], what: &str, absent: Rule) -> Rule {
        let Some(r) = r else { return absent };
        let inner = r.get_ref();
        if inner.all == Some(true) {
            if !inner.roles.is_empty() || !inner.users.is_empty() {
                self.error(
                    sp(r),
                    format!("{what}: `all = true` cannot be combined with roles or users"),
                );
            }
            return Rule::All;
        }
        let roles: Vec<String> = inner.roles.iter().map(|x| self.principal_word(x, "role")).collect();
        let names: Vec<String> = inner
            .users
            .iter()
            .map(|x| self.principal_word(x, "user name"))
            .collect();
        if roles.is_empty() && names.is_empty() {
            self.warn(sp(r), format!("{what} lists no roles and no users: nobody is allowed"));
        }
        for (n, s) in names.iter().zip(&inner.users) {
            if !users.iter().any(|u| &u.name == n) {
                self.warn(sp(s), format!("{what} names `{n}`, which is not a [[users]] entry"));
            }
        }
        Rule::Only { roles, users: names }
    }

    fn plans(&mut self, raw_plans: &[Spanned<raw::Plan>], users: &[User]) -> Vec<Plan> {
        let mut seen = HashMap::new();
        let mut plans = Vec::new();
        for p in raw_plans {
            let r = p.get_ref();
            let name = self.name(&r.name, "plan");
            self.duplicate(&mut seen, &name, r.name.span(), "plan name");
            let upstream = self.upstream(&r.upstream);
            // Fail closed: a plan without an `access` rule admits nobody; admitting every
            // authenticated principal is written `{ all = true }`.
            let nobody = Rule::Only {
                roles: Vec::new(),
                users: Vec::new(),
            };
            let access = self.rule(r.access.as_ref(), users, &format!("access of plan `{name}`"), nobody);
            let mut seen_int = HashMap::new();
            let mut integrations = Vec::new();
            for i in &r.integrations {
                let ri = i.get_ref();
                let iname = self.name(&ri.name, "integration");
                self.duplicate(
                    &mut seen_int,
                    &iname,
                    ri.name.span(),
                    &format!("integration name in plan `{name}`"),
                );
                let full = format!("{name}/{iname}");
                let path = self.path_pattern(&ri.path);
                let methods = self.methods(&ri.methods);
                let auth = self.auth_methods(&ri.auth, &full);
                let senders = self.rule(
                    ri.senders.as_ref(),
                    users,
                    &format!("senders of integration `{full}`"),
                    Rule::All,
                );
                let authenticated = auth.iter().any(|m| *m != AuthMethod::None);
                if authenticated && ri.senders.is_none() {
                    self.warn(
                        sp(i),
                        format!("integration `{full}` has no `senders` rule: every authenticated principal that the plan admits may call it"),
                    );
                }
                let forward_token = ri.forward_token.unwrap_or(false);
                if forward_token && !auth.contains(&AuthMethod::OAuth) {
                    self.warn(
                        sp(i),
                        format!("integration `{full}` sets forward_token but does not accept oauth"),
                    );
                }
                let mut websocket = false;
                for u in &ri.upgrades {
                    match u.get_ref().to_ascii_lowercase().as_str() {
                        "websocket" => websocket = true,
                        other => self.error(
                            sp(u),
                            format!("integration `{full}`: unknown upgrade `{other}`: expected \"websocket\""),
                        ),
                    }
                }
                if websocket && !methods.contains(&http::Method::GET) {
                    self.error(
                        sp(i),
                        format!("integration `{full}` allows websocket upgrades but not GET, which they use"),
                    );
                }
                if websocket && matches!(upstream, Upstream::Http { h2c: true, .. }) {
                    self.error(
                        sp(i),
                        format!("integration `{full}` allows websocket upgrades, which reach the upstream over HTTP/1.1, but plan `{name}` has an h2c:// upstream"),
                    );
                }
                integrations.push(Integration {
                    name: iname,
                    path,
                    methods,
                    auth,
                    senders,
                    forward_token,
                    websocket,
                });
            }
            if r.integrations.is_empty() {
                self.warn(sp(p), format!("plan `{name}` has no integrations"));
            }
            if r.access.is_none() && !integrations.is_empty() {
                self.warn(
                    sp(p),
                    format!(
                        "plan `{name}` has no `access` rule: nobody may use it (write `access = {{ all = true }}` to admit every authenticated principal)"
                    ),
                );
            }
            plans.push(Plan {
                name,
                upstream,
                access,
                underscores_in_headers: r.underscores_in_headers.unwrap_or(false),
                integrations,
            });
        }
        plans
    }

    fn upstream(&mut self, s: &Str) -> Upstream {
        let text = s.get_ref();
        if text == "builtin:echo" {
            return Upstream::Echo;
        }
        let bad = |m: &str| format!("invalid upstream `{text}`: {m}");
        match text.parse::<http::Uri>() {
            Ok(uri) => {
                // h2c://: cleartext HTTP/2 with prior knowledge (gRPC services).
                let h2c = uri.scheme_str() == Some("h2c");
                let scheme = if h2c {
                    Some(http::uri::Scheme::HTTP)
                } else {
                    uri.scheme().cloned()
                };
                let ok_scheme = matches!(scheme.as_ref().map(|s| s.as_str()), Some("http") | Some("https"));
                match (scheme, uri.authority().cloned()) {
                    (Some(scheme), Some(authority)) if ok_scheme && uri.query().is_none() => {
                        let default_port = if scheme == http::uri::Scheme::HTTPS { 443 } else { 80 };
                        let host = match authority.port_u16() {
                            Some(p) if p != default_port => format!("{}:{p}", authority.host()),
                            _ => authority.host().to_string(),
                        };
                        match http::HeaderValue::from_str(&host) {
                            Ok(host) => Upstream::Http {
                                scheme,
                                authority,
                                base_path: uri.path().trim_end_matches('/').to_string(),
                                host,
                                h2c,
                            },
                            Err(_) => {
                                self.error(sp(s), bad("its host cannot be a Host header"));
                                Upstream::Echo
                            }
                        }
                    }
                    _ => {
                        self.error(
                            sp(s),
                            bad("expected http://HOST[:PORT][/base], https://..., h2c://HOST:PORT or builtin:echo"),
                        );
                        Upstream::Echo
                    }
                }
            }
            Err(e) => {
                self.error(sp(s), bad(&e.to_string()));
                Upstream::Echo
            }
        }
    }

    fn path_pattern(&mut self, s: &Str) -> PathPattern {
        let p = s.get_ref();
        let (base, prefix) = match p.strip_suffix("/*") {
            Some(base) => (base, true),
            None => (p.as_str(), false),
        };
        let problem = if !p.starts_with('/') {
            Some("must start with `/`".to_string())
        } else if base.contains('*') {
            Some("`*` is only allowed as a final `/*`".to_string())
        } else if base.contains(['?', '#']) {
            Some("must not contain `?` or `#`".to_string())
        } else if !prefix && p.len() > 1 && p.ends_with('/') {
            None
        } else {
            crate::path::check_path(if base.is_empty() { "/" } else { base })
                .err()
                .map(|e| e.to_string())
        };
        if let Some(m) = problem {
            self.error(sp(s), format!("invalid integration path `{p}`: {m}"));
        }
        if prefix {
            PathPattern::Prefix(base.to_string())
        } else {
            PathPattern::Exact(p.clone())
        }
    }

    fn methods(&mut self, s: &Spanned<Vec<Str>>) -> Vec<http::Method> {
        if s.get_ref().is_empty() {
            self.error(sp(s), "methods must list at least one HTTP method");
        }
        let mut out = Vec::new();
        for m in s.get_ref() {
            let text = m.get_ref();
            match http::Method::from_bytes(text.as_bytes()) {
                // A CONNECT names a host, not a path: no integration could match it.
                Ok(http::Method::CONNECT) => self.error(
                    sp(m),
                    "CONNECT cannot be routed (its target is a host, not a path); WebSocket tunnels come with `upgrades = [\"websocket\"]` and GET",
                ),
                Ok(method) if text.bytes().all(|b| b.is_ascii_uppercase()) => out.push(method),
                _ => self.error(
                    sp(m),
                    format!("invalid HTTP method `{text}`: expected e.g. \"GET\" or \"POST\""),
                ),
            }
        }
        out
    }

    fn auth_methods(&mut self, s: &Spanned<raw::OneOrMany>, full: &str) -> Vec<AuthMethod> {
        let list: Vec<&String> = match s.get_ref() {
            raw::OneOrMany::One(x) => vec![x],
            raw::OneOrMany::Many(v) => v.iter().collect(),
        };
        if list.is_empty() {
            self.error(
                sp(s),
                format!("integration `{full}` lists no auth method; write auth = \"none\" for a public route"),
            );
        }
        let mut out = Vec::new();
        for m in list {
            match AuthMethod::parse(m) {
                Some(a) if !out.contains(&a) => out.push(a),
                Some(_) => self.error(sp(s), format!("auth method `{m}` is listed twice")),
                None => self.error(
                    sp(s),
                    format!("unknown auth method `{m}`: expected url_key, basic, api_key, oauth or none"),
                ),
            }
        }
        if out.contains(&AuthMethod::None) && out.len() > 1 {
            self.error(
                sp(s),
                format!("integration `{full}`: \"none\" cannot be combined with other methods"),
            );
        } else if out == [AuthMethod::None] {
            self.warn(
                sp(s),
                format!("integration `{full}` has auth = \"none\": requests reach the upstream without a principal"),
            );
        }
        if out.contains(&AuthMethod::UrlKey) {
            self.warn(
                sp(s),
                format!("integration `{full}` accepts url_key: keys in URLs end up in histories and logs; prefer api_key or oauth"),
            );
        }
        out
    }

    fn overlaps(&mut self, raw_plans: &[Spanned<raw::Plan>], plans: &[Plan]) {
        let mut all = Vec::new();
        for (p, rp) in plans.iter().zip(raw_plans) {
            for (i, ri) in p.integrations.iter().zip(&rp.get_ref().integrations) {
                all.push((format!("{}/{}", p.name, i.name), i, ri.get_ref().path.span()));
            }
        }
        for (j, (name_j, b, span_j)) in all.iter().enumerate() {
            for (name_i, a, span_i) in &all[..j] {
                let shared: Vec<&str> = b
                    .methods
                    .iter()
                    .filter(|m| a.methods.contains(m))
                    .map(|m| m.as_str())
                    .collect();
                if !shared.is_empty() && a.path.overlaps(&b.path) {
                    let line = self.line_of(span_i);
                    self.error(
                        Some(span_j.clone()),
                        format!(
                            "integration `{name_j}` ({}) overlaps `{name_i}` ({}, line {line}) for {}",
                            b.path,
                            a.path,
                            shared.join(", ")
                        ),
                    );
                }
            }
        }
    }

    /// The builtin issuer answers `/oauth/token` and `/oauth/jwks.json` itself.
    fn reserved_paths(&mut self, raw_plans: &[Spanned<raw::Plan>], plans: &[Plan]) {
        use super::{JWKS_PATH, REVOKE_PATH, TOKEN_PATH};
        for (p, rp) in plans.iter().zip(raw_plans) {
            for (i, ri) in p.integrations.iter().zip(&rp.get_ref().integrations) {
                for reserved in [TOKEN_PATH, JWKS_PATH, REVOKE_PATH] {
                    if i.path.matches(reserved) {
                        self.error(
                            Some(ri.get_ref().path.span()),
                            format!(
                                "integration `{}/{}` covers {reserved}, which the builtin OAuth issuer serves",
                                p.name, i.name
                            ),
                        );
                    }
                }
            }
        }
    }

    fn api_keys(&mut self, raw_keys: &[Spanned<raw::ApiKey>], users: &[User], plans: &[Plan]) -> Vec<ApiKey> {
        let mut seen = HashMap::new();
        let mut out = Vec::new();
        for k in raw_keys {
            let r = k.get_ref();
            let key = r.key.get_ref().clone();
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                self.error(sp(&r.key), "invalid api key id: use visible ASCII without `:`");
            }
            self.duplicate(&mut seen, &key, r.key.span(), "api key");
            let secret_hash = match SecretHash::parse(r.secret_hash.get_ref()) {
                Ok(h) => Some(h),
                Err(e) => {
                    self.error(sp(&r.secret_hash), format!("secret_hash of api key `{key}`: {e}"));
                    None
                }
            };
            let user = r.user.get_ref().clone();
            if !users.iter().any(|u| u.name == user) {
                self.error(sp(&r.user), format!("api key `{key}` names unknown user `{user}`"));
            }
            let target = r.integration.get_ref();
            let found = target.split_once('/').and_then(|(p, i)| {
                let plan = plans.iter().find(|x| x.name == p)?;
                let integ = plan.integrations.iter().find(|x| x.name == i)?;
                Some((plan, integ))
            });
            let (plan, integration) = match found {
                Some((plan, integ)) => {
                    if !integ.auth.contains(&AuthMethod::ApiKey) {
                        self.warn(
                            sp(&r.integration),
                            format!("api key `{key}` is bound to `{target}`, which does not accept api_key"),
                        );
                    }
                    (plan.name.clone(), integ.name.clone())
                }
                None => {
                    self.error(
                        sp(&r.integration),
                        format!("api key `{key}` names unknown integration `{target}` (expected PLAN/INTEGRATION)"),
                    );
                    (String::new(), String::new())
                }
            };
            if let Some(secret_hash) = secret_hash {
                out.push(ApiKey {
                    key,
                    secret_hash,
                    user,
                    plan,
                    integration,
                });
            }
        }
        out
    }

    fn oauth(&mut self, o: &Spanned<raw::OAuth>) -> OAuth {
        let r = o.get_ref();
        let max_revocations = r
            .max_revocations
            .as_ref()
            .and_then(|n| self.count(n, 1, 10_000_000, "oauth.max_revocations"))
            .unwrap_or(100_000);
        let max_revocations_per_client = match &r.max_revocations_per_client {
            Some(n) => self
                .count(
                    n,
                    1,
                    max_revocations as i64,
                    "oauth.max_revocations_per_client (at most oauth.max_revocations)",
                )
                .unwrap_or(1),
            None => (max_revocations / 10).max(1),
        };
        let mode = match r.mode.get_ref().as_str() {
            "builtin" => OAuthMode::Builtin,
            "jwt" => OAuthMode::Jwt,
            "introspection" => OAuthMode::Introspection,
            other => {
                self.error(
                    sp(&r.mode),
                    format!("unknown oauth.mode `{other}`: expected builtin, jwt or introspection"),
                );
                OAuthMode::Builtin
            }
        };
        let jwks_url = r.jwks_url.as_ref().and_then(|u| self.url(u, "oauth.jwks_url"));
        let jwks_file = r.jwks_file.as_ref().map(|f| PathBuf::from(f.get_ref()));
        self.watched
            .extend(jwks_file.iter().map(|f| (f.clone(), super::FileKind::Jwks)));
        let introspection_url = r
            .introspection_url
            .as_ref()
            .and_then(|u| self.url(u, "oauth.introspection_url"));
        if mode == OAuthMode::Jwt && r.audience.is_none() {
            self.warn(
                sp(o),
                "oauth.mode = \"jwt\" without `audience`: tokens the issuer made for any other service are accepted",
            );
        }
        for (u, key) in [
            (&r.jwks_url, "oauth.jwks_url"),
            (&r.introspection_url, "oauth.introspection_url"),
        ] {
            if let Some(u) = u {
                if u.get_ref().trim().to_ascii_lowercase().starts_with("http://") {
                    self.warn(
                        sp(u),
                        format!("{key} uses plain http://: whoever is on the path can change what Portcullis trusts"),
                    );
                }
            }
        }
        if mode == OAuthMode::Jwt && r.issuer.is_none() {
            self.error(
                sp(o),
                "oauth.mode = \"jwt\" needs issuer: tokens of any other issuer must be refused",
            );
        }
        match mode {
            OAuthMode::Jwt if r.jwks_url.is_none() && r.jwks_file.is_none() => {
                self.error(sp(o), "oauth.mode = \"jwt\" needs jwks_url or jwks_file")
            }
            OAuthMode::Introspection if r.introspection_url.is_none() => {
                self.error(sp(o), "oauth.mode = \"introspection\" needs introspection_url")
            }
            _ => {}
        }
        let jwks_bytes = match (&jwks_file, &r.jwks_file) {
            (Some(f), Some(span)) => match super::secret::read_file(f, super::FileKind::Jwks) {
                Ok(bytes) => Some(bytes),
                Err(e) => {
                    self.error(sp(span), format!("cannot read oauth.jwks_file `{}`: {e}", f.display()));
                    None
                }
            },
            _ => None,
        };
        let client_secret = r
            .client_secret
            .as_ref()
            .and_then(|s| self.secret(s, "oauth.client_secret"));
        let signing_key = r.signing_key.as_ref().and_then(|s| self.secret(s, "oauth.signing_key"));
        let signing_key = match (&signing_key, &r.signing_key) {
            (Some(k), Some(span)) => match keys::SigningKey::from_pem(k.expose()) {
                Ok(key) => Some(Arc::new(key)),
                Err(e) => {
                    self.error(sp(span), e);
                    None
                }
            },
            _ => None,
        };
        if let (Some(f), Some(span), Some(bytes)) = (&jwks_file, &r.jwks_file, &jwks_bytes) {
            if let Err(e) = serde_json::from_slice::<jsonwebtoken::jwk::JwkSet>(bytes) {
                self.error(
                    sp(span),
                    format!("oauth.jwks_file `{}` is not a JWKS: {e}", f.display()),
                );
            }
        }
        let mut algorithms: Vec<String> = r.algorithms.iter().map(|a| a.get_ref().clone()).collect();
        if let Some(a) = &r.algorithm {
            algorithms.push(a.get_ref().clone());
        }
        for a in r.algorithms.iter().chain(r.algorithm.iter()) {
            let ok = matches!(
                a.get_ref().as_str(),
                "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" | "ES256" | "ES384" | "EdDSA"
            );
            if !ok {
                self.error(
                    sp(a),
                    format!(
                        "unsupported oauth algorithm `{}`: expected an asymmetric one such as RS256, ES256 or EdDSA",
                        a.get_ref()
                    ),
                );
            }
        }
        let mut seen = HashMap::new();
        let mut clients = Vec::new();
        for c in &r.clients {
            let rc = c.get_ref();
            let id = self.principal_word(&rc.client_id, "client_id");
            self.duplicate(&mut seen, &id, rc.client_id.span(), "oauth client");
            match SecretHash::parse(rc.client_secret_hash.get_ref()) {
                Ok(h) => clients.push(OAuthClient {
                    client_id: id,
                    client_secret_hash: h,
                }),
                Err(e) => self.error(
                    sp(&rc.client_secret_hash),
                    format!("client_secret_hash of client `{id}`: {e}"),
                ),
            }
        }
        OAuth {
            mode,
            issuer: r.issuer.as_ref().map(|s| s.get_ref().clone()),
            audience: r.audience.as_ref().map(|s| s.get_ref().clone()),
            jwks_url,
            jwks_file,
            introspection_url,
            client_id: r.client_id.as_ref().map(|s| s.get_ref().clone()),
            client_secret,
            username_claim: r
                .username_claim
                .as_ref()
                .map_or_else(|| "sub".to_string(), |s| s.get_ref().clone()),
            roles_claim: r.roles_claim.as_ref().map(|s| s.get_ref().clone()),
            allowed_client_ids: r.allowed_client_ids.iter().map(|s| s.get_ref().clone()).collect(),
            leeway: {
                let leeway = self.duration(r.leeway.as_ref(), Duration::from_secs(30), "oauth.leeway");
                if leeway > MAX_LEEWAY {
                    self.error(
                        r.leeway.as_ref().and_then(sp),
                        format!(
                            "oauth.leeway may be at most {}: a larger one accepts expired tokens",
                            humantime::format_duration(MAX_LEEWAY)
                        ),
                    );
                }
                leeway
            },
            access_token_ttl: self.duration(
                r.access_token_ttl.as_ref(),
                Duration::from_secs(900),
                "oauth.access_token_ttl",
            ),
            refresh_token_ttl: self.duration(
                r.refresh_token_ttl.as_ref(),
                Duration::from_secs(30 * 86400),
                "oauth.refresh_token_ttl",
            ),
            refresh_token_max_lifetime: self.duration(
                r.refresh_token_max_lifetime.as_ref(),
                Duration::from_secs(30 * 86400),
                "oauth.refresh_token_max_lifetime",
            ),
            max_revocations,
            max_revocations_per_client,
            algorithms,
            signing_key,
            clients,
        }
    }

    fn endpoints(&mut self, raw_eps: &[Spanned<raw::Endpoint>]) -> Vec<Endpoint> {
        let mut seen = HashMap::new();
        let mut out = Vec::new();
        for e in raw_eps {
            let r = e.get_ref();
            let name = self.name(&r.name, "endpoint");
            self.duplicate(&mut seen, &name, r.name.span(), "endpoint name");
            let base_url = self.url(&r.base_url, &format!("endpoint `{name}` base_url"));
            let pin_sha256 = r.pin_sha256.as_ref().and_then(|p| {
                let hex_text: String = p.get_ref().chars().filter(|c| *c != ':').collect::<String>().to_ascii_lowercase();
                let mut out = [0u8; 32];
                match hex::decode_to_slice(&hex_text, &mut out) {
                    Ok(()) => Some(out),
                    Err(_) => {
                        self.error(sp(p), format!("pin_sha256 of endpoint `{name}` must be 64 hex digits (SHA-256 of the DER certificate)"));
                        None
                    }
                }
            });
            let callers = r
                .callers
                .as_ref()
                .map(|c| self.rule(Some(c), &[], &format!("callers of endpoint `{name}`"), Rule::All));
            let auth = match &r.auth {
                None => EndpointAuth::None,
                Some(a) => self.endpoint_auth(a, &name),
            };
            let timeout = self.duration(r.timeout.as_ref(), Duration::from_secs(30), "endpoint timeout");
            if let Some(base_url) = base_url {
                out.push(Endpoint {
                    name,
                    base_url,
                    trust_self_signed: r.trust_self_signed,
                    pin_sha256,
                    callers,
                    auth,
                    timeout,
                });
            }
        }
        out
    }

    fn endpoint_auth(&mut self, a: &Spanned<raw::EndpointAuth>, name: &str) -> EndpointAuth {
        let what = |k: &str| format!("endpoint `{name}` auth.{k}");
        let span = a.span();
        match a.get_ref() {
            raw::EndpointAuth::None => EndpointAuth::None,
            raw::EndpointAuth::Principal => EndpointAuth::Principal,
            raw::EndpointAuth::Basic {
                username,
                password,
                preemptive,
            } => EndpointAuth::Basic {
                username: username.clone(),
                password: self
                    .secret_at(password, span, &what("password"))
                    .unwrap_or_else(|| Secret::new("")),
                preemptive: *preemptive,
            },
            raw::EndpointAuth::Oauth2 {
                grant,
                token_url,
                client_id,
                client_secret,
                username,
                password,
                scopes,
            } => {
                let g = match grant.as_str() {
                    "password" => OAuthGrant::Password,
                    "client_credentials" => OAuthGrant::ClientCredentials,
                    other => {
                        self.error(
                            Some(span.clone()),
                            format!("unknown grant `{other}`: expected password or client_credentials"),
                        );
                        OAuthGrant::ClientCredentials
                    }
                };
                if g == OAuthGrant::Password && (username.is_none() || password.is_none()) {
                    self.error(
                        Some(span.clone()),
                        format!("endpoint `{name}`: grant = \"password\" needs username and password"),
                    );
                }
                let token_url = self.url(&Spanned::new(span.clone(), token_url.clone()), &what("token_url"));
                let client_secret = client_secret
                    .as_ref()
                    .and_then(|s| self.secret_at(s, span.clone(), &what("client_secret")));
                let password = password
                    .as_ref()
                    .and_then(|s| self.secret_at(s, span.clone(), &what("password")));
                EndpointAuth::OAuth2 {
                    grant: g,
                    token_url: token_url
                        .unwrap_or_else(|| url::Url::parse("http://invalid.").expect("static URL parses")),
                    client_id: client_id.clone(),
                    client_secret,
                    username: username.clone(),
                    password,
                    scopes: scopes.clone(),
                }
            }
            raw::EndpointAuth::Signature {
                key_id,
                algorithm,
                key,
                components,
            } => {
                let alg = match algorithm.as_str() {
                    "hmac-sha256" => SignatureAlgorithm::HmacSha256,
                    "ed25519" => SignatureAlgorithm::Ed25519,
                    other => {
                        self.error(
                            Some(span.clone()),
                            format!("unknown signature algorithm `{other}`: expected hmac-sha256 or ed25519"),
                        );
                        SignatureAlgorithm::HmacSha256
                    }
                };
                let components: Vec<String> = if components.is_empty() {
                    vec!["@method".into(), "@target-uri".into()]
                } else {
                    components.clone()
                };
                for c in &components {
                    let ok = matches!(
                        c.as_str(),
                        "@method" | "@target-uri" | "@authority" | "@scheme" | "@request-target" | "@path" | "@query"
                    ) || (!c.starts_with('@')
                        && !c.is_empty()
                        && c.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
                    if !ok {
                        self.error(
                            Some(span.clone()),
                            format!("endpoint `{name}`: unsupported signature component `{c}`"),
                        );
                    }
                }
                let key = self.secret_at(key, span.clone(), &what("key"));
                let parsed = key.as_ref().and_then(|k| match keys::SignatureKey::parse(alg, k) {
                    Ok(parsed) => Some(Arc::new(parsed)),
                    Err(e) => {
                        self.error(Some(span.clone()), format!("endpoint `{name}`: {e}"));
                        None
                    }
                });
                EndpointAuth::Signature {
                    key_id: key_id.clone(),
                    algorithm: alg,
                    // A config with an unusable key is refused; this placeholder never signs.
                    key: parsed.unwrap_or_else(|| Arc::new(keys::SignatureKey::Hmac(Vec::new()))),
                    components,
                }
            }
        }
    }
}
