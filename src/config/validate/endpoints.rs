//! `[[endpoints]]` of the egress listener and their credentials.

use super::*;
impl Validator<'_> {
    pub(super) fn endpoints(&mut self, raw_eps: &[Spanned<raw::Endpoint>], users: &[User]) -> Vec<Endpoint> {
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
                .map(|c| self.rule(Some(c), users, &format!("callers of endpoint `{name}`"), Rule::All));
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

    pub(super) fn endpoint_auth(&mut self, a: &Spanned<raw::EndpointAuth>, name: &str) -> EndpointAuth {
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
            raw::EndpointAuth::Oauth2(o) => self.endpoint_oauth2(o, span, name),
            raw::EndpointAuth::Signature(s) => self.endpoint_signature(s, span, name),
        }
    }

    fn endpoint_oauth2(&mut self, a: &raw::OAuth2Auth, span: Span, name: &str) -> EndpointAuth {
        let what = |k: &str| format!("endpoint `{name}` auth.{k}");
        let g = match a.grant.as_str() {
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
        if g == OAuthGrant::Password && (a.username.is_none() || a.password.is_none()) {
            self.error(
                Some(span.clone()),
                format!("endpoint `{name}`: grant = \"password\" needs username and password"),
            );
        }
        let token_url = self.url(&Spanned::new(span.clone(), a.token_url.clone()), &what("token_url"));
        let client_secret = a
            .client_secret
            .as_ref()
            .and_then(|s| self.secret_at(s, span.clone(), &what("client_secret")));
        let password = a
            .password
            .as_ref()
            .and_then(|s| self.secret_at(s, span.clone(), &what("password")));
        EndpointAuth::OAuth2 {
            grant: g,
            token_url: token_url.unwrap_or_else(|| url::Url::parse("http://invalid.").expect("static URL parses")),
            client_id: a.client_id.clone(),
            client_secret,
            username: a.username.clone(),
            password,
            scopes: a.scopes.clone(),
        }
    }

    fn endpoint_signature(&mut self, a: &raw::SignatureAuth, span: Span, name: &str) -> EndpointAuth {
        let what = |k: &str| format!("endpoint `{name}` auth.{k}");
        let alg = match a.algorithm.as_str() {
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
        let components: Vec<String> = if a.components.is_empty() {
            vec!["@method".into(), "@target-uri".into()]
        } else {
            a.components.clone()
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
        let key = self.secret_at(&a.key, span.clone(), &what("key"));
        let parsed = key.as_ref().and_then(|k| match keys::SignatureKey::parse(alg, k) {
            Ok(parsed) => Some(Arc::new(parsed)),
            Err(e) => {
                self.error(Some(span.clone()), format!("endpoint `{name}`: {e}"));
                None
            }
        });
        EndpointAuth::Signature {
            key_id: a.key_id.clone(),
            algorithm: alg,
            // A config with an unusable key is refused; this placeholder never signs.
            key: parsed.unwrap_or_else(|| Arc::new(keys::SignatureKey::Hmac(Vec::new()))),
            components,
        }
    }
}
