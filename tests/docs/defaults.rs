//! What docs/configuration.md says each key defaults to, against what the code does with
//! a config that leaves the key out.
//!
//! The doc's `default` column is read in one of these forms, several joined by `; `, each
//! optionally ` for CONTEXT` (a [`context`] by name) and ` (a comment)`:
//!
//! - a TOML value in backticks: the config loaded without the key and the same config
//!   with `key = VALUE` written out are the same checked config (`Debug` of
//!   `portcullis::config::Config`, the model every part of the gateway reads); and
//!   writing the doc's example instead changes it, so the context really reads the key;
//! - `required`: a config without it is refused, naming it;
//! - `none`: the checked config has no value for it ([`absent`]);
//! - a phrase (`the number of cores`, `nobody`...): [`phrase`] checks what it says.
//!
//! A key without a default column in one of these forms, a context the test does not
//! know, or a `none` or phrase the test has no check for, fails the test too.

use std::path::{Path, PathBuf};

use portcullis::config::{Config, Rule};

/// One documented key: its section (`limits`, `plans.integrations`), name, and the
/// `default` and `example` cells of its row.
#[derive(Debug, Clone)]
pub struct Row {
    pub section: String,
    pub key: String,
    pub default: String,
    pub example: String,
    pub what: String,
}

impl Row {
    pub fn full(&self) -> String {
        format!("{}.{}", self.section, self.key)
    }
}

/// The cells of a Markdown table row, split on `|` outside backticks.
fn cells(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut ticked = false;
    for c in line.trim().trim_start_matches('|').trim_end_matches('|').chars() {
        match c {
            '`' => {
                ticked = !ticked;
                cur.push(c);
            }
            '|' if !ticked => out.push(std::mem::take(&mut cur).trim().to_string()),
            _ => cur.push(c),
        }
    }
    out.push(cur.trim().to_string());
    out
}

/// Every key row of docs/configuration.md, under the section its heading names.
pub fn rows() -> Vec<Row> {
    let root = env!("CARGO_MANIFEST_DIR");
    let doc = std::fs::read_to_string(format!("{root}/docs/configuration.md")).unwrap();
    let mut out = Vec::new();
    let mut section = String::new();
    let mut columns: Vec<String> = Vec::new();
    for line in doc.lines() {
        if line.starts_with('#') {
            let ticks: Vec<&str> = line.split('`').skip(1).step_by(2).collect();
            section = match ticks.as_slice() {
                [s] => s.trim_matches(['[', ']']).to_string(),
                [s, sub] => format!("{}.{sub}", s.trim_matches(['[', ']'])),
                _ => String::new(),
            };
            continue;
        }
        if line.starts_with("| key |") {
            columns = cells(line);
            continue;
        }
        if section.is_empty() || !line.starts_with("| `") {
            continue;
        }
        let c = cells(line);
        let col = |name: &str| {
            let i = columns
                .iter()
                .position(|h| h == name)
                .unwrap_or_else(|| panic!("docs/configuration.md: the table of `{section}` has no `{name}` column"));
            c.get(i).cloned().unwrap_or_default()
        };
        out.push(Row {
            section: section.clone(),
            key: c[0].trim_matches('`').to_string(),
            default: col("default"),
            example: col("example"),
            what: col("what it does"),
        });
    }
    out
}

/// What one alternative of a default cell says.
#[derive(Debug, Clone, PartialEq)]
enum Said {
    Required,
    None,
    Value(toml::Value),
    Phrase(String),
}

/// One alternative: what is said, in which context (None: the section's own).
#[derive(Debug, Clone)]
struct Alternative {
    said: Said,
    context: Option<String>,
}

/// Splits `rest` (what follows the value) into its ` for CONTEXT` and drops a trailing
/// ` (comment)`; anything else is not the format.
fn context_of(rest: &str) -> Result<Option<String>, String> {
    let rest = match rest.find(" (") {
        Some(i) if rest.ends_with(')') => &rest[..i],
        _ => rest,
    };
    if rest.is_empty() {
        return Ok(None);
    }
    match rest.strip_prefix(" for ") {
        Some(ctx) => Ok(Some(ctx.to_string())),
        None => Err(format!("`{rest}` is neither ` for CONTEXT` nor ` (a comment)`")),
    }
}

