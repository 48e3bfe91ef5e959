//! The operator documents cannot drift from the code: every metric defined in
//! `src/metrics.rs` is in `docs/metrics.md`, and nothing else is; every config key is in
//! docs/configuration.md with the default the code gives it (`docs/defaults.rs`); unknown
//! keys are what the docs say (`docs/unknown_keys.rs`); the assertion carries the claims
//! README lists, with their meaning (`docs/assertion.rs`); README's demo walkthrough runs
//! as written (`docs/walkthrough.rs`).

use std::collections::BTreeSet;

#[path = "support/mod.rs"]
#[allow(unused)]
mod support;

#[path = "docs/assertion.rs"]
mod assertion;
#[path = "docs/defaults.rs"]
mod defaults;
#[path = "docs/unknown_keys.rs"]
mod unknown_keys;
#[path = "docs/walkthrough.rs"]
mod walkthrough;

fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("portcullis_") {
        let tail = &rest[i..];
        let name: String = tail
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // Only names that follow a quote or a backtick are metric names.
        let before = rest[..i].chars().last();
        if matches!(before, Some('"') | Some('`')) && name.len() > "portcullis_".len() {
            out.insert(name.clone());
        }
        rest = &tail[name.len().max(1)..];
    }
    out
}

#[test]
fn every_metric_is_documented_and_nothing_else() {
    let root = env!("CARGO_MANIFEST_DIR");
    let code = metric_names(&std::fs::read_to_string(format!("{root}/src/metrics.rs")).unwrap());
    let doc = metric_names(&std::fs::read_to_string(format!("{root}/docs/metrics.md")).unwrap());
    assert!(code.len() >= 18, "{code:?}");
    let missing: Vec<_> = code.difference(&doc).collect();
    let stale: Vec<_> = doc.difference(&code).collect();
    assert!(missing.is_empty(), "metrics missing from docs/metrics.md: {missing:?}");
    assert!(
        stale.is_empty(),
        "docs/metrics.md lists metrics the code does not have: {stale:?}"
    );
}

#[test]
fn alerts_and_dashboard_use_only_real_metrics() {
    let root = env!("CARGO_MANIFEST_DIR");
    let code = metric_names(&std::fs::read_to_string(format!("{root}/src/metrics.rs")).unwrap());
    let mut alerts = std::fs::read_to_string(format!("{root}/deploy/prometheus/alerts.yml")).unwrap();
    alerts += &std::fs::read_to_string(format!("{root}/deploy/grafana/portcullis-dashboard.json")).unwrap();
    for word in alerts.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if let Some(base) = word.strip_prefix("portcullis_") {
            let known = code.iter().any(|m| {
                word == m
                    || [format!("{m}_bucket"), format!("{m}_sum"), format!("{m}_count")].contains(&word.to_string())
            });
            assert!(known, "alerts.yml uses unknown metric portcullis_{base}");
        }
    }
}

/// Config keys by section, from the config model's serde mirror (`src/config/raw.rs`):
/// each struct's `pub` fields, and the fields of the endpoint `auth` variants.
fn code_keys() -> BTreeSet<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let raw = std::fs::read_to_string(format!("{root}/src/config/raw.rs")).unwrap();
    // Struct -> the section(s) whose keys it holds.
    let sections: &[(&str, &[&str])] = &[
        ("Listen", &["listen"]),
        ("Tls", &["listen.tls"]),
        ("Address", &["admin", "egress"]),
        ("ForwardAuth", &["forward_auth"]),
        ("Limits", &["limits"]),
        ("AuthSection", &["auth"]),
        ("Cache", &["cache"]),
        ("Lockout", &["lockout"]),
        ("Shared", &["shared"]),
        ("Runtime", &["runtime"]),
        ("Tracing", &["tracing"]),
        ("Assertion", &["assertion"]),
        ("User", &["users"]),
        ("Plan", &["plans"]),
        ("Integration", &["plans.integrations"]),
        ("Rate", &["plans.rate", "plans.integrations.rate"]),
        ("ApiKey", &["api_keys"]),
        ("OAuth", &["oauth"]),
        ("OAuthClient", &["oauth.clients"]),
        ("Endpoint", &["endpoints"]),
        ("OAuth2Auth", &["endpoints.auth"]),
        ("SignatureAuth", &["endpoints.auth"]),
    ];
    let mut keys = BTreeSet::new();
    let mut current: Option<&[&str]> = None;
    let mut in_auth_enum = false;
    for line in raw.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("pub struct ") {
            let name = rest.split([' ', '{']).next().unwrap();
            current = sections.iter().find(|(s, _)| *s == name).map(|(_, secs)| *secs);
            in_auth_enum = false;
            continue;
        }
        if t.starts_with("pub enum ") {
            current = None;
            in_auth_enum = t.starts_with("pub enum EndpointAuth");
            continue;
        }
        if t == "}" && !line.starts_with("    ") {
            current = None;
            in_auth_enum = false;
            continue;
        }
        if let Some(secs) = current {
            if let Some(field) = t.strip_prefix("pub ").and_then(|f| f.split(':').next()) {
                for s in secs {
                    keys.insert(format!("{s}.{field}"));
                }
            }
        }
        if in_auth_enum
            && line.starts_with("        ")
            && t.contains(':')
            && !t.starts_with('#')
            && !t.starts_with("//")
        {
            let field = t.split(':').next().unwrap();
            keys.insert(format!("endpoints.auth.{field}"));
        }
    }
    keys.insert("endpoints.auth.type".into());
    keys
}

