//! The typed config builder: a gateway config assembled from plans, integrations, users,
//! API keys and sections, emitted as the TOML text the gateway reads.
//!
//! ```ignore
//! let toml = Config::new()
//!     .section("limits", |s| s.set("request_timeout", "1s"))
//!     .user("alice", |u| u.roles(["rest"]).password_hash(&argon2_hash("alice-pw")))
//!     .plan("p", |p| {
//!         p.upstream(&up.url()).access_roles(["rest"]).integration("open", |i| {
//!             i.path("/open/*").methods(["GET"]).auth("none")
//!         })
//!     })
//!     .to_toml();
//! ```
//!
//! Values are `toml::Value`s, written with the `toml` crate's own formatting, so the text
//! is valid TOML whatever a value holds. Sections become `[name]`, `users`, `plans`,
//! `api_keys` (and any other top-level array of tables) `[[name]]`, an array of tables
//! inside one of them `[[parent.name]]`, and any other nested table an inline table
//! (`access = { roles = ["rest"] }`). A piece of TOML text can be merged in
//! ([`Config::toml`], [`Config::section_toml`]) where a test passes options as text; a
//! key set twice is a test bug and panics, as the gateway's TOML parser would refuse it.

use toml::Value;

/// The assertion key of [`Config::new`].
pub const ASSERTION_KEY: &str = "test-assertion-key-0123456789abcdef";

/// A TOML table whose keys keep the order they were set in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table(Vec<(String, Item)>);

#[derive(Debug, Clone, PartialEq)]
enum Item {
    Value(Value),
    Table(Table),
    Tables(Vec<Table>),
}

impl Table {
    fn get_mut(&mut self, key: &str) -> Option<&mut Item> {
        self.0.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn insert(&mut self, key: &str, item: Item) {
        assert!(self.get_mut(key).is_none(), "config key `{key}` set twice");
        self.0.push((key.to_string(), item));
    }

    /// Sets `key` to `value` (a key may be set once).
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.insert(key, Item::Value(value.into()));
        self
    }

    /// Every key and value of a TOML text of `key = value` lines, in their order.
    pub fn merge_toml(mut self, text: &str) -> Self {
        self.merge_document(parse(text));
        self
    }

    /// Merges a parsed document: tables merge key by key into tables of the same name,
    /// arrays of tables are appended to, anything else is set once.
    fn merge_document(&mut self, doc: Table) {
        for (k, item) in doc.0 {
            match (item, self.get_mut(&k)) {
                (Item::Table(add), Some(Item::Table(have))) => {
                    for (key, item) in add.0 {
                        have.insert(&key, item);
                    }
                }
                (Item::Tables(add), Some(Item::Tables(have))) => have.extend(add),
                (_, Some(_)) => panic!("config key `{k}` set twice"),
                (item, None) => self.insert(&k, item),
            }
        }
    }

    /// An entry of the array of tables `key` (`[[section.key]]`), made by `f`.
    pub fn entry(mut self, key: &str, f: impl FnOnce(Table) -> Table) -> Self {
        self.push_table(key, f(Table::default()));
        self
    }

    fn push_table(&mut self, key: &str, t: Table) {
        match self.get_mut(key) {
            Some(Item::Tables(have)) => have.push(t),
            Some(_) => panic!("config key `{key}` is not an array of tables"),
            None => self.insert(key, Item::Tables(vec![t])),
        }
    }

    fn table_mut(&mut self, key: &str) -> &mut Table {
        if self.get_mut(key).is_none() {
            self.insert(key, Item::Table(Table::default()));
        }
        match self.get_mut(key) {
            Some(Item::Table(t)) => t,
            _ => panic!("config key `{key}` is not a table"),
        }
    }

    /// The key's value, when it holds a plain value (for tests that read a config back).
    pub fn value(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).and_then(|(_, v)| match v {
            Item::Value(v) => Some(v),
            _ => None,
        })
    }

    /// Writes the keys of this table under `path` (`[path]` or `[[path]]` already written).
    fn write(&self, path: &str, out: &mut String) {
        for (k, item) in &self.0 {
            match item {
                Item::Value(v) => out.push_str(&format!("{} = {v}\n", key(k))),
                // Below the top level, a table is inline.
                Item::Table(t) if !path.is_empty() => out.push_str(&format!("{} = {}\n", key(k), t.inline())),
                _ => {}
            }
        }
        for (k, item) in &self.0 {
            let sub = if path.is_empty() {
                key(k)
            } else {
                format!("{path}.{}", key(k))
            };
            match item {
                Item::Table(t) if path.is_empty() => {
                    out.push_str(&format!("\n[{sub}]\n"));
                    t.write(&sub, out);
                }
                Item::Tables(ts) => {
                    for t in ts {
                        out.push_str(&format!("\n[[{sub}]]\n"));
                        t.write(&sub, out);
                    }
                }
                _ => {}
            }
        }
    }

    fn inline(&self) -> Value {
        Value::Table(
            self.0
                .iter()
                .map(|(k, item)| {
                    let v = match item {
                        Item::Value(v) => v.clone(),
                        Item::Table(t) => t.inline(),
                        Item::Tables(ts) => Value::Array(ts.iter().map(Table::inline).collect()),
                    };
                    (k.clone(), v)
                })
                .collect(),
        )
    }
}