fn parse_default(cell: &str) -> Result<Vec<Alternative>, String> {
    let mut out = Vec::new();
    for alt in cell.split("; ") {
        let alt = alt.trim();
        let (said, rest) = if let Some(rest) = alt.strip_prefix("required") {
            (Said::Required, rest)
        } else if let Some(rest) = alt.strip_prefix("none") {
            (Said::None, rest)
        } else if let Some(ticked) = alt.strip_prefix('`') {
            let end = ticked.find('`').ok_or("an unclosed backtick")?;
            let text = &ticked[..end];
            let doc: toml::Table = format!("v = {text}")
                .parse()
                .map_err(|e| format!("`{text}` is not a TOML value: {e}"))?;
            (Said::Value(doc["v"].clone()), &ticked[end + 1..])
        } else {
            // A phrase: up to its comment or context.
            let end = [alt.find(" ("), alt.find(" for ")]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(alt.len());
            (Said::Phrase(alt[..end].to_string()), &alt[end..])
        };
        out.push(Alternative {
            said,
            context: context_of(rest)?,
        });
    }
    Ok(out)
}

fn cert(name: &str) -> String {
    format!("{}/config/tls/{name}", env!("CARGO_MANIFEST_DIR"))
}

const HASH: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";

/// The least config in which the keys of `section` are read, in context `ctx` (a name the
/// doc uses after `for`, or a mode a key's description starts with, as `jwt:`).
fn context(section: &str, ctx: Option<&str>) -> Result<String, String> {
    let listen = "[listen]\naddress = \"127.0.0.1:0\"\n".to_string();
    let tls = format!(
        "[listen]\naddress = \"127.0.0.1:0\"\n[listen.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
        cert("server.crt"),
        cert("server.key"),
        cert("server.crt")
    );
    let users = "[[users]]\nname = \"u\"\n";
    // With rate limits on both, so that `rate_fail` is read.
    let plans = "[[plans]]\nname = \"p\"\nupstream = \"builtin:echo\"\naccess = { all = true }\n\
                 rate = { requests = 5, per = \"1s\" }\n\
                 [[plans.integrations]]\nname = \"i\"\npath = \"/i\"\nmethods = [\"GET\"]\n\
                 auth = [\"basic\", \"api_key\"]\nsenders = { all = true }\n\
                 rate = { requests = 5, per = \"1s\" }\n";
    let api_key = format!("[[api_keys]]\nkey = \"k\"\nsecret_hash = \"{HASH}\"\nuser = \"u\"\nintegration = \"p/i\"\n");
    let redis = "[shared]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\n\
                 secret = \"0123456789abcdef0123456789abcdef\"\n";
    let endpoint = "[[endpoints]]\nname = \"e\"\nbase_url = \"https://target.example/api\"\n";
    let auth = |t: &str| format!("{endpoint}[endpoints.auth]\n{t}");
    let oauth2 = "type = \"oauth2\"\ntoken_url = \"https://idp.example/token\"\nclient_id = \"c\"\n";
    let oauth = |mode: &str| format!("[oauth]\n{mode}");
    // `leeway` keeps an `[oauth]` header when `mode` is left out: without one, serde's
    // error names `clients`, not the missing `mode` (reported; see the lead's notes).
    let builtin = "mode = \"builtin\"\nleeway = \"30s\"\n";
    let jwt = "mode = \"jwt\"\nissuer = \"https://idp.example/\"\njwks_url = \"https://idp.example/jwks\"\n";
    let introspection = "mode = \"introspection\"\nintrospection_url = \"https://idp.example/introspect\"\n\
                         client_id = \"portcullis\"\nclient_secret = \"introspection-secret\"\n";
    let text = match (section, ctx) {
        ("listen", None) => listen,
        ("listen.tls", None) => tls,
        (
            "admin" | "egress" | "forward_auth" | "limits" | "cache" | "lockout" | "runtime" | "tracing" | "auth"
            | "assertion",
            None,
        )
        | ("shared", Some("memory")) => format!("{listen}[{section}]\n"),
        ("shared", None | Some("redis")) => format!("{listen}{redis}"),
        ("users", None) => format!("{listen}{users}"),
        ("plans" | "plans.integrations" | "plans.rate" | "plans.integrations.rate", None) => {
            format!("{listen}{users}{plans}")
        }
        ("api_keys", None) => format!("{listen}{users}{plans}{api_key}"),
        ("oauth" | "oauth.clients", None | Some("builtin")) => {
            format!(
                "{listen}{}[[oauth.clients]]\nclient_id = \"c\"\nclient_secret_hash = \"{HASH}\"\n",
                oauth(builtin)
            )
        }
        ("oauth", Some("jwt")) => format!("{listen}{}", oauth(jwt)),
        ("oauth", Some("introspection")) => format!("{listen}{}", oauth(introspection)),
        ("endpoints", None) => format!("{listen}{endpoint}"),
        ("endpoints.auth", None) => format!("{listen}{}", auth("type = \"none\"\n")),
        ("endpoints.auth", Some("basic")) => {
            format!(
                "{listen}{}",
                auth("type = \"basic\"\nusername = \"u\"\npassword = \"p\"\n")
            )
        }
        ("endpoints.auth", Some("oauth2")) => {
            format!("{listen}{}", auth(&format!("{oauth2}grant = \"client_credentials\"\n")))
        }
        ("endpoints.auth", Some("the password grant")) => format!(
            "{listen}{}",
            auth(&format!(
                "{oauth2}grant = \"password\"\nusername = \"u\"\npassword = \"p\"\n"
            ))
        ),
        ("endpoints.auth", Some("signature")) => format!(
            "{listen}{}",
            auth("type = \"signature\"\nkey_id = \"k\"\nalgorithm = \"hmac-sha256\"\nkey = \"0123456789abcdef0123\"\n")
        ),
        _ => {
            return Err(format!(
                "no context `{}` for section `{section}`",
                ctx.unwrap_or("(none)")
            ))
        }
    };
    Ok(text)
}