/// Keys documented in docs/configuration.md: the first column of each table, under the
/// section its heading names (`## \`[limits]\``, `### \`[[endpoints]]\` \`auth\``).
fn doc_keys() -> BTreeSet<String> {
    defaults::rows().iter().map(defaults::Row::full).collect()
}

/// A builtin issuer's access token for client `id` (client credentials grant) from the
/// token endpoint at `url`.
async fn client_credentials_token(client: &reqwest::Client, url: String, id: &str, secret: &str) -> String {
    let answer: serde_json::Value = client
        .post(url)
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["access_token"].as_str().expect("a token").to_string()
}

#[test]
fn every_config_key_is_documented_and_nothing_else() {
    let code = code_keys();
    let doc = doc_keys();
    assert!(code.len() >= 80, "{code:?}");
    let missing: Vec<_> = code.difference(&doc).collect();
    let stale: Vec<_> = doc.difference(&code).collect();
    assert!(
        missing.is_empty(),
        "config keys missing from docs/configuration.md: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "docs/configuration.md documents keys the code does not read: {stale:?}"
    );
}

/// The refusal reasons the code can emit, read from its source: the `Reason`,
/// `Refusal` and `EgressError` reason tables, the reasons given to 502/503 refusals and
/// to the OAuth endpoints' errors (their last literal argument).
fn code_reasons() -> BTreeSet<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut files = Vec::new();
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    walk(&std::path::Path::new(root).join("src"), &mut files);
    let snake = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c == '_');
    let literals = |text: &str| -> Vec<String> { text.split('"').skip(1).step_by(2).map(str::to_string).collect() };
    let mut out = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        // Reason tables: the match arms of `Reason::as_str`, `Refusal::reason` and
        // `EgressError::reason`.
        let tables = [
            "impl Reason {",
            "impl Answer for Refusal {",
            "impl Answer for EgressError {",
        ];
        for head in [
            "pub fn as_str(self) -> &'static str {",
            "fn reason(&self) -> &'static str {",
        ] {
            for (i, _) in text.match_indices(head) {
                let owner = text[..i].rfind("\nimpl ").map(|k| &text[k + 1..i]);
                if !owner.is_some_and(|o| tables.iter().any(|t| o.starts_with(t))) {
                    continue;
                }
                {
                    let body = &text[i..];
                    let end = body.find("\n    }\n").unwrap_or(body.len());
                    for l in body[..end].lines().filter(|l| l.contains("=>")) {
                        out.extend(literals(l).into_iter().filter(|s| snake(s)));
                    }
                }
            }
        }
        // Reasons handed to refusals, verdicts and failures.
        for pat in [
            "BadGateway(\"",
            "Unavailable(\"",
            "reason: \"",
            "reason: if",
            "unavailable(\"",
        ] {
            for (i, _) in text.match_indices(pat) {
                let tail = &text[i..];
                let stmt = &tail[..tail
                    .find([';', '}', ')'])
                    .map_or(tail.len(), |j| (j + 80).min(tail.len()))];
                out.extend(literals(stmt).into_iter().filter(|s| snake(s)).take(2));
            }
        }
        // OAuth endpoint errors: the fifth argument is the reason, when it is a literal.
        for (i, _) in text.match_indices("OAuthError::new(") {
            let tail = &text[i + "OAuthError::new(".len()..];
            let (mut depth, mut args, mut start) = (0, Vec::new(), 0);
            for (j, c) in tail.char_indices() {
                match c {
                    '(' | '[' | '{' => depth += 1,
                    ',' if depth == 0 => {
                        args.push(&tail[start..j]);
                        start = j + 1;
                    }
                    ')' | ']' | '}' if depth == 0 => {
                        args.push(&tail[start..j]);
                        break;
                    }
                    ')' | ']' | '}' => depth -= 1,
                    _ => {}
                }
            }
            if let Some(reason) = args.get(4).map(|a| a.trim()) {
                if let Some(lit) = reason.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
                    out.insert(lit.to_string());
                }
            }
        }
    }
    // Words of the code that are not reasons.
    for not_reason in ["fn", "new"] {
        out.remove(not_reason);
    }
    out
}

