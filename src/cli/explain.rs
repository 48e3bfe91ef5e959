//! `portcullis explain METHOD URL`: what the gateway would do with one request, and the
//! fix for a refusal.

use std::path::PathBuf;
use std::process::ExitCode;

use super::load_config;
use crate::config::{self, redact::Redactor};

/// A request target as `explain` prints it: the path, and the query's names with their
/// values removed (`/hook?apiKey=REMOVED&token=REMOVED`). The target was parsed as a URI,
/// so it holds no control or non-ASCII byte.
fn target_text(uri: &http::Uri) -> String {
    let mut out = uri.path().to_string();
    if let Some(q) = uri.query() {
        out.push('?');
        out.push_str(&config::redact::query_names(q));
    }
    out
}

/// A value of an unverified token, JSON-quoted, at most 80 characters.
fn claim_text(v: &serde_json::Value) -> String {
    let t = v.to_string();
    match t.char_indices().nth(80) {
        Some((i, _)) => format!("{}...", &t[..i]),
        None => t,
    }
}

/// Where credentials are, without their secrets. A user part of Basic is shown only when
/// it is a configured user or API key id (`known`): otherwise it may be a secret typed in
/// the wrong field. An `Authorization` value is never shown, nor a scheme unless the
/// value has the `scheme credentials` form and the scheme is a short token.
fn credentials_found(parts: &http::request::Parts, known: &dyn Fn(&str) -> bool) -> Vec<String> {
    use base64::Engine;
    let mut found = Vec::new();
    for v in parts.headers.get_all(http::header::AUTHORIZATION) {
        let b = v.as_bytes();
        let (scheme, rest) = match b.iter().position(|c| *c == b' ') {
            Some(i) => (&b[..i], b[i + 1..].trim_ascii()),
            None => (b, &b""[..]),
        };
        let what = if scheme.eq_ignore_ascii_case(b"basic") {
            match base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()
                .and_then(|raw| String::from_utf8(raw).ok())
            {
                Some(text) => match text.split_once(':') {
                    Some((user, _)) if known(user) => {
                        format!("Authorization: Basic, user part `{user}` (a user for basic, or a key id for api_key)")
                    }
                    Some(_) => "Authorization: Basic, user part not a configured user or key id (not shown: it may be a secret in the wrong field)".into(),
                    None => "Authorization: Basic, but no `:` between user and secret".into(),
                },
                None => "Authorization: Basic, but not base64 of UTF-8 text".into(),
            }
        } else if scheme.eq_ignore_ascii_case(b"bearer") {
            let claims = rest
                .split(|c| *c == b'.')
                .nth(1)
                .and_then(|p| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).ok())
                .and_then(|j| serde_json::from_slice::<serde_json::Value>(&j).ok());
            match claims {
                Some(c) => format!(
                    "Authorization: Bearer, a JWT with iss={} sub={} aud={} exp={}",
                    claim_text(&c["iss"]),
                    claim_text(&c["sub"]),
                    claim_text(&c["aud"]),
                    claim_text(&c["exp"])
                ),
                None => "Authorization: Bearer, an opaque token".into(),
            }
        } else if !rest.is_empty()
            && (1..=20).contains(&scheme.len())
            && scheme.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        {
            format!(
                "Authorization: scheme `{}` (not one Portcullis reads)",
                String::from_utf8_lossy(scheme)
            )
        } else {
            "Authorization: a value without a scheme (not shown; Portcullis reads Basic and Bearer)".into()
        };
        found.push(what);
    }
    if let Some(q) = parts.uri.query() {
        let keys = url::form_urlencoded::parse(q.as_bytes())
            .filter(|(k, _)| k == "apiKey")
            .count();
        if keys > 0 {
            found.push(format!("?apiKey= in the query ({keys} value(s))"));
        }
    }
    found
}

/// `portcullis explain`. Nothing it prints quotes what came from the request beyond the
/// path, the query's names, configured user and key names and a JWT's public claims:
/// not the query's values, an `Authorization` or other header's value, the URL's user
/// info, nor (in errors) the arguments themselves.
pub(super) fn run(path: PathBuf, client: std::net::IpAddr, headers: &[String], method: &str, url: &str) -> ExitCode {
    let fail = |m: String| {
        eprintln!("portcullis: {m}");
        ExitCode::FAILURE
    };
    let loaded = match load_config(&path) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let parts = match request(method, url, headers) {
        Ok(parts) => parts,
        Err(e) => return fail(e.to_string()),
    };
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let names: std::collections::HashSet<String> = loaded
        .config
        .users
        .iter()
        .map(|u| u.name.clone())
        .chain(loaded.config.api_keys.iter().map(|k| k.key.clone()))
        .collect();
    let known = |n: &str| names.contains(n);
    let found = credentials_found(&parts, &known);
    let request = format!("{} {} from {client}", parts.method, target_text(&parts.uri));
    let result = rt.block_on(async move {
        let state = crate::state::State::new(loaded.config).map_err(|e| e.to_string())?;
        let gw = state.gateway();
        Ok::<_, String>(crate::inbound::explain(&gw, parts, client).await)
    });
    let e = match result {
        Ok(e) => e,
        Err(m) => return fail(Redactor::of_file(&path).text(&m)),
    };
    print(&e, &request, &found, &known)
}