/// The context a key's description names (`jwt: ...`, `builtin: ...`, `oauth2: ...`,
/// `introspection mode: ...`), or None.
fn described_context(what: &str) -> Option<String> {
    let head = what.split(':').next()?;
    let head = head.strip_suffix(" mode").unwrap_or(head);
    let head = head.split(' ').next()?;
    ["builtin", "jwt", "introspection", "basic", "oauth2", "signature"]
        .contains(&head)
        .then(|| head.to_string())
}

/// Where `key` of `section` lives in a document: the table that holds it (the first
/// entry of each array of tables on the way).
fn holder<'a>(doc: &'a mut toml::Table, section: &str) -> &'a mut toml::Table {
    let mut t = doc;
    for seg in section.split('.') {
        let v = t
            .get_mut(seg)
            .unwrap_or_else(|| panic!("context has no `{seg}` of `{section}`"));
        t = match v {
            toml::Value::Array(a) => a[0].as_table_mut().unwrap(),
            toml::Value::Table(x) => x,
            other => panic!("`{seg}` is {other:?}"),
        };
    }
    t
}

/// The name the configs are checked under (never read: the text is given).
fn file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs-defaults.toml")
}

/// The context's text with `key` left out (`value` None) or set to `value`.
fn with(context: &str, section: &str, key: &str, value: Option<&toml::Value>) -> String {
    let mut doc: toml::Table = context.parse().unwrap();
    let t = holder(&mut doc, section);
    t.remove(key);
    if let Some(v) = value {
        t.insert(key.to_string(), v.clone());
    }
    toml::to_string(&doc).unwrap()
}

fn load(text: &str) -> Result<Config, String> {
    portcullis::config::parse(&file(), text)
        .map(|l| l.config)
        .map_err(|e| e.to_string())
}

