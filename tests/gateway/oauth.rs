//! OAuth: the builtin issuer (fetched with the oauth2 crate as a client), an external
//! JWT issuer (a JWKS server on 127.0.0.1) with every attack refused, and RFC 7662
//! introspection (cache, single flight, fail closed).

use crate::support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use oauth2::basic::BasicClient;
use oauth2::{
    ClientId, ClientSecret, RefreshToken, ResourceOwnerPassword, ResourceOwnerUsername, TokenResponse, TokenUrl,
};
use support::*;

// === a tiny HTTP server for JWKS and introspection ===

pub(crate) type Handler = Arc<dyn Fn(String, Vec<u8>) -> (u16, String) + Send + Sync>;

pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl TestServer {
    /// Serves `handler(path, body)`; every connection closes after one request, so
    /// stopping the server really makes it unreachable.
    pub(crate) async fn start(handler: Handler, delay: Duration) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else { return };
                let handler = handler.clone();
                let hits = h.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let handler = handler.clone();
                        let hits = hits.clone();
                        async move {
                            hits.fetch_add(1, Ordering::SeqCst);
                            let path = req.uri().path().to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
                            tokio::time::sleep(delay).await;
                            let (status, text) = handler(path, body);
                            let mut resp = hyper::Response::new(Full::new(Bytes::from(text)));
                            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            resp.headers_mut()
                                .insert("content-type", "application/json".parse().unwrap());
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        TestServer {
            addr,
            hits,
            task: std::sync::Mutex::new(Some(task)),
        }
    }

    pub(crate) fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops accepting: returns once the listening socket is closed.
    pub(crate) async fn stop(&self) {
        let task = self.task.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }
}

/// The status of a GET with a Bearer token.
async fn bearer_status(gw: &Gateway, path: &str, token: &str) -> u16 {
    status_at(gw.url(path), token.to_string()).await
}

/// The status of a GET of `url` with Bearer `token` (owned: it can be spawned).
pub(crate) async fn status_at(url: String, token: String) -> u16 {
    client()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

pub(crate) fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Users (alice, the client svc-client, frozen) and the `api` plan behind `up`.
fn routes(config: Config, up: &Upstream) -> Config {
    config
        .user("alice", |u| u.roles(["rest"]).password_hash(&argon2_hash("alice-pw")))
        .user("svc-client", |u| u.roles(["rest"]))
        .user("frozen", |u| u.roles(["rest"]).set("disabled", true))
        .plan("api", |p| {
            p.upstream(&up.url())
                .access_roles(["rest"])
                .integration("events", |i| i.path("/events").methods(["GET", "POST"]).auth("oauth"))
                .integration("admin", |i| {
                    i.path("/admin").methods(["GET"]).auth("oauth").senders_roles(["admin"])
                })
        })
}

// === builtin ===

fn builtin_config(up: &Upstream) -> String {
    let client = |id: &'static str, secret: &'static str| {
        move |c: Table| c.set("client_id", id).set("client_secret_hash", sha256_hex(secret))
    };
    let config = Config::new()
        .section("lockout", |s| {
            s.set("max_failures", 3).set("window", "1m").set("duration", "2s")
        })
        .section("oauth", |s| {
            s.set("mode", "builtin")
                .set("access_token_ttl", "2m")
                .entry("clients", client("jira", "jira-client-secret"))
                .entry("clients", client("svc-client", "svc-client-secret"))
        });
    routes(config, up).to_toml()
}

async fn oauth_http(req: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, std::io::Error> {
    let (parts, body) = req.into_parts();
    let mut r = client().request(parts.method, parts.uri.to_string()).body(body);
    for (k, v) in &parts.headers {
        r = r.header(k, v);
    }
    let resp = r.send().await.map_err(std::io::Error::other)?;
    let mut out = http::Response::builder().status(resp.status().as_u16());
    for (k, v) in resp.headers() {
        out = out.header(k.as_str(), v.as_bytes());
    }
    let body = resp.bytes().await.map_err(std::io::Error::other)?.to_vec();
    Ok(out.body(body).unwrap())
}

/// An oauth2-crate client of the builtin issuer.
fn token_client(
    gw: &Gateway,
    id: &str,
    secret: &str,
) -> BasicClient<
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
> {
    BasicClient::new(ClientId::new(id.into()))
        .set_client_secret(ClientSecret::new(secret.into()))
        .set_token_uri(TokenUrl::new(gw.url("/oauth/token")).unwrap())
}

#[tokio::test]
async fn builtin_round_trip_with_the_oauth2_crate_and_refresh_rotation() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&builtin_config(&up)).await;
    let oauth = token_client(&gw, "jira", "jira-client-secret");
    let token = oauth
        .exchange_password(
            &ResourceOwnerUsername::new("alice".into()),
            &ResourceOwnerPassword::new("alice-pw".into()),
        )
        .request_async(&oauth_http)
        .await
        .unwrap();
    assert_eq!(token.expires_in(), Some(Duration::from_secs(120)));
    let access = token.access_token().secret().clone();
    let refresh = token.refresh_token().unwrap().clone();

    let resp = client()
        .get(gw.url("/events"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = up.last().headers;
    assert_eq!(h["x-portcullis-user"], "alice");
    assert_eq!(h["x-portcullis-roles"], "rest");
    assert_eq!(h["x-portcullis-auth-method"], "oauth");
    assert_eq!(h["x-portcullis-client-id"], "jira");

    // The published JWKS verifies the token.
    let jwks: jsonwebtoken::jwk::JwkSet = client()
        .get(gw.url("/oauth/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kid = jsonwebtoken::decode_header(&access).unwrap().kid.unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(jwks.find(&kid).unwrap()).unwrap();
    let mut v = jsonwebtoken::Validation::new(Algorithm::EdDSA);
    v.validate_aud = false;
    let claims = jsonwebtoken::decode::<serde_json::Value>(&access, &key, &v)
        .unwrap()
        .claims;
    assert_eq!(claims["sub"], "alice");

    // Refresh rotates; the old refresh token is then refused, and so is the family.
    let rotated = oauth
        .exchange_refresh_token(&refresh)
        .request_async(&oauth_http)
        .await
        .unwrap();
    let new_refresh = rotated.refresh_token().unwrap().clone();
    assert_ne!(new_refresh.secret(), refresh.secret());
    let resp = client()
        .get(gw.url("/events"))
        .bearer_auth(rotated.access_token().secret())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let reused = oauth.exchange_refresh_token(&refresh).request_async(&oauth_http).await;
    match reused {
        Err(oauth2::RequestTokenError::ServerResponse(e)) => assert_eq!(e.error().as_ref(), "invalid_grant"),
        other => panic!("reuse must be invalid_grant, got {other:?}"),
    }
    let after = oauth
        .exchange_refresh_token(&new_refresh)
        .request_async(&oauth_http)
        .await;
    assert!(after.is_err(), "a reused refresh token revokes its family");
    // Another client cannot use a refresh token it was not given.
    let other = token_client(&gw, "svc-client", "svc-client-secret");
    assert!(other
        .exchange_refresh_token(&RefreshToken::new("x".into()))
        .request_async(&oauth_http)
        .await
        .is_err());
    gw.stop().await;
}

#[tokio::test]
async fn client_credentials_tokens_name_the_client_with_its_user_roles() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&builtin_config(&up)).await;
    let oauth = token_client(&gw, "svc-client", "svc-client-secret");
    let token = oauth
        .exchange_client_credentials()
        .request_async(&oauth_http)
        .await
        .unwrap();
    assert!(token.refresh_token().is_none());
    let resp = client()
        .get(gw.url("/events"))
        .bearer_auth(token.access_token().secret())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.last().headers["x-portcullis-user"], "svc-client");
    // jira's client has no [[users]] entry, hence no roles: no plan access.
    let jira = token_client(&gw, "jira", "jira-client-secret");
    let token = jira
        .exchange_client_credentials()
        .request_async(&oauth_http)
        .await
        .unwrap();
    let resp = client()
        .get(gw.url("/events"))
        .bearer_auth(token.access_token().secret())
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"portcullis\", error=\"insufficient_scope\""
    );
    assert_eq!(error_body(resp, 403).await["message"], FORBIDDEN);
    gw.stop().await;
}

