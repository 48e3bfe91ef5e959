//! Policies in CEL (`when`) and `claim_headers`, against a real gateway and a real JWT
//! issuer (an Ed25519 key whose JWKS a server on 127.0.0.1 publishes): each example of
//! the docs true and false, false and erroring rules and what the client (never) learns,
//! the plan's and the integration's `when` together, `check` on the real binary at the
//! error's position, `explain` marking a policy that reads what the client controls, and
//! claims sent upstream with the client's own `X-Portcullis-*` stripped.

use crate::support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use support::*;

const ISSUER: &str = "https://idp.policy.test";

/// A JWT issuer: an Ed25519 key, its JWKS served over HTTP on 127.0.0.1.
struct Issuer {
    addr: SocketAddr,
    key: EncodingKey,
    task: tokio::task::JoinHandle<()>,
}

impl Issuer {
    async fn start() -> Issuer {
        use ring::signature::KeyPair;
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        let jwks =
            serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "ed-1", "alg": "EdDSA", "x": x}]})
                .to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else { return };
                let jwks = jwks.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
                        let body = Bytes::from(jwks.clone());
                        async move {
                            let mut resp = hyper::Response::new(Full::new(body));
                            resp.headers_mut()
                                .insert("content-type", "application/json".parse().unwrap());
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        Issuer {
            addr,
            key: EncodingKey::from_ed_der(pkcs8.as_ref()),
            task,
        }
    }

    /// A token for `sub` with the registered claims and `extra` (a null removes a claim).
    fn token(&self, extra: serde_json::Value) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let mut c = serde_json::json!({
            "iss": ISSUER, "aud": "portcullis", "sub": "carol", "groups": ["rest"],
            "exp": now + 600, "iat": now, "nbf": now - 1
        });
        for (k, v) in extra.as_object().unwrap() {
            match v {
                serde_json::Value::Null => {
                    c.as_object_mut().unwrap().remove(k);
                }
                _ => c[k] = v.clone(),
            }
        }
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some("ed-1".into());
        jsonwebtoken::encode(&h, &c, &self.key).unwrap()
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `[oauth]` of the issuer, and `[listen] trusted_proxies` when `proxied`.
fn base(issuer: &Issuer, proxied: bool) -> Config {
    let c = Config::new().section("oauth", |s| {
        s.set("mode", "jwt")
            .set("issuer", ISSUER)
            .set("audience", "portcullis")
            .set("jwks_url", format!("http://{}/jwks", issuer.addr))
            .set("roles_claim", "groups")
            .set("algorithms", vec!["EdDSA"])
    });
    if proxied {
        c.section("listen", |s| s.set("trusted_proxies", vec!["127.0.0.1/32"]))
    } else {
        c
    }
}

/// A recording upstream, the issuer, and a gateway with plan `api` (role rest, `plan_when`
/// if any) whose OAuth integrations are `whens` (name, expression), at `/NAME`.
async fn start(proxied: bool, plan_when: Option<&str>, whens: &[(&str, &str)]) -> (Upstream, Issuer, Gateway) {
    let up = Upstream::start().await;
    let issuer = Issuer::start().await;
    let toml = base(&issuer, proxied)
        .plan("api", |p| {
            let mut p = p.upstream(&up.url()).access_roles(["rest"]);
            if let Some(w) = plan_when {
                p = p.set("when", w);
            }
            whens.iter().fold(p, |p, (name, when)| with_when(p, name, when))
        })
        .to_toml();
    let gw = Gateway::start(&toml).await;
    (up, issuer, gw)
}

/// An OAuth integration at `path` (GET and POST) with `when`.
fn with_when(p: Plan, name: &str, when: &str) -> Plan {
    p.integration(name, |i| {
        i.path(&format!("/{name}"))
            .methods(["GET", "POST"])
            .auth("oauth")
            .senders_all()
            .set("when", when)
    })
}

