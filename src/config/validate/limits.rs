//! `[limits]`, `[auth]`, `[cache]` and `[lockout]`: sections of bounded numbers and
//! durations. Each is one table of its keys ([`Bound`]), walked by [`Validator::bounded`];
//! the messages are those of [`Validator::count`] and [`Validator::duration_of`].

use super::*;

/// One key of a section of numbers and durations.
pub(super) struct Bound<R, C> {
    /// The key as messages name it (`limits.max_headers`).
    key: &'static str,
    kind: Kind<R, C>,
}

/// What a key holds, where it is in the raw section and where its value goes.
enum Kind<R, C> {
    /// A duration (`"250ms"`, `"5m"`), at most 10 years.
    Duration {
        get: fn(&R) -> Option<&Str>,
        set: fn(&mut C, Duration),
    },
    /// A whole number between `min` and `max`, both included.
    Count {
        min: i64,
        max: i64,
        get: fn(&R) -> Option<&Spanned<i64>>,
        set: fn(&mut C, u64),
    },
}

const fn duration<R, C>(key: &'static str, get: fn(&R) -> Option<&Str>, set: fn(&mut C, Duration)) -> Bound<R, C> {
    Bound {
        key,
        kind: Kind::Duration { get, set },
    }
}

const fn count<R, C>(
    key: &'static str,
    (min, max): (i64, i64),
    get: fn(&R) -> Option<&Spanned<i64>>,
    set: fn(&mut C, u64),
) -> Bound<R, C> {
    Bound {
        key,
        kind: Kind::Count { min, max, get, set },
    }
}

// The `as` conversions below are lossless: each value is within its row's bounds.

/// `[limits]`, in the order its errors are reported.
const LIMITS: &[Bound<raw::Limits, Limits>] = &[
    duration(
        "limits.header_read_timeout",
        |l| l.header_read_timeout.as_ref(),
        |c, d| c.header_read_timeout = d,
    ),
    duration(
        "limits.request_timeout",
        |l| l.request_timeout.as_ref(),
        |c, d| c.request_timeout = d,
    ),
    duration(
        "limits.idle_timeout",
        |l| l.idle_timeout.as_ref(),
        |c, d| c.idle_timeout = d,
    ),
    duration(
        "limits.shutdown_timeout",
        |l| l.shutdown_timeout.as_ref(),
        |c, d| c.shutdown_timeout = d,
    ),
    duration(
        "limits.drain_delay",
        |l| l.drain_delay.as_ref(),
        |c, d| c.drain_delay = d,
    ),
    count(
        "limits.max_header_bytes",
        (1024, 16 * 1024 * 1024),
        |l| l.max_header_bytes.as_ref(),
        |c, n| c.max_header_bytes = n as usize,
    ),
    count(
        "limits.max_headers",
        (8, 1000),
        |l| l.max_headers.as_ref(),
        |c, n| c.max_headers = n as usize,
    ),
    count(
        "limits.max_body_bytes",
        (0, i64::MAX),
        |l| l.max_body_bytes.as_ref(),
        |c, n| c.max_body_bytes = n,
    ),
    count(
        "limits.max_connections",
        (1, 10_000_000),
        |l| l.max_connections.as_ref(),
        |c, n| c.max_connections = n as usize,
    ),
    duration(
        "limits.body_read_timeout",
        |l| l.body_read_timeout.as_ref(),
        |c, d| c.body_read_timeout = d,
    ),
    count(
        "limits.max_spool_bytes",
        (0, i64::MAX),
        |l| l.max_spool_bytes.as_ref(),
        |c, n| c.max_spool_bytes = n,
    ),
    count(
        "limits.h2_max_concurrent_streams",
        (1, 10_000),
        |l| l.h2_max_concurrent_streams.as_ref(),
        |c, n| c.h2_max_concurrent_streams = n as u32,
    ),
    count(
        "limits.h2_max_pending_resets",
        (1, 100_000),
        |l| l.h2_max_pending_resets.as_ref(),
        |c, n| c.h2_max_pending_resets = n as usize,
    ),
    duration(
        "limits.upgrade_idle_timeout",
        |l| l.upgrade_idle_timeout.as_ref(),
        |c, d| c.upgrade_idle_timeout = d,
    ),
    duration(
        "limits.upgrade_max_lifetime",
        |l| l.upgrade_max_lifetime.as_ref(),
        |c, d| c.upgrade_max_lifetime = d,
    ),
];

/// `[auth]`: the argon2id verification pool.
const AUTH: &[Bound<raw::AuthSection, AuthSettings>] = &[
    count(
        "auth.hash_workers",
        (1, 256),
        |a| a.hash_workers.as_ref(),
        |c, n| c.hash_workers = n as usize,
    ),
    count(
        "auth.hash_queue",
        (1, 1_000_000),
        |a| a.hash_queue.as_ref(),
        |c, n| c.hash_queue = n as usize,
    ),
    duration(
        "auth.hash_queue_timeout",
        |a| a.hash_queue_timeout.as_ref(),
        |c, d| c.hash_queue_timeout = d,
    ),
];

