//! Interoperability with a real OAuth 2.0 server from PyPI (Authlib on Flask, see
//! tests/interop/authlib_server.py), started on loopback: Portcullis validates its RFC 9068
//! JWT access tokens against its JWKS, and the same tokens by RFC 7662 introspection.
//!
//! `.ci/run` installs Authlib and sets PORTCULLIS_REQUIRE_INTEROP=1, which makes a missing
//! Python or Authlib a failure; elsewhere the test says it was skipped.

use crate::support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use support::*;

struct Authlib {
    child: Child,
    port: u16,
}

impl Drop for Authlib {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_authlib() -> Option<Authlib> {
    let python = std::env::var("PORTCULLIS_PYTHON").unwrap_or_else(|_| "python3".into());
    let have = Command::new(&python)
        .args(["-c", "import authlib, flask, joserfc"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert!(
            std::env::var_os("PORTCULLIS_REQUIRE_INTEROP").is_none(),
            "PORTCULLIS_REQUIRE_INTEROP is set but {python} cannot import authlib, flask and joserfc"
        );
        skipped(&format!(
            "{python} lacks authlib/flask/joserfc (pip install authlib flask)"
        ));
        return None;
    }
    let script = format!("{}/tests/interop/authlib_server.py", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(&python)
        .args([script.as_str(), "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("LISTENING ")
        .expect("authlib server announces its port")
        .parse()
        .unwrap();
    Some(Authlib { child, port })
}

/// User snow and the `api` plan behind `upstream`, for a gateway `config`.
fn routes(config: Config, upstream: &str) -> String {
    config
        .user("snow", |u| u.roles(["rest"]))
        .plan("api", |p| {
            p.upstream(upstream).access_roles(["rest"]).integration("events", |i| {
                i.path("/events")
                    .methods(["POST"])
                    .auth("oauth")
                    .senders_roles(["integration"])
            })
        })
        .to_toml()
}

async fn fetch_token(port: u16, id: &str, secret: &str) -> String {
    let v: serde_json::Value = client()
        .post(format!("http://127.0.0.1:{port}/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["access_token"].as_str().expect("authlib issued a token").to_string()
}

#[tokio::test]
async fn authlib_tokens_pass_by_jwt_and_by_introspection() {
    let Some(authlib) = start_authlib() else { return };
    let up = Upstream::start().await;
    let token = fetch_token(authlib.port, "snow", "snow-secret").await;

    // JWT: checked against Authlib's JWKS.
    let jwt = Gateway::start(&routes(
        Config::new().section("oauth", |s| {
            s.set("mode", "jwt")
                .set("issuer", "https://authlib.interop.test")
                .set("audience", "portcullis")
                .set("jwks_url", format!("http://127.0.0.1:{}/jwks.json", authlib.port))
                .set("roles_claim", "roles")
                .set("algorithms", vec!["RS256"])
                .set("allowed_client_ids", vec!["snow"])
        }),
        &up.url(),
    ))
    .await;
    let resp = client()
        .post(jwt.url("/events"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = up.last().headers;
    assert_eq!(h["x-portcullis-user"], "snow");
    assert_eq!(h["x-portcullis-client-id"], "snow");
    assert_eq!(h["x-portcullis-roles"], "integration,rest");
    // The other client's token is valid at Authlib but not an allowed client here.
    let other = fetch_token(authlib.port, "portcullis", "portcullis-secret").await;
    assert_401(
        client()
            .post(jwt.url("/events"))
            .bearer_auth(&other)
            .send()
            .await
            .unwrap(),
        REJECTED,
    )
    .await;
    let mut tampered = token.clone();
    tampered.pop();
    tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
    assert_401(
        client()
            .post(jwt.url("/events"))
            .bearer_auth(&tampered)
            .send()
            .await
            .unwrap(),
        REJECTED,
    )
    .await;
    jwt.stop().await;

    // Introspection: Portcullis asks Authlib, as client `portcullis`.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client-secret"), "portcullis-secret\n").unwrap();
    let intro = Gateway::start_in(
        dir,
        &routes(
            Config::new()
                .section("cache", |s| s.set("negative_ttl", "1s").set("ttl", "1s"))
                .section("oauth", |s| {
                    s.set("mode", "introspection")
                        .set(
                            "introspection_url",
                            format!("http://127.0.0.1:{}/introspect", authlib.port),
                        )
                        .set("client_id", "portcullis")
                        .set("client_secret", table([("file", "{dir}/client-secret".into())]))
                        .set("roles_claim", "roles")
                }),
            &up.url(),
        ),
    )
    .await;
    let resp = client()
        .post(intro.url("/events"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.last().headers["x-portcullis-user"], "snow");
    assert_401(
        client()
            .post(intro.url("/events"))
            .bearer_auth("never-issued")
            .send()
            .await
            .unwrap(),
        REJECTED,
    )
    .await;
    // Revoked at the server: refused once the cached answer expires.
    client()
        .post(format!("http://127.0.0.1:{}/revoke-all", authlib.port))
        .send()
        .await
        .unwrap();
    let refused = eventually(PATIENCE, || async {
        client()
            .post(intro.url("/events"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status()
            == 401
    })
    .await;
    assert!(refused, "the revoked token is refused once its cached answer expires");
    assert_401(
        client()
            .post(intro.url("/events"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
        REJECTED,
    )
    .await;
    intro.stop().await;
}
