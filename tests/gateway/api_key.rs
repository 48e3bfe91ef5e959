//! `api_key`: a key bound to one user and ONE integration.

use crate::support;

use support::*;

#[tokio::test]
async fn a_key_works_on_its_own_integration_only() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&auth_config(&up.url(), "max_failures = 100")).await;
    let c = client();
    let post = |path: &str, auth: String| c.post(gw.url(path)).header("authorization", auth).body("x").send();

    let resp = post("/key", basic("k_alice", ALICE_KEY_SECRET)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-portcullis-user"], "alice");
    assert_eq!(seen.headers["x-portcullis-auth-method"], "api_key");
    assert_eq!(seen.headers["x-portcullis-integration"], "key");
    assert!(seen.headers.get("authorization").is_none());

    // Same plan, same user, another integration: refused.
    assert_401(
        post("/key2", basic("k_alice", ALICE_KEY_SECRET)).await.unwrap(),
        REJECTED,
    )
    .await;
    assert_401(post("/key", basic("k_alice", "wrong-secret")).await.unwrap(), REJECTED).await;
    assert_401(
        post("/key", basic("k_nobody", ALICE_KEY_SECRET)).await.unwrap(),
        REJECTED,
    )
    .await;
    assert_401(
        post("/key", basic("k_carol", CAROL_KEY_SECRET)).await.unwrap(),
        REJECTED,
    )
    .await;
    let resp = c.post(gw.url("/key")).body("x").send().await.unwrap();
    assert_401(resp, MISSING).await;
    // A user's password is not an API key.
    assert_401(post("/key", basic("alice", "alice-pw")).await.unwrap(), REJECTED).await;
    // A URL key is no credential on an api_key route.
    let resp = c
        .post(gw.url(&format!("/key?apiKey={ALICE_URL_KEY}")))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_401(resp, MISSING).await;
    assert_eq!(up.seen().len(), 1);

    let m = gw.metrics().await;
    for (reason, n) in [
        ("key_wrong_integration", 1.0),
        ("bad_secret", 1.0),
        ("unknown_key", 2.0),
        ("user_disabled", 1.0),
        ("no_credentials", 2.0),
    ] {
        assert_eq!(metric_value(&m, &failures(reason, "api_key")), n, "{reason}\n{m}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_route_with_two_methods_accepts_both() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&auth_config(&up.url(), "max_failures = 100")).await;
    let c = client();
    let resp = c
        .get(gw.url("/multi"))
        .header("authorization", basic("k_multi", ALICE_KEY_SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.last().headers["x-portcullis-auth-method"], "api_key");
    let resp = c
        .get(gw.url("/multi"))
        .header("authorization", basic("alice", "alice-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.last().headers["x-portcullis-auth-method"], "basic");
    // The key of another integration is not a user name either.
    let resp = c
        .get(gw.url("/multi"))
        .header("authorization", basic("k_alice", ALICE_KEY_SECRET))
        .send()
        .await
        .unwrap();
    assert_401(resp, REJECTED).await;
    gw.stop().await;
}

#[tokio::test]
async fn a_bearer_token_is_not_accepted_without_oauth() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&auth_config(&up.url(), "max_failures = 100")).await;
    let resp = client()
        .get(gw.url("/bearer"))
        .header("authorization", "Bearer abc.def.ghi")
        .send()
        .await
        .unwrap();
    assert_401(resp, REJECTED).await;
    let resp = client().get(gw.url("/bearer")).send().await.unwrap();
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap().to_string();
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    assert_401(resp, MISSING).await;
    assert!(up.seen().is_empty());
    gw.stop().await;
}