#[test]
fn every_refusal_reason_is_in_the_troubleshooting_table() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let start = readme
        .find("### 401/403 troubleshooting")
        .expect("troubleshooting section");
    let table = &readme[start..];
    let table = &table[..table[4..].find("\n## ").map_or(table.len(), |i| i + 4)];
    let reasons = code_reasons();
    assert!(reasons.len() >= 40, "{reasons:?}");
    let missing: Vec<_> = reasons.iter().filter(|r| !table.contains(&format!("`{r}`"))).collect();
    assert!(
        missing.is_empty(),
        "reasons the code emits but README's troubleshooting section does not explain: {missing:?}"
    );
}

/// The threat model cannot drift from the suite: every test it names exists, every
/// surface section names at least one, and README links to each section.
#[test]
fn the_threat_model_names_only_real_tests() {
    let root = env!("CARGO_MANIFEST_DIR");
    let model = std::fs::read_to_string(format!("{root}/SECURITY.md")).unwrap();
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let mut named = 0;
    for (i, _) in model.match_indices("`tests/") {
        let cite = &model[i + 1..];
        let cite = &cite[..cite.find('`').unwrap()];
        if cite.starts_with("tests/FILE.rs") {
            continue; // the legend
        }
        let (file, test) = cite
            .split_once("::")
            .unwrap_or_else(|| panic!("`{cite}` names no test"));
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap_or_else(|_| panic!("{file} is not a file"));
        assert!(
            text.contains(&format!("fn {test}(")),
            "SECURITY.md cites {file}::{test}, which does not exist"
        );
        named += 1;
    }
    assert!(named >= 100, "{named}");
    let sections: Vec<&str> = model
        .split("\n## ")
        .skip(1)
        .filter(|s| s.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert!(sections.len() >= 15, "{}", sections.len());
    for s in sections {
        let title = s.lines().next().unwrap();
        assert!(s.contains("`tests/"), "section `{title}` names no test");
        let number = title.split('.').next().unwrap();
        assert!(
            readme.contains(&format!("[SECURITY.md §{number}](SECURITY.md#")),
            "README's security table does not link section {title}"
        );
    }
}

/// What the registry really exports, not just what `src/metrics.rs` names: every family of
/// a fresh registry's text (the process collector's `process_*` too) is in
/// docs/metrics.md, in backticks.
#[test]
fn every_exported_family_is_documented() {
    let root = env!("CARGO_MANIFEST_DIR");
    let doc = std::fs::read_to_string(format!("{root}/docs/metrics.md")).unwrap();
    let text = portcullis::metrics::Metrics::new().render();
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert!(families.contains(&"portcullis_build_info"), "{text}");
    #[cfg(target_os = "linux")]
    assert!(families.contains(&"process_resident_memory_bytes"), "{text}");
    let missing: Vec<_> = families.iter().filter(|f| !doc.contains(&format!("`{f}`"))).collect();
    assert!(missing.is_empty(), "exported but not in docs/metrics.md: {missing:?}");
}

/// The "did you mean" table names every key of the config model and nothing else (the
/// endpoint `auth` tables aside: serde lists their keys itself).
#[test]
fn the_did_you_mean_table_is_the_config_model() {
    let code: BTreeSet<String> = code_keys()
        .into_iter()
        .filter(|k| !k.starts_with("endpoints.auth."))
        .collect();
    let mut table = BTreeSet::new();
    // Rule tables (`access`, `senders`) are values in the model, not sections of it;
    // `[[oauth.issuers]]` entries take `[oauth]`'s keys, which the docs list once.
    for (section, keys) in portcullis::config::KNOWN_KEYS
        .iter()
        .filter(|(s, _)| !s.ends_with(".access") && !s.ends_with(".senders") && !s.starts_with("oauth.issuers"))
    {
        for key in *keys {
            table.insert(if section.is_empty() {
                key.to_string()
            } else {
                format!("{section}.{key}")
            });
        }
    }
    let sections: BTreeSet<String> = code.iter().map(|k| k.split('.').next().unwrap().to_string()).collect();
    let code: BTreeSet<String> = code.into_iter().chain(sections).collect();
    let missing: Vec<_> = code.difference(&table).collect();
    let stale: Vec<_> = table.difference(&code).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "KNOWN_KEYS lacks {missing:?}, has stale {stale:?}"
    );
}