async fn token_request(gw: &Gateway, form: &[(&str, &str)], auth: Option<(&str, &str)>) -> (u16, serde_json::Value) {
    let mut r = client().post(gw.url("/oauth/token")).form(form);
    if let Some((id, secret)) = auth {
        r = r.basic_auth(id, Some(secret));
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    assert_eq!(resp.headers()["cache-control"], "no-store");
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn token_endpoint_errors_follow_rfc_6749_and_the_lockout() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&builtin_config(&up)).await;
    let jira = Some(("jira", "jira-client-secret"));
    let (s, v) = token_request(&gw, &[("grant_type", "client_credentials")], Some(("jira", "wrong"))).await;
    assert_eq!((s, v["error"].as_str()), (401, Some("invalid_client")));
    let (s, v) = token_request(&gw, &[("grant_type", "client_credentials")], None).await;
    assert_eq!((s, v["error"].as_str()), (401, Some("invalid_client")));
    let (s, v) = token_request(&gw, &[("grant_type", "authorization_code"), ("code", "x")], jira).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("unsupported_grant_type")));
    let (s, v) = token_request(&gw, &[("scope", "x")], jira).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_request")));
    let (s, v) = token_request(
        &gw,
        &[("grant_type", "refresh_token"), ("refresh_token", "forged")],
        jira,
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_grant")));
    // Client credentials in the body work too (RFC 6749 2.3.1).
    let (s, _) = token_request(
        &gw,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "jira"),
            ("client_secret", "jira-client-secret"),
        ],
        None,
    )
    .await;
    assert_eq!(s, 200);
    // A disabled user gets no token; wrong passwords lock the user out.
    let pw = |u: &'static str, p: &'static str| [("grant_type", "password"), ("username", u), ("password", p)];
    let (s, v) = token_request(&gw, &pw("frozen", "x"), jira).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_grant")));
    for _ in 0..3 {
        let (s, v) = token_request(&gw, &pw("alice", "wrong"), jira).await;
        assert_eq!((s, v["error"].as_str()), (400, Some("invalid_grant")));
    }
    let (s, _) = token_request(&gw, &pw("alice", "alice-pw"), jira).await;
    assert_eq!(s, 429, "locked out even with the right password");
    // Only POST with a form.
    let resp = client().get(gw.url("/oauth/token")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    let resp = client().post(gw.url("/oauth/token")).body("{}").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    // The gateway's clock moves past the 2 s lockout, without waiting for it.
    gw.state.clock().advance(Duration::from_millis(2100));
    let (s, _) = token_request(&gw, &pw("alice", "alice-pw"), jira).await;
    assert_eq!(s, 200, "the lockout ends");
    gw.stop().await;
}

