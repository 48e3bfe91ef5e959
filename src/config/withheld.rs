//! What `portcullis export` never prints, marked by type in the raw config: a field of
//! type [`Withheld`] (every secret, hash and key id), and every `raw::Secret` however
//! it is reached. While [`record`] runs, deserialising notes where each withheld value is
//! (its span in the text) and counts secrets that no `Withheld` field holds: the export
//! removes the former and refuses to print at all when there is one of the latter. So a
//! new secret field is withheld by its type, or the export fails closed; it is never
//! printed by mistake.

use std::cell::RefCell;
use std::ops::{Deref, Range};

use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// A value of the raw config that export withholds. It reads as the `Spanned` it holds.
#[derive(Debug)]
pub struct Withheld<T>(Spanned<T>);

/// `shared.url`: a secret (its password) whose other parts say where Redis is. Export
/// prints it with its user info and query values removed, or, when it is not a URL with
/// a scheme, not at all.
#[derive(Debug)]
pub struct SecretUrl(Spanned<super::raw::Secret>);

/// What deserialising saw while [`record`] ran.
#[derive(Debug, Default)]
pub struct Seen {
    /// Spans of [`Withheld`] values.
    pub withheld: Vec<Range<usize>>,
    /// Spans of [`SecretUrl`] values.
    pub urls: Vec<Range<usize>>,
    /// Secrets deserialised outside any `Withheld` or `SecretUrl`: export refuses these.
    pub uncovered: usize,
    /// How deep inside `Withheld` or `SecretUrl` values deserialising is now.
    depth: usize,
}

thread_local! {
    static SEEN: RefCell<Option<Seen>> = const { RefCell::new(None) };
}

/// Runs `f` (which deserialises a raw config) and returns what it saw.
pub fn record<R>(f: impl FnOnce() -> R) -> (R, Seen) {
    /// Ends the recording even when `f` panics.
    struct Stop;
    impl Drop for Stop {
        fn drop(&mut self) {
            SEEN.with(|s| s.borrow_mut().take());
        }
    }
    SEEN.with(|s| *s.borrow_mut() = Some(Seen::default()));
    let stop = Stop;
    let out = f();
    let seen = SEEN.with(|s| s.borrow_mut().take()).unwrap_or_default();
    drop(stop);
    (out, seen)
}

fn with_seen(f: impl FnOnce(&mut Seen)) {
    SEEN.with(|s| {
        if let Some(seen) = s.borrow_mut().as_mut() {
            f(seen);
        }
    });
}

/// Deserialises a `Spanned<T>` as a covered value: secrets inside it are not counted
/// as uncovered, and `note` records its span.
fn covered<'de, T, D>(d: D, note: fn(&mut Seen, Range<usize>)) -> Result<Spanned<T>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    with_seen(|s| s.depth += 1);
    let out = Spanned::<T>::deserialize(d);
    with_seen(|s| s.depth -= 1);
    let out = out?;
    let span = out.span();
    with_seen(|s| note(s, span));
    Ok(out)
}

/// Called by `raw::Secret`'s deserialisation: a secret outside any covered value.
pub(super) fn note_secret() {
    with_seen(|s| {
        if s.depth == 0 {
            s.uncovered += 1;
        }
    });
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Withheld<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        covered(d, |s, span| s.withheld.push(span)).map(Withheld)
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        covered(d, |s, span| s.urls.push(span)).map(SecretUrl)
    }
}

impl<T> Deref for Withheld<T> {
    type Target = Spanned<T>;
    fn deref(&self) -> &Spanned<T> {
        &self.0
    }
}

impl Deref for SecretUrl {
    type Target = Spanned<super::raw::Secret>;
    fn deref(&self) -> &Spanned<super::raw::Secret> {
        &self.0
    }
}
