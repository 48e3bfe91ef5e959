//! The configuration: one TOML file, parsed by `raw` (serde), checked by `validate`
//! into a [`Config`] whose every value is usable as is.
//!
//! [`load`] collects every problem it can find, each with its file, line and column, so
//! that `portcullis check` reports them all at once; warnings never fail a load.
//!
//! Besides: `keys` parses key material once, `secret` holds secrets, stored hashes and
//! the one way a file is read, `redact` removes secrets from what is printed about a
//! config (diagnostics, logs), and `export` prints the config without what the raw
//! types mark as [`withheld`].

pub mod export;
mod issuers;
pub mod keys;
mod raw;
pub mod redact;
mod redis;
pub mod secret;
mod validate;
pub mod withheld;

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub use issuers::{OAuth, OAuthClient, OAuthMode, DEFAULT_BUILTIN_ISSUER};
pub use redis::{RedisNode, RedisSettings, RedisTopology};
pub use secret::{FileKind, Secret, SecretHash};
/// The tables of the config and the keys each accepts (for "did you mean" and the docs test).
pub use validate::suggest::KNOWN as KNOWN_KEYS;

/// The builtin issuer's token endpoint: reserved when `oauth.mode = "builtin"`.
pub const TOKEN_PATH: &str = "/oauth/token";
/// The builtin issuer's JWKS.
pub const JWKS_PATH: &str = "/oauth/jwks.json";
/// RFC 7009 token revocation of the builtin issuer.
pub const REVOKE_PATH: &str = "/oauth/revoke";

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from.
    pub file: PathBuf,
    /// Files it reads besides itself (`{ file = ... }` secrets, `jwks_file`, the client
    /// CA and CRL), each with its kind (its size limit): watched for changes like the
    /// config file.
    pub watched: Vec<(PathBuf, FileKind)>,
    pub listen: Listen,
    pub limits: Limits,
    /// Admin listener (`/healthz`, `/readyz`, `/metrics`...); off when `[admin]` is absent.
    pub admin: Option<SocketAddr>,
    /// Egress listener; off when `[egress]` is absent.
    pub egress: Option<SocketAddr>,
    /// Forward-auth listener (nginx `auth_request`, Traefik ForwardAuth, Envoy
    /// ext_authz); off when `[forward_auth]` is absent.
    pub forward_auth: Option<SocketAddr>,
    /// Which ingress describes the original request to the forward-auth listener.
    pub forward_auth_ingress: Ingress,
    pub cache: Cache,
    pub lockout: Lockout,
    pub runtime: Runtime,
    pub tracing: Tracing,
    pub shared: SharedBackend,
    pub auth: AuthSettings,
    pub assertion: Assertion,
    pub users: Vec<User>,
    pub plans: Vec<Plan>,
    pub api_keys: Vec<ApiKey>,
    /// The OAuth issuers: `[[oauth.issuers]]`, or the one `[oauth]` table (named by its
    /// mode); empty without `[oauth]`. Names and `issuer` values are unique; at most one
    /// is builtin.
    pub issuers: Vec<OAuth>,
    pub endpoints: Vec<Endpoint>,
}

impl Config {
    /// The builtin issuer, if one is configured.
    pub fn builtin_issuer(&self) -> Option<&OAuth> {
        self.issuers.iter().find(|o| o.mode == OAuthMode::Builtin)
    }
}

/// The ingress in front of the forward-auth listener: it decides which headers name the
/// original request. Each reads one header family only, so a client's copy of another
/// family's headers is never taken for the ingress's word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ingress {
    /// Decide by the headers present; two families that disagree are a 400.
    #[default]
    Detect,
    /// `X-Original-Method` and `X-Original-URI` (nginx `auth_request`).
    Nginx,
    /// `X-Forwarded-Method` and `X-Forwarded-Uri` (Traefik ForwardAuth).
    Traefik,
    /// The subrequest's own method and target (Envoy ext_authz HTTP service).
    Envoy,
}