/// A token or revocation request with a raw form body and raw `Authorization` fields
/// (each one a header field of its own).
async fn raw_form(gw: &Gateway, path: &str, body: &str, authorization: &[&str]) -> (u16, serde_json::Value) {
    let mut r = client()
        .post(gw.url(path))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_string());
    for a in authorization {
        r = r.header("authorization", *a);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

fn basic_b64(raw: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
}

/// RFC 6749 3.2 (each parameter at most once) and 2.3.1 (one client authentication
/// method per request) at the token endpoint: every way of sending a parameter twice or
/// the client's credentials twice is 400 `invalid_request`, issues nothing, and checks no
/// secret (so it never counts toward the lockout); the allowed neighbours still work.
#[tokio::test]
async fn token_requests_that_rfc_6749_forbids_are_invalid_request() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&builtin_config(&up)).await;
    let jira = basic("jira", "jira-client-secret");
    let wrong = basic("jira", "wrong");
    let cc = "grant_type=client_credentials";
    let mut refused: Vec<(String, String, Vec<String>)> = vec![
        ("equal values twice".into(), format!("{cc}&{cc}"), vec![jira.clone()]),
        (
            "different values twice".into(),
            "grant_type=password&grant_type=client_credentials&username=alice&password=alice-pw".into(),
            vec![jira.clone()],
        ),
        (
            "percent-encoded name".into(),
            format!("{cc}&grant%5Ftype=client_credentials"),
            vec![jira.clone()],
        ),
        (
            "name in another case, beside".into(),
            format!("{cc}&Grant_Type=client_credentials"),
            vec![jira.clone()],
        ),
        (
            "name in another case, alone".into(),
            "GRANT_TYPE=client_credentials".into(),
            vec![jira.clone()],
        ),
        (
            "empty value repeated".into(),
            format!("{cc}&scope=&scope=a"),
            vec![jira.clone()],
        ),
        (
            "unknown name repeated".into(),
            format!("{cc}&x=1&x=1"),
            vec![jira.clone()],
        ),
        // 2.3.1: the issue's example, a wrong form secret beside a right Basic...
        (
            "Basic and a wrong form secret".into(),
            format!("{cc}&client_secret=wrong"),
            vec![jira.clone()],
        ),
        // ...the same secret twice, and a wrong Basic beside right form credentials.
        (
            "Basic and the same form secret".into(),
            format!("{cc}&client_secret=jira-client-secret"),
            vec![jira.clone()],
        ),
        (
            "wrong Basic and right form credentials".into(),
            format!("{cc}&client_id=jira&client_secret=jira-client-secret"),
            vec![wrong.clone()],
        ),
        (
            "form client_id other than Basic's".into(),
            format!("{cc}&client_id=svc-client"),
            vec![jira.clone()],
        ),
        (
            "two equal Authorization fields".into(),
            cc.into(),
            vec![jira.clone(), jira.clone()],
        ),
        (
            "Basic and Bearer fields".into(),
            cc.into(),
            vec![jira.clone(), "Bearer x".into()],
        ),
        (
            "Bearer beside form credentials".into(),
            format!("{cc}&client_id=jira&client_secret=jira-client-secret"),
            vec!["Bearer x".into()],
        ),
        (
            "malformed Basic beside right form credentials".into(),
            format!("{cc}&client_id=jira&client_secret=jira-client-secret"),
            vec!["Basic !!!not-base64".into()],
        ),
        ("Basic without a colon".into(), cc.into(), vec![basic_b64("jira")]),
        (
            "Basic with an empty id".into(),
            cc.into(),
            vec![basic_b64(":jira-client-secret")],
        ),
        (
            "Basic with a bad escape".into(),
            cc.into(),
            vec![basic_b64("ji%zzra:jira-client-secret")],
        ),
        ("Basic with no credential".into(), cc.into(), vec!["Basic".into()]),
        (
            "client_secret without client_id".into(),
            format!("{cc}&client_secret=jira-client-secret"),
            vec![],
        ),
        (
            "a value that is not UTF-8".into(),
            format!("{cc}&scope=%FF"),
            vec![jira.clone()],
        ),
        (
            "a malformed escape".into(),
            format!("{cc}&scope=%zz"),
            vec![jira.clone()],
        ),
        (
            "a truncated escape".into(),
            format!("{cc}&scope=%4"),
            vec![jira.clone()],
        ),
        ("an empty name".into(), format!("{cc}&=x"), vec![jira.clone()]),
        (
            "too many parameters".into(),
            format!(
                "{cc}&{}",
                (0..40).map(|i| format!("p{i}=1")).collect::<Vec<_>>().join("&")
            ),
            vec![jira.clone()],
        ),
    ];
    // Every parameter either endpoint reads, twice with equal values.
    for p in [
        "grant_type",
        "username",
        "password",
        "refresh_token",
        "scope",
        "client_id",
        "client_secret",
        "token",
        "token_type_hint",
    ] {
        refused.push((format!("{p} twice"), format!("{cc}&{p}=v&{p}=v"), vec![jira.clone()]));
    }
    for (what, body, auth) in &refused {
        let auth: Vec<&str> = auth.iter().map(String::as_str).collect();
        let (s, v) = raw_form(&gw, "/oauth/token", body, &auth).await;
        assert_eq!((s, v["error"].as_str()), (400, Some("invalid_request")), "{what}: {v}");
        assert!(v.get("access_token").is_none(), "{what}: a token was issued");
    }
    // None of them checked a secret: jira, sent a wrong Basic secret in more requests
    // than max_failures allows, is not locked out.
    for _ in 0..4 {
        let (s, _) = raw_form(
            &gw,
            "/oauth/token",
            &format!("{cc}&client_id=jira&client_secret=jira-client-secret"),
            &[&wrong],
        )
        .await;
        assert_eq!(s, 400);
    }
    // The neighbours that RFC 6749 allows.
    let ok = |body: String, auth: Vec<String>| {
        let gw = &gw;
        async move {
            let auth: Vec<&str> = auth.iter().map(String::as_str).collect();
            raw_form(gw, "/oauth/token", &body, &auth).await
        }
    };
    let (s, v) = ok(cc.into(), vec![jira.clone()]).await;
    assert_eq!(s, 200, "not locked out: {v}");
    let (s, v) = ok(format!("{cc}&client_id=jira"), vec![jira.clone()]).await;
    assert_eq!(
        s, 200,
        "Basic with the same client_id in the form (RFC 6749 3.2.1): {v}"
    );
    let (s, v) = ok(cc.into(), vec![jira.replacen("Basic", "bAsIc", 1)]).await;
    assert_eq!(s, 200, "the scheme is case-insensitive: {v}");
    let (s, v) = ok(format!("{cc}&scope="), vec![jira.clone()]).await;
    assert_eq!(s, 200, "an empty value is an omitted parameter: {v}");
    assert!(v.get("scope").is_none(), "{v}");
    let (s, v) = ok(
        format!("{cc}&client_id=jira&client_secret=jira%2Dclient%2Dsecret"),
        vec![],
    )
    .await;
    assert_eq!(s, 200, "escapes in the form are decoded once: {v}");
    // An empty grant_type is an omitted one; a lone client_id or another scheme is no
    // client authentication (401).
    let (s, v) = ok("grant_type=".into(), vec![jira.clone()]).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_request")), "{v}");
    let (s, v) = ok(format!("{cc}&client_id=jira"), vec![]).await;
    assert_eq!((s, v["error"].as_str()), (401, Some("invalid_client")), "{v}");
    let (s, v) = ok(cc.into(), vec!["Bearer x".into()]).await;
    assert_eq!((s, v["error"].as_str()), (401, Some("invalid_client")), "{v}");
    let refusals = client()
        .get(gw.admin_url("/refusals"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        refusals.contains(r#""reason":"ambiguous_token_request""#),
        "the refusals are shown with their reason:\n{refusals}"
    );
    gw.stop().await;
}

/// RFC 7009 2.1: the revocation endpoint authenticates clients as the token endpoint
/// does, with the same rules; a refused revocation revokes nothing.
#[tokio::test]
async fn revocation_requests_that_rfc_6749_forbids_revoke_nothing() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&builtin_config(&up)).await;
    let svc = basic("svc-client", "svc-client-secret");
    let (s, v) = raw_form(&gw, "/oauth/token", "grant_type=client_credentials", &[&svc]).await;
    assert_eq!(s, 200, "{v}");
    let access = v["access_token"].as_str().unwrap().to_string();
    assert_eq!(bearer_status(&gw, "/events", &access).await, 200);
    let t = format!("token={access}");
    let refused: Vec<(&str, String, Vec<String>)> = vec![
        ("token twice", format!("{t}&{t}"), vec![svc.clone()]),
        ("token, then another", format!("{t}&token=x"), vec![svc.clone()]),
        (
            "token_type_hint twice",
            format!("{t}&token_type_hint=access_token&token_type_hint=access_token"),
            vec![svc.clone()],
        ),
        (
            "percent-encoded token name",
            format!("{t}&%74oken=x"),
            vec![svc.clone()],
        ),
        ("Token in another case", format!("{t}&Token=x"), vec![svc.clone()]),
        (
            "Basic and a form secret",
            format!("{t}&client_secret=wrong"),
            vec![svc.clone()],
        ),
        (
            "Basic and another client_id",
            format!("{t}&client_id=jira"),
            vec![svc.clone()],
        ),
        ("two Authorization fields", t.clone(), vec![svc.clone(), svc.clone()]),
        (
            "malformed Basic beside form credentials",
            format!("{t}&client_id=svc-client&client_secret=svc-client-secret"),
            vec!["Basic %%%".into()],
        ),
    ];
    for (what, body, auth) in &refused {
        let auth: Vec<&str> = auth.iter().map(String::as_str).collect();
        let (s, v) = raw_form(&gw, "/oauth/revoke", body, &auth).await;
        assert_eq!((s, v["error"].as_str()), (400, Some("invalid_request")), "{what}: {v}");
        assert_eq!(
            bearer_status(&gw, "/events", &access).await,
            200,
            "{what} revoked the token"
        );
    }
    let (s, v) = raw_form(&gw, "/oauth/revoke", &format!("{t}&client_id=svc-client"), &[&svc]).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(bearer_status(&gw, "/events", &access).await, 401, "revoked");
    gw.stop().await;
}

