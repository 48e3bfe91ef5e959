//! `[shared] backend = "redis"` once checked: where Redis is (one server, a Sentinel set
//! or a Cluster), how to authenticate, and what the store needs besides.

use std::time::Duration;

use super::Secret;

/// `[shared]` with `backend = "redis"`.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub topology: RedisTopology,
    /// ACL user (`shared.username`, or the URL's user info).
    pub username: Option<String>,
    /// The data nodes' password (`shared.password`, or the URL's user info).
    pub password: Option<Secret>,
    /// The sentinels' own password (`requirepass` of the sentinels), when they have one.
    pub sentinel_password: Option<Secret>,
    pub key_prefix: String,
    /// Keys Redis key names (keyed hashes) and encrypts what is secret in values.
    pub secret: Secret,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    /// Multiplexed connections, used in turn.
    pub pool_size: usize,
    /// Replicas that must confirm a write that has to survive a failover (`WAIT`).
    pub wait_replicas: u32,
    /// The CA bundle (PEM) Redis's TLS certificates chain to, instead of the public roots.
    pub tls_ca: Option<Vec<u8>>,
}

/// Where Redis is.
#[derive(Debug, Clone)]
pub enum RedisTopology {
    /// One server: `redis://` or `rediss://` (TLS), as the URL says; the URL may carry
    /// the password, hence a secret.
    Single(Secret),
    /// The master that the sentinels name for `master_name`, found again after a failover.
    Sentinel {
        sentinels: Vec<RedisNode>,
        master_name: String,
        /// TLS to the sentinels and to the master.
        tls: bool,
        db: i64,
    },
    /// A Redis Cluster, reached through these seed nodes.
    Cluster { nodes: Vec<RedisNode>, tls: bool },
}

/// `HOST:PORT` of a sentinel or a cluster node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisNode {
    pub host: String,
    pub port: u16,
}