/// Whether the checked config holds no value for `key` (`Some(true)`), holds one
/// (`Some(false)`), or the test cannot tell (`None`: add the key here).
fn absent(key: &str, c: &Config) -> Option<bool> {
    use portcullis::config::EndpointAuth;
    let tls = || c.listen.tls.as_ref().expect("context with TLS");
    let user = || &c.users[0];
    let oauth = || c.issuers.first().expect("context with [oauth]");
    let endpoint = || &c.endpoints[0];
    let redis = || match &c.shared {
        portcullis::config::SharedBackend::Redis(r) => r,
        portcullis::config::SharedBackend::Memory => panic!("context with [shared] redis"),
    };
    Some(match key {
        "listen.tls" => c.listen.tls.is_none(),
        "listen.tls.client_ca" => tls().client_ca.is_none(),
        "listen.tls.client_crl" => tls().client_crl.is_none(),
        "tracing.otlp_endpoint" => c.tracing.otlp_endpoint.is_none(),
        "plans.rate" => c.plans[0].rate.is_none(),
        // The redis context names one server by `url`: no Sentinel set, no Cluster.
        "shared.sentinels" | "shared.master_name" | "shared.nodes" | "shared.tls" => {
            matches!(redis().topology, portcullis::config::RedisTopology::Single(_))
        }
        "shared.username" => redis().username.is_none(),
        "shared.password" => redis().password.is_none(),
        "shared.sentinel_password" => redis().sentinel_password.is_none(),
        "shared.tls_ca_file" => redis().tls_ca.is_none(),
        "plans.when" => c.plans[0].when.is_none(),
        "plans.integrations.when" => c.plans[0].integrations[0].when.is_none(),
        // A lone `[oauth]` is one issuer; `[[oauth.issuers]]` are several.
        "oauth.issuers" => c.issuers.len() == 1,
        "plans.integrations.rate" => c.plans[0].integrations[0].rate.is_none(),
        "users.password_hash" => user().password_hash.is_none(),
        "users.password_expires_at" => user().password_expires_at.is_none(),
        "users.url_key_hash" => user().url_key_hash.is_none(),
        "oauth.audience" => oauth().audience.is_none(),
        "oauth.jwks_url" => oauth().jwks_url.is_none(),
        "oauth.jwks_file" => oauth().jwks_file.is_none(),
        "oauth.introspection_url" => oauth().introspection_url.is_none(),
        "oauth.client_id" => oauth().client_id.is_none(),
        "oauth.client_secret" => oauth().client_secret.is_none(),
        "oauth.roles_claim" => oauth().roles_claim.is_none(),
        // `algorithm` adds to `algorithms`: the checked list holds only what is written.
        "oauth.algorithm" => oauth().algorithms.is_empty(),
        "endpoints.pin_sha256" => endpoint().pin_sha256.is_none(),
        "endpoints.auth.client_secret" => match &endpoint().auth {
            EndpointAuth::OAuth2 { client_secret, .. } => client_secret.is_none(),
            _ => return None,
        },
        _ => return None,
    })
}

/// The context a `none` of `key` is checked in, when not the section's own.
fn none_context(key: &str) -> Option<&'static str> {
    match key {
        "endpoints.auth.client_secret" => Some("oauth2"),
        _ => None,
    }
}

/// Keys whose default the code applies when it builds the part that reads them, not when
/// it loads the config (which then holds no value): what the code applies there, from
/// the library, or None when the test cannot see it (add it here).
fn applied_later(key: &str, c: &Config) -> Option<toml::Value> {
    match key {
        "oauth.issuer" => {
            let o = c.issuers.first()?;
            let builtin = portcullis::auth::oauth::builtin::DEFAULT_ISSUER;
            o.issuer.is_none().then(|| builtin.into())
        }
        // The jwt verifier applies it when it is built: the checked config holds no list;
        // `the_default_jwt_algorithms_are_the_documented_ones` checks what it applies.
        "oauth.algorithms" => {
            let o = c.issuers.first()?;
            o.algorithms.is_empty().then(|| default_jwt_algorithms().into())
        }
        _ => None,
    }
}

