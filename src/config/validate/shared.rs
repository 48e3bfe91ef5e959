//! `[shared]` (the Redis backend) and `[assertion]`.

use super::*;
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