/// A TOML text as a [`Table`], keys in the text's order (`toml_edit` keeps it).
fn parse(text: &str) -> Table {
    let doc: toml_edit::DocumentMut = text.parse().unwrap_or_else(|e| panic!("test TOML: {e}\n{text}"));
    from_edit(doc.as_table())
}

fn from_edit(t: &toml_edit::Table) -> Table {
    let mut out = Table::default();
    for (k, item) in t.iter() {
        let item = match item {
            toml_edit::Item::None => continue,
            toml_edit::Item::Value(v) => Item::Value(value(v)),
            toml_edit::Item::Table(t) => Item::Table(from_edit(t)),
            toml_edit::Item::ArrayOfTables(a) => Item::Tables(a.iter().map(from_edit).collect()),
        };
        out.insert(k, item);
    }
    out
}

/// A `toml_edit` value as a `toml` one (through its text, which both read alike).
fn value(v: &toml_edit::Value) -> Value {
    let doc: toml::Table = toml::from_str(&format!("v = {v}")).unwrap_or_else(|e| panic!("{v}: {e}"));
    doc["v"].clone()
}

/// A key as TOML writes it: bare when it can be, quoted otherwise.
fn key(k: &str) -> String {
    let bare = !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        k.to_string()
    } else {
        Value::String(k.to_string()).to_string()
    }
}

fn strings<'a>(items: impl IntoIterator<Item = &'a str>) -> Value {
    Value::Array(items.into_iter().map(|s| Value::String(s.to_string())).collect())
}

/// An inline table of these keys and values (`{ cert = "...", key = "..." }`).
pub fn table<'a>(pairs: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
    Value::Table(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// `{ all = true }`.
pub fn all() -> Value {
    Value::Table(toml::Table::from_iter([("all".to_string(), Value::Boolean(true))]))
}

/// `{ roles = [...] }`.
pub fn roles<'a>(r: impl IntoIterator<Item = &'a str>) -> Value {
    Value::Table(toml::Table::from_iter([("roles".to_string(), strings(r))]))
}

/// A rule (`access`, `senders`) from its inline TOML text, e.g. `{ roles = ["a"], users = ["b"] }`.
pub fn rule(text: &str) -> Value {
    let doc: toml::Table = toml::from_str(&format!("rule = {text}")).unwrap_or_else(|e| panic!("{text}: {e}"));
    doc["rule"].clone()
}

/// A gateway config.
#[derive(Debug, Clone, Default)]
pub struct Config {
    doc: Table,
}

impl Config {
    /// What every test config starts from: inbound and admin listeners on 127.0.0.1:0 and a
    /// fixed assertion key ([`ASSERTION_KEY`]).
    pub fn new() -> Config {
        Config::bare()
            .section("listen", |s| s.set("address", "127.0.0.1:0"))
            .section("admin", |s| s.set("address", "127.0.0.1:0"))
            .section("assertion", |s| s.set("key", ASSERTION_KEY).set("ttl", "5m"))
    }

    /// An empty config (no listener, no admin, no assertion key).
    pub fn bare() -> Config {
        Config::default()
    }

    /// Sets keys of a `[name]` section (made if absent).
    pub fn section(mut self, name: &str, f: impl FnOnce(Table) -> Table) -> Config {
        let t = self.doc.table_mut(name);
        *t = f(std::mem::take(t));
        self
    }

    /// Merges `key = value` lines into the `[name]` section (made if absent).
    pub fn section_toml(self, name: &str, text: &str) -> Config {
        self.section(name, |s| s.merge_toml(text))
    }

    /// Merges a piece of TOML text: its sections, and its `[[...]]` entries after the ones
    /// already here.
    pub fn toml(mut self, text: &str) -> Config {
        self.doc.merge_document(parse(text));
        self
    }

    /// The inbound listener serves TLS with this certificate and key.
    pub fn listen_tls(self, cert: &std::path::Path, key: &std::path::Path) -> Config {
        self.section("listen", |s| {
            s.set("tls_cert", cert.display().to_string())
                .set("tls_key", key.display().to_string())
        })
    }

    /// A `[[users]]` entry.
    pub fn user(mut self, name: &str, f: impl FnOnce(User) -> User) -> Config {
        let u = f(User(Table::default().set("name", name)));
        self.doc.push_table("users", u.0);
        self
    }

    /// A `[[plans]]` entry.
    pub fn plan(mut self, name: &str, f: impl FnOnce(Plan) -> Plan) -> Config {
        let p = f(Plan(Table::default().set("name", name)));
        self.doc.push_table("plans", p.0);
        self
    }