/// The `default` of `oauth.algorithms` as docs/configuration.md writes it.
fn default_jwt_algorithms() -> Vec<String> {
    let row = rows()
        .into_iter()
        .find(|r| r.full() == "oauth.algorithms")
        .expect("oauth.algorithms row");
    match parse_default(&row.default).unwrap().as_slice() {
        [Alternative {
            said: Said::Value(toml::Value::Array(a)),
            ..
        }] => a.iter().map(|v| v.as_str().unwrap().to_string()).collect(),
        other => panic!("oauth.algorithms: default `{}` is not one list: {other:?}", row.default),
    }
}

/// The jwt verifier, built from a config that names no algorithm, lets through to the key
/// lookup exactly the documented default algorithms: a token of any other is refused as
/// `alg_not_allowed` before any key is looked at. The tokens are unsigned on purpose (the
/// JWKS is empty): what is checked is only which algorithms are admitted.
#[tokio::test]
async fn the_default_jwt_algorithms_are_the_documented_ones() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, r#"{"keys":[]}"#).unwrap();
    let text = format!(
        "[listen]\naddress = \"127.0.0.1:0\"\n[oauth]\nmode = \"jwt\"\nissuer = \"https://idp.example/\"\njwks_file = \"{}\"\n",
        jwks.display()
    );
    let c = load(&text).unwrap();
    let o = c.issuers.first().unwrap();
    assert!(o.algorithms.is_empty(), "{:?}", o.algorithms);
    let jwt = portcullis::auth::oauth::jwt::Jwt::new(
        o,
        &c.cache,
        portcullis::upstream::client(),
        &Default::default(),
        &Default::default(),
        &portcullis::metrics::Metrics::new(),
    )
    .unwrap();
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let mut admitted = Vec::new();
    for alg in [
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
    ] {
        let token = format!(
            "{}.{}.{}",
            b64(&format!(r#"{{"alg":"{alg}","typ":"JWT","kid":"k"}}"#)),
            b64(r#"{"iss":"https://idp.example/","sub":"s","exp":4102444800}"#),
            b64("not-a-signature")
        );
        let verdict = jwt.verify(&token).await.err().map(|v| format!("{v:?}"));
        assert!(verdict.is_some(), "{alg}: a token without a key is never accepted");
        if !verdict.unwrap().contains("AlgNotAllowed") {
            admitted.push(alg.to_string());
        }
    }
    assert_eq!(
        admitted,
        default_jwt_algorithms(),
        "oauth.algorithms: the code's default (left) is not the documented one (right)"
    );
}

/// The builtin issuer's tokens carry the documented default `iss` when `issuer` is not
/// written: a real gateway's token endpoint, not the constant the check above reads.
#[tokio::test]
async fn the_builtin_issuer_signs_with_the_documented_default_iss() {
    use crate::support::{client, sha256_hex, Gateway};
    use base64::Engine;
    let row = rows()
        .into_iter()
        .find(|r| r.full() == "oauth.issuer")
        .expect("oauth.issuer row");
    let documented = parse_default(&row.default)
        .unwrap()
        .into_iter()
        .find_map(|a| match (a.said, a.context.as_deref()) {
            (Said::Value(v), Some("builtin")) => Some(v),
            _ => None,
        })
        .expect("oauth.issuer: a default for builtin");
    let gw = Gateway::start(&format!(
        "[listen]\naddress = \"127.0.0.1:0\"\n[oauth]\nmode = \"builtin\"\n\
         [[oauth.clients]]\nclient_id = \"c\"\nclient_secret_hash = \"{}\"\n",
        sha256_hex("c-secret")
    ))
    .await;
    let jwt = crate::client_credentials_token(&client(), gw.url("/oauth/token"), "c", "c-secret").await;
    let payload = jwt.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["iss"].as_str(),
        documented.as_str(),
        "oauth.issuer: the builtin default (left, the code's) is not the documented one (right)"
    );
    gw.stop().await;
}

/// The example with each `{ env = "NAME" }` secret written as a literal: what is checked is
/// the key, not where its secret comes from (the variable is not set in the test).
fn literal_secrets(v: toml::Value) -> toml::Value {
    match v {
        toml::Value::Table(t) if t.len() == 1 && t.contains_key("env") => "docs-test-secret".into(),
        toml::Value::Table(t) => toml::Value::Table(t.into_iter().map(|(k, v)| (k, literal_secrets(v))).collect()),
        toml::Value::Array(a) => toml::Value::Array(a.into_iter().map(literal_secrets).collect()),
        other => other,
    }
}

/// Whether a rule admits a principal nobody listed (a name and a role no rule names).
fn admits_anyone(r: &Rule) -> bool {
    r.allows("docs-test-stranger", &["docs-test-role".to_string()])
}

/// The check of what a phrase says the default is, for `key`; None: the test has no
/// check for this phrase of this key (write it here).
fn phrase(key: &str, said: &str, c: &Config) -> Option<Result<(), String>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ok = |holds: bool, code: String| if holds { Ok(()) } else { Err(code) };
    Some(match (key, said) {
        ("runtime.worker_threads", "the number of cores") => {
            let n = portcullis::server::workers(c);
            ok(n == cores, format!("{n} workers on {cores} cores"))
        }
        ("auth.hash_workers", "the number of cores") => {
            let n = c.auth.hash_workers;
            ok(n == cores, format!("{n} hash workers on {cores} cores"))
        }
        ("assertion.key", "a random key per process") => {
            // No key in the config: the gateway makes one when it starts.
            ok(c.assertion.key.is_none(), "a key in the checked config".into())
        }
        ("plans.access", "nobody") => {
            let a = &c.plans[0].access;
            ok(
                *a == Rule::Only {
                    roles: vec![],
                    users: vec![],
                } && !admits_anyone(a),
                format!("{a:?}"),
            )
        }
        ("plans.integrations.senders", "everyone the plan admits") => {
            let s = &c.plans[0].integrations[0].senders;
            ok(*s == Rule::All, format!("{s:?}"))
        }
        ("endpoints.callers", "anyone local") => {
            let r = &c.endpoints[0].callers;
            ok(r.is_none(), format!("{r:?}"))
        }
        ("oauth.max_revocations_per_client", "a tenth of `max_revocations`") => {
            let o = c.issuers.first().unwrap();
            ok(
                o.max_revocations_per_client == o.max_revocations / 10,
                format!("{} of {}", o.max_revocations_per_client, o.max_revocations),
            )
        }
        ("oauth.signing_key" | "oauth.signing_keys", "generated") => {
            let o = c.issuers.first().unwrap();
            ok(o.signing_keys.is_empty(), "a key in the checked config".into())
        }
        ("plans.integrations.issuers", "every issuer") => {
            let i = &c.plans[0].integrations[0];
            ok(i.issuers.is_none(), format!("{:?}", i.issuers))
        }
        ("oauth.name", "the mode") => {
            let o = c.issuers.first().unwrap();
            ok(
                o.name == o.mode.as_str(),
                format!("name {} of a {} issuer", o.name, o.mode.as_str()),
            )
        }
        _ => return None,
    })
}