/// The status of `method path` with `token` and extra headers.
async fn call(gw: &Gateway, method: &str, path: &str, token: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = client()
        .request(method.parse().unwrap(), gw.url(path))
        .bearer_auth(token);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

/// The newest refusal on the admin page (JSON): its reason and detail.
async fn last_refusal(gw: &Gateway) -> (String, String) {
    let resp = reqwest::get(gw.admin_url("/refusals")).await.unwrap();
    let list: serde_json::Value = resp.json().await.unwrap();
    let last = list.as_array().unwrap().last().expect("a refusal was recorded");
    (
        last["reason"].as_str().unwrap().to_string(),
        last["detail"].as_str().unwrap_or("").to_string(),
    )
}

/// A 403 with the contract's body, which names no policy and quotes no CEL message; the
/// admin page has the precise reason and the detail.
async fn refused(gw: &Gateway, resp: reqwest::Response, reason: &str) -> String {
    let body = error_body(resp, 403).await;
    let text = body.to_string();
    for leak in ["policy", "when", "claims", "No such key", "tenant", "scope"] {
        assert!(!text.contains(leak), "the answer says `{leak}`: {text}");
    }
    let (r, detail) = last_refusal(gw).await;
    assert_eq!(r, reason, "{detail}");
    detail
}

const SCOPE: &str = "'incidents:write' in claims.scope.split(' ')";
const TENANT: &str = "claims.tenant == 42";
const METHOD: &str = "request.method == 'GET' || 'admin' in principal.roles";
const SUBNET: &str = "source.ip.startsWith('10.')";
const WEEKDAY: &str = "now.getDayOfWeek() in [1, 2, 3, 4, 5]";

/// Each documented example, true and false; an erroring rule (a claim the token lacks, a
/// claim of the wrong type) is `policy_error` with CEL's message on the admin page and
/// nowhere in the answer.
#[tokio::test]
async fn each_example_is_true_and_false_and_errors_are_policy_error() {
    let whens = [
        ("scope", SCOPE),
        ("tenant", TENANT),
        ("method", METHOD),
        ("subnet", SUBNET),
    ];
    let (up, issuer, gw) = start(true, None, &whens).await;
    let t = |extra: serde_json::Value| issuer.token(extra);
    let ok = |r: reqwest::Response| assert_eq!(r.status(), 200);

    // 'incidents:write' in claims.scope.split(' ')
    ok(call(
        &gw,
        "POST",
        "/scope",
        &t(serde_json::json!({"scope": "incidents:read incidents:write"})),
        &[],
    )
    .await);
    let no = call(
        &gw,
        "POST",
        "/scope",
        &t(serde_json::json!({"scope": "incidents:read"})),
        &[],
    )
    .await;
    let detail = refused(&gw, no, "policy_denied").await;
    assert!(
        detail.contains("the integration's `when` is false") && detail.contains(SCOPE),
        "{detail}"
    );
    // A scope claim of the wrong type cannot be split; one that is missing, neither.
    let wrong = call(&gw, "POST", "/scope", &t(serde_json::json!({"scope": 17})), &[]).await;
    let detail = refused(&gw, wrong, "policy_error").await;
    assert!(detail.contains("split"), "{detail}");
    let missing = call(&gw, "POST", "/scope", &t(serde_json::json!({})), &[]).await;
    refused(&gw, missing, "policy_error").await;

    // claims.tenant == 42
    ok(call(&gw, "GET", "/tenant", &t(serde_json::json!({"tenant": 42})), &[]).await);
    let no = call(&gw, "GET", "/tenant", &t(serde_json::json!({"tenant": 7})), &[]).await;
    refused(&gw, no, "policy_denied").await;
    // The string "42" is not the number 42.
    let no = call(&gw, "GET", "/tenant", &t(serde_json::json!({"tenant": "42"})), &[]).await;
    refused(&gw, no, "policy_denied").await;
    let missing = call(&gw, "GET", "/tenant", &t(serde_json::json!({})), &[]).await;
    let detail = refused(&gw, missing, "policy_error").await;
    assert!(
        detail.contains("the integration's `when` failed") && detail.contains("No such key: tenant"),
        "{detail}"
    );

    // request.method == 'GET' || 'admin' in principal.roles
    ok(call(&gw, "GET", "/method", &t(serde_json::json!({})), &[]).await);
    let no = call(&gw, "POST", "/method", &t(serde_json::json!({})), &[]).await;
    refused(&gw, no, "policy_denied").await;
    ok(call(
        &gw,
        "POST",
        "/method",
        &t(serde_json::json!({"groups": ["rest", "admin"]})),
        &[],
    )
    .await);

    // source.ip.startsWith('10.'): the client a trusted proxy names.
    ok(call(
        &gw,
        "GET",
        "/subnet",
        &t(serde_json::json!({})),
        &[("x-forwarded-for", "10.1.2.3")],
    )
    .await);
    let no = call(&gw, "GET", "/subnet", &t(serde_json::json!({})), &[]).await;
    refused(&gw, no, "policy_denied").await;
    let no = call(
        &gw,
        "GET",
        "/subnet",
        &t(serde_json::json!({})),
        &[("x-forwarded-for", "192.168.1.1")],
    )
    .await;
    refused(&gw, no, "policy_denied").await;

    // The admin page's refusals show the detail, escaped.
    let page = reqwest::get(gw.admin_url("/")).await.unwrap().text().await.unwrap();
    assert!(
        page.contains("policy_error (the integration&#39;s `when` failed"),
        "{page}"
    );
    assert!(page.contains("No such key: tenant"), "{page}");
    // Every refusal was counted by reason.
    let m = gw.metrics().await;
    assert_eq!(metric_value(&m, &failures("policy_denied", "oauth")), 6.0, "{m}");
    assert_eq!(metric_value(&m, &failures("policy_error", "oauth")), 3.0, "{m}");
    // Only the allowed requests reached the service.
    assert_eq!(up.seen().len(), 5);
    gw.stop().await;
}

/// `source.ip` is the peer when it is no trusted proxy: a client's own
/// `X-Forwarded-For` does not put it in the subnet. `now` follows the state's clock:
/// a weekday passes, a Saturday does not.
#[tokio::test]
async fn source_ip_is_not_spoofable_and_now_is_the_days_of_the_week() {
    let (_up, issuer, gw) = start(false, None, &[("subnet", SUBNET), ("weekday", WEEKDAY)]).await;
    let token = issuer.token(serde_json::json!({}));
    let spoofed = call(&gw, "GET", "/subnet", &token, &[("x-forwarded-for", "10.1.2.3")]).await;
    refused(&gw, spoofed, "policy_denied").await;

    // Move the gateway's clock to the next Monday, 12:00 UTC (1970-01-05 was a Monday).
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let week = 7 * 86400;
    let monday_noon = (now - 4 * 86400) / week * week + 4 * 86400 + 12 * 3600 + week;
    gw.state.clock().advance(Duration::from_secs(monday_noon - now));
    for day in 0..5 {
        let r = call(&gw, "GET", "/weekday", &token, &[]).await;
        assert_eq!(r.status(), 200, "weekday {day}");
        gw.state.clock().advance(Duration::from_secs(86400));
    }
    // Saturday, then Sunday.
    for _ in 0..2 {
        let r = call(&gw, "GET", "/weekday", &token, &[]).await;
        refused(&gw, r, "policy_denied").await;
        gw.state.clock().advance(Duration::from_secs(86400));
    }
    assert_eq!(call(&gw, "GET", "/weekday", &token, &[]).await.status(), 200);
    gw.stop().await;
}

/// The plan's `when` and the integration's both apply (AND), the plan's first; the
/// detail names the one that refused.
#[tokio::test]
async fn the_plans_and_the_integrations_when_both_apply() {
    let (up, issuer, gw) = start(false, Some(TENANT), &[("reads", "request.method == 'GET'")]).await;
    let t42 = issuer.token(serde_json::json!({"tenant": 42}));
    let t7 = issuer.token(serde_json::json!({"tenant": 7}));
    assert_eq!(call(&gw, "GET", "/reads", &t42, &[]).await.status(), 200);
    let d = refused(&gw, call(&gw, "POST", "/reads", &t42, &[]).await, "policy_denied").await;
    assert!(d.starts_with("the integration's `when` is false"), "{d}");
    let d = refused(&gw, call(&gw, "GET", "/reads", &t7, &[]).await, "policy_denied").await;
    assert!(d.starts_with("the plan's `when` is false"), "{d}");
    // Both false: the plan's decides.
    let d = refused(&gw, call(&gw, "POST", "/reads", &t7, &[]).await, "policy_denied").await;
    assert!(d.starts_with("the plan's `when`"), "{d}");
    // An erroring plan policy refuses before the integration's is evaluated.
    let none = issuer.token(serde_json::json!({}));
    let d = refused(&gw, call(&gw, "GET", "/reads", &none, &[]).await, "policy_error").await;
    assert!(d.starts_with("the plan's `when` failed"), "{d}");
    assert_eq!(up.seen().len(), 1);
    gw.stop().await;
}

/// A policy on request headers and the query sees what the client sent, as the docs
/// say: a repeated header's values joined (so two `X-Team: red` lines are not `red`),
/// names in lower case whatever the client's case, a repeated parameter's first value;
/// never the `Authorization` header nor the `apiKey` parameter.
#[tokio::test]
async fn header_and_query_policies_see_joined_values_lower_case_names_and_first_parameters() {
    let hidden = "!('authorization' in request.headers) && !('apiKey' in request.query) \
                  && !('proxy-authorization' in request.headers)";
    let whens = [
        ("team", "request.headers['x-team'] == 'red'"),
        ("upper", "request.headers['X-Team'] == 'red'"),
        ("query", "request.query.team == 'red'"),
        ("hidden", hidden),
    ];
    let (_up, issuer, gw) = start(false, None, &whens).await;
    let t = issuer.token(serde_json::json!({}));
    assert_eq!(call(&gw, "GET", "/team", &t, &[("X-TEAM", "red")]).await.status(), 200);
    let twice = client()
        .get(gw.url("/team"))
        .bearer_auth(&t)
        .header("x-team", "red")
        .header("X-Team", "red")
        .send()
        .await
        .unwrap();
    refused(&gw, twice, "policy_denied").await;
    let other = call(&gw, "GET", "/team", &t, &[("x-team", "red, blue")]).await;
    refused(&gw, other, "policy_denied").await;
    // No header at all: a missing key is an evaluation error, and still a refusal.
    refused(&gw, call(&gw, "GET", "/team", &t, &[]).await, "policy_error").await;
    // Names are lower case: a policy spelling `X-Team` finds nothing.
    let upper = call(&gw, "GET", "/upper", &t, &[("X-Team", "red")]).await;
    refused(&gw, upper, "policy_error").await;
    // The first value of a repeated parameter, decoded.
    assert_eq!(
        call(&gw, "GET", "/query?team=red&team=blue", &t, &[]).await.status(),
        200
    );
    assert_eq!(call(&gw, "GET", "/query?team=%72ed", &t, &[]).await.status(), 200);
    let second = call(&gw, "GET", "/query?team=blue&team=red", &t, &[]).await;
    refused(&gw, second, "policy_denied").await;
    // Credentials are never visible to a policy.
    let hidden = call(
        &gw,
        "GET",
        "/hidden?apiKey=k&apikey=k",
        &t,
        &[("proxy-authorization", "Basic eDp5")],
    )
    .await;
    assert_eq!(hidden.status(), 200);
    gw.stop().await;
}

/// `claim_headers`: a claim at a dotted path, non-string values as compact JSON, no
/// header for a missing claim, nothing the client sends under those names, and a value
/// that cannot be a header value is not sent (the request still passes).
#[tokio::test]
async fn claim_headers_carry_claims_and_never_the_clients_own() {
    let up = Upstream::start().await;
    let issuer = Issuer::start().await;
    let headers = table([
        ("X-Portcullis-Tenant", "tenant".into()),
        ("X-Portcullis-Org", "org.id".into()),
        ("X-Portcullis-Org-All", "org".into()),
        ("X-Portcullis-Groups", "groups".into()),
        ("X-Portcullis-Region", "https://example.com/region".into()),
        ("X-Portcullis-Note", "note".into()),
    ]);
    let toml = base(&issuer, false)
        .plan("api", |p| {
            p.upstream(&up.url()).access_roles(["rest"]).integration("claims", |i| {
                i.path("/claims")
                    .methods(["GET"])
                    .auth("oauth")
                    .senders_all()
                    .set("claim_headers", headers)
            })
        })
        .to_toml();
    let gw = Gateway::start(&toml).await;
    let full = issuer.token(serde_json::json!({
        "tenant": "acme", "org": {"id": 7, "name": "Acme"}, "groups": ["rest", "ops"],
        "https://example.com/region": "eu", "note": "fine"
    }));
    let spoof = [("X-Portcullis-Tenant", "evil"), ("x-portcullis-org", "666")];
    assert_eq!(call(&gw, "GET", "/claims", &full, &spoof).await.status(), 200);
    let h = up.last().headers;
    assert_eq!(h.get_all("x-portcullis-tenant").iter().collect::<Vec<_>>(), ["acme"]);
    assert_eq!(h.get_all("x-portcullis-org").iter().collect::<Vec<_>>(), ["7"]);
    assert_eq!(h["x-portcullis-org-all"], r#"{"id":7,"name":"Acme"}"#);
    assert_eq!(h["x-portcullis-groups"], r#"["rest","ops"]"#);
    assert_eq!(h["x-portcullis-region"], "eu");
    assert_eq!(h["x-portcullis-note"], "fine");

    // Missing claims send nothing, and the client's spoofed headers are gone.
    let bare = issuer.token(serde_json::json!({"org": "not-an-object"}));
    let spoof = [
        ("X-Portcullis-Tenant", "evil"),
        ("X_Portcullis_Tenant", "evil"),
        ("x-portcullis-org", "666"),
        ("X-Portcullis-Note", "evil"),
    ];
    assert_eq!(call(&gw, "GET", "/claims", &bare, &spoof).await.status(), 200);
    let h = up.last().headers;
    for name in [
        "x-portcullis-tenant",
        "x_portcullis_tenant",
        "x-portcullis-org",
        "x-portcullis-note",
    ] {
        assert!(!h.contains_key(name), "{name} reached the service: {h:?}");
    }
    assert_eq!(h["x-portcullis-org-all"], "not-an-object");

    // A line break or a control character in a claim: the header is not sent, the request
    // passes, nothing is split into a second header.
    for bad in ["a\r\nX-Portcullis-User: admin", "tab\u{7}bell", "Zürich"] {
        let t = issuer.token(serde_json::json!({"note": bad, "tenant": "acme"}));
        assert_eq!(call(&gw, "GET", "/claims", &t, &[]).await.status(), 200, "{bad:?}");
        let h = up.last().headers;
        assert!(!h.contains_key("x-portcullis-note"), "{bad:?}: {h:?}");
        assert_eq!(h["x-portcullis-tenant"], "acme");
        assert_eq!(h["x-portcullis-user"], "carol");
    }
    gw.stop().await;
}

/// `portcullis check` (the real binary) on a config: exit code, stderr.
fn check(toml: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), toml);
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path.display().to_string(),
    )
}

