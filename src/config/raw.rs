//! The serde mirror of the TOML file: every key of the contract, nothing checked yet.
//!
//! Values whose meaning is checked later (durations, URLs, names, paths) are kept as
//! `Spanned` strings so that `validate` can point at their line and column. Unknown keys
//! are not rejected here: `config::load` collects all of them through `serde_ignored`.
//!
//! Every secret, stored hash and key id is a [`Withheld`] field (or `shared.url`, a
//! [`SecretUrl`]): that type, not the key's name, is what keeps it out of `export`.

use serde::{Deserialize, Deserializer};
use toml::Spanned;

pub use super::withheld::{SecretUrl, Withheld};

pub type Str = Spanned<String>;

#[derive(Debug, Default, Deserialize)]
pub struct Raw {
    pub listen: Option<Spanned<Listen>>,
    pub limits: Option<Limits>,
    pub admin: Option<Spanned<Address>>,
    pub egress: Option<Spanned<Address>>,
    pub forward_auth: Option<Spanned<ForwardAuth>>,
    pub cache: Option<Cache>,
    pub lockout: Option<Lockout>,
    pub shared: Option<Shared>,
    pub runtime: Option<Runtime>,
    pub tracing: Option<Tracing>,
    pub auth: Option<AuthSection>,
    pub assertion: Option<Assertion>,
    #[serde(default)]
    pub users: Vec<Spanned<User>>,
    #[serde(default)]
    pub plans: Vec<Spanned<Plan>>,
    #[serde(default)]
    pub api_keys: Vec<Spanned<ApiKey>>,
    /// Not `Spanned`: toml cannot span a table that only `[[oauth.issuers]]` makes (its
    /// position comes from the document instead).
    pub oauth: Option<OAuth>,
    #[serde(default)]
    pub endpoints: Vec<Spanned<Endpoint>>,
}

#[derive(Debug, Deserialize)]
pub struct Listen {
    pub address: Str,
    pub tls: Option<Spanned<Tls>>,
    #[serde(default)]
    pub trusted_proxies: Vec<Str>,
}

#[derive(Debug, Deserialize)]
pub struct Tls {
    pub cert: Str,
    pub key: Withheld<String>,
    pub client_ca: Option<Str>,
    pub client_auth: Option<Str>,
    pub client_crl: Option<Str>,
}

/// `[admin]` or `[egress]`: the section turns the listener on; `address` has a loopback default.
#[derive(Debug, Deserialize)]
pub struct Address {
    pub address: Option<Str>,
}