#[derive(Debug, Clone)]
pub struct Listen {
    pub address: SocketAddr,
    /// Certificate chain and key files (PEM); plain HTTP when absent.
    pub tls: Option<TlsFiles>,
    /// The chain and key read from `tls`, once, when the config was loaded.
    pub tls_key: Option<std::sync::Arc<rustls::sign::CertifiedKey>>,
    /// The client-certificate verifier made from `client_ca` and `client_crl`, once.
    pub client_verifier: Option<std::sync::Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    /// Peers (an ingress, a load balancer) whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Listen {
    /// The client's address: the peer's, or, when the peer is a trusted proxy, the
    /// rightmost `X-Forwarded-For` hop that is not itself a trusted proxy. Every
    /// `X-Forwarded-For` field line counts, joined in order (RFC 9110 section 5.3): a
    /// client that sends a line of its own before the proxy's cannot hide behind it.
    /// Empty list elements are skipped; a hop that is not an address (with or without a
    /// port) stops the walk at the last trusted one.
    /// Addresses are canonical: an IPv4-mapped IPv6 address (`::ffff:5.6.7.8`) is that
    /// IPv4 address, so one client cannot have two spellings (and two lockout budgets).
    pub fn client_ip(&self, peer: std::net::IpAddr, headers: &http::HeaderMap) -> std::net::IpAddr {
        let peer = peer.to_canonical();
        let trusted = |ip: &std::net::IpAddr| self.trusted_proxies.iter().any(|n| n.contains(ip));
        if self.trusted_proxies.is_empty() || !trusted(&peer) {
            return peer;
        }
        let mut client = peer;
        for line in headers.get_all(crate::headers::X_FORWARDED_FOR).iter().rev() {
            let Ok(list) = line.to_str() else {
                return client;
            };
            for hop in list.rsplit(',') {
                let hop = hop.trim();
                if hop.is_empty() {
                    continue;
                }
                let ip = hop_address(hop).map(|ip| ip.to_canonical());
                match ip {
                    Some(ip) => {
                        client = ip;
                        if !trusted(&ip) {
                            return client;
                        }
                    }
                    None => return client,
                }
            }
        }
        client
    }
}

/// One `X-Forwarded-For` element as an address: `a.b.c.d`, an IPv6 address, either with a
/// port (`a.b.c.d:p`, `[v6]:p`), a bracketed IPv6 address without one, and an IPv6 zone
/// (`fe80::1%eth0`, as Go proxies write link-local clients) dropped.
fn hop_address(hop: &str) -> Option<std::net::IpAddr> {
    if let Ok(ip) = hop.parse::<std::net::IpAddr>() {
        return Some(ip);
    }
    if let Ok(a) = hop.parse::<std::net::SocketAddr>() {
        return Some(a.ip());
    }
    let bare = hop
        .strip_prefix('[')
        .and_then(|h| h.split_once(']'))
        .map_or(hop, |(h, _)| h);
    let bare = bare.split_once('%').map_or(bare, |(ip, _)| ip);
    bare.parse::<std::net::Ipv6Addr>().ok().map(std::net::IpAddr::V6)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates: the CA bundle they must chain to, whether one is required,
    /// and a CRL of revoked ones.
    pub client_ca: Option<PathBuf>,
    pub client_auth_required: bool,
    pub client_crl: Option<PathBuf>,
}

/// Limits applied to every inbound connection and request.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A client must send its whole request head (and finish the TLS handshake) within this.
    pub header_read_timeout: Duration,
    /// Time from the request head to the upstream's response head.
    pub request_timeout: Duration,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// How long a shutdown waits for requests in flight.
    pub shutdown_timeout: Duration,
    /// After SIGTERM, how long `/readyz` answers 503 while everything is still served, so
    /// a load balancer stops sending before the listeners close.
    pub drain_delay: Duration,
    pub max_header_bytes: usize,
    /// Request header fields per request head (Envoy's default, 100); past it, 431.
    pub max_headers: usize,
    /// 0 means unlimited.
    pub max_body_bytes: u64,
    pub max_connections: usize,
    /// A request body that sends nothing for this long is cut (408).
    pub body_read_timeout: Duration,
    /// Bytes of unknown-length request bodies held back before forwarding, process-wide.
    pub max_spool_bytes: u64,
    /// HTTP/2 streams a client may have open at once on one connection.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 streams a client may reset before their response (CVE-2023-44487): past it
    /// the connection is closed with GOAWAY.
    pub h2_max_pending_resets: usize,
    /// An upgraded connection (WebSocket) that moves no byte for this long is closed.
    pub upgrade_idle_timeout: Duration,
    /// An upgraded connection is closed after this long, whatever it does.
    pub upgrade_max_lifetime: Duration,
}

