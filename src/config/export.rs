//! `portcullis export`: the config as serde reads it, with everything its types withhold
//! removed. What is printed is decided by the raw config's types ([`super::withheld`]),
//! not by key names: every value of a [`Withheld`](super::withheld::Withheld) field is
//! removed, `shared.url` keeps only what says where Redis is, each endpoint's `auth`
//! becomes `type = "none"`, keys serde does not read are left out, and every URL loses
//! its user info and query values. A part of the file that does not read as the config's
//! types (a missing required key, a wrong type) is left out whole and named in a comment:
//! nothing is printed that serde did not type. A secret outside a withheld field refuses
//! the whole export.

use std::collections::HashSet;
use std::ops::Range;

use super::raw;
use super::redact::scrub_url;
use super::validate::locate::{dotted, segments, Segment};
use super::withheld;

/// Why nothing was exported. The messages never quote the file.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("not valid TOML (run `portcullis check` for the position)")]
    NotToml,
    #[error("a secret is in a field not marked as withheld (a bug: please report it); nothing exported")]
    Uncovered,
    #[error("a withheld value could not be located in the document; nothing exported")]
    Unlocated,
    #[error("cannot print the export: {0}")]
    Print(#[from] toml::ser::Error),
}

/// Why one part was not exported.
enum PartError {
    /// It does not read as the config's types: left out, named in a comment.
    Invalid,
    /// Fail closed: nothing at all is exported.
    Refused(ExportError),
}

impl From<ExportError> for PartError {
    fn from(e: ExportError) -> Self {
        PartError::Refused(e)
    }
}

/// The export of a config's text: a comment line per part left out, then the document.
pub fn export(text: &str) -> Result<String, ExportError> {
    let doc: toml::Table = text.parse().map_err(|_| ExportError::NotToml)?;
    let (table, left_out) = match part(text) {
        Ok(part) => part,
        Err(PartError::Refused(e)) => return Err(e),
        Err(PartError::Invalid) => by_parts(doc)?,
    };
    let mut out = String::new();
    for (name, why) in left_out {
        out.push_str(&format!("# `{name}` left out: {why} (see `portcullis check`)\n"));
    }
    out.push_str(&toml::to_string_pretty(&table)?);
    Ok(out)
}

/// Each top-level key on its own, and each entry of an array on its own, so that one
/// part that does not read leaves out only itself.
fn by_parts(doc: toml::Table) -> Result<Exported, ExportError> {
    let mut table = toml::Table::new();
    let mut left_out = Vec::new();
    for (key, value) in doc {
        match value {
            toml::Value::Array(items) => {
                let mut kept = Vec::new();
                for (i, item) in items.into_iter().enumerate() {
                    let name = format!("{key}[{i}]");
                    match one(&key, toml::Value::Array(vec![item]), &name, &mut left_out)? {
                        Some(toml::Value::Array(mut v)) if v.len() == 1 => kept.extend(v.pop()),
                        _ => left_out.push((name, INVALID)),
                    }
                }
                table.insert(key, toml::Value::Array(kept));
            }
            value => match one(&key, value, &key, &mut left_out)? {
                Some(v) => {
                    table.insert(key, v);
                }
                None if left_out.iter().any(|(n, _)| *n == key) => {}
                None => left_out.push((key, INVALID)),
            },
        }
    }
    Ok((table, left_out))
}