#[tokio::test]
async fn builtin_tokens_are_refused_when_forged_or_tampered() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&builtin_config(&up)).await;
    // A token signed by another Ed25519 key with the same kid.
    let (_, v) = token_request(
        &gw,
        &[("grant_type", "client_credentials")],
        Some(("svc-client", "svc-client-secret")),
    )
    .await;
    let real = v["access_token"].as_str().unwrap().to_string();
    let kid = jsonwebtoken::decode_header(&real).unwrap().kid;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = kid;
    let claims =
        serde_json::json!({"iss": "portcullis", "sub": "alice", "client_id": "jira", "exp": now() + 60, "iat": now()});
    let forged = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(pkcs8.as_ref())).unwrap();
    let resp = client()
        .get(gw.url("/events"))
        .bearer_auth(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"portcullis\", error=\"invalid_token\""
    );
    assert_401(resp, REJECTED).await;
    // Tampered payload of a real token.
    let parts: Vec<&str> = real.split('.').collect();
    let payload = b64(serde_json::json!({"iss":"portcullis","sub":"alice","client_id":"svc-client","exp":now()+600,"iat":now(),"nbf":now(),"jti":"x"}).to_string().as_bytes());
    let tampered = format!("{}.{}.{}", parts[0], payload, parts[2]);
    assert_401(
        client()
            .get(gw.url("/events"))
            .bearer_auth(&tampered)
            .send()
            .await
            .unwrap(),
        REJECTED,
    )
    .await;
    assert_401(client().get(gw.url("/events")).send().await.unwrap(), MISSING).await;
    let m = gw.metrics().await;
    assert_eq!(metric_value(&m, &failures("bad_signature", "oauth")), 2.0, "{m}");
    assert!(up.seen().is_empty());
    gw.stop().await;
}

// === an external JWT issuer ===

const ISSUER: &str = "https://idp.test";

struct Idp {
    server: TestServer,
    rsa_key: EncodingKey,
    rsa_pub_pem: Vec<u8>,
    ed_key: EncodingKey,
    jwks: Arc<Mutex<serde_json::Value>>,
}

