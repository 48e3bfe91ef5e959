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

pub async fn handle(state: Arc<State>, req: Request<Incoming>, conn: Arc<ConnInfo>) -> Response<Body> {
    let request_id = headers::new_request_id();
    // The listener's configured address (it cannot change under a running process); the
    // connection's own local address if there is none.
    let bound = state.gateway().config.admin.unwrap_or(conn.local);
    if let Err((status, message)) = addressed_to_us(&req, bound) {
        return json_error(status, message, &request_id);
    }
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

// === the Host rule (DNS rebinding) ===

/// What the admin listener refuses about a request's authority: the status and the message.
type Misaddressed = (StatusCode, &'static str);

const NOT_OURS: &str = "the admin listener answers only requests addressed to its IP address or to localhost";
const BAD_HOST: &str = "the request must name exactly one valid authority (Host or :authority)";

/// Whether a request is addressed to this listener, against DNS rebinding: a web page in
/// the operator's browser whose name the attacker points at the admin address would
/// otherwise read `/refusals` (user names, paths) as same-origin.
///
/// - HTTP/1.x: exactly one `Host` field (none, or two, is 400). An absolute-form target's
///   authority must be acceptable too and equal to `Host` (ASCII case aside).
/// - HTTP/2: `:authority`, or `Host` when there is no `:authority`; both present must be
///   equal. Neither is 400.
/// - Each authority is `host[:port]` without user info (else 400), and the host is
///   `localhost` (ASCII case aside), or an IP literal: any one when the listener is bound
///   to an unspecified address (`0.0.0.0`, `[::]`: Prometheus and the kubelet name the
///   pod's IP), else the listener's own IP, or any loopback IP when it is bound to
///   loopback. Every other name is 421: rebinding needs a DNS name, and the only one
///   accepted is `localhost`, which a web page cannot point elsewhere. The port is not
///   compared: port forwards (`ssh -L`, `kubectl port-forward`, `docker -p`) change it,
///   and it protects nothing (the browser's origin is the host name).
pub fn addressed_to_us<B>(req: &Request<B>, bound: std::net::SocketAddr) -> Result<(), Misaddressed> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err((StatusCode::BAD_REQUEST, BAD_HOST));
    }
    let target = req.uri().authority().map(|a| a.as_str().as_bytes());
    let authority = match (req.version(), target, host) {
        (_, Some(t), Some(h)) if !t.eq_ignore_ascii_case(h.as_bytes()) => {
            return Err((StatusCode::BAD_REQUEST, BAD_HOST))
        }
        (_, _, Some(h)) => h.as_bytes(),
        (http::Version::HTTP_2 | http::Version::HTTP_3, Some(t), None) => t,
        // An HTTP/1.x request names its authority in Host, whatever its target's form.
        (_, _, None) => return Err((StatusCode::BAD_REQUEST, BAD_HOST)),
    };
    host_allowed(authority, bound)
}

/// The Host rule for one authority value: see [`addressed_to_us`].
fn host_allowed(authority: &[u8], bound: std::net::SocketAddr) -> Result<(), Misaddressed> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    enum Named<'a> {
        Name(&'a str),
        Ip(IpAddr),
    }
    let bad = (StatusCode::BAD_REQUEST, BAD_HOST);
    let text = std::str::from_utf8(authority).map_err(|_| bad)?;
    let (host, port) = match text.strip_prefix('[') {
        Some(rest) => {
            let (ip, after) = rest.split_once(']').ok_or(bad)?;
            let ip: Ipv6Addr = ip.parse().map_err(|_| bad)?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or(bad)?),
            };
            (Named::Ip(IpAddr::V6(ip)), port)
        }
        None => {
            let (name, port) = match text.split_once(':') {
                Some((n, p)) => (n, Some(p)),
                None => (text, None),
            };
            match name.parse::<Ipv4Addr>() {
                Ok(ip) => (Named::Ip(IpAddr::V4(ip)), port),
                Err(_) => (Named::Name(name), port),
            }
        }
    };
    if let Some(p) = port {
        let digits = !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
        if !digits || p.parse::<u16>().map_or(true, |n| n == 0) {
            return Err(bad);
        }
    }
    match host {
        // A name: letters, digits, `-` and `.` only (no user info, no second `:`).
        Named::Name(name) => {
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !valid {
                Err(bad)
            } else if name.eq_ignore_ascii_case("localhost") {
                Ok(())
            } else {
                Err((StatusCode::MISDIRECTED_REQUEST, NOT_OURS))
            }
        }
        Named::Ip(ip) => {
            let ip = ip.to_canonical();
            let own = bound.ip().to_canonical();
            if own.is_unspecified() || ip == own || (own.is_loopback() && ip.is_loopback()) {
                Ok(())
            } else {
                Err((StatusCode::MISDIRECTED_REQUEST, NOT_OURS))
            }
        }
    }
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
            format!("{scheme}://{}{base_path}", crate::headers::HostPort::of(authority))
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
            if r.detail.is_empty() {
                esc(r.reason)
            } else {
                esc(&format!("{} ({})", r.reason, r.detail))
            }
        ));
    }
    h.push_str("</table></body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(host: &str, bound: &str) -> u16 {
        let req = Request::builder().header(header::HOST, host).body(()).unwrap();
        match addressed_to_us(&req, bound.parse().unwrap()) {
            Ok(()) => 200,
            Err((status, _)) => status.as_u16(),
        }
    }

    /// The rule for binds a test cannot make on loopback alone: an unspecified address
    /// (containers, Kubernetes) and a specific non-loopback one.
    #[test]
    fn hosts_by_bind() {
        for any in ["0.0.0.0:9901", "[::]:9901"] {
            for ok in [
                "10.1.2.3:9901",
                "10.1.2.3",
                "[fd00::7]:9901",
                "127.0.0.1:9901",
                "localhost:9901",
                "LocalHost",
            ] {
                assert_eq!(check(ok, any), 200, "{ok} on {any}");
            }
            for name in [
                "portcullis.svc.cluster.local:9901",
                "rebind.attacker.test:9901",
                "10.1.2.3.nip.io:9901",
            ] {
                assert_eq!(check(name, any), 421, "{name} on {any}");
            }
        }
        let specific = "10.1.2.3:9901";
        assert_eq!(check("10.1.2.3:9901", specific), 200);
        assert_eq!(
            check("[::ffff:10.1.2.3]:9901", specific),
            200,
            "IPv4-mapped is the same address"
        );
        assert_eq!(check("localhost:9901", specific), 200);
        assert_eq!(check("10.1.2.4:9901", specific), 421);
        assert_eq!(
            check("127.0.0.1:9901", specific),
            421,
            "loopback only on a loopback bind"
        );
        for malformed in [
            "",
            ":9901",
            "a b",
            "user@10.1.2.3",
            "10.1.2.3:",
            "10.1.2.3:0",
            "10.1.2.3:65536",
            "10.1.2.3:+1",
            "::1",
            "[::1",
            "[fe80::1%25eth0]",
            "[::1]9901",
            "localhost:1:2",
        ] {
            assert_eq!(check(malformed, specific), 400, "{malformed:?}");
        }
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(esc("<script>\"&'"), "&lt;script&gt;&quot;&amp;&#39;");
    }
}
