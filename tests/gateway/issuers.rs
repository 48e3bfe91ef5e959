//! Many issuers in one gateway: two JWKS servers with their own keys and `iss`, an RFC
//! 7662 introspection server and the builtin issuer, all real servers on loopback. Each
//! token goes to its own issuer only; integrations accept only the issuers they list;
//! one user name from two issuers is two principals; key rotations at an IdP cost one
//! fetch; the last good keys serve while the IdP is down, until `jwks_max_stale`; the
//! builtin issuer rotates its signing keys without refusing earlier tokens (checked by
//! Authlib as a real client too).

use crate::oauth::{b64, jwks_server, now, replace_config, status_at as status, Handler, TestServer};
use crate::support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use support::*;

const CORP: &str = "https://corp.test";
const PARTNER: &str = "https://partner.test";

/// An Ed25519 key: its PKCS#8 DER and its public JWK (with `kid`).
struct EdKey {
    der: Vec<u8>,
    x: String,
}

impl EdKey {
    fn new() -> EdKey {
        use ring::signature::KeyPair;
        let rng = ring::rand::SystemRandom::new();
        let der = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .unwrap()
            .as_ref()
            .to_vec();
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(&der).unwrap();
        EdKey {
            x: b64(pair.public_key().as_ref()),
            der,
        }
    }

    fn jwk(&self, kid: &str) -> serde_json::Value {
        serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA", "x": self.x})
    }

    fn encoding(&self) -> EncodingKey {
        EncodingKey::from_ed_der(&self.der)
    }

    fn pem(&self) -> String {
        use base64::Engine;
        let body = base64::engine::general_purpose::STANDARD.encode(&self.der);
        format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n")
    }
}

/// An IdP: a JWKS server whose key set a test changes, and the keys it signs with.
struct Idp {
    server: TestServer,
    jwks: Arc<Mutex<serde_json::Value>>,
}

async fn idp(keys: Vec<serde_json::Value>) -> Idp {
    let jwks = Arc::new(Mutex::new(serde_json::json!({ "keys": keys })));
    Idp {
        server: jwks_server(jwks.clone()).await,
        jwks,
    }
}

/// The TOML of the plan `api` behind `upstream`: integrations `(name, auth, extra keys)`
/// at `/NAME`, accepting GET.
fn plan_toml(upstream: &str, integrations: &[(&str, &str, &str)]) -> String {
    let mut text = format!("\n[[plans]]\nname = \"api\"\nupstream = \"{upstream}\"\naccess = {{ all = true }}\n");
    for (name, auth, extra) in integrations {
        text.push_str(&format!(
            "\n[[plans.integrations]]\nname = \"{name}\"\npath = \"/{name}\"\nmethods = [\"GET\"]\nauth = \"{auth}\"\n{extra}\n"
        ));
    }
    text
}

/// Opaque tokens: `opaque-alice` is active for alice, every other one inactive.
fn introspection() -> Handler {
    Arc::new(|path, body| {
        if path != "/introspect" {
            return (404, "{}".into());
        }
        let form: std::collections::HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
        let doc = match form.get("token").map(String::as_str) {
            Some("opaque-alice") => serde_json::json!({
                "active": true, "sub": "alice", "client_id": "snow", "exp": now() + 300, "roles": ["ops"]
            }),
            _ => serde_json::json!({"active": false}),
        };
        (200, doc.to_string())
    })
}

