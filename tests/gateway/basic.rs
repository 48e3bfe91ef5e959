//! `basic`: argon2id passwords, the verified-credential cache, refusals, the assertion,
//! and header hygiene.

use crate::support;

use support::*;

async fn setup() -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let gw = Gateway::start(&auth_config(&up.url(), "max_failures = 100")).await;
    (up, gw)
}

#[tokio::test]
async fn right_password_is_forwarded_with_the_principal_and_without_authorization() {
    let (up, gw) = setup().await;
    let resp = client()
        .get(gw.url("/basic"))
        .header("authorization", basic("alice", "alice-pw"))
        .header("x-portcullis-user", "root")
        .header("x-portcullis-roles", "admin")
        .header("x-portcullis-assertion", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = up.last().headers;
    assert_eq!(h["x-portcullis-user"], "alice");
    assert_eq!(h["x-portcullis-roles"], "rest,sender");
    assert_eq!(h["x-portcullis-auth-method"], "basic");
    assert_eq!(h["x-portcullis-plan"], "inc");
    assert_eq!(h["x-portcullis-integration"], "basic");
    assert!(h.get("authorization").is_none(), "Basic credentials are not forwarded");
    assert!(h.get("x-portcullis-client-id").is_none());
    assert_eq!(h.get_all("x-portcullis-user").iter().count(), 1);

    // The assertion verifies with the configured key and carries the same facts.
    let token = h["x-portcullis-assertion"].to_str().unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.set_issuer(&["portcullis"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(ASSERTION_KEY.as_bytes()),
        &v,
    )
    .unwrap()
    .claims;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["roles"], serde_json::json!(["rest", "sender"]));
    assert_eq!(claims["auth_method"], "basic");
    assert_eq!(claims["plan"], "inc");
    assert_eq!(claims["integration"], "basic");
    assert_eq!(claims["jti"].as_str().unwrap().len(), 32, "a random id per assertion");
    assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 300);
    // Signed with any other key, it does not verify.
    assert!(jsonwebtoken::decode::<serde_json::Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(b"another-key-another-key-another!"),
        &v
    )
    .is_err());
    gw.stop().await;
}

#[tokio::test]
async fn every_refusal_is_401_with_one_message_and_its_own_reason() {
    let (up, gw) = setup().await;
    let c = client();
    let get = |auth: Option<String>| {
        let mut r = c.get(gw.url("/basic"));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    assert_401(get(None).await.unwrap(), MISSING).await;
    assert_401(get(Some(basic("alice", "wrong"))).await.unwrap(), REJECTED).await;
    assert_401(get(Some(basic("mallory", "alice-pw"))).await.unwrap(), REJECTED).await;
    assert_401(get(Some(basic("bob", "bob-pw"))).await.unwrap(), REJECTED).await;
    assert_401(get(Some(basic("carol", "carol-pw"))).await.unwrap(), REJECTED).await;
    assert_401(get(Some(basic("nopass", ""))).await.unwrap(), REJECTED).await;
    assert_401(get(Some("Basic !!notbase64".into())).await.unwrap(), REJECTED).await;
    // Credentials of another method are no credentials here.
    assert_401(get(Some("Bearer some.jwt.token".into())).await.unwrap(), MISSING).await;
    let resp = c
        .get(gw.url(&format!("/basic?apiKey={ALICE_URL_KEY}")))
        .send()
        .await
        .unwrap();
    assert_401(resp, MISSING).await;
    assert!(up.seen().is_empty(), "no refused request reached the upstream");

    let m = gw.metrics().await;
    for (reason, n) in [
        ("no_credentials", 3.0),
        ("bad_password", 1.0),
        ("unknown_user", 1.0),
        ("password_expired", 1.0),
        ("user_disabled", 1.0),
        ("no_password", 1.0),
        ("malformed_credentials", 1.0),
    ] {
        assert_eq!(metric_value(&m, &failures(reason, "basic")), n, "{reason}\n{m}");
    }
    assert_eq!(
        metric_value(
            &m,
            r#"portcullis_requests_total{auth_method="basic",integration="basic",outcome="unauthenticated",plan="inc"}"#
        ),
        9.0
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_repeated_valid_request_is_served_from_the_cache() {
    let (_up, gw) = setup().await;
    let c = client();
    for _ in 0..3 {
        let resp = c
            .get(gw.url("/basic"))
            .header("authorization", basic("alice", "alice-pw"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    // A wrong password is never answered from the cache.
    let resp = c
        .get(gw.url("/basic"))
        .header("authorization", basic("alice", "alice-pw2"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(&m, r#"portcullis_cache_requests_total{cache="basic",result="miss"}"#),
        2.0
    );
    assert_eq!(
        metric_value(&m, r#"portcullis_cache_requests_total{cache="basic",result="hit"}"#),
        2.0
    );
    assert_eq!(metric_value(&m, r#"portcullis_cache_entries{cache="basic"}"#), 1.0);
    gw.stop().await;
}

#[tokio::test]
async fn the_cache_is_emptied_when_the_config_changes() {
    let (_up, gw) = setup().await;
    let c = client();
    let ok = c
        .get(gw.url("/basic"))
        .header("authorization", basic("alice", "alice-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // Rotate alice's password: the new config replaces the running one.
    let rotated =
        auth_config(&_up.url(), "max_failures = 100").replace(&argon2_hash("alice-pw"), &argon2_hash("alice-new-pw"));
    let path = write_config(gw.dir.path(), &rotated);
    gw.state
        .replace(portcullis::config::load(&path).unwrap().config)
        .unwrap();
    let old = c
        .get(gw.url("/basic"))
        .header("authorization", basic("alice", "alice-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 401, "the old password fails at once");
    gw.stop().await;
}

#[tokio::test]
async fn lockout_refuses_even_the_right_password_until_it_ends() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&auth_config(
        &up.url(),
        "max_failures = 3\nwindow = \"1m\"\nduration = \"1s\"",
    ))
    .await;
    let c = client();
    let try_pw = |pw: &str| {
        c.get(gw.url("/basic"))
            .header("authorization", basic("alice", pw))
            .send()
    };
    for _ in 0..3 {
        assert_eq!(try_pw("wrong").await.unwrap().status(), 401);
    }
    let resp = try_pw("alice-pw").await.unwrap();
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(retry, 1);
    error_body(resp, 429).await;
    // Another user from the same address is not locked.
    let resp = c
        .get(gw.url("/restricted"))
        .header("authorization", basic("erin", "erin-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // The gateway's clock moves past the 1 s lockout, without waiting for it.
    gw.state.clock().advance(std::time::Duration::from_millis(1100));
    assert_eq!(try_pw("alice-pw").await.unwrap().status(), 200, "the lockout ends");
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"portcullis_requests_total{auth_method="basic",integration="basic",outcome="locked_out",plan="inc"}"#
        ),
        1.0
    );
    assert_eq!(metric_value(&m, &failures("locked_out", "basic")), 1.0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_the_same_credentials_share_one_argon2_run() {
    let (_up, gw) = setup().await;
    let mut calls = Vec::new();
    for _ in 0..20 {
        let url = gw.url("/basic");
        calls.push(tokio::spawn(async move {
            client()
                .get(url)
                .header("authorization", basic("alice", "alice-pw"))
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for c in calls {
        assert_eq!(c.await.unwrap(), 200);
    }
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(&m, r#"portcullis_cache_requests_total{cache="basic",result="miss"}"#),
        1.0
    );
    assert_eq!(
        metric_value(&m, r#"portcullis_cache_requests_total{cache="basic",result="hit"}"#),
        19.0
    );
    gw.stop().await;
}