const CHECKED: &str = r#"[listen]
address = "127.0.0.1:0"

[oauth]
mode = "jwt"
issuer = "https://idp.test"
jwks_url = "http://127.0.0.1:9/jwks"

[[plans]]
name = "p"
upstream = "builtin:echo"
access = { all = true }
"#;

/// A config whose line `line` (1-based) holds `needle`: the column (1-based) where it starts.
fn column_of(toml: &str, line: usize, needle: &str) -> usize {
    let text = toml.lines().nth(line - 1).unwrap();
    text[..text.find(needle).unwrap()].chars().count() + 1
}

/// `check` compiles every expression: a syntax error and an unknown variable or field
/// are reported at their FILE:LINE:COL inside the expression (exit 1); a good one passes.
#[test]
fn check_reports_policy_errors_at_their_position() {
    let good = format!("{CHECKED}when = \"{TENANT}\"\n");
    let (code, err, _) = check(&good);
    assert_eq!(code, 0, "{err}");

    let toml = format!(
        "{CHECKED}when = \"claims.tenant == 42 && nope.x\"\n\n[[plans.integrations]]\nname = \"i\"\npath = \"/i\"\nmethods = [\"GET\"]\nauth = \"oauth\"\nwhen = '''\nrequest.method == 'GET' ||\n  principal.rols.exists(r, r == 'a') ||\n  (claims.a == 1'''\n"
    );
    let (code, err, file) = check(&toml);
    assert_eq!(code, 1, "{err}");
    let lines: Vec<&str> = toml.lines().collect();
    let at = |needle: &str| {
        let line = lines.iter().position(|l| l.contains(needle)).unwrap() + 1;
        format!("{file}:{line}:{}: ", column_of(&toml, line, needle))
    };
    let has = |prefix: &str, text: &str| {
        assert!(
            err.lines().any(|l| l.starts_with(prefix) && l.contains(text)),
            "expected `{prefix}...{text}` in:\n{err}"
        )
    };
    has(&at("nope.x"), "`when` of plan `p`: unknown variable `nope`");
    // A multi-line string: only the first error of an expression is reported; the parse
    // error comes first, at the end of the text.
    let last = lines.iter().position(|l| l.contains("(claims.a == 1")).unwrap() + 1;
    let col = lines[last - 1].find("'''").unwrap() + 1;
    has(
        &format!("{file}:{last}:{col}: "),
        "`when` of integration `p/i`: syntax error",
    );

    // An unknown field of principal, at its line inside a multi-line string.
    let toml = toml.replace("(claims.a == 1'''", "claims.a == 1'''");
    let (code, err2, file) = check(&toml);
    assert_eq!(code, 1, "{err2}");
    let line = lines.iter().position(|l| l.contains("principal.rols")).unwrap() + 1;
    let prefix = format!("{file}:{line}:{}: ", column_of(&toml, line, "principal.rols"));
    assert!(
        err2.lines()
            .any(|l| l.starts_with(&prefix) && l.contains("`principal` has no field `rols`")),
        "expected `{prefix}` in:\n{err2}"
    );
    // Unknown fields of request and source, and a message literal.
    for (expr, text) in [
        ("request.body == ''", "`request` has no field `body`"),
        ("source.port == 1", "`source` has no field `port`"),
        ("env.HOME == ''", "unknown variable `env`"),
        ("Foo{a: 1} == 1", "message literals"),
    ] {
        let (code, err, file) = check(&format!("{CHECKED}when = \"{expr}\"\n"));
        assert_eq!(code, 1, "{expr}: {err}");
        assert!(
            err.starts_with(&format!("{file}:{}:", CHECKED.lines().count() + 1)),
            "{err}"
        );
        assert!(err.contains(text), "{expr}: {err}");
    }
}