async fn idp() -> Idp {
    let root = env!("CARGO_MANIFEST_DIR");
    let rsa_pem = std::fs::read(format!("{root}/tests/fixtures/rsa-test-key.pem")).unwrap();
    let rsa_pub_pem = std::fs::read(format!("{root}/tests/fixtures/rsa-test-key.pub.pem")).unwrap();
    let n = std::fs::read_to_string(format!("{root}/tests/fixtures/rsa-test-key.n")).unwrap();
    let rng = ring::rand::SystemRandom::new();
    let ed = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let ed_pub = {
        use ring::signature::KeyPair;
        ring::signature::Ed25519KeyPair::from_pkcs8(ed.as_ref())
            .unwrap()
            .public_key()
            .as_ref()
            .to_vec()
    };
    let jwks = Arc::new(Mutex::new(serde_json::json!({"keys": [
        {"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig", "n": n.trim(), "e": "AQAB"},
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed-1", "alg": "EdDSA", "x": b64(&ed_pub)},
        {"kty": "oct", "kid": "hmac-1", "k": b64(b"a-shared-secret-that-must-never-count")}
    ]})));
    Idp {
        server: jwks_server(jwks.clone()).await,
        rsa_key: EncodingKey::from_rsa_pem(&rsa_pem).unwrap(),
        rsa_pub_pem,
        ed_key: EncodingKey::from_ed_der(ed.as_ref()),
        jwks,
    }
}

/// A JWKS server answering `GET /jwks` with the document `jwks` holds at the time.
pub(crate) async fn jwks_server(jwks: Arc<Mutex<serde_json::Value>>) -> TestServer {
    TestServer::start(
        Arc::new(move |path, _| match path.as_str() {
            "/jwks" => (200, jwks.lock().unwrap().to_string()),
            _ => (404, "{}".into()),
        }),
        Duration::ZERO,
    )
    .await
}

fn jwt_config(up: &Upstream, idp: &Idp) -> String {
    let config = Config::new()
        .section("cache", |s| s.set("negative_ttl", "2s"))
        .section("oauth", |s| {
            s.set("mode", "jwt")
                .set("issuer", ISSUER)
                .set("audience", "portcullis")
                .set("jwks_url", format!("http://{}/jwks", idp.server.addr))
                .set("jwks_min_refetch", "2s")
                .set("username_claim", "preferred_username")
                .set("roles_claim", "groups")
                .set("leeway", "5s")
                .set("algorithms", vec!["RS256", "EdDSA"])
        });
    routes(config, up).to_toml()
}

