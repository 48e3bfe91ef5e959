//! Authorization: plan access AND integration senders, after authentication.

use crate::support;

use support::*;

#[tokio::test]
async fn missing_plan_access_or_sender_permission_is_403() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&auth_config(&up.url(), "max_failures = 100")).await;
    let c = client();
    // dave is a sender but has no access to the plan.
    let resp = c
        .get(gw.url("/basic"))
        .header("authorization", basic("dave", "dave-pw"))
        .send()
        .await
        .unwrap();
    let v = error_body(resp, 403).await;
    assert_eq!(v["message"], FORBIDDEN);
    assert_eq!(v["reason"], "Forbidden");
    // erin may use the plan but is not a sender of this integration.
    let resp = c
        .get(gw.url("/basic"))
        .header("authorization", basic("erin", "erin-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_body(resp, 403).await["message"], FORBIDDEN);
    // Authentication comes first: a wrong password for dave is 401, not 403.
    let resp = c
        .get(gw.url("/basic"))
        .header("authorization", basic("dave", "nope"))
        .send()
        .await
        .unwrap();
    assert_401(resp, REJECTED).await;
    // alice passes both.
    let resp = c
        .get(gw.url("/restricted"))
        .header("authorization", basic("alice", "alice-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.seen().len(), 1);
    let m = gw.metrics().await;
    assert_eq!(metric_value(&m, &failures("no_plan_access", "basic")), 1.0);
    assert_eq!(metric_value(&m, &failures("not_a_sender", "basic")), 1.0);
    assert_eq!(
        metric_value(
            &m,
            r#"portcullis_requests_total{auth_method="basic",integration="basic",outcome="forbidden",plan="inc"}"#
        ),
        2.0
    );
    gw.stop().await;
}
