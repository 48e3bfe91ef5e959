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
    /// `[oauth]`: one issuer named by its mode, or the issuers of `[[oauth.issuers]]`
    /// (the table then holds nothing else). Names and `issuer` values are unique, and at
    /// most one issuer is builtin.
    pub(super) fn oauth(&mut self, r: &raw::OAuth, at: Option<Span>) -> Vec<OAuth> {
        let at = at
            .or_else(|| r.mode.as_ref().and_then(sp))
            .or_else(|| r.issuers.first().and_then(sp));
        if r.issuers.is_empty() {
            if let Some(n) = &r.name {
                self.error(
                    sp(n),
                    "oauth.name names one of [[oauth.issuers]]: the single [oauth] table is named by its mode",
                );
            }
            return match &r.mode {
                Some(m) => {
                    let mode = self.oauth_mode(m);
                    vec![self.issuer(r, at, mode.as_str().to_string(), mode, true)]
                }
                None => {
                    self.error(
                        at,
                        "[oauth] needs mode (builtin, jwt or introspection), or [[oauth.issuers]]",
                    );
                    Vec::new()
                }
            };
        }
        for (key, span) in keys_set(r) {
            self.error(
                span,
                format!("oauth.{key} is set beside [[oauth.issuers]]: with issuers, [oauth] holds nothing else; move `{key}` into the issuer it belongs to"),
            );
        }
        let mut names = HashMap::new();
        let mut issuers: Vec<OAuth> = Vec::new();
        for i in &r.issuers {
            let ri = i.get_ref();
            let Some(n) = &ri.name else {
                self.error(sp(i), "every [[oauth.issuers]] entry needs a name");
                continue;
            };
            let name = self.name(n, "issuer");
            self.duplicate(&mut names, &name, n.span(), "issuer name");
            if let Some(nested) = ri.issuers.first() {
                self.error(
                    sp(nested),
                    format!("issuer `{name}` has issuers of its own: [[oauth.issuers]] do not nest"),
                );
            }
            let Some(m) = &ri.mode else {
                self.error(
                    sp(i),
                    format!("issuer `{name}` needs mode: builtin, jwt or introspection"),
                );
                continue;
            };
            let mode = self.oauth_mode(m);
            let issuer = self.issuer(ri, sp(i), name, mode, false);
            let at = ri.issuer.as_ref().map_or_else(|| sp(m), sp);
            if mode == OAuthMode::Builtin && issuers.iter().any(|o| o.mode == OAuthMode::Builtin) {
                self.error(
                    sp(m),
                    format!("issuer `{}` is a second builtin issuer: at most one", issuer.name),
                );
            }
            if let Some(other) = issuers.iter().find(|o| o.iss().is_some() && o.iss() == issuer.iss()) {
                self.error(
                    at,
                    format!(
                        "issuers `{}` and `{}` both have issuer `{}`: a token's `iss` must name one issuer",
                        other.name,
                        issuer.name,
                        issuer.iss().unwrap_or_default()
                    ),
                );
            }
            issuers.push(issuer);
        }
        issuers
    }

    /// One issuer: `[oauth]` itself (`single`) or one of `[[oauth.issuers]]`.
    fn issuer(&mut self, r: &raw::OAuth, at: Option<Span>, name: String, mode: OAuthMode, single: bool) -> OAuth {
        let (max_revocations, max_revocations_per_client) = self.revocation_bounds(r);
        let Sources {
            jwks_url,
            jwks_file,
            introspection_url,
        } = self.sources(r, at, mode);
        let (client_secret, signing_keys) = self.oauth_keys(r, jwks_file.as_ref());
        let algorithms = self.algorithms(r);
        let clients = self.clients(&r.clients);
        let access_token_ttl = self.duration(
            r.access_token_ttl.as_ref(),
            Duration::from_secs(900),
            "oauth.access_token_ttl",
        );
        let (jwks_min_refetch, jwks_max_stale, signing_key_rotation) = self.key_lifetimes(r, access_token_ttl);
        let local_users = match &r.local_users {
            Some(l) if !*l.get_ref() && mode == OAuthMode::Builtin => {
                self.error(
                    sp(l),
                    "the builtin issuer's users are [[users]]: local_users cannot be false for it",
                );
                true
            }
            Some(l) => *l.get_ref(),
            None => single || mode == OAuthMode::Builtin,
        };
        OAuth {
            name,
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
            access_token_ttl,
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
            signing_keys,
            signing_key_rotation,
            jwks_min_refetch,
            jwks_max_stale,
            local_users,
            clients,
        }
    }

    /// `jwks_min_refetch` (at least 1s), `jwks_max_stale`, and `signing_key_rotation`
    /// (at least `access_token_ttl`: the previous key must outlive its tokens).
    fn key_lifetimes(&mut self, r: &raw::OAuth, access_token_ttl: Duration) -> (Duration, Duration, Duration) {
        let min_refetch = self.duration(
            r.jwks_min_refetch.as_ref(),
            Duration::from_secs(30),
            "oauth.jwks_min_refetch",
        );
        if min_refetch < Duration::from_secs(1) {
            self.error(
                r.jwks_min_refetch.as_ref().and_then(sp),
                "oauth.jwks_min_refetch must be at least 1s: each unknown kid could otherwise be a fetch",
            );
        }
        let max_stale = self.duration(
            r.jwks_max_stale.as_ref(),
            Duration::from_secs(86400),
            "oauth.jwks_max_stale",
        );
        let rotation = self.duration(
            r.signing_key_rotation.as_ref(),
            Duration::from_secs(30 * 86400),
            "oauth.signing_key_rotation",
        );
        if rotation < access_token_ttl.max(Duration::from_secs(60)) {
            self.error(
                r.signing_key_rotation.as_ref().and_then(sp),
                "oauth.signing_key_rotation must be at least access_token_ttl (and 1m): a token must outlive no more than one rotation",
            );
        }
        (min_refetch, max_stale, rotation)
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

    pub(super) fn oauth_mode(&mut self, m: &Str) -> OAuthMode {
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
    fn sources(&mut self, r: &raw::OAuth, at: Option<Span>, mode: OAuthMode) -> Sources {
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
                at.clone(),
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
                at.clone(),
                "oauth.mode = \"jwt\" needs issuer: tokens of any other issuer must be refused",
            );
        }
        match mode {
            OAuthMode::Jwt if r.jwks_url.is_none() && r.jwks_file.is_none() => {
                self.error(at.clone(), "oauth.mode = \"jwt\" needs jwks_url or jwks_file")
            }
            OAuthMode::Introspection if r.introspection_url.is_none() => {
                self.error(at.clone(), "oauth.mode = \"introspection\" needs introspection_url")
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
    ) -> (Option<Secret>, Vec<Arc<keys::SigningKey>>) {
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
        let mut signing_keys: Vec<Arc<keys::SigningKey>> = Vec::new();
        if let (Some(_), Some(first)) = (&r.signing_key, r.signing_keys.first()) {
            self.error(
                sp(first),
                "oauth.signing_key and oauth.signing_keys are both set: list every key in signing_keys (the first signs)",
            );
        }
        for s in r.signing_key.iter().chain(r.signing_keys.iter()) {
            let Some(pem) = self.secret(s, "oauth.signing_key") else {
                continue;
            };
            match keys::SigningKey::from_pem(pem.expose()) {
                Ok(key) if signing_keys.iter().any(|k| k.kid == key.kid) => {
                    self.error(sp(s), format!("oauth.signing_keys lists the key `{}` twice", key.kid))
                }
                Ok(key) => signing_keys.push(Arc::new(key)),
                Err(e) => self.error(sp(s), e.to_string()),
            }
        }
        if let (Some(f), Some(span), Some(bytes)) = (jwks_file, &r.jwks_file, &jwks_bytes) {
            if let Err(e) = serde_json::from_slice::<jsonwebtoken::jwk::JwkSet>(bytes) {
                self.error(
                    sp(span),
                    format!("oauth.jwks_file `{}` is not a JWKS: {e}", f.display()),
                );
            }
        }
        (client_secret, signing_keys)
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

/// The keys of `[oauth]` that belong to one issuer, with where each is set: beside
/// `[[oauth.issuers]]` they are refused rather than given a meaning.
fn keys_set(r: &raw::OAuth) -> Vec<(&'static str, Option<Span>)> {
    fn at<T>(s: &Option<Spanned<T>>) -> Option<Option<Span>> {
        s.as_ref().map(sp)
    }
    fn first<T>(s: &[Spanned<T>]) -> Option<Option<Span>> {
        s.first().map(sp)
    }
    let secret = |s: &Option<raw::Withheld<raw::Secret>>| s.as_ref().map(|w| sp(w));
    let found = [
        ("name", at(&r.name)),
        ("mode", at(&r.mode)),
        ("issuer", at(&r.issuer)),
        ("audience", at(&r.audience)),
        ("jwks_url", at(&r.jwks_url)),
        ("jwks_file", at(&r.jwks_file)),
        ("introspection_url", at(&r.introspection_url)),
        ("client_id", at(&r.client_id)),
        ("client_secret", secret(&r.client_secret)),
        ("username_claim", at(&r.username_claim)),
        ("roles_claim", at(&r.roles_claim)),
        ("allowed_client_ids", first(&r.allowed_client_ids)),
        ("leeway", at(&r.leeway)),
        ("access_token_ttl", at(&r.access_token_ttl)),
        ("refresh_token_ttl", at(&r.refresh_token_ttl)),
        ("refresh_token_max_lifetime", at(&r.refresh_token_max_lifetime)),
        ("max_revocations", at(&r.max_revocations)),
        ("max_revocations_per_client", at(&r.max_revocations_per_client)),
        ("algorithm", at(&r.algorithm)),
        ("algorithms", first(&r.algorithms)),
        ("signing_key", secret(&r.signing_key)),
        ("signing_keys", r.signing_keys.first().map(|w| sp(w))),
        ("signing_key_rotation", at(&r.signing_key_rotation)),
        ("jwks_min_refetch", at(&r.jwks_min_refetch)),
        ("jwks_max_stale", at(&r.jwks_max_stale)),
        ("local_users", at(&r.local_users)),
        ("clients", first(&r.clients)),
    ];
    found.into_iter().filter_map(|(k, s)| s.map(|s| (k, s))).collect()
}
