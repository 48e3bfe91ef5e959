//! The OAuth issuers of a checked config: `[oauth]`, or each of `[[oauth.issuers]]`.

use std::path::PathBuf;
use std::time::Duration;

use super::{keys, Secret, SecretHash};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthMode {
    Builtin,
    Jwt,
    Introspection,
}

impl OAuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            OAuthMode::Builtin => "builtin",
            OAuthMode::Jwt => "jwt",
            OAuthMode::Introspection => "introspection",
        }
    }
}

/// One OAuth issuer: `[oauth]`, or one of `[[oauth.issuers]]`.
#[derive(Debug, Clone)]
pub struct OAuth {
    /// `name` of `[[oauth.issuers]]`; the mode's name for the single `[oauth]` table.
    pub name: String,
    pub mode: OAuthMode,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub jwks_url: Option<url::Url>,
    pub jwks_file: Option<PathBuf>,
    pub introspection_url: Option<url::Url>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    pub username_claim: String,
    pub roles_claim: Option<String>,
    pub allowed_client_ids: Vec<String>,
    pub leeway: Duration,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    /// Absolute lifetime of a refresh-token family, however often it is rotated.
    pub refresh_token_max_lifetime: Duration,
    /// Builtin: access tokens revoked and not yet expired, at most (the table is never
    /// emptied early: past the bound a revocation is refused with 503).
    pub max_revocations: u64,
    /// Builtin: the share of `max_revocations` one OAuth client may hold.
    pub max_revocations_per_client: u64,
    pub algorithms: Vec<String>,
    /// The builtin issuer's keys (`signing_key`, then `signing_keys`), parsed from the
    /// PEM when the config was loaded: the first signs, every one verifies. Empty: a
    /// generated key.
    pub signing_keys: Vec<std::sync::Arc<keys::SigningKey>>,
    /// Builtin with a generated key: how often it rotates (the previous one keeps verifying).
    pub signing_key_rotation: Duration,
    /// jwt: at most one JWKS refetch for unknown `kid`s per this.
    pub jwks_min_refetch: Duration,
    /// jwt: the last good JWKS serves this long past its fetch while refetches fail.
    pub jwks_max_stale: Duration,
    /// The `[[users]]` entry of a token's user adds its roles, and its standing
    /// (disabled) refuses the token.
    pub local_users: bool,
    pub clients: Vec<OAuthClient>,
}

impl OAuth {
    /// The `iss` this issuer's tokens carry, when it names one (the builtin issuer always
    /// does): how a JWT finds its issuer.
    pub fn iss(&self) -> Option<&str> {
        match (self.mode, &self.issuer) {
            (_, Some(i)) => Some(i),
            (OAuthMode::Builtin, None) => Some(DEFAULT_BUILTIN_ISSUER),
            (OAuthMode::Jwt | OAuthMode::Introspection, None) => None,
        }
    }
}

/// The builtin issuer's `iss` when `issuer` is not set.
pub const DEFAULT_BUILTIN_ISSUER: &str = "portcullis";

#[derive(Debug, Clone)]
pub struct OAuthClient {
    pub client_id: String,
    pub client_secret_hash: SecretHash,
}