    /// An `[[api_keys]]` entry: `key`'s secret is `secret_hash`, for `user` on
    /// `integration` (`plan/integration`).
    pub fn api_key(mut self, key: &str, secret_hash: &str, user: &str, integration: &str) -> Config {
        let t = Table::default()
            .set("key", key)
            .set("secret_hash", secret_hash)
            .set("user", user)
            .set("integration", integration);
        self.doc.push_table("api_keys", t);
        self
    }

    /// An entry of any other top-level array of tables (`[[name]]`).
    pub fn entry(mut self, name: &str, f: impl FnOnce(Table) -> Table) -> Config {
        let t = f(Table::default());
        self.doc.push_table(name, t);
        self
    }

    /// Everything `other` holds, merged in as [`Config::toml`] merges text.
    pub fn merge(mut self, other: Config) -> Config {
        self.doc.merge_document(other.doc);
        self
    }

    /// The TOML text.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        self.doc.write("", &mut out);
        out
    }
}

/// A `[[users]]` entry.
pub struct User(Table);

impl User {
    pub fn roles<'a>(self, r: impl IntoIterator<Item = &'a str>) -> User {
        User(self.0.set("roles", strings(r)))
    }

    pub fn password_hash(self, hash: &str) -> User {
        User(self.0.set("password_hash", hash))
    }

    /// Any other key of a user.
    pub fn set(self, key: &str, value: impl Into<Value>) -> User {
        User(self.0.set(key, value))
    }
}

/// A `[[plans]]` entry.
pub struct Plan(Table);

impl Plan {
    pub fn upstream(self, url: &str) -> Plan {
        Plan(self.0.set("upstream", url))
    }

    /// `access = { all = true }`.
    pub fn access_all(self) -> Plan {
        self.access(all())
    }

    /// `access = { roles = [...] }`.
    pub fn access_roles<'a>(self, r: impl IntoIterator<Item = &'a str>) -> Plan {
        self.access(roles(r))
    }

    pub fn access(self, rule: Value) -> Plan {
        Plan(self.0.set("access", rule))
    }

    /// Any other key of a plan.
    pub fn set(self, key: &str, value: impl Into<Value>) -> Plan {
        Plan(self.0.set(key, value))
    }

    /// A `[[plans.integrations]]` entry.
    pub fn integration(mut self, name: &str, f: impl FnOnce(Integration) -> Integration) -> Plan {
        let i = f(Integration(Table::default().set("name", name)));
        self.0.push_table("integrations", i.0);
        self
    }
}

/// A `[[plans.integrations]]` entry.
pub struct Integration(Table);

impl Integration {
    pub fn path(self, path: &str) -> Integration {
        Integration(self.0.set("path", path))
    }

    pub fn methods<'a>(self, m: impl IntoIterator<Item = &'a str>) -> Integration {
        Integration(self.0.set("methods", strings(m)))
    }

    /// One method (`auth = "basic"`).
    pub fn auth(self, method: &str) -> Integration {
        Integration(self.0.set("auth", method))
    }

    /// Several methods, in order (`auth = ["basic", "api_key"]`).
    pub fn auths<'a>(self, methods: impl IntoIterator<Item = &'a str>) -> Integration {
        Integration(self.0.set("auth", strings(methods)))
    }

    /// `senders = { all = true }`.
    pub fn senders_all(self) -> Integration {
        self.senders(all())
    }

    /// `senders = { roles = [...] }`.
    pub fn senders_roles<'a>(self, r: impl IntoIterator<Item = &'a str>) -> Integration {
        self.senders(roles(r))
    }

    pub fn senders(self, rule: Value) -> Integration {
        Integration(self.0.set("senders", rule))
    }

    /// Any other key of an integration.
    pub fn set(self, key: &str, value: impl Into<Value>) -> Integration {
        Integration(self.0.set(key, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builder_writes_the_toml_a_hand_would() {
        let text = Config::new()
            .section_toml("limits", "max_connections = 2")
            .user("alice", |u| u.roles(["rest"]).password_hash("h"))
            .plan("p", |p| {
                p.upstream("http://u").access_roles(["rest"]).integration("open", |i| {
                    i.path("/open/*").methods(["GET"]).auth("none").senders_all()
                })
            })
            .toml("[[plans]]\nname = \"q\"\nupstream = \"builtin:echo\"\naccess = { all = true }\n")
            .to_toml();
        let expected = "\n[listen]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n\
            [assertion]\nkey = \"test-assertion-key-0123456789abcdef\"\nttl = \"5m\"\n\n\
            [limits]\nmax_connections = 2\n\n[[users]]\nname = \"alice\"\nroles = [\"rest\"]\npassword_hash = \"h\"\n\n\
            [[plans]]\nname = \"p\"\nupstream = \"http://u\"\naccess = { roles = [\"rest\"] }\n\n\
            [[plans.integrations]]\nname = \"open\"\npath = \"/open/*\"\nmethods = [\"GET\"]\nauth = \"none\"\nsenders = { all = true }\n\n\
            [[plans]]\nname = \"q\"\nupstream = \"builtin:echo\"\naccess = { all = true }\n";
        assert_eq!(text, expected);
    }
}