fn claims(extra: serde_json::Value) -> serde_json::Value {
    let mut c = serde_json::json!({
        "iss": ISSUER, "aud": "portcullis", "sub": "u-1", "preferred_username": "carol",
        "groups": ["rest", "admin"], "exp": now() + 300, "iat": now(), "nbf": now() - 1, "azp": "snow"
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, c: &serde_json::Value) -> String {
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, c, key).unwrap()
}

#[tokio::test]
async fn jwt_tokens_of_the_issuer_pass_with_roles_from_the_claim() {
    let up = Upstream::start().await;
    let idp = idp().await;
    let gw = Gateway::start(&jwt_config(&up, &idp)).await;
    let ok = sign(Algorithm::RS256, "rsa-1", &idp.rsa_key, &claims(serde_json::json!({})));
    let resp = client().get(gw.url("/admin")).bearer_auth(&ok).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let h = up.last().headers;
    assert_eq!(h["x-portcullis-user"], "carol");
    assert_eq!(h["x-portcullis-roles"], "rest,admin");
    assert_eq!(h["x-portcullis-client-id"], "snow");
    let ok_ed = sign(Algorithm::EdDSA, "ed-1", &idp.ed_key, &claims(serde_json::json!({})));
    assert_eq!(bearer_status(&gw, "/events", &ok_ed).await, 200);
    // Roles of a matching [[users]] entry are added; a disabled one is refused.
    let alice = sign(
        Algorithm::RS256,
        "rsa-1",
        &idp.rsa_key,
        &claims(serde_json::json!({"preferred_username": "alice", "groups": []})),
    );
    assert_eq!(bearer_status(&gw, "/events", &alice).await, 200);
    let frozen = sign(
        Algorithm::RS256,
        "rsa-1",
        &idp.rsa_key,
        &claims(serde_json::json!({"preferred_username": "frozen"})),
    );
    assert_401(
        client()
            .get(gw.url("/events"))
            .bearer_auth(&frozen)
            .send()
            .await
            .unwrap(),
        REJECTED,
    )
    .await;
    // The JWKS was fetched once for all of this.
    assert_eq!(idp.server.hits(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn jwt_attacks_are_refused() {
    let up = Upstream::start().await;
    let idp = idp().await;
    let gw = Gateway::start(&jwt_config(&up, &idp)).await;
    let c = |x: serde_json::Value| claims(x);
    let rs = |x: serde_json::Value| sign(Algorithm::RS256, "rsa-1", &idp.rsa_key, &c(x));
    let none_token = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT","kid":"rsa-1"}"#),
        b64(c(serde_json::json!({})).to_string().as_bytes())
    );
    // HS256 with the RSA public key (the classic key confusion), and with the JWKS oct key.
    let hs_pub = sign(
        Algorithm::HS256,
        "rsa-1",
        &EncodingKey::from_secret(&idp.rsa_pub_pem),
        &c(serde_json::json!({})),
    );
    let hs_oct = sign(
        Algorithm::HS256,
        "hmac-1",
        &EncodingKey::from_secret(b"a-shared-secret-that-must-never-count"),
        &c(serde_json::json!({})),
    );
    let mut other_key_pkcs8 = Vec::new();
    other_key_pkcs8.extend_from_slice(
        ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .unwrap()
            .as_ref(),
    );
    let known_kid_other_key = sign(
        Algorithm::EdDSA,
        "ed-1",
        &EncodingKey::from_ed_der(&other_key_pkcs8),
        &c(serde_json::json!({})),
    );
    let good = rs(serde_json::json!({}));
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(c(serde_json::json!({"preferred_username": "alice"}))
            .to_string()
            .as_bytes()),
        parts[2]
    );
    let with_header = |f: &dyn Fn(&mut Header)| {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some("rsa-1".into());
        f(&mut h);
        jsonwebtoken::encode(&h, &c(serde_json::json!({})), &idp.rsa_key).unwrap()
    };
    // The attacker's key server: it must never be asked anything.
    let evil = TestServer::start(Arc::new(|_, _| (200, "{\"keys\":[]}".into())), Duration::ZERO).await;
    let attacker = format!("http://{}/jwks", evil.addr);
    // The unknown kid comes first: its fetch is the first one, so no refetch is allowed
    // for the rest of the test and the count of fetches does not depend on timing.
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown kid",
            sign(Algorithm::RS256, "rsa-9", &idp.rsa_key, &c(serde_json::json!({}))),
            "unknown_kid",
        ),
        ("alg none", none_token, "malformed_token"),
        ("HS256 with the RSA public key", hs_pub, "alg_not_allowed"),
        ("HS256 with a JWKS oct key", hs_oct, "alg_not_allowed"),
        ("expired", rs(serde_json::json!({"exp": now() - 60})), "token_expired"),
        (
            "not yet valid",
            rs(serde_json::json!({"nbf": now() + 120})),
            "token_not_yet_valid",
        ),
        ("no exp", rs(serde_json::json!({"exp": null})), "missing_claim"),
        (
            "wrong aud",
            rs(serde_json::json!({"aud": "someone-else"})),
            "wrong_audience",
        ),
        (
            "wrong iss",
            rs(serde_json::json!({"iss": "https://evil.test"})),
            "wrong_issuer",
        ),
        ("known kid, other key", known_kid_other_key, "bad_signature"),
        ("tampered payload", tampered, "bad_signature"),
        (
            "jku header",
            with_header(&|h| h.jku = Some(attacker.clone())),
            "untrusted_key_header",
        ),
        (
            "x5u header",
            with_header(&|h| h.x5u = Some(attacker.clone())),
            "untrusted_key_header",
        ),
        ("garbage", "not.a.jwt".to_string(), "malformed_token"),
    ];
    for (name, token, _) in &cases {
        let resp = client().get(gw.url("/events")).bearer_auth(token).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{name}");
    }
    // An embedded jwk header, with the attacker's own key.
    let embedded = {
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some("ed-1".into());
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(
            serde_json::json!({"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}),
        )
        .unwrap();
        h.jwk = Some(jwk);
        jsonwebtoken::encode(
            &h,
            &c(serde_json::json!({})),
            &EncodingKey::from_ed_der(&other_key_pkcs8),
        )
        .unwrap()
    };
    assert_eq!(bearer_status(&gw, "/events", &embedded).await, 401);
    assert!(up.seen().is_empty());
    let m = gw.metrics().await;
    let mut expected = std::collections::HashMap::new();
    for (_, _, reason) in &cases {
        *expected.entry(*reason).or_insert(0.0) += 1.0;
    }
    *expected.entry("untrusted_key_header").or_insert(0.0) += 1.0;
    for (reason, n) in expected {
        assert_eq!(metric_value(&m, &failures(reason, "oauth")), n, "{reason}\n{m}");
    }
    assert_eq!(evil.hits(), 0, "jku/x5u are never fetched");
    // The only JWKS fetch: the first one, for the unknown kid (which allows no refetch).
    assert_eq!(idp.server.hits(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn an_unknown_kid_refetches_the_jwks_at_most_once_per_interval() {
    let up = Upstream::start().await;
    let idp = idp().await;
    let gw = Gateway::start(&jwt_config(&up, &idp)).await;
    let good = sign(Algorithm::RS256, "rsa-1", &idp.rsa_key, &claims(serde_json::json!({})));
    assert_eq!(bearer_status(&gw, "/events", &good).await, 200);
    let rotated = sign(Algorithm::RS256, "rsa-2", &idp.rsa_key, &claims(serde_json::json!({})));
    // Within the interval of the first fetch, an unknown kid causes no fetch at all.
    assert_eq!(bearer_status(&gw, "/events", &rotated).await, 401);
    assert_eq!(idp.server.hits(), 1);
    // Once the interval is over, the next unknown kid refetches: wait for that fetch (each
    // request before it is within the interval and fetches nothing).
    let refetched = eventually(PATIENCE, || async {
        assert_eq!(bearer_status(&gw, "/events", &rotated).await, 401);
        idp.server.hits() >= 2
    })
    .await;
    assert!(refetched, "the unknown kid is refetched after the interval");
    for _ in 0..5 {
        assert_eq!(bearer_status(&gw, "/events", &rotated).await, 401);
    }
    assert_eq!(
        idp.server.hits(),
        2,
        "one fetch, then one refetch for all five unknown-kid requests"
    );
    // The issuer rotates its key: after the interval the new kid is found.
    {
        let mut j = idp.jwks.lock().unwrap();
        let mut k = j["keys"][0].clone();
        k["kid"] = "rsa-2".into();
        j["keys"].as_array_mut().unwrap().push(k);
    }
    // Within the interval the kid stays unknown without a fetch; after it, one refetch
    // finds the new key.
    let found = eventually(PATIENCE, || async {
        bearer_status(&gw, "/events", &rotated).await == 200
    })
    .await;
    assert!(found, "the rotated key is found after the interval");
    assert_eq!(idp.server.hits(), 3);
    gw.stop().await;
}

#[tokio::test]
async fn a_jwks_server_that_is_down_fails_closed() {
    let up = Upstream::start().await;
    let idp = idp().await;
    idp.server.stop().await;
    let gw = Gateway::start(&jwt_config(&up, &idp)).await;
    let good = sign(Algorithm::RS256, "rsa-1", &idp.rsa_key, &claims(serde_json::json!({})));
    let resp = client().get(gw.url("/events")).bearer_auth(&good).send().await.unwrap();
    assert_eq!(error_body(resp, 503).await["reason"], "Service Unavailable");
    assert!(up.seen().is_empty());
    gw.stop().await;
}

// === introspection ===

fn introspection_handler() -> Handler {
    Arc::new(|path, body| {
        if path != "/introspect" {
            return (404, "{}".into());
        }
        let form: std::collections::HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
        let token = form.get("token").cloned().unwrap_or_default();
        let doc = match token.as_str() {
            "good-token" | "hot-token" => serde_json::json!({
                "active": true, "sub": "dave", "username": "dave", "client_id": "snow",
                "exp": now() + 300, "scope": "read", "roles": ["rest"]
            }),
            "expired-token" => serde_json::json!({"active": true, "sub": "dave", "exp": now() - 10}),
            _ => serde_json::json!({"active": false}),
        };
        (200, doc.to_string())
    })
}

fn introspection_config(up: &Upstream, server: SocketAddr) -> String {
    let config = Config::new()
        .section("cache", |s| s.set("ttl", "60s").set("negative_ttl", "60s"))
        .section("oauth", |s| {
            s.set("mode", "introspection")
                .set("introspection_url", format!("http://{server}/introspect"))
                .set("client_id", "portcullis")
                .set("client_secret", table([("env", "HOME".into())]))
                .set("roles_claim", "roles")
        });
    routes(config, up).to_toml()
}

#[tokio::test]
async fn introspection_results_are_cached() {
    let up = Upstream::start().await;
    let server = TestServer::start(introspection_handler(), Duration::ZERO).await;
    let gw = Gateway::start(&introspection_config(&up, server.addr)).await;
    for _ in 0..3 {
        let resp = client()
            .get(gw.url("/events"))
            .bearer_auth("good-token")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(up.last().headers["x-portcullis-user"], "dave");
    assert_eq!(up.last().headers["x-portcullis-client-id"], "snow");
    assert_eq!(server.hits(), 1, "active results are cached");
    for _ in 0..3 {
        assert_401(
            client()
                .get(gw.url("/events"))
                .bearer_auth("revoked")
                .send()
                .await
                .unwrap(),
            REJECTED,
        )
        .await;
    }
    assert_eq!(server.hits(), 2, "inactive results are cached for negative_ttl");
    assert_401(
        client()
            .get(gw.url("/events"))
            .bearer_auth("expired-token")
            .send()
            .await
            .unwrap(),
        REJECTED,
    )
    .await;
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"portcullis_cache_requests_total{cache="introspection",result="hit"}"#
        ),
        4.0
    );
    assert_eq!(
        metric_value(&m, r#"portcullis_cache_entries{cache="introspection"}"#),
        3.0
    );
    assert_eq!(metric_value(&m, &failures("token_inactive", "oauth")), 3.0);
    assert_eq!(metric_value(&m, &failures("token_expired", "oauth")), 1.0);
    gw.stop().await;
}

#[tokio::test]
async fn a_reload_keeps_introspection_results_while_the_server_settings_stay() {
    let up = Upstream::start().await;
    let server = TestServer::start(introspection_handler(), Duration::ZERO).await;
    let gw = Gateway::start(&introspection_config(&up, server.addr)).await;
    let path = gw.dir.path().join("portcullis.toml");
    let status = || async { bearer_status(&gw, "/events", "good-token").await };
    assert_eq!(status().await, 200);
    assert_eq!(server.hits(), 1);
    // A change elsewhere in the config keeps the cached result: no new call.
    let base = introspection_config(&up, server.addr);
    std::fs::write(&path, base.replace("[oauth]", "[lockout]\nmax_failures = 7\n\n[oauth]")).unwrap();
    portcullis::reload::reload(&gw.state, &path, "test").unwrap();
    assert_eq!(status().await, 200);
    assert_eq!(server.hits(), 1, "a reload that left [oauth] alone dropped the cache");
    // A change to what the answers are checked against starts afresh.
    std::fs::write(
        &path,
        base.replace("roles_claim = \"roles\"", "allowed_client_ids = [\"other\"]"),
    )
    .unwrap();
    portcullis::reload::reload(&gw.state, &path, "test").unwrap();
    assert_eq!(status().await, 401);
    assert_eq!(server.hits(), 2);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_make_one_introspection_call() {
    let up = Upstream::start().await;
    let server = TestServer::start(introspection_handler(), Duration::from_millis(300)).await;
    let gw = Gateway::start(&introspection_config(&up, server.addr)).await;
    let url = gw.url("/events");
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            client()
                .get(url)
                .bearer_auth("hot-token")
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(server.hits(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn introspection_down_or_erroring_is_503_and_never_lets_through() {
    let up = Upstream::start().await;
    let erroring = TestServer::start(
        Arc::new(|_, _| (500, "{\"error\":\"server_error\"}".into())),
        Duration::ZERO,
    )
    .await;
    let gw = Gateway::start(&introspection_config(&up, erroring.addr)).await;
    let resp = client()
        .get(gw.url("/events"))
        .bearer_auth("good-token")
        .send()
        .await
        .unwrap();
    error_body(resp, 503).await;
    gw.stop().await;

    let server = TestServer::start(introspection_handler(), Duration::ZERO).await;
    let gw = Gateway::start(&introspection_config(&up, server.addr)).await;
    server.stop().await;
    let resp = client()
        .get(gw.url("/events"))
        .bearer_auth("good-token")
        .send()
        .await
        .unwrap();
    error_body(resp, 503).await;
    // Not cached: once the server is back the same token passes.
    assert!(up.seen().is_empty());
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"portcullis_requests_total{auth_method="oauth",integration="events",outcome="auth_unavailable",plan="api"}"#
        ),
        1.0
    );
    gw.stop().await;
}

#[tokio::test]
async fn jwt_keys_can_come_from_a_jwks_file() {
    let up = Upstream::start().await;
    let idp = idp().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), idp.jwks.lock().unwrap().to_string()).unwrap();
    let toml = jwt_config(&up, &idp).replace(
        &format!("jwks_url = \"http://{}/jwks\"", idp.server.addr),
        "jwks_file = \"{dir}/jwks.json\"",
    );
    let gw = Gateway::start_in(dir, &toml).await;
    let good = sign(Algorithm::RS256, "rsa-1", &idp.rsa_key, &claims(serde_json::json!({})));
    assert_eq!(bearer_status(&gw, "/events", &good).await, 200);
    let unknown = sign(Algorithm::RS256, "rsa-7", &idp.rsa_key, &claims(serde_json::json!({})));
    assert_eq!(bearer_status(&gw, "/events", &unknown).await, 401);
    assert_eq!(idp.server.hits(), 0, "a JWKS file needs no fetch");
    gw.stop().await;
}

// === verified-token cache ===

pub(crate) fn replace_config(gw: &Gateway, toml: &str) {
    let path = write_config(gw.dir.path(), toml);
    gw.state
        .replace(portcullis::config::load(&path).unwrap().config)
        .unwrap();
}

/// A verified JWT is served from the cache, but never past its own `exp` (the cache ttl
/// is an hour here and the leeway zero), and the principal made from it follows the
/// user's `[[users]]` entry: disabled, refused at once; new roles, new headers.
#[tokio::test]
async fn cached_jwts_end_at_their_exp_and_follow_the_users_entry() {
    let up = Upstream::start().await;
    let idp = idp().await;
    let cfg = jwt_config(&up, &idp)
        .replace("leeway = \"5s\"", "leeway = \"0s\"")
        .replace("negative_ttl = \"2s\"", "negative_ttl = \"2s\"\nttl = \"1h\"");
    let gw = Gateway::start(&cfg).await;
    let short = sign(
        Algorithm::RS256,
        "rsa-1",
        &idp.rsa_key,
        &claims(serde_json::json!({"exp": now() + 3})),
    );
    assert_eq!(bearer_status(&gw, "/events", &short).await, 200);
    assert_eq!(bearer_status(&gw, "/events", &short).await, 200);
    eventually(PATIENCE, || async {
        bearer_status(&gw, "/events", &short).await == 401
    })
    .await;
    assert!(gw.metric(&failures("token_expired", "oauth")).await >= 1.0);

    let alice = sign(
        Algorithm::RS256,
        "rsa-1",
        &idp.rsa_key,
        &claims(serde_json::json!({"preferred_username": "alice", "groups": []})),
    );
    assert_eq!(bearer_status(&gw, "/events", &alice).await, 200);
    assert_eq!(up.last().headers["x-portcullis-roles"], "rest");
    replace_config(
        &gw,
        &cfg.replace(
            "roles = [\"rest\"]\npassword_hash",
            "roles = [\"rest\", \"admin\"]\npassword_hash",
        ),
    );
    assert_eq!(bearer_status(&gw, "/admin", &alice).await, 200);
    assert_eq!(up.last().headers["x-portcullis-roles"], "rest,admin");
    replace_config(
        &gw,
        &cfg.replace(
            "roles = [\"rest\"]\npassword_hash",
            "roles = [\"rest\"]\ndisabled = true\npassword_hash",
        ),
    );
    assert_eq!(bearer_status(&gw, "/events", &alice).await, 401);
    gw.stop().await;
}

/// Builtin access tokens are verified once and then cached: the cache never outlives the
/// token, and a user disabled or removed is refused on the next use.
#[tokio::test]
async fn cached_builtin_tokens_end_at_their_exp_and_check_the_user_on_every_use() {
    let up = Upstream::start().await;
    let cfg = builtin_config(&up).replace(
        "access_token_ttl = \"2m\"",
        "access_token_ttl = \"3s\"\nleeway = \"0s\"",
    );
    let gw = Gateway::start(&cfg).await;
    let token = |id: &'static str, secret: &'static str| {
        let gw = &gw;
        async move {
            let (status, body) = token_request(gw, &[("grant_type", "client_credentials")], Some((id, secret))).await;
            assert_eq!(status, 200, "{body}");
            body["access_token"].as_str().unwrap().to_string()
        }
    };
    let t = token("svc-client", "svc-client-secret").await;
    assert_eq!(bearer_status(&gw, "/events", &t).await, 200);
    assert_eq!(bearer_status(&gw, "/events", &t).await, 200);
    eventually(PATIENCE, || async { bearer_status(&gw, "/events", &t).await == 401 }).await;
    assert!(gw.metric(&failures("token_expired", "oauth")).await >= 1.0);

    // A user's token (password grant), cached, then the user disabled: refused at once.
    let (status, body) = token_request(
        &gw,
        &[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "alice-pw"),
        ],
        Some(("jira", "jira-client-secret")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let alice = body["access_token"].as_str().unwrap().to_string();
    assert_eq!(bearer_status(&gw, "/events", &alice).await, 200);
    assert_eq!(bearer_status(&gw, "/events", &alice).await, 200);
    assert_eq!(up.last().headers["x-portcullis-user"], "alice");
    replace_config(
        &gw,
        &cfg.replace(
            "roles = [\"rest\"]\npassword_hash",
            "roles = [\"rest\"]\ndisabled = true\npassword_hash",
        ),
    );
    assert_eq!(bearer_status(&gw, "/events", &alice).await, 401);
    gw.stop().await;
}

/// A refresh token is its client's: another client presenting it (with its own valid
/// credentials) is refused, and the token is not spent by the attempt: its owner still
/// rotates it once, and a second use by the owner is the reuse that revokes the family.
#[tokio::test]
async fn another_clients_refresh_token_is_refused_and_not_spent() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&builtin_config(&up)).await;
    let (s, body) = token_request(
        &gw,
        &[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "alice-pw"),
        ],
        Some(("jira", "jira-client-secret")),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let rt = body["refresh_token"].as_str().unwrap().to_string();
    let refresh = |client: (&'static str, &'static str)| {
        let rt = rt.clone();
        let gw = &gw;
        async move {
            token_request(
                gw,
                &[("grant_type", "refresh_token"), ("refresh_token", &rt)],
                Some(client),
            )
            .await
        }
    };
    let (s, body) = refresh(("svc-client", "svc-client-secret")).await;
    assert_eq!(s, 400, "{body}");
    assert!(body.get("access_token").is_none());
    let (s, body) = refresh(("jira", "jira-client-secret")).await;
    assert_eq!(s, 200, "the other client's attempt spent the token: {body}");
    let newer = body["refresh_token"].as_str().unwrap().to_string();
    let (s, _) = refresh(("jira", "jira-client-secret")).await;
    assert_eq!(s, 400);
    let (s, _) = token_request(
        &gw,
        &[("grant_type", "refresh_token"), ("refresh_token", &newer)],
        Some(("jira", "jira-client-secret")),
    )
    .await;
    assert_eq!(s, 400, "the reuse revoked the family");
    gw.stop().await;
}