/// Checks one alternative of one key; Err names the key, the doc's word and the code's.
fn check(row: &Row, alt: &Alternative) -> Result<(), String> {
    let key = row.full();
    // A value is checked where the key is read (`jwt: ...` names the mode); `none`, a
    // phrase and `required` where the doc's context or the section's own says.
    let ctx = match (&alt.said, &alt.context) {
        (_, Some(c)) => Some(c.clone()),
        (Said::Value(_), None) => described_context(&row.what),
        (_, None) => none_context(&key).map(str::to_string),
    };
    let base = context(&row.section, ctx.as_deref())?;
    load(&base).map_err(|e| format!("the test's context for `{key}` does not load:\n{e}\n{base}"))?;
    let without = with(&base, &row.section, &row.key, None);
    let omitted = load(&without);
    let cell = &row.default;
    match &alt.said {
        Said::Required => match omitted {
            Ok(_) => Err(format!(
                "`{key}`: the docs say `{cell}`, but the code accepts a config without it"
            )),
            Err(e) if !e.contains(&row.key) => Err(format!(
                "`{key}`: the docs say `{cell}`; a config without it is refused, but the error does not name it: {e}"
            )),
            Err(_) => Ok(()),
        },
        Said::None | Said::Phrase(_) | Said::Value(_) if omitted.is_err() => Err(format!(
            "`{key}`: the docs say the default is `{cell}`, but the code requires it: {}",
            omitted.unwrap_err()
        )),
        Said::None => {
            let c = omitted.unwrap();
            match absent(&key, &c) {
                Some(true) => Ok(()),
                Some(false) => Err(format!(
                    "`{key}`: the docs say the default is `{cell}`, but the code gives it a value:\n{c:?}"
                )),
                None => Err(format!(
                    "`{key}`: no check of `none` for this key in tests/docs/defaults.rs"
                )),
            }
        }
        Said::Phrase(p) => {
            let c = omitted.unwrap();
            match phrase(&key, p, &c) {
                Some(Ok(())) => Ok(()),
                Some(Err(code)) => Err(format!("`{key}`: the docs say the default is `{p}`, the code: {code}")),
                None => Err(format!(
                    "`{key}`: the default `{p}` has no check in tests/docs/defaults.rs (or write a TOML value in backticks)"
                )),
            }
        }
        Said::Value(v) => {
            let c = omitted.unwrap();
            let explicit = load(&with(&base, &row.section, &row.key, Some(v)))
                .map_err(|e| format!("`{key}`: the documented default `{v}` written out is refused: {e}"))?;
            let (code, doc) = (format!("{c:#?}"), format!("{explicit:#?}"));
            if code != doc && applied_later(&key, &c).as_ref() == Some(v) {
                // The checked config holds none; the part that reads it applies the doc's.
            } else if code != doc {
                return Err(format!(
                    "`{key}`: the docs say the default is `{v}`, the code's differs:\n{}",
                    diff(&doc, &code)
                ));
            }
            // The context reads the key: the doc's example (when a value and not the
            // default) changes the checked config.
            let example: Option<toml::Value> = row
                .example
                .strip_prefix('`')
                .and_then(|e| e.strip_suffix('`'))
                .and_then(|e| format!("v = {e}").parse::<toml::Table>().ok())
                .map(|t| literal_secrets(t["v"].clone()));
            match example {
                Some(e) if e == *v => Err(format!(
                    "`{key}`: the example equals the default `{v}`: give an example that shows another value"
                )),
                Some(e) => {
                    let set = load(&with(&base, &row.section, &row.key, Some(&e)))
                        .map_err(|err| format!("`{key}`: the example `{e}` is refused: {err}"))?;
                    if format!("{set:#?}") == code {
                        Err(format!(
                            "`{key}`: the test's context does not read the key (the example `{e}` changes nothing)"
                        ))
                    } else {
                        Ok(())
                    }
                }
                None => Ok(()),
            }
        }
    }
}

