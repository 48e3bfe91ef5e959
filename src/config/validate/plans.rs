//! `[[plans]]` and their integrations: upstreams, paths, methods, auth methods,
//! overlaps and the builtin issuer's reserved paths.

use super::*;
impl Validator<'_> {
    pub(super) fn plans(&mut self, raw_plans: &[Spanned<raw::Plan>], users: &[User]) -> Vec<Plan> {
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
            let when = self.policy(r.when.as_ref(), &format!("plan `{name}`"));
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
                integrations.push(self.integration(i, iname, &name, &upstream, users));
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
            let rate = self.rate(r.rate.as_ref(), r.rate_fail.as_ref(), &format!("plan `{name}`"));
            plans.push(Plan {
                name,
                upstream,
                access,
                underscores_in_headers: r.underscores_in_headers.unwrap_or(false),
                rate,
                when,
                integrations,
            });
        }
        plans
    }

    /// One integration of plan `name`, already named `iname`.
    fn integration(
        &mut self,
        i: &Spanned<raw::Integration>,
        iname: String,
        name: &str,
        upstream: &Upstream,
        users: &[User],
    ) -> Integration {
        let ri = i.get_ref();
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
        let rate = self.rate(
            ri.rate.as_ref(),
            ri.rate_fail.as_ref(),
            &format!("integration `{full}`"),
        );
        let issuers = ri
            .issuers
            .as_ref()
            .map(|l| l.get_ref().iter().map(|n| n.get_ref().clone()).collect());
        let when = self.policy(ri.when.as_ref(), &format!("integration `{full}`"));
        let claim_headers = self.claim_headers(ri.claim_headers.as_ref(), &full);
        if !claim_headers.is_empty() && !auth.contains(&AuthMethod::OAuth) {
            self.warn(
                sp(i),
                format!("integration `{full}` sets claim_headers but does not accept oauth: only tokens have claims"),
            );
        }
        Integration {
            name: iname,
            path,
            methods,
            auth,
            senders,
            forward_token,
            websocket,
            rate,
            issuers,
            when,
            claim_headers,
        }
    }

    /// A `rate` table and its `rate_fail`, of the plan or integration `what`.
    fn rate(&mut self, rate: Option<&Spanned<raw::Rate>>, fail_raw: Option<&Str>, what: &str) -> Option<RateLimit> {
        let fail = match fail_raw {
            None => RateFail::Local,
            Some(f) => match f.get_ref().as_str() {
                "local" => RateFail::Local,
                "closed" => RateFail::Closed,
                other => {
                    self.error(
                        sp(f),
                        format!("{what}: rate_fail `{other}`: expected \"local\" or \"closed\""),
                    );
                    RateFail::Local
                }
            },
        };
        let Some(rate) = rate else {
            if let Some(f) = fail_raw {
                self.warn(sp(f), format!("{what} sets rate_fail without a rate"));
            }
            return None;
        };
        let r = rate.get_ref();
        let requests = self.count(&r.requests, 1, 1_000_000_000, &format!("{what}: rate.requests"));
        let per = self.duration_of(&r.per, &format!("{what}: rate.per"));
        let burst = match &r.burst {
            Some(b) => self.count(b, 0, 1_000_000, &format!("{what}: rate.burst")),
            None => Some(0),
        };
        let key = match r.key.as_ref().map(|k| k.get_ref().as_str()) {
            None | Some("principal") => Some(RateKey::Principal),
            Some("client_ip") => Some(RateKey::ClientIp),
            Some("integration") => Some(RateKey::Integration),
            Some(other) => {
                self.error(
                    r.key.as_ref().map_or(sp(rate), sp),
                    format!("{what}: rate.key `{other}`: expected \"principal\", \"client_ip\" or \"integration\""),
                );
                None
            }
        };
        let (requests, per, burst, key) = (requests?, per?, burst?, key?);
        // One request per microsecond at most: the counters count in microseconds.
        if per.is_zero() || per.as_micros() < u128::from(requests) {
            self.error(
                sp(&r.per),
                format!(
                    "{what}: rate of {requests} per {} is over one request per microsecond",
                    r.per.get_ref()
                ),
            );
            return None;
        }
        let limit = RateLimit {
            requests,
            per,
            burst,
            key,
            fail,
        };
        // A spent budget refills in (burst + 1) intervals: keep that within the durations
        // every clock here adds safely (and Redis's Lua numbers count exactly).
        let refill = u128::from(limit.interval_us()) * u128::from(burst + 1);
        if refill > MAX_DURATION.as_micros() {
            self.error(
                sp(rate),
                format!("{what}: a spent budget of burst {burst} at {requests} per {} would take more than 10 years to refill", r.per.get_ref()),
            );
            return None;
        }
        Some(limit)
    }

    pub(super) fn upstream(&mut self, s: &Str) -> Upstream {
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
                        let host = crate::headers::HostPort::without_default(&authority, default_port).to_string();
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

    pub(super) fn path_pattern(&mut self, s: &Str) -> PathPattern {
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

    pub(super) fn methods(&mut self, s: &Spanned<Vec<Str>>) -> Vec<http::Method> {
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

    pub(super) fn auth_methods(&mut self, s: &Spanned<raw::OneOrMany>, full: &str) -> Vec<AuthMethod> {
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

    pub(super) fn overlaps(&mut self, raw_plans: &[Spanned<raw::Plan>], plans: &[Plan]) {
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

    /// `issuers` of each integration: names of configured issuers, not empty, on an
    /// integration that accepts oauth. Repeated names are dropped.
    pub(super) fn integration_issuers(
        &mut self,
        raw_plans: &[Spanned<raw::Plan>],
        plans: &mut [Plan],
        issuers: &[OAuth],
    ) {
        for (p, rp) in plans.iter_mut().zip(raw_plans) {
            for (i, ri) in p.integrations.iter_mut().zip(&rp.get_ref().integrations) {
                let Some(list) = &ri.get_ref().issuers else {
                    continue;
                };
                let full = format!("{}/{}", p.name, i.name);
                if list.get_ref().is_empty() {
                    self.error(
                        sp(list),
                        format!(
                            "integration `{full}`: issuers = [] admits no token; leave it out to accept every issuer"
                        ),
                    );
                }
                if !i.auth.contains(&AuthMethod::OAuth) {
                    self.error(
                        sp(list),
                        format!("integration `{full}` lists issuers but does not accept oauth"),
                    );
                }
                for n in list.get_ref() {
                    if !issuers.iter().any(|o| o.name == *n.get_ref()) {
                        let known: Vec<&str> = issuers.iter().map(|o| o.name.as_str()).collect();
                        self.error(
                            sp(n),
                            format!(
                                "integration `{full}`: unknown issuer `{}` (configured: {})",
                                n.get_ref(),
                                if known.is_empty() {
                                    "none".to_string()
                                } else {
                                    known.join(", ")
                                }
                            ),
                        );
                    }
                }
                if let Some(names) = &mut i.issuers {
                    let mut seen = std::collections::HashSet::new();
                    names.retain(|n| seen.insert(n.clone()));
                }
            }
        }
    }

    /// The builtin issuer answers `/oauth/token` and `/oauth/jwks.json` itself.
    pub(super) fn reserved_paths(&mut self, raw_plans: &[Spanned<raw::Plan>], plans: &[Plan]) {
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
}
