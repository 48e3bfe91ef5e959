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

/// A row of a table: `key: duration`, or `key: count(MIN, MAX) as TYPE` (the `as` is
/// lossless: the value is within the row's bounds).
macro_rules! row {
    ($section:literal, $key:ident: duration) => {
        duration(
            concat!($section, ".", stringify!($key)),
            |r| r.$key.as_ref(),
            |c, d| c.$key = d,
        )
    };
    ($section:literal, $key:ident: count($min:expr, $max:expr) as $t:ty) => {
        count(
            concat!($section, ".", stringify!($key)),
            ($min, $max),
            |r| r.$key.as_ref(),
            |c, n| c.$key = n as $t,
        )
    };
}

/// The table of a section: its keys in the order their errors are reported.
macro_rules! table {
    ($section:literal: $($key:ident: $kind:ident $(($min:expr, $max:expr) as $t:ty)?,)*) => {
        &[$(row!($section, $key: $kind $(($min, $max) as $t)?)),*]
    };
}

#[rustfmt::skip]
const LIMITS: &[Bound<raw::Limits, Limits>] = table!["limits":
    header_read_timeout: duration,
    request_timeout: duration,
    idle_timeout: duration,
    shutdown_timeout: duration,
    drain_delay: duration,
    max_header_bytes: count(1024, 16 * 1024 * 1024) as usize,
    max_headers: count(8, 1000) as usize,
    max_body_bytes: count(0, i64::MAX) as u64,
    max_connections: count(1, 10_000_000) as usize,
    body_read_timeout: duration,
    max_spool_bytes: count(0, i64::MAX) as u64,
    h2_max_concurrent_streams: count(1, 10_000) as u32,
    h2_max_pending_resets: count(1, 100_000) as usize,
    upgrade_idle_timeout: duration,
    upgrade_max_lifetime: duration,
];

/// `[auth]`: the argon2id verification pool.
#[rustfmt::skip]
const AUTH: &[Bound<raw::AuthSection, AuthSettings>] = table!["auth":
    hash_workers: count(1, 256) as usize,
    hash_queue: count(1, 1_000_000) as usize,
    hash_queue_timeout: duration,
];

/// `[cache]`: credential verdicts.
#[rustfmt::skip]
const CACHE: &[Bound<raw::Cache, Cache>] = table!["cache":
    ttl: duration,
    negative_ttl: duration,
    max_entries: count(1, i64::MAX) as u64,
];

/// `[lockout]`: failed attempts per user and address.
#[rustfmt::skip]
const LOCKOUT: &[Bound<raw::Lockout, Lockout>] = table!["lockout":
    max_failures: count(1, 1_000_000) as u32,
    window: duration,
    duration: duration,
    max_entries_per_address: count(1, i64::MAX) as u64,
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
