//! `url_key`: the user's key in `?apiKey=`, removed before forwarding and from the logs.

use crate::support;

use support::*;

#[tokio::test]
async fn the_key_authenticates_and_never_reaches_the_upstream() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&auth_config(&up.url(), "max_failures = 100")).await;
    let c = client();
    for (query, forwarded) in [
        (format!("apiKey={ALICE_URL_KEY}"), "/url".to_string()),
        (
            format!("a=1&apiKey={ALICE_URL_KEY}&b=%20"),
            "/url?a=1&b=%20".to_string(),
        ),
        (
            format!("api%4Bey={ALICE_URL_KEY}&apiKey={ALICE_URL_KEY}&z"),
            "/url?z".to_string(),
        ),
        // `;` separates pairs for some upstreams: a key behind one goes too.
        (
            format!("apiKey={ALICE_URL_KEY}&x=1;apiKey={ALICE_URL_KEY}"),
            "/url?x=1".to_string(),
        ),
        (format!("a=1;api%4bey={ALICE_URL_KEY};b=2"), "/url?a=1;b=2".to_string()),
    ] {
        let resp = c.post(gw.url(&format!("/url?{query}"))).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{query}");
        let seen = up.last();
        assert_eq!(seen.uri, forwarded);
        assert_eq!(seen.headers["x-portcullis-user"], "alice");
        assert_eq!(seen.headers["x-portcullis-auth-method"], "url_key");
    }
    gw.stop().await;
}

#[tokio::test]
async fn wrong_missing_disabled_and_ambiguous_keys_are_refused() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&auth_config(&up.url(), "max_failures = 100")).await;
    let c = client();
    let post = |q: String| c.post(gw.url(&format!("/url{q}"))).send();
    assert_401(post(String::new()).await.unwrap(), MISSING).await;
    assert_401(post("?apiKey=wrong-key".into()).await.unwrap(), REJECTED).await;
    assert_401(post(format!("?apiKey={CAROL_URL_KEY}")).await.unwrap(), REJECTED).await;
    assert_401(
        post(format!("?apiKey={ALICE_URL_KEY}&apiKey=other")).await.unwrap(),
        REJECTED,
    )
    .await;
    assert_401(
        post(format!("?apiKey={ALICE_URL_KEY}&x=1;apiKey=other")).await.unwrap(),
        REJECTED,
    )
    .await;
    // Basic credentials are no credentials on a url_key route.
    let resp = c
        .post(gw.url("/url"))
        .header("authorization", basic("alice", "alice-pw"))
        .send()
        .await
        .unwrap();
    assert_401(resp, MISSING).await;
    assert!(up.seen().is_empty());
    let m = gw.metrics().await;
    for (reason, n) in [
        ("no_credentials", 2.0),
        ("bad_url_key", 1.0),
        ("user_disabled", 1.0),
        ("ambiguous_credentials", 2.0),
    ] {
        assert_eq!(metric_value(&m, &failures(reason, "url_key")), n, "{reason}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn no_secret_appears_in_the_logs() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &auth_config(&up.url(), "max_failures = 100"));
    let gw = Process::start(&cfg, &[]);
    let c = client();
    let base = format!("http://{}", gw.addr);
    c.post(format!("{base}/url?apiKey={ALICE_URL_KEY}&x=1"))
        .send()
        .await
        .unwrap();
    c.post(format!("{base}/url?apiKey=wrong-url-key-value"))
        .send()
        .await
        .unwrap();
    c.get(format!("{base}/basic"))
        .header("authorization", basic("alice", "alice-pw"))
        .send()
        .await
        .unwrap();
    c.get(format!("{base}/basic"))
        .header("authorization", basic("alice", "typo-password"))
        .send()
        .await
        .unwrap();
    c.post(format!("{base}/key"))
        .header("authorization", basic("k_alice", ALICE_KEY_SECRET))
        .send()
        .await
        .unwrap();
    let logs = gw.logs_when(|l| l.matches("portcullis::access").count() >= 5).await;
    assert!(logs.contains("bad_url_key") && logs.contains("bad_password"), "{logs}");
    for secret in [
        ALICE_URL_KEY,
        "wrong-url-key-value",
        "alice-pw",
        "typo-password",
        ALICE_KEY_SECRET,
        "apiKey",
    ] {
        assert!(!logs.contains(secret), "`{secret}` leaked into the logs:\n{logs}");
    }
}
