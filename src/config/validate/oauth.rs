//! `[oauth]`: the mode, where keys come from, the builtin issuer's key and clients,
//! token lifetimes and revocation bounds.

use super::*;

/// The asymmetric algorithms a JWT may be signed with.
const ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// Where the keys of `[oauth]` come from.
struct Sources {
    jwks_url: Option<url::Url>,
    jwks_file: Option<PathBuf>,
    introspection_url: Option<url::Url>,
}

impl Validator<'_> {
    pub(super) fn oauth(&mut self, o: &Spanned<raw::OAuth>) -> OAuth {
        let r = o.get_ref();
        let (max_revocations, max_revocations_per_client) = self.revocation_bounds(r);
        let mode = self.oauth_mode(&r.mode);
        let Sources {
            jwks_url,
            jwks_file,
            introspection_url,
        } = self.sources(o, mode);
        let (client_secret, signing_key) = self.oauth_keys(r, jwks_file.as_ref());
        let algorithms = self.algorithms(r);
        let clients = self.clients(&r.clients);
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
            leeway: self.leeway(r.leeway.as_ref()),
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

    /// `max_revocations` and `max_revocations_per_client` (at most the former).
    fn revocation_bounds(&mut self, r: &raw::OAuth) -> (u64, u64) {
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
        (max_revocations, max_revocations_per_client)
    }

    fn oauth_mode(&mut self, m: &Str) -> OAuthMode {
        match m.get_ref().as_str() {
            "builtin" => OAuthMode::Builtin,
            "jwt" => OAuthMode::Jwt,
            "introspection" => OAuthMode::Introspection,
            other => {
                self.error(
                    sp(m),
                    format!("unknown oauth.mode `{other}`: expected builtin, jwt or introspection"),
                );
                OAuthMode::Builtin
            }
        }
    }

    /// The JWKS URL or file and the introspection URL, and what each mode needs of them.
    fn sources(&mut self, o: &Spanned<raw::OAuth>, mode: OAuthMode) -> Sources {
        let r = o.get_ref();
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
        Sources {
            jwks_url,
            jwks_file,
            introspection_url,
        }
    }

    /// The client secret and the builtin issuer's signing key; the JWKS file read and
    /// parsed (its errors around theirs, in the order they have always been reported).
    fn oauth_keys(
        &mut self,
        r: &raw::OAuth,
        jwks_file: Option<&PathBuf>,
    ) -> (Option<Secret>, Option<Arc<keys::SigningKey>>) {
        let jwks_bytes = match (jwks_file, &r.jwks_file) {
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
                    self.error(sp(span), e.to_string());
                    None
                }
            },
            _ => None,
        };
        if let (Some(f), Some(span), Some(bytes)) = (jwks_file, &r.jwks_file, &jwks_bytes) {
            if let Err(e) = serde_json::from_slice::<jsonwebtoken::jwk::JwkSet>(bytes) {
                self.error(
                    sp(span),
                    format!("oauth.jwks_file `{}` is not a JWKS: {e}", f.display()),
                );
            }
        }
        (client_secret, signing_key)
    }

    fn algorithms(&mut self, r: &raw::OAuth) -> Vec<String> {
        let mut algorithms: Vec<String> = r.algorithms.iter().map(|a| a.get_ref().clone()).collect();
        if let Some(a) = &r.algorithm {
            algorithms.push(a.get_ref().clone());
        }
        for a in r.algorithms.iter().chain(r.algorithm.iter()) {
            if !ALGORITHMS.contains(&a.get_ref().as_str()) {
                self.error(
                    sp(a),
                    format!(
                        "unsupported oauth algorithm `{}`: expected an asymmetric one such as RS256, ES256 or EdDSA",
                        a.get_ref()
                    ),
                );
            }
        }
        algorithms
    }

    fn clients(&mut self, raw_clients: &[Spanned<raw::OAuthClient>]) -> Vec<OAuthClient> {
        let mut seen = HashMap::new();
        let mut clients = Vec::new();
        for c in raw_clients {
            let rc = c.get_ref();
            let id = self.principal_word(&rc.client_id, "client_id");
            self.duplicate(&mut seen, &id, rc.client_id.span(), "oauth client");
            self.not_published(
                sp(&rc.client_secret_hash),
                &format!("client_secret_hash of client `{id}`"),
                rc.client_secret_hash.get_ref(),
            );
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
        clients
    }

    /// `oauth.leeway`: at most [`MAX_LEEWAY`].
    fn leeway(&mut self, l: Option<&Str>) -> Duration {
        let leeway = self.duration(l, Duration::from_secs(30), "oauth.leeway");
        if leeway > MAX_LEEWAY {
            self.error(
                l.and_then(sp),
                format!(
                    "oauth.leeway may be at most {}: a larger one accepts expired tokens",
                    humantime::format_duration(MAX_LEEWAY)
                ),
            );
        }
        leeway
    }
}