/// `check` refuses `claim_headers` names that are not `X-Portcullis-*`, that Portcullis
/// sets itself, that are not header names, and claim paths with empty segments.
#[test]
fn check_refuses_claim_header_names_portcullis_owns_or_clients_could_send() {
    for (entry, text) in [
        ("\"X-Tenant\" = \"tenant\"", "only X-Portcullis-* names"),
        ("\"Authorization\" = \"tenant\"", "only X-Portcullis-* names"),
        ("\"X-Portcullis-\" = \"tenant\"", "only X-Portcullis-* names"),
        (
            "\"X-Portcullis-User\" = \"tenant\"",
            "Portcullis sets this header itself",
        ),
        (
            "\"x-portcullis-roles\" = \"groups\"",
            "Portcullis sets this header itself",
        ),
        (
            "\"X-Portcullis-Assertion\" = \"tenant\"",
            "Portcullis sets this header itself",
        ),
        (
            "\"X-Portcullis-Issuer\" = \"iss\"",
            "Portcullis sets this header itself",
        ),
        (
            "\"X-Portcullis-Client-Id\" = \"azp\"",
            "Portcullis sets this header itself",
        ),
        ("\"X-Portcullis Tenant\" = \"tenant\"", "not a valid header name"),
        ("\"X-Portcullis-Org\" = \"org..id\"", "dotted path"),
        ("\"X-Portcullis-Org\" = \"\"", "dotted path"),
        ("\"X-Portcullis-A\" = \"a\", \"x-portcullis-a\" = \"b\"", "named twice"),
    ] {
        let toml = format!(
            "{CHECKED}\n[[plans.integrations]]\nname = \"i\"\npath = \"/i\"\nmethods = [\"GET\"]\nauth = \"oauth\"\nclaim_headers = {{ {entry} }}\n"
        );
        let (code, err, file) = check(&toml);
        assert_eq!(code, 1, "{entry}: {err}");
        let line = toml.lines().count();
        assert!(
            err.lines()
                .any(|l| l.starts_with(&format!("{file}:{line}:")) && l.contains(text)),
            "{entry}: expected `{text}` at line {line}:\n{err}"
        );
    }
    let ok = format!(
        "{CHECKED}\n[[plans.integrations]]\nname = \"i\"\npath = \"/i\"\nmethods = [\"GET\"]\nauth = \"oauth\"\nclaim_headers = {{ \"X-Portcullis-Tenant\" = \"tenant\", \"X-Portcullis-Org\" = \"org.id\" }}\n"
    );
    let (code, err, _) = check(&ok);
    assert_eq!(code, 0, "{err}");
}

