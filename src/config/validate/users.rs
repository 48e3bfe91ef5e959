//! `[[users]]`, access rules (`access`, `senders`, `callers`) and `[[api_keys]]`.

use super::*;
impl Validator<'_> {
    pub(super) fn users(&mut self, raw_users: &[Spanned<raw::User>]) -> Vec<User> {
        let mut seen = HashMap::new();
        let mut users = Vec::new();
        for u in raw_users {
            let r = u.get_ref();
            let name = self.principal_word(&r.name, "user name");
            self.duplicate(&mut seen, &name, r.name.span(), "user name");
            let roles = r.roles.iter().map(|x| self.principal_word(x, "role")).collect();
            if let Some(h) = &r.password_hash {
                self.not_published(sp(h), &format!("password_hash of user `{name}`"), h.get_ref());
            }
            if let Some(h) = &r.url_key_hash {
                self.not_published(sp(h), &format!("url_key_hash of user `{name}`"), h.get_ref());
            }
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
    pub(super) fn rule(&mut self, r: Option<&Spanned<raw::Rule>>, users: &[User], what: &str, absent: Rule) -> Rule {
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

    pub(super) fn api_keys(
        &mut self,
        raw_keys: &[Spanned<raw::ApiKey>],
        users: &[User],
        plans: &[Plan],
    ) -> Vec<ApiKey> {
        let mut seen = HashMap::new();
        let mut out = Vec::new();
        for k in raw_keys {
            let r = k.get_ref();
            let key = r.key.get_ref().clone();
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                self.error(sp(&r.key), "invalid api key id: use visible ASCII without `:`");
            }
            self.duplicate(&mut seen, &key, r.key.span(), "api key");
            self.not_published(
                sp(&r.secret_hash),
                &format!("secret_hash of api key `{key}`"),
                r.secret_hash.get_ref(),
            );
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

    /// Client certificates: `mtls` needs a CA to verify them, and a name is one user's.
    pub(super) fn client_certificates(&mut self, listen: &Listen, users: &[User], plans: &[Plan]) {
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
        for u in users {
            for n in &u.cert_names {
                if let Some(other) = cert_owner.insert(n, &u.name) {
                    self.error(
                        None,
                        format!("cert_names `{n}` belongs to both `{other}` and `{}`", u.name),
                    );
                }
            }
        }
    }
}
