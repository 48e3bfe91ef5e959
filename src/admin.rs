//! The admin listener: `/healthz`, `/readyz`, `/metrics` (Prometheus text), and for people
//! `/` (one self-contained HTML page, rendered here, refreshing itself every 5 s), with
//! the same data as JSON at `/status` and `/refusals`. It never shows a secret: no query
//! strings, no credentials, URLs without user info.

use std::collections::HashMap;
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use prometheus::core::Collector;
use serde_json::{json, Value};

use crate::config::Upstream;
use crate::error::{full, json_error, Body};
use crate::headers;
use crate::server::listener::ConnInfo;
use crate::state::State;

pub async fn handle(state: Arc<State>, req: Request<Incoming>, _conn: Arc<ConnInfo>) -> Response<Body> {
    let request_id = headers::new_request_id();
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "admin endpoints answer GET only",
            &request_id,
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    const TEXT: &str = "text/plain; charset=utf-8";
    const JSON: &str = "application/json";
    let (status, content_type, body) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, TEXT, "ok\n".to_string()),
        "/readyz" if state.is_ready() => (StatusCode::OK, TEXT, "ready\n".to_string()),
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready\n".to_string()),
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics.render(),
        ),
        "/status" => (StatusCode::OK, JSON, status(&state).to_string()),
        "/refusals" => (StatusCode::OK, JSON, json!(state.refusals()).to_string()),
        "/" => (StatusCode::OK, "text/html; charset=utf-8", page(&state)),
        _ => return json_error(StatusCode::NOT_FOUND, "no such admin endpoint", &request_id),
    };
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    h.insert(headers::X_REQUEST_ID, request_id);
    resp
}

const OUTCOMES: [&str; 6] = [
    "allowed",
    "unauthenticated",
    "forbidden",
    "locked_out",
    "bad_request",
    "upstream_error",
];

/// `portcullis_requests_total` summed per (plan, integration, outcome).
fn counters(state: &State) -> HashMap<(String, String, String), u64> {
    let mut out: HashMap<(String, String, String), u64> = HashMap::new();
    for family in state.metrics.requests.collect() {
        for m in family.get_metric() {
            let mut plan = String::new();
            let mut integration = String::new();
            let mut outcome = String::new();
            for l in m.get_label() {
                match l.name() {
                    "plan" => plan = l.value().to_string(),
                    "integration" => integration = l.value().to_string(),
                    "outcome" => outcome = l.value().to_string(),
                    _ => {}
                }
            }
            *out.entry((plan, integration, outcome)).or_default() += m.get_counter().get_value() as u64;
        }
    }
    out
}

fn upstream_text(u: &Upstream) -> String {
    match u {
        Upstream::Echo => "builtin:echo".into(),
        // The authority's host and port only: user info never shows.
        Upstream::Http {
            scheme,
            authority,
            base_path,
            ..
        } => {
            let host = authority.host();
            match authority.port_u16() {
                Some(p) => format!("{scheme}://{host}:{p}{base_path}"),
                None => format!("{scheme}://{host}{base_path}"),
            }
        }
    }
}

fn url_text(u: &url::Url) -> String {
    let mut u = u.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.to_string()
}

