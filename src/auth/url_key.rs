//! `url_key`: the user's own key in `?apiKey=KEY`. The parameter is found however its
//! name is percent-encoded, and removed from the URL before anything is forwarded.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Principal, Reason, UserEntry};
use crate::config::{AuthMethod, SecretHash, User};
use crate::shared::{CredentialKind, Withdrawals};

/// The query parameter that carries a URL key.
pub const PARAM: &str = "apiKey";
/// Lockout subject for URL keys: a wrong key names nobody, so failures count per address.
pub const SUBJECT: &str = "\u{0}url_key";

pub struct UrlKeys {
    by_hash: HashMap<[u8; 32], String>,
    users: Arc<HashMap<String, Arc<UserEntry>>>,
    withdrawals: Arc<dyn Withdrawals>,
}

impl UrlKeys {
    pub fn new(
        users_cfg: &[User],
        users: Arc<HashMap<String, Arc<UserEntry>>>,
        withdrawals: Arc<dyn Withdrawals>,
    ) -> Self {
        let by_hash = users_cfg
            .iter()
            .filter_map(|u| u.url_key_hash.as_ref().map(|h| (*h.bytes(), u.name.clone())))
            .collect();
        UrlKeys {
            by_hash,
            users,
            withdrawals,
        }
    }

    pub fn verify(&self, key: &str) -> Result<Principal, Reason> {
        // Keys are random and at least 128 bits: looking up their SHA-256 reveals nothing
        // useful through timing.
        let digest = SecretHash::of(key.as_bytes());
        let name = self.by_hash.get(digest.bytes()).ok_or(Reason::BadUrlKey)?;
        if self.withdrawals.withdrawn(CredentialKind::UrlKey, name, digest.bytes()) != Ok(false) {
            return Err(Reason::CredentialWithdrawn);
        }
        let user = self.users.get(name).ok_or(Reason::UnknownUser)?;
        user.standing(false)?;
        Ok(user.principal(AuthMethod::UrlKey))
    }
}

/// What the query holds under [`PARAM`].
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    None,
    One(String),
    /// Several different values: refused rather than guessed.
    Ambiguous,
}

fn pair_name_is_param(pair: &str) -> Option<String> {
    let (name, value) = url::form_urlencoded::parse(pair.as_bytes()).next()?;
    (name == PARAM).then(|| value.into_owned())
}

/// What separates the pairs of a query: `&`, and `;`, which some servers split on too
/// (older Rack, Python's `cgi`), so a key behind a `;` is found and removed as well.
const SEPARATORS: [char; 2] = ['&', ';'];

pub fn find(query: Option<&str>) -> Found {
    let Some(q) = query else { return Found::None };
    let mut found: Option<String> = None;
    for pair in q.split(SEPARATORS) {
        if let Some(v) = pair_name_is_param(pair) {
            match &found {
                Some(prev) if *prev != v => return Found::Ambiguous,
                _ => found = Some(v),
            }
        }
    }
    match found {
        Some(v) if !v.is_empty() => Found::One(v),
        Some(_) => Found::Ambiguous,
        None => Found::None,
    }
}

/// The query without any [`PARAM`] pair (pairs split on `&` and `;`), other pairs and
/// the separators between them byte for byte; `None` if nothing is left.
pub fn strip(query: &str) -> Option<String> {
    let mut out = String::with_capacity(query.len());
    let mut start = 0;
    let mut before = "";
    let ends = query
        .match_indices(SEPARATORS)
        .chain(std::iter::once((query.len(), "")));
    for (end, sep) in ends {
        let pair = &query[start..end];
        if !pair.is_empty() && pair_name_is_param(pair).is_none() {
            if !out.is_empty() {
                out.push_str(before);
            }
            out.push_str(pair);
        }
        before = sep;
        start = end + sep.len();
    }
    (!out.is_empty()).then_some(out)
}

/// Whether the query may hold the parameter at all (cheap pre-check for the hot path).
pub fn may_contain(query: &str) -> bool {
    query.contains('%') || query.contains(PARAM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_key_however_encoded() {
        assert_eq!(find(Some("a=1&apiKey=k1")), Found::One("k1".into()));
        assert_eq!(find(Some("api%4Bey=k1")), Found::One("k1".into()));
        assert_eq!(find(Some("apiKey=k1&apiKey=k1")), Found::One("k1".into()));
        assert_eq!(find(Some("apiKey=k1&apiKey=k2")), Found::Ambiguous);
        assert_eq!(find(Some("apiKey=")), Found::Ambiguous);
        assert_eq!(find(Some("apikey=k1")), Found::None);
        // `;` separates pairs too: a key behind one is found, two different are ambiguous.
        assert_eq!(find(Some("x=1;apiKey=k1")), Found::One("k1".into()));
        assert_eq!(find(Some("apiKey=k1&x=1;apiKey=k2")), Found::Ambiguous);
        assert_eq!(find(None), Found::None);
    }

    #[test]
    fn strips_every_occurrence_and_keeps_the_rest() {
        assert_eq!(strip("a=1&apiKey=k&b=%20x&api%4bey=k"), Some("a=1&b=%20x".into()));
        assert_eq!(strip("apiKey=k"), None);
        assert_eq!(strip("a=1"), Some("a=1".into()));
        assert_eq!(strip("apiKey=k&x=1;apiKey=k"), Some("x=1".into()));
        assert_eq!(strip("a=1;apiKey=k;b=2&c=3"), Some("a=1;b=2&c=3".into()));
        assert_eq!(strip("a=1&&apiKey=k;;b"), Some("a=1;b".into()));
    }
}