/// A config file in `dir`: user alice (basic, role rest), plan `p` with `plan_when`, and
/// its integration `team` (GET /team, basic) with `when`, if any.
fn alice_config(dir: &std::path::Path, upstream: &str, plan_when: &str, when: Option<&str>) -> std::path::PathBuf {
    let toml = Config::new()
        .user("alice", |u| u.roles(["rest"]).password_hash(&argon2_hash("alice-pw")))
        .plan("p", |p| {
            p.upstream(upstream)
                .access_roles(["rest"])
                .set("when", plan_when)
                .integration("team", |i| {
                    let i = i.path("/team").methods(["GET"]).auth("basic").senders_all();
                    match when {
                        Some(w) => i.set("when", w),
                        None => i,
                    }
                })
        })
        .to_toml();
    write_config(dir, &toml)
}

/// `portcullis explain` shows each rule that decided with its value, and marks a `when`
/// that reads a header the client controls.
#[test]
fn explain_shows_each_rule_and_marks_client_controlled_input() {
    let dir = tempfile::tempdir().unwrap();
    let path = alice_config(
        dir.path(),
        "http://127.0.0.1:9",
        "principal.name == 'alice'",
        Some("request.headers['x-team'] == 'red'"),
    );
    let explain = |headers: &[&str]| {
        let mut cmd = Command::new(bin());
        cmd.args(["explain", "--config"]).arg(&path).args(["GET", "/team"]);
        cmd.args(["-H", &format!("Authorization: {}", basic("alice", "alice-pw"))]);
        for h in headers {
            cmd.args(["-H", h]);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = explain(&["X-Team: red"]);
    assert_eq!(code, 0, "{out}");
    let rule = |out: &str, name: &str| -> String {
        out.lines()
            .find(|l| l.starts_with("rule") && l.contains(name))
            .unwrap_or_else(|| panic!("no rule `{name}` in:\n{out}"))
            .to_string()
    };
    assert!(rule(&out, "access").contains("passes"), "{out}");
    assert!(rule(&out, "senders").contains("passes"), "{out}");
    let plan = rule(&out, "plan when");
    assert!(plan.contains("passes") && !plan.contains("client controls"), "{plan}");
    let team = rule(&out, "integration when");
    assert!(team.contains("passes"), "{team}");
    assert!(team.contains("request.headers['x-team']"), "{team}");
    assert!(
        team.contains("reads request headers or query: input the client controls"),
        "{team}"
    );

    let (code, out) = explain(&["X-Team: blue"]);
    assert_eq!(code, 2, "{out}");
    assert!(rule(&out, "integration when").contains("false"), "{out}");
    assert!(out.contains("403 policy_denied"), "{out}");
    // An error's message is not printed for a policy on client input (it may quote it).
    let (code, out) = explain(&[]);
    assert_eq!(code, 2, "{out}");
    let team = rule(&out, "integration when");
    assert!(team.contains("error (the message is not shown"), "{team}");
    assert!(out.contains("403 policy_error"), "{out}");
}

/// The real binary's access log line of a refusal by policy names the policy and, for an
/// error, CEL's message, in its `detail` field; the answer says neither. A principal
/// without a token (basic) sees an empty `claims`.
#[tokio::test]
async fn the_access_log_names_the_policy_and_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = alice_config(dir.path(), "builtin:echo", "claims.tenant == 1", None);
    let p = Process::start(&path, &[]);
    let resp = client()
        .get(format!("http://{}/team", p.addr))
        .header("authorization", basic("alice", "alice-pw"))
        .send()
        .await
        .unwrap();
    let body = error_body(resp, 403).await.to_string();
    assert!(!body.contains("tenant") && !body.contains("policy"), "{body}");
    let logs = p.logs_when(|l| l.contains("\"policy_error\"")).await;
    let line: serde_json::Value = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["reason"] == "policy_error" || v["reason"] == "policy_error")
        .unwrap_or_else(|| panic!("no policy_error line in:\n{logs}"));
    let detail = line["fields"]["detail"]
        .as_str()
        .or(line["detail"].as_str())
        .unwrap_or("");
    assert!(
        detail.starts_with("the plan's `when` failed") && detail.contains("No such key: tenant"),
        "{line}"
    );
    assert!(detail.contains("(in claims.tenant == 1)"), "{line}");
}