/// A JWT of `iss` for `user`, signed by `key` under `kid`; `extra` claims override.
fn jwt(iss: &str, user: &str, kid: &str, key: &EncodingKey, extra: serde_json::Value) -> String {
    let mut c = serde_json::json!({
        "iss": iss, "aud": "portcullis", "sub": format!("{user}-id"), "preferred_username": user,
        "groups": ["ops"], "exp": now() + 300, "iat": now(), "jti": format!("{:x}", rand::random::<u64>())
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, &c, key).unwrap()
}

/// Everything of one gateway with four issuers.
struct World {
    up: Upstream,
    corp: Idp,
    corp_key: EdKey,
    partner: Idp,
    partner_key: EdKey,
    introspect: TestServer,
    gw: Gateway,
}

/// `corp` and `partner` (jwt), `opaque` (introspection) and `builtin`; plan `api` with
/// integrations `/any` (every issuer), `/corp`, `/builtin` and `/opaque` (that issuer
/// only) and `/staff` (senders: role `staff`, which only `[[users]]` gives).
fn world_toml(w: (&Upstream, &Idp, &Idp, &TestServer), builtin_keys: &str) -> String {
    let (up, corp, partner, introspect) = w;
    let mut text = Config::new().to_toml();
    text.push_str(&format!(
        r#"
[cache]
ttl = "60s"
negative_ttl = "60s"

[[users]]
name = "alice"
roles = ["staff"]

[[users]]
name = "svc-client"
roles = ["ops"]

[[oauth.issuers]]
name = "corp"
mode = "jwt"
issuer = "{CORP}"
audience = "portcullis"
jwks_url = "http://{corp}/jwks"
username_claim = "preferred_username"
roles_claim = "groups"
algorithms = ["EdDSA"]
jwks_max_stale = "1h"
local_users = true

[[oauth.issuers]]
name = "partner"
mode = "jwt"
issuer = "{PARTNER}"
audience = "portcullis"
jwks_url = "http://{partner}/jwks"
username_claim = "preferred_username"
roles_claim = "groups"
algorithms = ["EdDSA"]

[[oauth.issuers]]
name = "opaque"
mode = "introspection"
introspection_url = "http://{introspect}/introspect"
client_id = "portcullis"
client_secret = {{ env = "HOME" }}
issuer = "https://opaque.test"
roles_claim = "roles"

[[oauth.issuers]]
name = "builtin"
mode = "builtin"
access_token_ttl = "10m"
{builtin_keys}

[[oauth.issuers.clients]]
client_id = "svc-client"
client_secret_hash = "{hash}"

"#,
        corp = corp.server.addr,
        partner = partner.server.addr,
        introspect = introspect.addr,
        hash = sha256_hex("svc-secret"),
    ));
    text.push_str(&plan_toml(
        &up.url(),
        &[
            ("any", "oauth", ""),
            ("corp", "oauth", r#"issuers = ["corp"]"#),
            ("builtin", "oauth", r#"issuers = ["builtin"]"#),
            ("opaque", "oauth", r#"issuers = ["opaque"]"#),
            ("staff", "oauth", r#"senders = { roles = ["staff"] }"#),
            ("public", "none", ""),
            ("alice-only", "oauth", r#"senders = { users = ["alice"] }"#),
        ],
    ));
    text
}

async fn world() -> World {
    let up = Upstream::start().await;
    let corp_key = EdKey::new();
    let partner_key = EdKey::new();
    let corp = idp(vec![corp_key.jwk("corp-1")]).await;
    let partner = idp(vec![partner_key.jwk("partner-1")]).await;
    let introspect = TestServer::start(introspection(), Duration::ZERO).await;
    let gw = Gateway::start(&world_toml((&up, &corp, &partner, &introspect), "")).await;
    World {
        up,
        corp,
        corp_key,
        partner,
        partner_key,
        introspect,
        gw,
    }
}

impl World {
    fn corp_jwt(&self, user: &str) -> String {
        jwt(CORP, user, "corp-1", &self.corp_key.encoding(), serde_json::json!({}))
    }

    fn partner_jwt(&self, user: &str) -> String {
        jwt(
            PARTNER,
            user,
            "partner-1",
            &self.partner_key.encoding(),
            serde_json::json!({}),
        )
    }
}

/// A client_credentials token of the builtin issuer.
async fn builtin_token(gw: &Gateway) -> String {
    let resp = client()
        .post(gw.url("/oauth/token"))
        .basic_auth("svc-client", Some("svc-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

/// The status of a GET of `path` with `token`, and the upstream's `X-Portcullis-Issuer`
/// values when it was reached.
async fn call(w: &World, path: &str, token: &str) -> (u16, Vec<String>) {
    let before = w.up.seen().len();
    let resp = client()
        .get(w.gw.url(path))
        .bearer_auth(token)
        .header("X-Portcullis-Issuer", "spoofed")
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let seen = w.up.seen();
    let issuers = if seen.len() > before {
        seen.last()
            .unwrap()
            .headers
            .get_all("x-portcullis-issuer")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    } else {
        Vec::new()
    };
    (status, issuers)
}

/// The kids `GET /oauth/jwks.json` publishes, in order.
async fn published_kids(gw: &Gateway) -> Vec<String> {
    let jwks: serde_json::Value = reqwest::get(gw.url("/oauth/jwks.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

/// Each token is checked by its own issuer only (a corp JWT never reaches the partner's
/// JWKS nor the introspection server), names it upstream in `X-Portcullis-Issuer` (the
/// client's own copy stripped) and in the assertion; an integration that lists issuers
/// refuses the others' valid tokens with `issuer_not_allowed`, before any key fetch or
/// introspection call.
#[tokio::test]
async fn four_issuers_in_one_gateway_and_integrations_that_allow_only_one() {
    let w = world().await;
    let corp = w.corp_jwt("carol");
    let partner = w.partner_jwt("pete");
    let builtin = builtin_token(&w.gw).await;
    // Refused by the integrations that do not list their issuer, before anything is
    // fetched or asked.
    for (path, token) in [
        ("/corp", &partner),
        ("/corp", &builtin),
        ("/builtin", &corp),
        ("/opaque", &corp),
    ] {
        assert_eq!(call(&w, path, token).await, (401, vec![]), "{path}");
    }
    assert_eq!(call(&w, "/corp", "opaque-alice").await, (401, vec![]));
    assert_eq!(
        (w.corp.server.hits(), w.partner.server.hits(), w.introspect.hits()),
        (0, 0, 0)
    );
    let m = w.gw.metrics().await;
    assert_eq!(metric_value(&m, &failures("issuer_not_allowed", "oauth")), 5.0, "{m}");
    // Accepted where their issuer is allowed, each naming its issuer.
    assert_eq!(call(&w, "/corp", &corp).await, (200, vec!["corp".into()]));
    assert_eq!(
        (w.corp.server.hits(), w.partner.server.hits(), w.introspect.hits()),
        (1, 0, 0)
    );
    assert_eq!(call(&w, "/any", &partner).await, (200, vec!["partner".into()]));
    assert_eq!(
        (w.corp.server.hits(), w.partner.server.hits(), w.introspect.hits()),
        (1, 1, 0)
    );
    assert_eq!(call(&w, "/builtin", &builtin).await, (200, vec!["builtin".into()]));
    assert_eq!(call(&w, "/opaque", "opaque-alice").await, (200, vec!["opaque".into()]));
    assert_eq!(call(&w, "/any", "opaque-alice").await, (200, vec!["opaque".into()]));
    assert_eq!(
        (w.corp.server.hits(), w.partner.server.hits(), w.introspect.hits()),
        (1, 1, 1)
    );
    // The assertion names the issuer too.
    call(&w, "/any", &partner).await;
    let assertion = w.up.last().headers["x-portcullis-assertion"]
        .to_str()
        .unwrap()
        .to_string();
    let mut v = jsonwebtoken::Validation::new(Algorithm::HS256);
    v.set_issuer(&["portcullis"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        &assertion,
        &jsonwebtoken::DecodingKey::from_secret(ASSERTION_KEY.as_bytes()),
        &v,
    )
    .unwrap()
    .claims;
    assert_eq!(
        (claims["sub"].as_str(), claims["token_issuer"].as_str()),
        (Some("pete"), Some("partner"))
    );
    // An opaque token no server knows: inactive.
    assert_eq!(call(&w, "/any", "opaque-nobody").await, (401, vec![]));
    // Without a principal (a public route), the client's copy is dropped all the same.
    assert_eq!(call(&w, "/public", "anything").await, (200, vec![]));
    w.gw.stop().await;
}

/// Routing reads `iss` only to choose: the chosen issuer verifies with its own keys, so a
/// token naming one issuer and signed by another's key is refused, and an `iss` that is
/// not one string, names no issuer or is absent is refused without any key fetch.
#[tokio::test]
async fn a_token_is_never_verified_with_another_issuers_keys() {
    let w = world().await;
    let pk = w.partner_key.encoding();
    let cases = [
        // The partner's key, under the partner's kid or the corp's, in a corp token.
        (
            "partner key and kid",
            jwt(CORP, "carol", "partner-1", &pk, serde_json::json!({})),
            "unknown_kid",
        ),
        (
            "partner key, corp kid",
            jwt(CORP, "carol", "corp-1", &pk, serde_json::json!({})),
            "bad_signature",
        ),
        (
            "iss list",
            jwt(
                PARTNER,
                "pete",
                "partner-1",
                &pk,
                serde_json::json!({"iss": [PARTNER, CORP]}),
            ),
            "wrong_issuer",
        ),
        (
            "iss number",
            jwt(PARTNER, "pete", "partner-1", &pk, serde_json::json!({"iss": 7})),
            "malformed_token",
        ),
        (
            "iss unknown",
            jwt("https://evil.test", "pete", "partner-1", &pk, serde_json::json!({})),
            "wrong_issuer",
        ),
        (
            "no iss",
            jwt(PARTNER, "pete", "partner-1", &pk, serde_json::json!({"iss": null})),
            "missing_claim",
        ),
    ];
    for (name, token, _) in &cases {
        assert_eq!(call(&w, "/any", token).await, (401, vec![]), "{name}");
    }
    let m = w.gw.metrics().await;
    for reason in ["unknown_kid", "bad_signature", "malformed_token", "missing_claim"] {
        assert_eq!(metric_value(&m, &failures(reason, "oauth")), 1.0, "{reason}\n{m}");
    }
    assert_eq!(metric_value(&m, &failures("wrong_issuer", "oauth")), 2.0, "{m}");
    // Only the corp's keys were fetched (for the corp tokens); nothing was introspected.
    assert_eq!(
        (w.corp.server.hits(), w.partner.server.hits(), w.introspect.hits()),
        (1, 0, 0)
    );
    assert!(w.up.seen().is_empty());
    w.gw.stop().await;
}

/// `alice` of corp (whose users meet `[[users]]`: `local_users = true`) and `alice` of
/// the partner are two principals: only the first gets the `staff` role of the
/// `[[users]]` entry or passes a rule naming `alice`, and the upstream is told which
/// issuer named each.
#[tokio::test]
async fn one_user_name_from_two_issuers_is_two_principals() {
    let w = world().await;
    let corp = w.corp_jwt("alice");
    let partner = w.partner_jwt("alice");
    assert_eq!(call(&w, "/staff", &corp).await, (200, vec!["corp".into()]));
    let roles = w.up.last().headers["x-portcullis-roles"].to_str().unwrap().to_string();
    assert_eq!(roles, "ops,staff");
    assert_eq!(call(&w, "/staff", &partner).await, (403, vec![]));
    assert_eq!(call(&w, "/any", &partner).await, (200, vec!["partner".into()]));
    let h = w.up.last().headers;
    assert_eq!(
        (
            h["x-portcullis-user"].to_str().unwrap(),
            h["x-portcullis-roles"].to_str().unwrap()
        ),
        ("alice", "ops")
    );
    // The introspection issuer's alice (local_users defaults to false there) neither.
    assert_eq!(call(&w, "/staff", "opaque-alice").await, (403, vec![]));
    // A rule naming `alice` names the [[users]] entry: corp's alice (local_users), not
    // the partner's nor the introspection server's.
    assert_eq!(
        call(&w, "/alice-only", &w.corp_jwt("alice")).await,
        (200, vec!["corp".into()])
    );
    assert_eq!(call(&w, "/alice-only", &partner).await, (403, vec![]));
    assert_eq!(call(&w, "/alice-only", "opaque-alice").await, (403, vec![]));
    let m = w.gw.metrics().await;
    assert_eq!(metric_value(&m, &failures("not_a_sender", "oauth")), 4.0, "{m}");
    w.gw.stop().await;
}

/// The IdP rotates its key (a new kid): a burst of concurrent requests with new-key
/// tokens makes exactly one JWKS fetch; made-up kids then fetch nothing within
/// `jwks_min_refetch`, and one fetch for a whole burst after it.
#[tokio::test]
async fn a_key_rotation_at_the_idp_is_one_refetch_for_a_burst() {
    let w = world().await;
    let first = w.corp_jwt("carol");
    assert_eq!(call(&w, "/corp", &first).await.0, 200);
    assert_eq!(w.corp.server.hits(), 1);
    let new_key = EdKey::new();
    w.corp.jwks.lock().unwrap()["keys"]
        .as_array_mut()
        .unwrap()
        .push(new_key.jwk("corp-2"));
    let url = w.gw.url("/corp");
    let burst = |kid: &'static str, key: &EdKey| {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let token = jwt(CORP, "carol", kid, &key.encoding(), serde_json::json!({}));
            set.spawn(status(url.clone(), token));
        }
        async move { set.join_all().await }
    };
    // Within jwks_min_refetch (30s) of the first fetch, the new kid fetches nothing.
    assert_eq!(burst("corp-2", &new_key).await, vec![401; 20]);
    assert_eq!(w.corp.server.hits(), 1);
    w.gw.state.clock().advance(Duration::from_secs(31));
    assert_eq!(burst("corp-2", &new_key).await, vec![200; 20]);
    assert_eq!(w.corp.server.hits(), 2, "one fetch for the whole burst");
    // Made-up kids right after: no fetch; after the interval, one for the burst.
    assert_eq!(burst("made-up", &new_key).await, vec![401; 20]);
    assert_eq!(w.corp.server.hits(), 2);
    w.gw.state.clock().advance(Duration::from_secs(31));
    assert_eq!(burst("made-up", &new_key).await, vec![401; 20]);
    assert_eq!(w.corp.server.hits(), 3);
    let m = w.gw.metrics().await;
    assert_eq!(
        metric_value(&m, r#"portcullis_jwks_refresh_total{issuer="corp",result="ok"}"#),
        3.0,
        "{m}"
    );
    assert_eq!(metric_value(&m, &failures("unknown_kid", "oauth")), 60.0, "{m}");
    w.gw.stop().await;
}

/// The IdP withdraws a key (a compromised one): once a fetch finds it gone, a token signed
/// with it is refused at its next use, though its verification was cached.
#[tokio::test]
async fn a_key_the_idp_withdrew_ends_its_cached_tokens() {
    let w = world().await;
    let old = w.corp_jwt("carol");
    assert_eq!(call(&w, "/corp", &old).await.0, 200);
    assert_eq!(call(&w, "/corp", &old).await.0, 200, "now from the cache");
    let new_key = EdKey::new();
    w.corp.jwks.lock().unwrap()["keys"] = serde_json::json!([new_key.jwk("corp-2")]);
    w.gw.state.clock().advance(Duration::from_secs(31));
    let fresh = jwt(CORP, "carol", "corp-2", &new_key.encoding(), serde_json::json!({}));
    assert_eq!(call(&w, "/corp", &fresh).await.0, 200, "the new key, fetched");
    assert_eq!(w.corp.server.hits(), 2);
    assert_eq!(
        call(&w, "/corp", &old).await.0,
        401,
        "the withdrawn key's token, cached before"
    );
    w.gw.stop().await;
}

/// The IdP goes down: its last good keys keep serving (the failed refreshes counted, the
/// stale gauge at 1) until `jwks_max_stale` after their fetch; past it, 503.
#[tokio::test]
async fn the_last_good_keys_serve_while_the_idp_is_down_until_max_stale() {
    let w = world().await;
    let fresh = || w.corp_jwt("carol");
    assert_eq!(call(&w, "/corp", &fresh()).await.0, 200);
    w.corp.server.stop().await;
    let clock = w.gw.state.clock();
    // Past [cache] ttl the keys are refreshed on use: the fetch fails, the keys serve.
    clock.advance(Duration::from_secs(120));
    assert_eq!(call(&w, "/corp", &fresh()).await.0, 200);
    clock.advance(Duration::from_secs(40 * 60));
    assert_eq!(call(&w, "/corp", &fresh()).await.0, 200);
    let m = w.gw.metrics().await;
    assert_eq!(
        metric_value(&m, r#"portcullis_jwks_refresh_total{issuer="corp",result="error"}"#),
        2.0,
        "{m}"
    );
    assert_eq!(metric_value(&m, r#"portcullis_jwks_stale{issuer="corp"}"#), 1.0, "{m}");
    assert_eq!(
        metric_value(&m, r#"portcullis_jwks_stale{issuer="partner"}"#),
        0.0,
        "{m}"
    );
    // An hour after the last good fetch: refused, 503, nothing forwarded.
    clock.advance(Duration::from_secs(20 * 60));
    let before = w.up.seen().len();
    assert_eq!(status(w.gw.url("/corp"), fresh()).await, 503);
    assert_eq!(w.up.seen().len(), before);
    // The other issuers are not affected.
    let partner = w.partner_jwt("pete");
    assert_eq!(call(&w, "/any", &partner).await, (200, vec!["partner".into()]));
    w.gw.stop().await;
}

/// The builtin issuer's `signing_keys`: a token issued with A passes after a reload to
/// [B, A]; new tokens are signed by B; the JWKS lists both; and Authlib, a real client,
/// verifies both tokens against the published JWKS. Removing A ends its tokens.
#[tokio::test]
async fn builtin_signing_keys_rotate_without_refusing_earlier_tokens() {
    let (a, b) = (EdKey::new(), EdKey::new());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.pem"), a.pem()).unwrap();
    std::fs::write(dir.path().join("b.pem"), b.pem()).unwrap();
    let up = Upstream::start().await;
    let corp = idp(vec![]).await;
    let partner = idp(vec![]).await;
    let introspect = TestServer::start(introspection(), Duration::ZERO).await;
    let servers = (&up, &corp, &partner, &introspect);
    let only_a = r#"signing_keys = [{ file = "{dir}/a.pem" }]"#;
    let b_then_a = r#"signing_keys = [{ file = "{dir}/b.pem" }, { file = "{dir}/a.pem" }]"#;
    let gw = Gateway::start_in(dir, &world_toml(servers, only_a)).await;
    let old = builtin_token(&gw).await;
    let kid_a = kid_of(&old);
    replace_config(&gw, &world_toml(servers, b_then_a));
    let status = |t: String| status(gw.url("/builtin"), t);
    assert_eq!(status(old.clone()).await, 200, "a token of the old key still passes");
    let new = builtin_token(&gw).await;
    let kid_b = kid_of(&new);
    assert_ne!(kid_a, kid_b);
    assert_eq!(status(new.clone()).await, 200);
    assert_eq!(published_kids(&gw).await, vec![kid_b.clone(), kid_a.clone()]);
    authlib_verifies(&gw, &[&old, &new], &kid_b).await;
    // A removed: its tokens end (a new generation re-verifies them).
    replace_config(
        &gw,
        &world_toml(servers, r#"signing_keys = [{ file = "{dir}/b.pem" }]"#),
    );
    assert_eq!(status(old).await, 401);
    assert_eq!(status(new).await, 200);
    gw.stop().await;
}

/// Authlib fetches a token from the builtin issuer (client_credentials, client_secret_basic)
/// and verifies it and `tokens` against `GET /oauth/jwks.json`; its token has `kid`.
async fn authlib_verifies(gw: &Gateway, tokens: &[&str], kid: &str) {
    let Some(python) = python_with("authlib, joserfc, requests", "authlib requests") else {
        return;
    };
    let script = r#"
import sys, requests
from authlib.integrations.requests_client import OAuth2Session
from joserfc import jwt
from joserfc.jwk import KeySet
base, kid = sys.argv[1], sys.argv[2]
s = OAuth2Session("svc-client", "svc-secret", token_endpoint_auth_method="client_secret_basic")
token = s.fetch_token(base + "/oauth/token", grant_type="client_credentials")["access_token"]
keys = KeySet.import_key_set(requests.get(base + "/oauth/jwks.json").json())
for t in [token] + sys.argv[3:]:
    claims = jwt.decode(t, keys, algorithms=["EdDSA"]).claims
    assert claims["iss"] == "portcullis" and claims["client_id"] == "svc-client", claims
assert jwt.decode(token, keys, algorithms=["EdDSA"]).header["kid"] == kid
print("VERIFIED", len(sys.argv) - 2)
"#;
    let mut args = vec!["-c".to_string(), script.to_string(), gw.url(""), kid.to_string()];
    args.extend(tokens.iter().map(|t| t.to_string()));
    let out = tokio::process::Command::new(python).args(&args).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("VERIFIED {}", tokens.len() + 1)),
        "authlib: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Without `signing_keys`, the generated key rotates every `signing_key_rotation`: the
/// token signed just before the rotation still passes after it (the previous key
/// verifies), the next one is signed by a new key, and the JWKS lists both.
#[tokio::test]
async fn the_generated_builtin_key_rotates_and_keeps_the_previous_one() {
    let up = Upstream::start().await;
    let corp = idp(vec![]).await;
    let partner = idp(vec![]).await;
    let introspect = TestServer::start(introspection(), Duration::ZERO).await;
    let gw = Gateway::start(&world_toml(
        (&up, &corp, &partner, &introspect),
        r#"signing_key_rotation = "1h""#,
    ))
    .await;
    let clock = gw.state.clock();
    // Ten seconds before the next rotation.
    let period = 3600;
    let to_next = period - clock.unix() % period;
    clock.advance(Duration::from_secs(if to_next > 10 {
        to_next - 10
    } else {
        to_next + period - 10
    }));
    let before = builtin_token(&gw).await;
    clock.advance(Duration::from_secs(20));
    let after = builtin_token(&gw).await;
    assert_ne!(kid_of(&before), kid_of(&after));
    for t in [&before, &after] {
        assert_eq!(status(gw.url("/builtin"), t.clone()).await, 200);
    }
    assert_eq!(published_kids(&gw).await, vec![kid_of(&after), kid_of(&before)]);
    // Two rotations later the first key is gone, and so are its tokens.
    clock.advance(Duration::from_secs(period));
    assert_eq!(status(gw.url("/builtin"), before).await, 401);
    gw.stop().await;
}

/// An introspection server that knows the tokens starting with `known`, as user `user`.
fn knows(known: &'static str, user: &'static str) -> Handler {
    Arc::new(move |_, body| {
        let form: std::collections::HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
        let doc = if form.get("token").is_some_and(|t| t.starts_with(known)) {
            serde_json::json!({"active": true, "sub": user, "exp": now() + 300})
        } else {
            serde_json::json!({"active": false})
        };
        (200, doc.to_string())
    })
}

/// Opaque tokens go to the introspection issuers the integration accepts, in config
/// order, each answer cached per issuer; the first active answer wins; a server that is
/// down does not hide another's active answer, but makes "inactive everywhere" a 503.
#[tokio::test]
async fn opaque_tokens_ask_the_allowed_introspection_servers_in_order() {
    let up = Upstream::start().await;
    let a = TestServer::start(knows("token-of-a", "ann"), Duration::ZERO).await;
    let b = TestServer::start(knows("token-of-b", "bob"), Duration::ZERO).await;
    let issuer = |name: &str, addr: std::net::SocketAddr| {
        format!("\n[[oauth.issuers]]\nname = \"{name}\"\nmode = \"introspection\"\nintrospection_url = \"http://{addr}/introspect\"\nclient_id = \"portcullis\"\nclient_secret = \"s\"\n")
    };
    let toml = format!(
        "{}\n[cache]\nttl = \"60s\"\nnegative_ttl = \"60s\"\n{}{}{}",
        Config::new().to_toml(),
        issuer("a", a.addr),
        issuer("b", b.addr),
        plan_toml(
            &up.url(),
            &[("any", "oauth", ""), ("only-b", "oauth", r#"issuers = ["b"]"#)]
        ),
    );
    let gw = Gateway::start(&toml).await;
    let get = |path: &str, token: &str| status(gw.url(path), token.to_string());
    // A's token: A answers first. B's token: A says inactive, then B active.
    assert_eq!(get("/any", "token-of-a").await, 200);
    assert_eq!(up.last().headers["x-portcullis-issuer"], "a");
    assert_eq!((a.hits(), b.hits()), (1, 0));
    assert_eq!(get("/any", "token-of-b").await, 200);
    assert_eq!(up.last().headers["x-portcullis-issuer"], "b");
    assert_eq!((a.hits(), b.hits()), (2, 1));
    // Each answer is cached by its own issuer: asked again, nobody is called.
    assert_eq!(get("/any", "token-of-b").await, 200);
    assert_eq!((a.hits(), b.hits()), (2, 1));
    // Where only B is accepted, A is never asked: A's token is inactive at B.
    assert_eq!(get("/only-b", "token-of-a").await, 401);
    assert_eq!((a.hits(), b.hits()), (2, 2));
    // A down: B's answer still counts; a token neither knows is 503 (it might be A's).
    a.stop().await;
    assert_eq!(get("/any", "token-of-b-2").await, 200);
    assert_eq!(b.hits(), 3);
    assert_eq!(get("/any", "token-of-nobody").await, 503);
    let m = gw.metrics().await;
    assert_eq!(metric_value(&m, &failures("token_inactive", "oauth")), 1.0, "{m}");
    gw.stop().await;
}

/// The access log of the real binary names the issuer of each principal, and the reason
/// of a refused issuer.
#[tokio::test]
async fn the_access_log_names_the_issuer() {
    let w = world().await;
    let path = write_config(
        w.gw.dir.path(),
        &world_toml((&w.up, &w.corp, &w.partner, &w.introspect), ""),
    );
    let p = Process::start(&path, &[]);
    for (id, route, token) in [
        ("issuer-log-1", "/any", w.corp_jwt("carol")),
        ("issuer-log-2", "/corp", w.partner_jwt("pete")),
    ] {
        client()
            .get(format!("http://{}{route}", p.addr))
            .bearer_auth(token)
            .header("x-request-id", id)
            .send()
            .await
            .unwrap();
    }
    let logs = p.logs_when(|l| l.contains("issuer-log-2")).await;
    let line = |id: &str| -> serde_json::Value {
        let l = logs.lines().find(|l| l.contains(id)).unwrap();
        serde_json::from_str(l).unwrap()
    };
    let ok = line("issuer-log-1");
    assert_eq!(
        (ok["principal"].as_str(), ok["issuer"].as_str(), ok["status"].as_u64()),
        (Some("carol"), Some("corp"), Some(200))
    );
    let refused = line("issuer-log-2");
    assert_eq!(
        (refused["reason"].as_str(), refused["status"].as_u64()),
        (Some("issuer_not_allowed"), Some(401))
    );
    w.gw.stop().await;
}

/// The request's span carries `portcullis.issuer`.
#[tokio::test]
async fn the_span_names_the_issuer() {
    let w = world().await;
    let (addr, bodies) = crate::tracing::collector().await;
    let mut toml = world_toml((&w.up, &w.corp, &w.partner, &w.introspect), "");
    toml.push_str(&format!("\n[tracing]\notlp_endpoint = \"http://{addr}\"\n"));
    let gw = Gateway::start(&toml).await;
    let trace = "5bf92f3577b34da6a3ce929d0e0e4736";
    let resp = client()
        .get(gw.url("/any"))
        .bearer_auth(w.partner_jwt("pete"))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let server = || {
        crate::tracing::spans(&bodies.lock().unwrap())
            .into_iter()
            .find(|s| s["traceId"] == trace && s["kind"] == 2)
    };
    assert!(eventually(PATIENCE, || async { server().is_some() }).await);
    assert_eq!(crate::tracing::attr(&server().unwrap(), "portcullis.issuer"), "partner");
    gw.stop().await;
    w.gw.stop().await;
}

/// At the egress listener, a `callers` rule naming `alice` names the `[[users]]` entry:
/// the assertion of another issuer's `alice` (`local_user: false`) is refused, the one
/// of an issuer whose users are `[[users]]` passes, and roles work for both.
#[tokio::test]
async fn egress_callers_keep_the_users_of_two_issuers_apart() {
    use crate::egress::{ok, target, Egress};
    let t = target(None, ok()).await;
    let eg = Egress::start(&format!(
        "\n[[endpoints]]\nname = \"named\"\nbase_url = \"http://{a}\"\ncallers = {{ users = [\"alice\"] }}\n\n[[endpoints]]\nname = \"ops\"\nbase_url = \"http://{a}\"\ncallers = {{ roles = [\"ops\"] }}\n",
        a = t.addr
    ))
    .await;
    let alice = |issuer: &str, local_user: bool| {
        let p = portcullis::auth::Principal {
            local_user,
            ..portcullis::auth::Principal::new(
                Arc::from("alice"),
                Arc::from(vec!["ops".to_string()]),
                portcullis::config::AuthMethod::OAuth,
                None,
            )
            .with_issuer(Arc::from(issuer))
        };
        eg.gw.state.gateway().signer().sign(&p, "p", "i").unwrap()
    };
    let call = |ep: &str, assertion: String| {
        let url = eg.url(&format!("/{ep}/x"));
        async move {
            client()
                .get(url)
                .header("x-portcullis-assertion", assertion)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(call("named", alice("corp", true)).await, 200);
    assert_eq!(call("named", alice("partner", false)).await, 403);
    assert_eq!(call("ops", alice("partner", false)).await, 200);
    eg.gw.stop().await;
}

/// With `[shared]`, replicas agree on each period's generated key through Redis: after a
/// rotation, a token replica A signs with the new key passes on replica B (which agrees
/// on it at the unknown kid), and so does the one A signed before the rotation. With
/// Redis down at a rotation, the previous key signs, until it is too old: 503.
#[tokio::test]
async fn replicas_agree_on_the_rotated_generated_key() {
    let Some(mut redis) = crate::shared::Redis::start() else {
        return;
    };
    let up = Upstream::start().await;
    let toml = format!(
        r#"{head}
[shared]
backend = "redis"
url = "{url}"
secret = "{secret}"

[[oauth.issuers]]
name = "builtin"
mode = "builtin"
access_token_ttl = "10m"
signing_key_rotation = "1h"

[[oauth.issuers.clients]]
client_id = "svc-client"
client_secret_hash = "{hash}"

[[users]]
name = "svc-client"
{plan}"#,
        head = Config::new().to_toml(),
        url = redis.url(),
        secret = crate::shared::SHARED_SECRET,
        hash = sha256_hex("svc-secret"),
        plan = plan_toml(&up.url(), &[("builtin", "oauth", "")]),
    );
    let (a, b) = (Gateway::start(&toml).await, Gateway::start(&toml).await);
    let period = 3600;
    let to_next = period - a.state.clock().unix() % period;
    let skip = Duration::from_secs(if to_next > 10 {
        to_next - 10
    } else {
        to_next + period - 10
    });
    for gw in [&a, &b] {
        gw.state.clock().advance(skip);
    }
    let before = builtin_token(&a).await;
    for gw in [&a, &b] {
        gw.state.clock().advance(Duration::from_secs(20));
    }
    let after = builtin_token(&a).await;
    assert_ne!(kid_of(&before), kid_of(&after));
    for t in [&after, &before] {
        assert_eq!(status(b.url("/builtin"), t.clone()).await, 200);
    }
    assert_eq!(published_kids(&b).await, vec![kid_of(&after), kid_of(&before)]);
    assert_eq!(published_kids(&a).await, published_kids(&b).await);
    // Redis down at the next rotation: the previous period's key, which every replica
    // still verifies, keeps signing; a period later there is none left: 503.
    redis.stop();
    a.state.clock().advance(Duration::from_secs(period));
    assert_eq!(kid_of(&builtin_token(&a).await), kid_of(&after));
    a.state.clock().advance(Duration::from_secs(period));
    let resp = client()
        .post(a.url("/oauth/token"))
        .basic_auth("svc-client", Some("svc-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    let refusals: serde_json::Value = reqwest::get(a.admin_url("/refusals"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(refusals.to_string().contains("signing_key_unavailable"), "{refusals}");
    a.stop().await;
    b.stop().await;
}

/// `check` refuses, at the line: two issuers with one `issuer`, two builtins, a mode
/// beside `[[oauth.issuers]]`, an issuer without a name, an integration naming an
/// unknown issuer or listing none.
#[tokio::test]
async fn check_refuses_ambiguous_issuers_at_their_line() {
    let jwt = |name: &str, jwks: &str| {
        format!("\n[[oauth.issuers]]\nname = \"{name}\"\nmode = \"jwt\"\nissuer = \"https://x\"\njwks_url = \"{jwks}\"\naudience = \"p\"\n")
    };
    let builtin = |name: &str| format!("\n[[oauth.issuers]]\nname = \"{name}\"\nmode = \"builtin\"\n");
    let int = |auth: &'static str, issuers: &'static str| plan_toml("builtin:echo", &[("i", auth, issuers)]);
    let pem = EdKey::new().pem();
    // (config, the last line holding this text is the error's, the message)
    let cases = [
        (
            jwt("a", "https://x/j") + &jwt("b", "https://y/j"),
            "issuer = ",
            "both have issuer `https://x`",
        ),
        (
            builtin("a") + &builtin("b") + "issuer = \"other\"\n",
            "mode = ",
            "second builtin issuer",
        ),
        (
            "[oauth]\nmode = \"jwt\"\n".to_string() + &builtin("a"),
            "mode = \"jwt\"",
            "oauth.mode is set beside [[oauth.issuers]]",
        ),
        (
            "[[oauth.issuers]]\nmode = \"builtin\"\n".to_string(),
            "[[oauth.issuers]]",
            "needs a name",
        ),
        (
            builtin("a") + &int("oauth", r#"issuers = ["a", "corp"]"#),
            "issuers = ",
            "unknown issuer `corp` (configured: a)",
        ),
        (
            builtin("a") + &int("basic", "issuers = []"),
            "issuers = ",
            "issuers = [] admits no token",
        ),
        (
            builtin("a") + &int("basic", r#"issuers = ["a"]"#),
            "issuers = ",
            "lists issuers but does not accept oauth",
        ),
        (
            "[oauth]\nname = \"x\"\nmode = \"builtin\"\n".to_string(),
            "name = ",
            "the single [oauth] table is named by its mode",
        ),
        (
            builtin("a") + "local_users = false\n",
            "local_users",
            "local_users cannot be false",
        ),
        (
            builtin("a") + "[[oauth.issuers.issuers]]\nname = \"b\"\nmode = \"builtin\"\n",
            "[[oauth.issuers.issuers]]",
            "do not nest",
        ),
        (
            builtin("a") + &format!("signing_key = '''{pem}'''\nsigning_keys = ['''{pem}''']\n"),
            "signing_keys",
            "both set",
        ),
        (
            builtin("a") + &format!("signing_keys = ['''{pem}''', '''{pem}''']\n"),
            "''', '''",
            "lists the key",
        ),
        (
            builtin("a") + "signing_key_rotation = \"5m\"\n",
            "signing_key_rotation",
            "at least access_token_ttl",
        ),
        (
            jwt("a", "https://x/j") + "jwks_min_refetch = \"500ms\"\n",
            "jwks_min_refetch",
            "at least 1s",
        ),
    ];
    for (text, at, message) in cases {
        let toml = format!("{}\n{text}", Config::new().to_toml());
        let line = toml
            .lines()
            .collect::<Vec<_>>()
            .iter()
            .rposition(|l| l.contains(at))
            .unwrap()
            + 1;
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(dir.path(), &toml);
        let errors = match portcullis::config::load(&path) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        };
        let prefix = format!("{}:{line}:", path.display());
        assert!(
            errors.lines().any(|l| l.starts_with(&prefix) && l.contains(message)),
            "expected `{prefix}... {message}` in:\n{errors}"
        );
    }
}