/// The same data as the page, as JSON.
pub fn status(state: &State) -> Value {
    let gw = state.gateway();
    let counts = counters(state);
    let mut plans: Vec<Value> = Vec::new();
    for plan in &gw.config.plans {
        let integrations: Vec<Value> = gw
            .routes()
            .iter()
            .filter(|r| r.plan == plan.name)
            .map(|r| {
                let c: serde_json::Map<String, Value> = OUTCOMES
                    .iter()
                    .map(|o| {
                        let n = counts
                            .get(&(r.plan.clone(), r.integration.clone(), o.to_string()))
                            .copied()
                            .unwrap_or(0);
                        (o.to_string(), json!(n))
                    })
                    .collect();
                json!({
                    "name": r.integration,
                    "path": r.path,
                    "methods": r.methods.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
                    "auth": r.auth.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
                    "requests": c,
                })
            })
            .collect();
        plans.push(json!({
            "name": plan.name,
            "upstream": upstream_text(&plan.upstream),
            "integrations": integrations,
        }));
    }
    let mut endpoints: Vec<Value> = gw
        .config
        .endpoints
        .iter()
        .filter_map(|e| {
            let rt = gw.egress.endpoints.get(&e.name)?;
            let last = rt.last_status.load(std::sync::atomic::Ordering::Relaxed);
            Some(json!({
                "name": e.name,
                "base_url": url_text(&e.base_url),
                "auth": rt.auth_type(),
                "last_status": if last == 0 { Value::Null } else { json!(last) },
                "token": rt.token_state(),
            }))
        })
        .collect();
    endpoints.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    json!({
        "config_file": gw.config.file.display().to_string(),
        "ready": state.is_ready(),
        "last_reload": state.reload_status(),
        "plans": plans,
        "endpoints": endpoints,
        "refusals": state.refusals().len(),
    })
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => esc(s),
        Value::Null => "&mdash;".into(),
        Value::Array(a) => esc(&a
            .iter()
            .map(|x| x.as_str().map_or(x.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(", ")),
        other => esc(&other.to_string()),
    }
}

fn page(state: &State) -> String {
    let s = status(state);
    let mut h = String::new();
    h.push_str(concat!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta http-equiv=\"refresh\" content=\"5\"><title>Portcullis</title><style>",
        "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}",
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}",
        "th{background:#f3f3f3}.bad{color:#a00;font-weight:600}.ok{color:#070}code{font-size:13px}",
        "</style></head><body><h1>Portcullis</h1>"
    ));
    let reload = &s["last_reload"];
    let ok = reload["ok"].as_bool().unwrap_or(false);
    h.push_str(&format!(
        "<p>Config <code>{}</code>; ready: {}. Last load: <span class=\"{}\">{}</span> ({}, {}).</p>",
        cell(&s["config_file"]),
        cell(&s["ready"]),
        if ok { "ok" } else { "bad" },
        cell(&reload["message"]),
        cell(&reload["trigger"]),
        reload["at"].as_u64().map_or("&mdash;".into(), |t| {
            esc(
                &humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t))
                    .to_string(),
            )
        }),
    ));
    h.push_str("<h2>Plans and integrations</h2><table><tr><th>plan</th><th>upstream</th><th>integration</th><th>path</th><th>methods</th><th>auth</th>");
    for o in OUTCOMES {
        h.push_str(&format!("<th>{o}</th>"));
    }
    h.push_str("</tr>");
    for plan in s["plans"].as_array().into_iter().flatten() {
        for i in plan["integrations"].as_array().into_iter().flatten() {
            h.push_str(&format!(
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td>",
                cell(&plan["name"]),
                cell(&plan["upstream"]),
                cell(&i["name"]),
                cell(&i["path"]),
                cell(&i["methods"]),
                cell(&i["auth"])
            ));
            for o in OUTCOMES {
                h.push_str(&format!("<td>{}</td>", cell(&i["requests"][o])));
            }
            h.push_str("</tr>");
        }
    }
    h.push_str("</table><h2>Egress endpoints</h2><table><tr><th>endpoint</th><th>base URL</th><th>auth</th><th>last status</th><th>token</th></tr>");
    for e in s["endpoints"].as_array().into_iter().flatten() {
        h.push_str(&format!(
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            cell(&e["name"]),
            cell(&e["base_url"]),
            cell(&e["auth"]),
            cell(&e["last_status"]),
            cell(&e["token"])
        ));
    }
    h.push_str("</table><h2>Last refusals</h2><p>Newest first; the client only saw the generic message, the reason is here.</p>");
    h.push_str("<table id=\"refusals\"><tr><th>time</th><th>request id</th><th>client</th><th>integration</th><th>method</th><th>path</th><th>auth</th><th>principal</th><th>status</th><th>reason</th></tr>");
    for r in state.refusals().iter().rev() {
        h.push_str(&format!(
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td class=\"bad reason\">{}</td></tr>",
            esc(&r.time),
            esc(&r.request_id),
            esc(&r.client_ip),
            esc(&r.integration),
            esc(&r.method),
            esc(&r.path),
            esc(&r.auth_method),
            esc(&r.principal),
            r.status,
            esc(r.reason)
        ));
    }
    h.push_str("</table></body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped() {
        assert_eq!(esc("<script>\"&'"), "&lt;script&gt;&quot;&amp;&#39;");
    }
}