/// `[cache]`: credential verdicts.
const CACHE: &[Bound<raw::Cache, Cache>] = &[
    duration("cache.ttl", |c| c.ttl.as_ref(), |c, d| c.ttl = d),
    duration(
        "cache.negative_ttl",
        |c| c.negative_ttl.as_ref(),
        |c, d| c.negative_ttl = d,
    ),
    count(
        "cache.max_entries",
        (1, i64::MAX),
        |c| c.max_entries.as_ref(),
        |c, n| c.max_entries = n,
    ),
];

/// `[lockout]`: failed attempts per user and address.
const LOCKOUT: &[Bound<raw::Lockout, Lockout>] = &[
    count(
        "lockout.max_failures",
        (1, 1_000_000),
        |l| l.max_failures.as_ref(),
        |c, n| c.max_failures = n as u32,
    ),
    duration("lockout.window", |l| l.window.as_ref(), |c, d| c.window = d),
    duration("lockout.duration", |l| l.duration.as_ref(), |c, d| c.duration = d),
    count(
        "lockout.max_entries_per_address",
        (1, i64::MAX),
        |l| l.max_entries_per_address.as_ref(),
        |c, n| c.max_entries_per_address = n,
    ),
];

impl Validator<'_> {
    /// Every key of `table` that `raw` sets, checked and written into `out`, which holds
    /// the defaults; a value out of bounds is an error and leaves the default.
    fn bounded<R, C>(&mut self, table: &[Bound<R, C>], raw: &R, out: &mut C) {
        for b in table {
            match &b.kind {
                Kind::Duration { get, set } => {
                    if let Some(d) = get(raw).and_then(|s| self.duration_of(s, b.key)) {
                        set(out, d);
                    }
                }
                Kind::Count { min, max, get, set } => {
                    if let Some(n) = get(raw).and_then(|n| self.count(n, *min, *max, b.key)) {
                        set(out, n);
                    }
                }
            }
        }
    }

    fn section<R: Default, C>(&mut self, table: &[Bound<R, C>], raw: Option<&R>, mut out: C) -> C {
        match raw {
            Some(raw) => self.bounded(table, raw, &mut out),
            None => self.bounded(table, &R::default(), &mut out),
        }
        out
    }

    pub(super) fn limits(&mut self, l: Option<&raw::Limits>) -> Limits {
        self.section(LIMITS, l, Limits::default())
    }

    pub(super) fn auth_settings(&mut self, a: Option<&raw::AuthSection>) -> AuthSettings {
        self.section(AUTH, a, AuthSettings::default())
    }

    pub(super) fn cache(&mut self, c: Option<&raw::Cache>) -> Cache {
        let default = Cache {
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            max_entries: 100_000,
        };
        self.section(CACHE, c, default)
    }

    pub(super) fn lockout(&mut self, l: Option<&raw::Lockout>) -> Lockout {
        let default = Lockout {
            max_failures: 10,
            window: Duration::from_secs(300),
            duration: Duration::from_secs(900),
            max_entries_per_address: 1000,
        };
        self.section(LOCKOUT, l, default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key of each table is a key of its raw section, once: the table cannot
    /// name a key serde does not read, nor check one twice.
    #[test]
    fn each_table_names_its_sections_keys_once() {
        fn keys<R, C>(section: &str, table: &[Bound<R, C>]) -> Vec<String> {
            let keys: Vec<String> = table
                .iter()
                .map(|b| b.key.strip_prefix(section).expect("key of its section").to_string())
                .collect();
            let mut unique = keys.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), keys.len(), "{section}: a key twice");
            keys
        }
        for (section, names, expected) in [
            ("limits.", keys("limits.", LIMITS), 15),
            ("auth.", keys("auth.", AUTH), 3),
            ("cache.", keys("cache.", CACHE), 3),
            ("lockout.", keys("lockout.", LOCKOUT), 4),
        ] {
            assert_eq!(names.len(), expected, "{section}");
            // Each key is read by serde: a config setting it to a wrong type is refused.
            for n in names {
                let text = format!(
                    "[listen]\naddress = \"127.0.0.1:0\"\n[{}]\n{n} = true\n",
                    section.trim_end_matches('.')
                );
                let Err(errors) = crate::config::parse(Path::new("t.toml"), &text) else {
                    panic!("{section}{n} = true is accepted");
                };
                assert!(
                    !errors.0.iter().any(|e| e.message.contains("unknown key")),
                    "{section}{n}: {errors}"
                );
            }
        }
    }
}