/// `[auth]`: the argon2id pool. Peak memory for password checks is
/// `hash_workers × m_cost` (19 MiB each with the default parameters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    pub hash_workers: usize,
    pub hash_queue: usize,
    pub hash_queue_timeout: Duration,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            hash_workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            hash_queue: 64,
            hash_queue_timeout: Duration::from_secs(3),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(90),
            shutdown_timeout: Duration::from_secs(30),
            drain_delay: Duration::from_secs(5),
            max_header_bytes: 65536,
            max_headers: 100,
            max_body_bytes: 10 * 1024 * 1024,
            max_connections: 10000,
            body_read_timeout: Duration::from_secs(10),
            max_spool_bytes: 64 * 1024 * 1024,
            h2_max_concurrent_streams: 100,
            h2_max_pending_resets: 100,
            upgrade_idle_timeout: Duration::from_secs(300),
            upgrade_max_lifetime: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Cache {
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub max_entries: u64,
}

#[derive(Debug, Clone)]
pub struct Lockout {
    pub max_failures: u32,
    pub window: Duration,
    pub duration: Duration,
    /// Entries of the lockout table one client address (an IPv6 /64) may hold: one
    /// client cannot fill the table (`cache.max_entries`) for everyone.
    pub max_entries_per_address: u64,
}

/// `[shared]`: where state shared by replicas lives. Applies at start.
#[derive(Debug, Clone)]
pub enum SharedBackend {
    /// In-process (moka): one replica's own state.
    Memory,
    Redis(Box<RedisSettings>),
}

/// `[tracing]`: spans exported by OTLP/HTTP when `otlp_endpoint` is set. Applies at start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tracing {
    /// The collector's base URL (`http://HOST:4318`); spans go to `/v1/traces` under it.
    pub otlp_endpoint: Option<url::Url>,
    pub protocol: OtlpProtocol,
    /// The share of new traces (a request without a valid `traceparent`) that is
    /// sampled, 0.0..=1.0; a caller's own `sampled` flag is always followed.
    pub sample_ratio: f64,
    pub service_name: String,
}

/// `[tracing] protocol`: how spans are encoded on the wire (OTLP/HTTP).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `http/protobuf`, the OTLP default: the cheaper encoding.
    #[default]
    Protobuf,
    /// `http/json`.
    Json,
}

#[derive(Debug, Clone, Default)]
pub struct Runtime {
    pub worker_threads: Option<usize>,
    pub model: RuntimeModel,
}

/// How the inbound listener's work is spread over threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RuntimeModel {
    /// One work-stealing runtime of `worker_threads` threads serves every listener.
    Shared,
    /// The default. `worker_threads` workers, each a single-threaded runtime with its own inbound
    /// socket on the same address (`SO_REUSEPORT`) and its own upstream connection pool:
    /// nothing crosses threads on a request's path. The other listeners and the control
    /// plane (reload, signals) run on one more thread.
    #[default]
    PerCore,
}

#[derive(Debug, Clone)]
pub struct Assertion {
    /// HMAC key for `X-Portcullis-Assertion`; a random one per process when absent.
    pub key: Option<Secret>,
    pub ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub roles: Vec<String>,
    /// argon2id PHC string.
    pub password_hash: Option<String>,
    pub password_expires_at: Option<SystemTime>,
    pub url_key_hash: Option<SecretHash>,
    pub disabled: bool,
    /// Client-certificate names (SAN DNS, URI or email; or the CN) that are this user.
    pub cert_names: Vec<String>,
}

/// Who may pass: everyone authenticated, or the listed roles and users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    All,
    Only { roles: Vec<String>, users: Vec<String> },
}

