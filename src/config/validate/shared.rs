//! `[shared]` (the Redis backend) and `[assertion]`.

use super::*;
/// Where Redis is and how the URL authenticates, before the `username` / `password`
/// keys are applied.
struct Located {
    topology: RedisTopology,
    username: Option<String>,
    password: Option<Secret>,
}

impl Validator<'_> {
    pub(super) fn shared(&mut self, s: Option<&raw::Shared>) -> SharedBackend {
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
            self.ignored_without_redis(s);
            return SharedBackend::Memory;
        }
        let located = self.redis_location(s);
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
        let key_prefix = self.key_prefix(s, located.as_ref());
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
        let sentinel = matches!(
            located.as_ref().map(|l| &l.topology),
            Some(RedisTopology::Sentinel { .. })
        );
        let wait_replicas = s
            .wait_replicas
            .as_ref()
            .and_then(|n| self.count(n, 0, 16, "shared.wait_replicas"))
            .map_or(u32::from(sentinel), |n| n as u32);
        let sentinel_password = s
            .sentinel_password
            .as_ref()
            .and_then(|p| self.secret(p, "shared.sentinel_password"));
        if let (Some(p), false) = (&s.sentinel_password, sentinel) {
            self.error(
                sp(p),
                "shared.sentinel_password is only for a Sentinel set (shared.sentinels or a redis+sentinel:// url)",
            );
        }
        let (username, password) = self.redis_credentials(s, located.as_ref());
        let tls_ca = self.redis_ca(s, located.as_ref());
        match (located, secret) {
            (Some(l), Some(secret)) => SharedBackend::Redis(Box::new(RedisSettings {
                topology: l.topology,
                username: username.or(l.username),
                password: password.or(l.password),
                sentinel_password,
                key_prefix,
                secret,
                connect_timeout,
                command_timeout,
                pool_size,
                wait_replicas,
                tls_ca,
            })),
            _ => SharedBackend::Memory,
        }
    }

    /// `shared.key_prefix`: on a Cluster without braces (a hash tag follows it).
    fn key_prefix(&mut self, s: &raw::Shared, located: Option<&Located>) -> String {
        let Some(p) = &s.key_prefix else {
            return "portcullis:".to_string();
        };
        if matches!(located.map(|l| &l.topology), Some(RedisTopology::Cluster { .. }))
            && p.get_ref().contains(['{', '}'])
        {
            self.error(
                sp(p),
                "shared.key_prefix may not contain `{` or `}` on a Redis Cluster: Portcullis puts the keys of one operation in one hash slot with a hash tag after the prefix",
            );
        }
        p.get_ref().clone()
    }

    /// Warns of the Redis keys a memory backend ignores.
    fn ignored_without_redis(&mut self, s: &raw::Shared) {
        for (set, key) in [
            (s.url.is_some(), "url"),
            (s.secret.is_some(), "secret"),
            (s.key_prefix.is_some(), "key_prefix"),
            (s.sentinels.is_some(), "sentinels"),
            (s.nodes.is_some(), "nodes"),
            (s.cluster.is_some(), "cluster"),
            (s.password.is_some(), "password"),
        ] {
            if set {
                self.warn(None, format!("shared.{key} is ignored: shared.backend is \"memory\""));
            }
        }
    }

    /// `shared.tls_ca_file`, read once (PEM), for a store reached over TLS only.
    fn redis_ca(&mut self, s: &raw::Shared, located: Option<&Located>) -> Option<Vec<u8>> {
        let f = s.tls_ca_file.as_ref()?;
        let tls = located.is_some_and(|l| match &l.topology {
            RedisTopology::Single(url) => url.expose().starts_with(b"rediss://"),
            RedisTopology::Sentinel { tls, .. } | RedisTopology::Cluster { tls, .. } => *tls,
        });
        if !tls {
            self.error(
                sp(f),
                "shared.tls_ca_file needs TLS: a rediss:// or rediss+sentinel:// url, or tls = true",
            );
            return None;
        }
        match super::secret::read_text(Path::new(f.get_ref()), FileKind::Tls) {
            Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => Some(pem.into_bytes()),
            Ok(_) => {
                self.error(
                    sp(f),
                    format!("shared.tls_ca_file `{}` holds no PEM certificate", f.get_ref()),
                );
                None
            }
            Err(e) => {
                self.error(sp(f), format!("shared.tls_ca_file `{}`: {e}", f.get_ref()));
                None
            }
        }
    }

    /// `shared.username` and `shared.password`, refused beside a URL that carries its own.
    fn redis_credentials(&mut self, s: &raw::Shared, located: Option<&Located>) -> (Option<String>, Option<Secret>) {
        let password = s.password.as_ref().and_then(|p| self.secret(p, "shared.password"));
        if let (Some(p), Some(Located { password: Some(_), .. })) = (&s.password, located) {
            self.error(
                sp(p),
                "shared.password is set and shared.url carries a password too: keep one",
            );
        }
        let username = s.username.as_ref().map(|u| u.get_ref().clone());
        if let Some(u) = &s.username {
            if u.get_ref().is_empty() || !u.get_ref().chars().all(|c| c.is_ascii_graphic()) {
                self.error(sp(u), "shared.username must be a plain, non-empty ACL user name");
            }
            if let Some(Located { username: Some(_), .. }) = located {
                self.error(
                    sp(u),
                    "shared.username is set and shared.url names a user too: keep one",
                );
            }
        }
        (username, password)
    }

    /// One of: `url` (`redis://`, `rediss://`, or `redis+sentinel://`), `sentinels` with
    /// `master_name`, `cluster = true` with `url` as its seed, or `nodes`.
    fn redis_location(&mut self, s: &raw::Shared) -> Option<Located> {
        let url = s.url.as_ref().and_then(|u| self.secret(u, "shared.url"));
        let cluster = s.cluster.as_ref().map(|c| *c.get_ref());
        let tls = s.tls.as_ref().is_some_and(|t| *t.get_ref());
        let ways = [
            url.is_some() || s.url.is_some(),
            s.sentinels.is_some(),
            s.nodes.is_some(),
        ];
        if ways.iter().filter(|w| **w).count() > 1 {
            self.error(
                None,
                "shared: give Redis one way: url, sentinels (with master_name) or nodes (a cluster), not several",
            );
            return None;
        }
        if let (Some(t), Some(_)) = (&s.tls, &s.url) {
            self.error(
                sp(t),
                "shared.tls is for sentinels or nodes; with shared.url the scheme decides (rediss:// for TLS)",
            );
        }
        if let (Some(m), None) = (&s.master_name, &s.sentinels) {
            self.error(
                sp(m),
                "shared.master_name needs shared.sentinels (or give a redis+sentinel://HOST:PORT/MASTER url)",
            );
        }
        if let Some(list) = &s.sentinels {
            return self.sentinel_location(s, list, tls);
        }
        if let Some(list) = &s.nodes {
            if let Some(c) = s.cluster.as_ref().filter(|c| !*c.get_ref()) {
                self.error(
                    sp(c),
                    "shared.nodes are the seeds of a Redis Cluster: cluster = false contradicts them",
                );
                return None;
            }
            let nodes = self.redis_nodes(list, 6379, "shared.nodes")?;
            return Some(Located {
                topology: RedisTopology::Cluster { nodes, tls },
                username: None,
                password: None,
            });
        }
        self.url_location(s, url, cluster)
    }

    /// `shared.url`: one server, a `redis+sentinel://` URL, or a cluster's seed.
    fn url_location(&mut self, s: &raw::Shared, url: Option<Secret>, cluster: Option<bool>) -> Option<Located> {
        let url_span = s.url.as_ref().map(|u| u.span());
        let Some(url) = url else {
            if s.url.is_none() {
                self.error(
                    None,
                    "shared.backend = \"redis\" needs shared.url (redis://HOST:PORT/DB, rediss://... or redis+sentinel://HOST:PORT,HOST:PORT/MASTER), shared.sentinels with shared.master_name, or shared.nodes",
                );
            }
            return None;
        };
        let text = std::str::from_utf8(url.expose()).unwrap_or_default();
        if let Some(parsed) = super::super::redis::SentinelUrl::parse(text) {
            return match parsed {
                Err(why) => {
                    self.error(url_span, format!("shared.url: {why} (expected redis+sentinel://HOST[:PORT],HOST[:PORT]/MASTER_NAME[/DB], user and password allowed before the first host)"));
                    None
                }
                Ok(_) if cluster == Some(true) => {
                    self.error(url_span, "shared: a Sentinel set and a Cluster cannot be combined (redis+sentinel:// and cluster = true)");
                    None
                }
                Ok(u) => Some(Located {
                    topology: RedisTopology::Sentinel {
                        sentinels: u.sentinels,
                        master_name: u.master_name,
                        tls: u.tls,
                        db: u.db,
                    },
                    username: u.username,
                    password: u.password,
                }),
            };
        }
        let parsed = url::Url::parse(text)
            .ok()
            .filter(|p| matches!(p.scheme(), "redis" | "rediss") && p.host_str().is_some_and(|h| !h.is_empty()));
        let Some(parsed) = parsed else {
            self.error(
                url_span,
                "shared.url must be redis://HOST[:PORT][/DB] (user and password allowed before the host), rediss://... (TLS) or redis+sentinel://HOST:PORT,HOST:PORT/MASTER_NAME",
            );
            return None;
        };
        let decode = |t: &str| super::super::redis::percent_decode(t).ok();
        let username = decode(parsed.username())
            .and_then(|u| String::from_utf8(u).ok())
            .filter(|u| !u.is_empty());
        let password = parsed.password().and_then(decode).map(Secret::new);
        if parsed.password().is_some() && password.is_none() {
            self.error(
                url_span.clone(),
                "shared.url: the password is not valid percent-encoding",
            );
            return None;
        }
        let db = parsed.path().trim_start_matches('/');
        if !db.is_empty() && db.parse::<u16>().is_err() {
            self.error(
                url_span.clone(),
                "shared.url: the database must be a number from 0 to 65535",
            );
            return None;
        }
        if cluster != Some(true) {
            // The URL keeps its user info (the crate reads it); noted to refuse a second one.
            return Some(Located {
                topology: RedisTopology::Single(url),
                username,
                password,
            });
        }
        if !matches!(parsed.path(), "" | "/" | "/0") {
            self.error(url_span, "shared.url: a Redis Cluster has only database 0");
            return None;
        }
        let host = parsed
            .host_str()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let node = RedisNode {
            host: host.to_string(),
            port: parsed.port().unwrap_or(6379),
        };
        let tls = parsed.scheme() == "rediss";
        Some(Located {
            topology: RedisTopology::Cluster { nodes: vec![node], tls },
            username,
            password,
        })
    }

    /// `shared.sentinels` with `shared.master_name`.
    fn sentinel_location(&mut self, s: &raw::Shared, list: &Spanned<Vec<Str>>, tls: bool) -> Option<Located> {
        if s.cluster.as_ref().is_some_and(|c| *c.get_ref()) {
            self.error(
                sp(list),
                "shared: a Sentinel set and a Cluster cannot be combined (sentinels and cluster = true)",
            );
            return None;
        }
        let sentinels = self.redis_nodes(list, 26379, "shared.sentinels")?;
        let Some(m) = &s.master_name else {
            self.error(
                sp(list),
                "shared.sentinels needs shared.master_name (the name the sentinels monitor)",
            );
            return None;
        };
        if m.get_ref().is_empty() || !m.get_ref().chars().all(|c| c.is_ascii_graphic()) {
            self.error(sp(m), "shared.master_name must be plain, non-empty text");
            return None;
        }
        let topology = RedisTopology::Sentinel {
            sentinels,
            master_name: m.get_ref().clone(),
            tls,
            db: 0,
        };
        Some(Located {
            topology,
            username: None,
            password: None,
        })
    }

    /// A non-empty list of distinct `HOST:PORT`, at most 32.
    fn redis_nodes(&mut self, list: &Spanned<Vec<Str>>, default_port: u16, key: &str) -> Option<Vec<RedisNode>> {
        if list.get_ref().is_empty() || list.get_ref().len() > 32 {
            self.error(sp(list), format!("{key} must list 1 to 32 HOST:PORT entries"));
            return None;
        }
        let mut nodes: Vec<RedisNode> = Vec::new();
        for n in list.get_ref() {
            match RedisNode::parse(n.get_ref(), default_port) {
                Some(node) if nodes.contains(&node) => {
                    self.error(sp(n), format!("{key}: `{}` is listed twice", n.get_ref()));
                }
                Some(node) => nodes.push(node),
                None => self.error(sp(n), format!("{key}: `{}` is not HOST:PORT", n.get_ref())),
            }
        }
        (nodes.len() == list.get_ref().len()).then_some(nodes)
    }

    pub(super) fn assertion(&mut self, a: Option<&raw::Assertion>) -> Assertion {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "secret = \"a-shared-secret-of-at-least-32-bytes-0123\"\n";

    fn shared(keys: &str) -> Result<SharedBackend, String> {
        let text = format!("[listen]\naddress = \"127.0.0.1:0\"\n[shared]\nbackend = \"redis\"\n{SECRET}{keys}");
        match crate::config::parse(Path::new("t.toml"), &text) {
            Ok(loaded) => Ok(loaded.config.shared),
            Err(e) => Err(e.to_string()),
        }
    }

    fn topology(keys: &str) -> RedisTopology {
        match shared(keys) {
            Ok(SharedBackend::Redis(r)) => r.topology,
            other => panic!("{keys}: {other:?}"),
        }
    }

    /// Each way of naming Redis gives its topology, with the credentials where they were
    /// given.
    #[test]
    fn one_server_a_sentinel_set_or_a_cluster() {
        assert!(matches!(
            topology("url = \"redis://h:1/0\"\n"),
            RedisTopology::Single(_)
        ));
        let t = topology("sentinels = [\"a:1\", \"b\"]\nmaster_name = \"m\"\ntls = true\n");
        let RedisTopology::Sentinel {
            sentinels,
            master_name,
            tls,
            db,
        } = t
        else {
            panic!()
        };
        assert_eq!(
            (sentinels.len(), sentinels[1].port, master_name.as_str(), tls, db),
            (2, 26379, "m", true, 0)
        );
        let Ok(SharedBackend::Redis(r)) = shared("url = \"rediss+sentinel://u:p%40w@a:1,b:2/m/2\"\n") else {
            panic!()
        };
        assert!(matches!(r.topology, RedisTopology::Sentinel { tls: true, db: 2, .. }));
        assert_eq!(
            (r.username.as_deref(), r.password.unwrap().expose()),
            (Some("u"), &b"p@w"[..])
        );
        assert_eq!(r.wait_replicas, 1, "a Sentinel set waits for one replica by default");
        let Ok(SharedBackend::Redis(r)) = shared("url = \"rediss://u:pw@seed:7000\"\ncluster = true\n") else {
            panic!()
        };
        assert!(matches!(&r.topology, RedisTopology::Cluster { nodes, tls: true } if nodes[0].port == 7000));
        assert_eq!((r.username.as_deref(), r.wait_replicas), (Some("u"), 0));
        let t = topology("nodes = [\"a:1\", \"[::1]:2\"]\nusername = \"pc\"\npassword = \"x\"\n");
        assert!(matches!(t, RedisTopology::Cluster { nodes, tls: false } if nodes[1].host == "::1"));
    }

    /// Contradictions and malformed lists are refused, each with what to do.
    #[test]
    fn contradictions_and_malformed_lists_are_refused_clearly() {
        for (keys, says) in [
            (
                "url = \"redis://h\"\nsentinels = [\"a:1\"]\nmaster_name = \"m\"\n",
                "one way",
            ),
            (
                "nodes = [\"a:1\"]\nsentinels = [\"a:2\"]\nmaster_name = \"m\"\n",
                "one way",
            ),
            (
                "sentinels = [\"a:1\"]\nmaster_name = \"m\"\ncluster = true\n",
                "cannot be combined",
            ),
            (
                "url = \"redis+sentinel://a:1/m\"\ncluster = true\n",
                "cannot be combined",
            ),
            ("sentinels = []\nmaster_name = \"m\"\n", "1 to 32"),
            ("nodes = []\n", "1 to 32"),
            ("sentinels = [\"a:1\"]\n", "needs shared.master_name"),
            ("master_name = \"m\"\nurl = \"redis://h\"\n", "needs shared.sentinels"),
            ("sentinels = [\"a:1\", \"a:1\"]\nmaster_name = \"m\"\n", "listed twice"),
            ("nodes = [\"a:0\"]\n", "not HOST:PORT"),
            ("nodes = [\"a b:1\"]\n", "not HOST:PORT"),
            ("nodes = [\"a:1\"]\ncluster = false\n", "contradicts"),
            ("url = \"redis://h\"\ntls = true\n", "the scheme decides"),
            ("url = \"redis+sentinel://a:1\"\n", "MASTER_NAME"),
            ("url = \"redis://h/1\"\ncluster = true\n", "only database 0"),
            (
                "url = \"redis://h/99999999999999999999\"\n",
                "database must be a number",
            ),
            ("url = \"redis://h/x\"\n", "database must be a number"),
            ("url = \"redis://u:Top%ZZ@h/0\"\n", "not valid percent-encoding"),
            ("url = \"http://h\"\n", "must be redis://"),
            ("url = \"redis://u:p@h\"\npassword = \"x\"\n", "keep one"),
            ("url = \"redis://u:p@h\"\nusername = \"v\"\n", "keep one"),
            (
                "url = \"redis://h\"\nsentinel_password = \"x\"\n",
                "only for a Sentinel set",
            ),
            ("nodes = [\"a:1\"]\nkey_prefix = \"{x}\"\n", "may not contain"),
            ("url = \"redis://h\"\nwait_replicas = 17\n", "between 0 and 16"),
            ("url = \"redis://h\"\ntls_ca_file = \"/x\"\n", "needs TLS"),
            (
                "url = \"rediss://h\"\ntls_ca_file = \"/nonexistent/ca.pem\"\n",
                "tls_ca_file",
            ),
            ("", "needs shared.url"),
        ] {
            let Err(e) = shared(keys) else {
                panic!("{keys:?} accepted")
            };
            assert!(e.contains(says), "{keys:?}: {e}");
        }
    }
}