impl RedisNode {
    /// `HOST:PORT` or `[V6]:PORT`; `default_port` when the port is left out.
    pub fn parse(text: &str, default_port: u16) -> Option<RedisNode> {
        let (host, port) = match text.strip_prefix('[') {
            Some(rest) => {
                let (host, after) = rest.split_once(']')?;
                let port = match after {
                    "" => default_port,
                    p => p.strip_prefix(':')?.parse().ok()?,
                };
                (host, port)
            }
            None => match text.rsplit_once(':') {
                Some((host, port)) => (host, port.parse().ok()?),
                None => (text, default_port),
            },
        };
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':');
        (port != 0 && !host.is_empty() && host.chars().all(plain)).then(|| RedisNode {
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for RedisNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

fn same_secret(a: Option<&Secret>, b: Option<&Secret>) -> bool {
    a.map(Secret::expose) == b.map(Secret::expose)
}

impl RedisSettings {
    /// Whether `other` names the same store the same way (a reload may not change it).
    pub fn same_store(&self, other: &RedisSettings) -> bool {
        let topology = match (&self.topology, &other.topology) {
            (RedisTopology::Single(a), RedisTopology::Single(b)) => a.expose() == b.expose(),
            (
                RedisTopology::Sentinel {
                    sentinels,
                    master_name,
                    tls,
                    db,
                },
                RedisTopology::Sentinel {
                    sentinels: s2,
                    master_name: m2,
                    tls: t2,
                    db: d2,
                },
            ) => sentinels == s2 && master_name == m2 && tls == t2 && db == d2,
            (RedisTopology::Cluster { nodes, tls }, RedisTopology::Cluster { nodes: n2, tls: t2 }) => {
                nodes == n2 && tls == t2
            }
            _ => false,
        };
        topology
            && self.username == other.username
            && same_secret(self.password.as_ref(), other.password.as_ref())
            && same_secret(self.sentinel_password.as_ref(), other.sentinel_password.as_ref())
            && self.secret.expose() == other.secret.expose()
            && self.key_prefix == other.key_prefix
            && self.tls_ca == other.tls_ca
    }

    /// Whether connections use TLS.
    pub fn tls(&self) -> bool {
        match &self.topology {
            RedisTopology::Single(url) => url.expose().starts_with(b"rediss://"),
            RedisTopology::Sentinel { tls, .. } | RedisTopology::Cluster { tls, .. } => *tls,
        }
    }
}

/// A `redis+sentinel://` (or `rediss+sentinel://`, TLS) URL taken apart:
/// `[USER[:PASSWORD]@]HOST[:PORT][,HOST[:PORT]...]/MASTER_NAME[/DB]`, ports 26379 by
/// default. The user info is the master's (the data nodes'), percent-decoded.
#[derive(Debug)]
pub(super) struct SentinelUrl {
    pub tls: bool,
    pub sentinels: Vec<RedisNode>,
    pub master_name: String,
    pub db: i64,
    pub username: Option<String>,
    pub password: Option<Secret>,
}

impl SentinelUrl {
    /// `None`: not a sentinel URL; `Some(Err(why))`: one, but malformed.
    pub(super) fn parse(text: &str) -> Option<Result<SentinelUrl, &'static str>> {
        let (tls, rest) = if let Some(r) = text.strip_prefix("redis+sentinel://") {
            (false, r)
        } else {
            (true, text.strip_prefix("rediss+sentinel://")?)
        };
        Some(Self::parse_rest(tls, rest))
    }

    fn parse_rest(tls: bool, rest: &str) -> Result<SentinelUrl, &'static str> {
        let (authority, path) = rest.split_once('/').ok_or("no /MASTER_NAME after the sentinels")?;
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let sentinels = hosts
            .split(',')
            .map(|h| RedisNode::parse(h, 26379))
            .collect::<Option<Vec<_>>>()
            .ok_or("a sentinel is not HOST[:PORT]")?;
        let (master_name, db) = match path.split_once('/') {
            Some((m, db)) => (
                m,
                db.parse::<i64>()
                    .map_err(|_| "the DB after the master name is not a number")?,
            ),
            None => (path, 0),
        };
        if master_name.is_empty() || !master_name.chars().all(|c| c.is_ascii_graphic()) || master_name.contains('?') {
            return Err("the master name is empty or not plain text");
        }
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => {
                let (user, password) = match u.split_once(':') {
                    Some((user, password)) => (user, Some(Secret::new(percent_decode(password)?))),
                    None => (u, None),
                };
                let user = String::from_utf8(percent_decode(user)?).map_err(|_| "the user is not UTF-8")?;
                ((!user.is_empty()).then_some(user), password)
            }
        };
        Ok(SentinelUrl {
            tls,
            sentinels,
            master_name: master_name.to_string(),
            db,
            username,
            password,
        })
    }
}

/// `%XX` decoded, as in a URL's user info.
pub(super) fn percent_decode(text: &str) -> Result<Vec<u8>, &'static str> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or("a bad %-escape in the user info")?;
            let hex = std::str::from_utf8(hex).map_err(|_| "a bad %-escape in the user info")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| "a bad %-escape in the user info")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_name_their_sentinels_master_and_credentials() {
        let u = SentinelUrl::parse("redis+sentinel://u%40x:p%3Aw@a:1,[::1]:2,b/mymaster/3")
            .unwrap()
            .unwrap();
        assert!(!u.tls);
        assert_eq!(
            u.sentinels,
            vec![
                RedisNode::parse("a:1", 0).unwrap(),
                RedisNode::parse("[::1]:2", 0).unwrap(),
                RedisNode::parse("b:26379", 0).unwrap()
            ]
        );
        assert_eq!((u.master_name.as_str(), u.db), ("mymaster", 3));
        assert_eq!(u.username.as_deref(), Some("u@x"));
        assert_eq!(u.password.unwrap().expose(), b"p:w");
        assert!(SentinelUrl::parse("rediss+sentinel://h/m").unwrap().unwrap().tls);
        assert!(SentinelUrl::parse("redis://h/0").is_none());
        for bad in [
            "redis+sentinel://h",
            "redis+sentinel://h/",
            "redis+sentinel://h:0/m",
            "redis+sentinel://h:x/m",
            "redis+sentinel://,h/m",
            "redis+sentinel://h/m/x",
            "redis+sentinel://h/m?x=1",
        ] {
            assert!(SentinelUrl::parse(bad).unwrap().is_err(), "{bad}");
        }
    }
}