/// The lines of `doc` (the config with the docs' default written out) and of `code` (the
/// config without the key) that the other does not have.
fn diff(doc: &str, code: &str) -> String {
    let only = |a: &str, b: &str, tag: &str| -> Vec<String> {
        let theirs: Vec<&str> = b.lines().collect();
        a.lines()
            .filter(|l| !theirs.contains(l))
            .map(|l| format!("  {tag}: {}", l.trim()))
            .collect()
    };
    [only(doc, code, "doc "), only(code, doc, "code")].concat().join("\n")
}

#[test]
fn every_documented_default_is_the_codes() {
    let rows = rows();
    assert!(rows.len() >= 80, "{}", rows.len());
    let mut problems = Vec::new();
    let mut checked = 0;
    for row in &rows {
        let alts = match parse_default(&row.default) {
            Ok(a) => a,
            Err(e) => {
                problems.push(format!("`{}`: default `{}`: {e}", row.full(), row.default));
                continue;
            }
        };
        for alt in &alts {
            match check(row, alt) {
                Ok(()) => checked += 1,
                Err(e) => problems.push(e),
            }
        }
    }
    assert!(
        problems.is_empty(),
        "docs/configuration.md and the code disagree on defaults ({} problems):\n\n{}",
        problems.len(),
        problems.join("\n\n")
    );
    assert!(checked >= rows.len(), "{checked}");
}