impl Rule {
    pub fn allows(&self, user: &str, roles: &[String]) -> bool {
        match self {
            Rule::All => true,
            Rule::Only { roles: allowed, users } => {
                users.iter().any(|u| u == user) || roles.iter().any(|r| allowed.contains(r))
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub upstream: Upstream,
    pub access: Rule,
    /// Forward request headers whose names contain `_`; off by default, as in nginx,
    /// since CGI-style upstreams read `X_Foo` and `X-Foo` as one header.
    pub underscores_in_headers: bool,
    /// Requests per principal (or client IP, or in all) through every integration of
    /// the plan together.
    pub rate: Option<RateLimit>,
    /// `when`: a CEL expression that must be true besides `access`, compiled once.
    pub when: Option<crate::policy::Policy>,
    pub integrations: Vec<Integration>,
}

/// A rate limit (`rate = { requests, per, burst, key }`), as GCRA counts it: one request
/// every `interval`, and `burst` more at once from a full budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u64,
    pub per: Duration,
    pub burst: u64,
    pub key: RateKey,
    /// What happens when the shared store cannot count (`rate_fail`).
    pub fail: RateFail,
}

impl RateLimit {
    /// The emission interval, `per / requests`, in microseconds, rounded up (never a
    /// faster rate than written; at least 1).
    pub fn interval_us(&self) -> u64 {
        (self.per.as_micros() as u64).div_ceil(self.requests.max(1)).max(1)
    }
}

/// Whose budget a request spends (`rate.key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateKey {
    /// The authenticated principal, qualified by its auth method; the client IP on an
    /// `auth = "none"` route.
    Principal,
    ClientIp,
    /// One budget for every caller of the integration (or of the plan).
    Integration,
}

/// `rate_fail`: Redis unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateFail {
    /// Count here, against this replica's share of the budget.
    Local,
    /// Refuse with 503.
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// `builtin:echo`: answers with a JSON description of the request it received.
    Echo,
    /// `http://` or `https://` base; its path (without a trailing `/`) prefixes the request path.
    Http {
        scheme: http::uri::Scheme,
        authority: http::uri::Authority,
        base_path: String,
        /// The `Host` header for requests to it: host and any non-default port, no user
        /// info; made once here so that no request formats it.
        host: http::HeaderValue,
        /// `h2c://`: HTTP/2 without TLS, by prior knowledge (gRPC); `https://` upstreams
        /// speak HTTP/2 when ALPN offers it.
        h2c: bool,
    },
}

#[derive(Debug, Clone)]
pub struct Integration {
    pub name: String,
    pub path: PathPattern,
    pub methods: Vec<http::Method>,
    pub auth: Vec<AuthMethod>,
    pub senders: Rule,
    /// Forward the client's bearer token to the upstream (off: it is consumed here).
    pub forward_token: bool,
    /// `upgrades = ["websocket"]`: HTTP/1.1 WebSocket upgrades pass once authorized.
    pub websocket: bool,
    /// Requests through this integration, in addition to the plan's limit.
    pub rate: Option<RateLimit>,
    /// The OAuth issuers (by name) whose tokens it accepts; `None`: every issuer.
    pub issuers: Option<Vec<String>>,
    /// `when`: a CEL expression that must be true besides `senders`, compiled once.
    pub when: Option<crate::policy::Policy>,
    /// `claim_headers`: the token claims sent upstream, each under its header.
    pub claim_headers: Vec<ClaimHeader>,
}

/// One entry of `claim_headers`: the claim at `claim` (a dotted path into nested objects)
/// is sent upstream as `name`, an `X-Portcullis-*` header the client cannot set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHeader {
    pub name: http::HeaderName,
    pub claim: String,
}

impl ClaimHeader {
    /// The claim's value in `claims`: the whole path as a key first (a claim named
    /// `https://example.com/tenant`), else the path's first segments as a key and the rest
    /// inside it, shortest first. `None` when absent.
    pub fn find<'a>(
        claims: &'a serde_json::Map<String, serde_json::Value>,
        path: &str,
    ) -> Option<&'a serde_json::Value> {
        if let Some(v) = claims.get(path) {
            return Some(v);
        }
        path.match_indices('.').find_map(|(i, _)| match claims.get(&path[..i]) {
            Some(serde_json::Value::Object(inner)) => Self::find(inner, &path[i + 1..]),
            _ => None,
        })
    }
}