/// `key = value` alone, named `name` in what is left out; `Ok(None)`: it does not read
/// as the config.
fn one(
    key: &str,
    value: toml::Value,
    name: &str,
    left_out: &mut Vec<(String, &'static str)>,
) -> Result<Option<toml::Value>, ExportError> {
    let mut t = toml::Table::new();
    t.insert(key.to_string(), value);
    let Ok(text) = toml::to_string(&t) else { return Ok(None) };
    match part(&text) {
        Ok((mut out, unread)) => {
            // The part's own paths start with `key` (or `key[0]`): name them as in the file.
            let prefix = if name == key {
                key.to_string()
            } else {
                format!("{key}[0]")
            };
            left_out.extend(unread.into_iter().map(|(n, why)| (n.replacen(&prefix, name, 1), why)));
            Ok(out.remove(key))
        }
        Err(PartError::Invalid) => Ok(None),
        Err(PartError::Refused(e)) => Err(e),
    }
}

/// An export: the document, and what was left out of it (a name and why).
type Exported = (toml::Table, Vec<(String, &'static str)>);

const INVALID: &str = "it does not read as the config";
const UNREAD: &str = "not a key of the config";

/// One document, read as the config's types: withheld values and unread keys removed,
/// URLs scrubbed, endpoint credentials set to none.
fn part(text: &str) -> Result<Exported, PartError> {
    let doc = toml_edit::ImDocument::parse(text).map_err(|_| ExportError::NotToml)?;
    let mut unread: Vec<Vec<Segment>> = Vec::new();
    let (parsed, seen) = withheld::record(|| {
        serde_ignored::deserialize(toml::Deserializer::new(text), |p| unread.push(segments(&p))).map(|_: raw::Raw| ())
    });
    parsed.map_err(|_| PartError::Invalid)?;
    if seen.uncovered > 0 {
        return Err(ExportError::Uncovered.into());
    }
    let withheld: HashSet<Range<usize>> = seen.withheld.iter().cloned().collect();
    let urls: HashSet<Range<usize>> = seen.urls.iter().cloned().collect();
    let mut found = Found::default();
    walk(doc.as_table(), &mut Vec::new(), &withheld, &urls, &mut found);
    if found.withheld.len() != withheld.len() || found.urls.len() != urls.len() {
        return Err(ExportError::Unlocated.into());
    }
    let mut table: toml::Table = text.parse().map_err(|_| ExportError::NotToml)?;
    let names = unread.iter().map(|p| (dotted(p), UNREAD)).collect();
    let mut remove = unread;
    remove.extend(found.withheld);
    for path in found.urls {
        // A URL keeps what says where it is; anything else in its place is withheld.
        // A table is an `{ env }` or `{ file }` reference (serde allows nothing else there).
        let keep = match get(&table, &path) {
            Some(toml::Value::String(s)) => s.contains("://"),
            Some(toml::Value::Table(_)) => true,
            _ => false,
        };
        if !keep {
            remove.push(path);
        }
    }
    // Deepest and last first, so that removing one never moves another.
    remove.sort_by_key(|p| std::cmp::Reverse(key_of(p)));
    for path in &remove {
        delete(&mut table, path);
    }
    if let Some(toml::Value::Array(endpoints)) = table.get_mut("endpoints") {
        for e in endpoints.iter_mut().filter_map(toml::Value::as_table_mut) {
            let mut none = toml::Table::new();
            none.insert("type".into(), toml::Value::String("none".into()));
            e.insert("auth".into(), toml::Value::Table(none));
            e.insert("trust_self_signed".into(), toml::Value::Boolean(false));
        }
    }
    for (_, v) in table.iter_mut() {
        scrub_urls(v);
    }
    Ok((table, names))
}

/// Where the withheld values and the secret URLs are, as paths.
#[derive(Default)]
struct Found {
    withheld: Vec<Vec<Segment>>,
    urls: Vec<Vec<Segment>>,
}

fn walk(
    t: &dyn toml_edit::TableLike,
    path: &mut Vec<Segment>,
    withheld: &HashSet<Range<usize>>,
    urls: &HashSet<Range<usize>>,
    found: &mut Found,
) {
    for (key, item) in t.iter() {
        path.push(Segment::Key(key.to_string()));
        let span = match item {
            toml_edit::Item::Value(v) => v.span(),
            toml_edit::Item::Table(t) => t.span(),
            toml_edit::Item::ArrayOfTables(a) => a.span(),
            toml_edit::Item::None => None,
        };
        match span {
            Some(s) if withheld.contains(&s) => found.withheld.push(path.clone()),
            Some(s) if urls.contains(&s) => found.urls.push(path.clone()),
            _ => walk_item(item, path, withheld, urls, found),
        }
        path.pop();
    }
}

fn walk_item(
    item: &toml_edit::Item,
    path: &mut Vec<Segment>,
    withheld: &HashSet<Range<usize>>,
    urls: &HashSet<Range<usize>>,
    found: &mut Found,
) {
    let index = |i: usize, t: &dyn toml_edit::TableLike, path: &mut Vec<Segment>, found: &mut Found| {
        path.push(Segment::Index(i));
        walk(t, path, withheld, urls, found);
        path.pop();
    };
    match item {
        toml_edit::Item::Table(t) => walk(t, path, withheld, urls, found),
        toml_edit::Item::ArrayOfTables(a) => {
            for (i, t) in a.iter().enumerate() {
                index(i, t, path, found);
            }
        }
        toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => walk(t, path, withheld, urls, found),
        toml_edit::Item::Value(toml_edit::Value::Array(a)) => {
            for (i, v) in a.iter().enumerate() {
                if let toml_edit::Value::InlineTable(t) = v {
                    index(i, t, path, found);
                }
            }
        }
        toml_edit::Item::Value(_) | toml_edit::Item::None => {}
    }
}

/// A path as a sortable key: keys by name, indexes by number.
fn key_of(path: &[Segment]) -> Vec<(usize, String)> {
    path.iter()
        .map(|s| match s {
            Segment::Key(k) => (usize::MAX, k.clone()),
            Segment::Index(i) => (*i, String::new()),
        })
        .collect()
}

fn get<'a>(table: &'a toml::Table, path: &[Segment]) -> Option<&'a toml::Value> {
    let (Segment::Key(first), rest) = path.split_first()? else {
        return None;
    };
    let mut v = table.get(first)?;
    for seg in rest {
        v = match seg {
            Segment::Key(k) => v.as_table()?.get(k)?,
            Segment::Index(i) => v.as_array()?.get(*i)?,
        };
    }
    Some(v)
}

/// Removes the value at `path`; an array entry is removed from its array.
fn delete(table: &mut toml::Table, path: &[Segment]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let container: Option<&mut toml::Value> = match parent.split_first() {
        None => {
            if let Segment::Key(k) = last {
                table.remove(k);
            }
            return;
        }
        Some((Segment::Key(first), rest)) => rest
            .iter()
            .try_fold(table.get_mut(first), |v, seg| {
                Some(v.and_then(|v| match seg {
                    Segment::Key(k) => v.as_table_mut()?.get_mut(k),
                    Segment::Index(i) => v.as_array_mut()?.get_mut(*i),
                }))
            })
            .flatten(),
        Some((Segment::Index(_), _)) => None,
    };
    match (container, last) {
        (Some(toml::Value::Table(t)), Segment::Key(k)) => {
            t.remove(k);
        }
        (Some(toml::Value::Array(a)), Segment::Index(i)) if *i < a.len() => {
            a.remove(*i);
        }
        _ => {}
    }
}

fn scrub_urls(v: &mut toml::Value) {
    match v {
        toml::Value::String(s) if s.contains("://") => *s = scrub_url(s),
        toml::Value::Table(t) => t.iter_mut().for_each(|(_, v)| scrub_urls(v)),
        toml::Value::Array(a) => a.iter_mut().for_each(scrub_urls),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_withheld(out: &str) {
        for line in out.lines() {
            assert!(
                !line.contains("W-") && !line.contains("W_"),
                "withheld value printed: {line}\n{out}"
            );
        }
    }

    /// Every field the raw config types as withheld, written in every TOML form (standard
    /// and inline tables, dotted keys, arrays of tables, `{ env }` and `{ file }`
    /// references, multi-line strings), is left out; what is not secret stays.
    #[test]
    fn every_withheld_field_is_left_out_in_every_form() {
        let text = r#"
[listen]
address = "127.0.0.1:0"
tls = { cert = "c.pem", key = "W-TLS-KEY-PATH" }

[shared]
backend = "redis"
url = "redis://user:W-REDIS-PW@r.test:6379/0?password=W-REDIS-Q"
secret = { env = "W_SHARED_ENV" }

[assertion.key]
file = "/W-ASSERTION-FILE"

[oauth]
mode = "builtin"
client_secret = "W-OAUTH-CLIENT-SECRET"
signing_key = """
W-SIGNING-KEY
"""

[[oauth.clients]]
client_id = "c1"
client_secret_hash = "W-CLIENT-HASH"

[[users]]
name = "u"
password_hash = "W-PASSWORD-HASH"
url_key_hash = "W-URL-KEY-HASH"

[[api_keys]]
key = "W-API-KEY-ID"
secret_hash = "W-API-SECRET-HASH"
user = "u"
integration = "p/i"

[[endpoints]]
name = "e1"
base_url = "https://e1.test"
trust_self_signed = true

[endpoints.auth]
type = "signature"
key_id = "W-KEY-ID"
algorithm = "hmac-sha256"
key = "W-SIGNATURE-KEY"

[[endpoints]]
name = "e2"
base_url = "https://e2.test"
auth = { type = "oauth2", grant = "password", token_url = "https://t.test", client_id = "W-E2-ID", client_secret = "W-E2-CS", username = "W-E2-USER", password = { file = "/W-E2-PW" } }
"#;
        let out = export(text).expect("exports");
        assert_withheld(&out);
        assert!(!out.contains("left out"), "read whole:\n{out}");
        for kept in [
            "r.test:6379/0?password=REMOVED",
            "c1",
            "name = \"u\"",
            "p/i",
            "e1.test",
            "e2.test",
            "c.pem",
        ] {
            assert!(out.contains(kept), "`{kept}` missing:\n{out}");
        }
        assert_eq!(out.matches("type = \"none\"").count(), 2, "{out}");
        assert!(!out.contains("trust_self_signed = true"), "{out}");
        // And it reads back as TOML.
        let _: toml::Table = out.parse().expect("TOML");
    }

    /// `shared.url` keeps a reference and a URL without its secrets; any other value in
    /// its place is withheld.
    #[test]
    fn a_secret_url_keeps_only_where_it_points() {
        let out = export("[shared]\nurl = { env = \"REDIS_URL\" }\n").expect("exports");
        assert!(out.contains("env = \"REDIS_URL\""), "{out}");
        let out = export("[shared]\nurl = \"W-not-a-url\"\n").expect("exports");
        assert_withheld(&out);
    }

    /// A secret that no withheld field holds is counted; one inside a withheld field is
    /// not, and its span is noted. Outside `record` nothing is noted.
    #[test]
    fn a_secret_outside_a_withheld_field_is_counted() {
        #[derive(serde::Deserialize)]
        struct Bare {
            #[allow(dead_code)]
            s: raw::Secret,
        }
        #[derive(serde::Deserialize)]
        struct Marked {
            #[allow(dead_code)]
            s: withheld::Withheld<raw::Secret>,
        }
        let (bare, seen) = withheld::record(|| toml::from_str::<Bare>("s = { env = \"X\" }"));
        assert!(bare.is_ok());
        assert_eq!((seen.uncovered, seen.withheld.len()), (1, 0));
        let (marked, seen) = withheld::record(|| toml::from_str::<Marked>("s = \"x\""));
        assert!(marked.is_ok());
        assert_eq!((seen.uncovered, seen.withheld.len()), (0, 1));
        assert!(toml::from_str::<Bare>("s = \"x\"").is_ok());
        let (_, seen) = withheld::record(|| ());
        assert_eq!(seen.uncovered, 0);
    }

    /// A part that does not read as the config is left out whole and named, the rest is
    /// exported; a key serde does not read is left out and named.
    #[test]
    fn what_does_not_read_is_left_out_and_named() {
        let text = r#"
[listen]
address = "127.0.0.1:0"
passwrd = "W-TYPO"

[[users]]
name = "u"

[[api_keys]]
key = "k"
secret_hash = "W-HALF-AN-ENTRY"

[oauth]
mode = 7
client_secret = "W-BAD-MODE"
"#;
        let out = export(text).expect("exports");
        assert_withheld(&out);
        for named in [
            "`api_keys[0]` left out",
            "`oauth` left out",
            "`listen.passwrd` left out",
        ] {
            assert!(out.contains(named), "`{named}` missing:\n{out}");
        }
        assert!(out.contains("name = \"u\"") && out.contains("127.0.0.1:0"), "{out}");
        assert!(matches!(export("a = ["), Err(ExportError::NotToml)));
    }

    /// A file that is not TOML exports nothing, and the error quotes none of it (a TOML
    /// parser's error shows the line, which may be a secret's).
    #[test]
    fn a_file_that_is_not_toml_is_not_quoted() {
        for text in [
            "[assertion]\nkey = \"W-SECRET\" trailing",
            "password = W-BARE",
            "[[users]\nW-X",
        ] {
            let e = export(text).expect_err("not TOML");
            assert!(matches!(e, ExportError::NotToml), "{e}");
            assert!(!e.to_string().contains("W-"), "{e}");
        }
    }
}