/// `[forward_auth]`: the listener, and the ingress whose headers describe the original
/// request.
#[derive(Debug, Deserialize)]
pub struct ForwardAuth {
    pub address: Option<Str>,
    pub ingress: Option<Str>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Limits {
    pub header_read_timeout: Option<Str>,
    pub request_timeout: Option<Str>,
    pub idle_timeout: Option<Str>,
    pub shutdown_timeout: Option<Str>,
    pub max_header_bytes: Option<Spanned<i64>>,
    pub max_headers: Option<Spanned<i64>>,
    pub max_body_bytes: Option<Spanned<i64>>,
    pub max_connections: Option<Spanned<i64>>,
    pub body_read_timeout: Option<Str>,
    pub drain_delay: Option<Str>,
    pub max_spool_bytes: Option<Spanned<i64>>,
    pub h2_max_concurrent_streams: Option<Spanned<i64>>,
    pub h2_max_pending_resets: Option<Spanned<i64>>,
    pub upgrade_idle_timeout: Option<Str>,
    pub upgrade_max_lifetime: Option<Str>,
}

/// `[auth]`: the argon2id verification pool.
#[derive(Debug, Default, Deserialize)]
pub struct AuthSection {
    pub hash_workers: Option<Spanned<i64>>,
    pub hash_queue: Option<Spanned<i64>>,
    pub hash_queue_timeout: Option<Str>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Cache {
    pub ttl: Option<Str>,
    pub negative_ttl: Option<Str>,
    pub max_entries: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Lockout {
    pub max_failures: Option<Spanned<i64>>,
    pub window: Option<Str>,
    pub duration: Option<Str>,
    pub max_entries_per_address: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Shared {
    pub backend: Option<Str>,
    pub url: Option<SecretUrl>,
    pub key_prefix: Option<Str>,
    pub secret: Option<Withheld<Secret>>,
    pub connect_timeout: Option<Str>,
    pub command_timeout: Option<Str>,
    pub pool_size: Option<Spanned<i64>>,
    pub sentinels: Option<Spanned<Vec<Str>>>,
    pub master_name: Option<Str>,
    pub cluster: Option<Spanned<bool>>,
    pub nodes: Option<Spanned<Vec<Str>>>,
    pub tls: Option<Spanned<bool>>,
    pub tls_ca_file: Option<Str>,
    pub username: Option<Str>,
    pub password: Option<Withheld<Secret>>,
    pub sentinel_password: Option<Withheld<Secret>>,
    pub wait_replicas: Option<Spanned<i64>>,
}

/// `[tracing]`: OpenTelemetry export.
#[derive(Debug, Default, Deserialize)]
pub struct Tracing {
    pub otlp_endpoint: Option<Str>,
    pub protocol: Option<Str>,
    pub sample_ratio: Option<Spanned<f64>>,
    pub service_name: Option<Str>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Runtime {
    pub worker_threads: Option<Spanned<i64>>,
    pub model: Option<Str>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Assertion {
    pub key: Option<Withheld<Secret>>,
    pub ttl: Option<Str>,
}

/// A secret: a literal string, `{ env = "NAME" }` or `{ file = "path" }`.
#[derive(Debug)]
pub enum Secret {
    Literal(String),
    Env(EnvRef),
    File(FileRef),
}

/// [`Secret`] as serde reads it (of the same name: serde's messages quote it).
mod form {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    pub enum Secret {
        Literal(String),
        Env(super::EnvRef),
        File(super::FileRef),
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        super::withheld::note_secret();
        Ok(match form::Secret::deserialize(d)? {
            form::Secret::Literal(s) => Secret::Literal(s),
            form::Secret::Env(e) => Secret::Env(e),
            form::Secret::File(f) => Secret::File(f),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvRef {
    pub env: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    pub file: String,
}

#[derive(Debug, Deserialize)]
pub struct User {
    pub name: Str,
    #[serde(default)]
    pub roles: Vec<Str>,
    pub password_hash: Option<Withheld<String>>,
    pub password_expires_at: Option<Str>,
    pub url_key_hash: Option<Withheld<String>>,
    #[serde(default)]
    pub cert_names: Vec<Str>,
    #[serde(default)]
    pub disabled: bool,
}

/// Who may use a plan (`access`), an integration (`senders`) or an endpoint (`callers`).
#[derive(Debug, Default, Deserialize)]
pub struct Rule {
    pub all: Option<bool>,
    #[serde(default)]
    pub roles: Vec<Str>,
    #[serde(default)]
    pub users: Vec<Str>,
}

#[derive(Debug, Deserialize)]
pub struct Plan {
    pub name: Str,
    pub upstream: Str,
    pub access: Option<Spanned<Rule>>,
    /// Forward request headers whose names contain `_` (dropped by default).
    pub underscores_in_headers: Option<bool>,
    pub rate: Option<Spanned<Rate>>,
    pub rate_fail: Option<Str>,
    /// A CEL expression that must be true, besides `access` (`src/policy`).
    pub when: Option<Str>,
    #[serde(default)]
    pub integrations: Vec<Spanned<Integration>>,
}

/// `rate = { requests = 100, per = "1s", burst = 20, key = "principal" }`.
#[derive(Debug, Deserialize)]
pub struct Rate {
    pub requests: Spanned<i64>,
    pub per: Str,
    pub burst: Option<Spanned<i64>>,
    pub key: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    // Plain strings: `Spanned` cannot pass through an untagged enum's buffering.
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct Integration {
    pub name: Str,
    pub path: Str,
    pub methods: Spanned<Vec<Str>>,
    pub auth: Spanned<OneOrMany>,
    pub senders: Option<Spanned<Rule>>,
    /// Forward the client's `Authorization: Bearer` token (stripped by default).
    pub forward_token: Option<bool>,
    #[serde(default)]
    pub upgrades: Vec<Str>,
    pub rate: Option<Spanned<Rate>>,
    pub rate_fail: Option<Str>,
    /// The `[[oauth.issuers]]` (by name) whose tokens this integration accepts; every
    /// issuer when absent.
    pub issuers: Option<Spanned<Vec<Str>>>,
    /// A CEL expression that must be true, besides the plan's rules and `senders`.
    pub when: Option<Str>,
    /// `X-Portcullis-*` header name -> claim (a dotted path) sent upstream.
    pub claim_headers: Option<Spanned<std::collections::BTreeMap<String, Str>>>,
}

#[derive(Debug, Deserialize)]
pub struct ApiKey {
    /// The key's id: the user part of its Basic credentials.
    pub key: Withheld<String>,
    pub secret_hash: Withheld<String>,
    pub user: Str,
    pub integration: Str,
}

/// `[oauth]`, and each of its `[[oauth.issuers]]` (the same keys, plus `name`; an issuer
/// has no `issuers` of its own).
#[derive(Debug, Deserialize)]
pub struct OAuth {
    /// An issuer's name (`[[oauth.issuers]]` only): `integration.issuers`,
    /// `X-Portcullis-Issuer`.
    pub name: Option<Str>,
    pub mode: Option<Str>,
    pub issuer: Option<Str>,
    pub audience: Option<Str>,
    pub jwks_url: Option<Str>,
    pub jwks_file: Option<Str>,
    pub introspection_url: Option<Str>,
    pub client_id: Option<Str>,
    pub client_secret: Option<Withheld<Secret>>,
    pub username_claim: Option<Str>,
    pub roles_claim: Option<Str>,
    #[serde(default)]
    pub allowed_client_ids: Vec<Str>,
    pub leeway: Option<Str>,
    pub access_token_ttl: Option<Str>,
    pub refresh_token_ttl: Option<Str>,
    pub refresh_token_max_lifetime: Option<Str>,
    pub max_revocations: Option<Spanned<i64>>,
    pub max_revocations_per_client: Option<Spanned<i64>>,
    pub algorithm: Option<Str>,
    #[serde(default)]
    pub algorithms: Vec<Str>,
    pub signing_key: Option<Withheld<Secret>>,
    /// Builtin: the signing keys; the first signs, every one verifies (rotation).
    #[serde(default)]
    pub signing_keys: Vec<Withheld<Secret>>,
    /// Builtin, generated key with `[shared]`: how often the agreed key rotates.
    pub signing_key_rotation: Option<Str>,
    /// jwt: an unknown `kid` refetches the JWKS at most once per this, per issuer.
    pub jwks_min_refetch: Option<Str>,
    /// jwt: how long the last good JWKS serves while the issuer cannot be reached.
    pub jwks_max_stale: Option<Str>,
    /// The `[[users]]` entry of the token's user name adds its roles and standing.
    pub local_users: Option<Spanned<bool>>,
    #[serde(default)]
    pub clients: Vec<Spanned<OAuthClient>>,
    #[serde(default)]
    pub issuers: Vec<Spanned<OAuth>>,
}

#[derive(Debug, Deserialize)]
pub struct OAuthClient {
    pub client_id: Str,
    pub client_secret_hash: Withheld<String>,
}

#[derive(Debug, Deserialize)]
pub struct Endpoint {
    pub name: Str,
    pub base_url: Str,
    #[serde(default)]
    pub trust_self_signed: bool,
    pub pin_sha256: Option<Str>,
    pub callers: Option<Spanned<Rule>>,
    /// Credentials: withheld whole by export, which sets `type = "none"` in their place.
    pub auth: Option<Withheld<EndpointAuth>>,
    pub timeout: Option<Str>,
}

#[derive(Debug, Deserialize)]
// Plain types: `Spanned` cannot pass through an internally tagged enum's buffering;
// errors point at the `auth` table instead.
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum EndpointAuth {
    None,
    Basic {
        username: String,
        password: Secret,
        #[serde(default = "yes")]
        preemptive: bool,
    },
    Oauth2(OAuth2Auth),
    Principal,
    Signature(SignatureAuth),
}

/// `auth = { type = "oauth2", ... }` of an endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Auth {
    pub grant: String,
    pub token_url: String,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// `auth = { type = "signature", ... }` of an endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureAuth {
    pub key_id: String,
    pub algorithm: String,
    pub key: Secret,
    #[serde(default)]
    pub components: Vec<String>,
}

fn yes() -> bool {
    true
}