/// An integration's path: exact, or `/base/*` (the base itself and everything below it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    Exact(String),
    Prefix(String),
}

impl PathPattern {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(p) => p == path,
            PathPattern::Prefix(base) => crate::path::matches_prefix(base, path),
        }
    }

    /// Whether some path is matched by both patterns.
    pub fn overlaps(&self, other: &PathPattern) -> bool {
        match (self, other) {
            (PathPattern::Exact(a), PathPattern::Exact(b)) => a == b,
            (PathPattern::Exact(a), p @ PathPattern::Prefix(_))
            | (p @ PathPattern::Prefix(_), PathPattern::Exact(a)) => p.matches(a),
            (PathPattern::Prefix(a), PathPattern::Prefix(b)) => {
                crate::path::matches_prefix(a, b) || crate::path::matches_prefix(b, a)
            }
        }
    }
}

impl std::fmt::Display for PathPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathPattern::Exact(p) => f.write_str(p),
            PathPattern::Prefix(b) => write!(f, "{b}/*"),
        }
    }
}

/// An inbound authentication method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    None,
    UrlKey,
    Basic,
    ApiKey,
    OAuth,
    /// A client certificate verified by the TLS handshake (`[listen.tls] client_ca`).
    Mtls,
}

impl AuthMethod {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => AuthMethod::None,
            "url_key" => AuthMethod::UrlKey,
            "basic" => AuthMethod::Basic,
            "api_key" => AuthMethod::ApiKey,
            "oauth" => AuthMethod::OAuth,
            "mtls" => AuthMethod::Mtls,
            _ => return None,
        })
    }

    /// The contract's name, used in logs, metrics and `X-Portcullis-Auth-Method`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::None => "none",
            AuthMethod::UrlKey => "url_key",
            AuthMethod::Basic => "basic",
            AuthMethod::ApiKey => "api_key",
            AuthMethod::OAuth => "oauth",
            AuthMethod::Mtls => "mtls",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiKey {
    pub key: String,
    pub secret_hash: SecretHash,
    pub user: String,
    pub plan: String,
    pub integration: String,
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub name: String,
    pub base_url: url::Url,
    pub trust_self_signed: bool,
    pub pin_sha256: Option<[u8; 32]>,
    pub callers: Option<Rule>,
    pub auth: EndpointAuth,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub enum EndpointAuth {
    None,
    Basic {
        username: String,
        password: Secret,
        preemptive: bool,
    },
    OAuth2 {
        grant: OAuthGrant,
        token_url: url::Url,
        client_id: String,
        client_secret: Option<Secret>,
        username: Option<String>,
        password: Option<Secret>,
        scopes: Vec<String>,
    },
    Principal,
    Signature {
        key_id: String,
        algorithm: SignatureAlgorithm,
        key: std::sync::Arc<keys::SignatureKey>,
        components: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthGrant {
    Password,
    ClientCredentials,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureAlgorithm {
    HmacSha256,
    Ed25519,
}

// === Diagnostics ===

/// One problem found in the file, at `FILE:LINE:COL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Every error found in a config file (never empty).
#[derive(Debug, Clone, thiserror::Error)]
pub struct Errors(pub Vec<Diagnostic>);

impl std::fmt::Display for Errors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// A config that loaded, with the warnings found on the way.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Diagnostic>,
}

/// Reads, parses and checks the file at `path`.
pub fn load(path: &Path) -> Result<Loaded, Errors> {
    let text = secret::read_text(path, secret::FileKind::Config).map_err(|e| {
        Errors(vec![Diagnostic {
            file: path.to_owned(),
            line: 1,
            column: 1,
            message: format!("cannot read config file: {e}"),
        }])
    })?;
    parse(path, &text)
}

/// Parses and checks `text` as if read from `path`.
pub fn parse(path: &Path, text: &str) -> Result<Loaded, Errors> {
    validate::run(path, text)
}

/// Turns a byte offset into a 1-based line and column (in characters).
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..floor_char_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

pub(crate) type Span = Range<usize>;