/// The request `explain` decides on, from its arguments. Errors never quote them: they
/// may hold secrets.
fn request(method: &str, url: &str, headers: &[String]) -> anyhow::Result<http::request::Parts> {
    let uri: http::Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => {
            anyhow::bail!("the URL argument is not a URL ({e}); it is not shown, it may hold secrets")
        }
    };
    let Ok(method) = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
        anyhow::bail!("the METHOD argument is not an HTTP method (the arguments are METHOD then URL)");
    };
    let mut builder = http::Request::builder()
        .method(method)
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()));
    for (n, h) in headers.iter().enumerate() {
        let Some((name, value)) = h.split_once(':') else {
            anyhow::bail!(
                "header argument {} is not `Name: value` (not shown: it may hold a secret)",
                n + 1
            );
        };
        builder = builder.header(name.trim(), value.trim());
    }
    // The Host a client would send: the URL's host and port, never its user info; for a
    // bare path without a Host argument, `localhost` (every HTTP/1.1 client sends one).
    let host_given = headers.iter().any(|h| {
        h.split_once(':')
            .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case("host"))
    });
    match uri.authority() {
        Some(a) => builder = builder.header(http::header::HOST, crate::headers::HostPort::of(a).to_string()),
        None if !host_given => builder = builder.header(http::header::HOST, "localhost"),
        None => {}
    }
    match builder.body(()) {
        Ok(r) => Ok(r.into_parts().0),
        Err(e) => Err(anyhow::anyhow!("cannot form the request: {e}")),
    }
}

/// One authorization rule and its value. A `when` that reads headers or the query is
/// marked as reading what the client chooses, and its error message is not shown (it may
/// quote a header's value).
fn rule_text(r: &crate::authz::Judged) -> String {
    let value = match &r.value {
        Ok(true) => "passes".to_string(),
        Ok(false) => "false (refuses)".to_string(),
        Err(_) if r.client_controlled => {
            "error (the message is not shown: it may quote a header or query value)".to_string()
        }
        Err(m) => format!("error: {m}"),
    };
    let mut out = format!("{:<17}{value}", r.rule);
    if let Some(source) = &r.source {
        out.push_str(&format!("  `{source}`"));
    }
    if r.client_controlled {
        out.push_str("  [reads request headers or query: input the client controls]");
    }
    out
}

/// What `explain` found and decided, one line each; the exit code: 0 allowed, 2 refused.
fn print(e: &crate::inbound::Explanation, request: &str, found: &[String], known: &dyn Fn(&str) -> bool) -> ExitCode {
    println!("request      {request}");
    match &e.route {
        Some((plan, integration, pattern, methods)) => println!(
            "route        plan `{plan}`, integration `{integration}` (path `{pattern}`, methods {})",
            methods.join(", ")
        ),
        None => println!("route        none"),
    }
    if !e.methods.is_empty() {
        let m: Vec<&str> = e.methods.iter().map(|m| m.as_str()).collect();
        println!("auth         {}", m.join(", "));
    }
    if found.is_empty() {
        println!("credentials  none found");
    }
    for f in found {
        println!("credentials  {f}");
    }
    match (&e.principal, &e.named) {
        (Some(p), _) => println!(
            "principal    `{}` by {}{}, roles [{}]",
            p.user,
            p.method.as_str(),
            p.issuer
                .as_deref()
                .map(|i| format!(" (issuer `{i}`)"))
                .unwrap_or_default(),
            p.roles.join(", ")
        ),
        (None, Some((who, how))) if known(who) => println!("principal    `{who}` by {}", how.as_str()),
        (None, Some((_, how))) => println!(
            "principal    not a configured user or key (not shown: it may be a mistyped secret) by {}",
            how.as_str()
        ),
        (None, None) => {}
    }
    for r in &e.rules {
        println!("rule         {}", rule_text(r));
    }
    for (scope, limit, step) in &e.rates {
        let key = match limit.key {
            crate::config::RateKey::Principal => "per principal",
            crate::config::RateKey::ClientIp => "per client IP",
            crate::config::RateKey::Integration => "shared by every caller",
        };
        println!(
            "rate         {scope}: {} per {}, burst {}, {key}: {} of a full budget (the server's own budget left is in its answers' RateLimit field)",
            limit.requests,
            humantime::format_duration(limit.per),
            limit.burst,
            step.remaining
        );
    }
    match &e.decision {
        Ok(_) if e.endpoint.is_some() => {
            println!(
                "decision     answered by the builtin OAuth issuer itself (`{}`): no route, nothing forwarded; explain does not run its grants",
                e.endpoint.unwrap_or("")
            );
            ExitCode::SUCCESS
        }
        Ok(upstream) => {
            println!("decision     allowed: forwarded to {upstream}");
            ExitCode::SUCCESS
        }
        Err((status, reason, message)) => {
            println!("decision     {status} {reason}: {message}");
            if let Some(fix) = super::fixes::fix_for(reason) {
                println!("fix          {fix}");
            }
            ExitCode::from(2)
        }
    }
}
