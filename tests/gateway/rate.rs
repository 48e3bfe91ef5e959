//! Rate limits (`rate` on a plan and on an integration): GCRA budgets per principal,
//! client IP or integration, in memory and across replicas on a real Redis; 429 with
//! `Retry-After` and the IETF `RateLimit-Policy` / `RateLimit` fields; Redis stopped:
//! the local share or 503 as `rate_fail` says.
//!
//! Every limit here is counted per hour, so no budget refills while a test runs, however
//! slow the machine: the counts are exact.

use crate::support;

use std::net::SocketAddr;

use support::*;

use super::shared::{metric_of, replica, replicas, Redis};

/// alice and bob (role `rest`) by Basic; plan `p` with `/a` and `/b`; `more` adds to it.
fn body(upstream: &str, more: impl FnOnce(Plan) -> Plan) -> Config {
    Config::bare()
        .user("alice", |u| u.roles(["rest"]).password_hash(&argon2_hash("alice-pw")))
        .user("bob", |u| u.roles(["rest"]).password_hash(&argon2_hash("bob-pw")))
        .plan("p", |p| {
            more(
                p.upstream(upstream)
                    .access_roles(["rest"])
                    .integration("a", |i| i.path("/a").methods(["GET"]).auth("basic"))
                    .integration("b", |i| i.path("/b").methods(["GET"]).auth("basic")),
            )
        })
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn get(addr: SocketAddr, path: &str, user: &str) -> reqwest::Response {
    http()
        .get(format!("http://{addr}{path}"))
        .basic_auth(user, Some(format!("{user}-pw")))
        .send()
        .await
        .unwrap()
}

fn field(r: &reqwest::Response, name: &str) -> String {
    let all: Vec<&str> = r.headers().get_all(name).iter().map(|v| v.to_str().unwrap()).collect();
    all.join(", ")
}

/// Statuses of `n` requests in turn.
async fn statuses(addr: SocketAddr, path: &str, user: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get(addr, path, user).await.status().as_u16());
    }
    out
}

/// A plan's limit per principal: a fresh budget passes `burst + 1`, then 429 with
/// `Retry-After` and the fields; another principal has a budget of its own; refused
/// credentials spend nothing; the limit spans the plan's integrations.
#[tokio::test]
async fn a_plan_limit_passes_burst_plus_one_per_principal_then_429() {
    let up = Upstream::start().await;
    let config = body(&up.url(), |p| {
        p.set("rate", rule(r#"{ requests = 3, per = "1h", burst = 2 }"#))
    });
    let gw = Gateway::start(&Config::new().merge(config).to_toml()).await;
    // Wrong passwords are refused before the rate phase: they spend no budget.
    for _ in 0..3 {
        let r = http()
            .get(gw.url("/a"))
            .basic_auth("alice", Some("wrong"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert!(
            r.headers().get("ratelimit").is_none(),
            "no budget shown before authentication"
        );
    }
    let first = get(gw.addr, "/a", "alice").await;
    assert_eq!(first.status(), 200);
    assert_eq!(field(&first, "ratelimit-policy"), r#""plan";q=3;w=3600"#);
    assert!(
        field(&first, "ratelimit").starts_with(r#""plan";r=2;t="#),
        "{}",
        field(&first, "ratelimit")
    );
    // The budget is the plan's: /b spends the same one.
    assert_eq!(statuses(gw.addr, "/b", "alice", 2).await, [200, 200]);
    let over = get(gw.addr, "/a", "alice").await;
    assert_eq!(over.status(), 429);
    let retry: u64 = field(&over, "retry-after").parse().unwrap();
    assert!((1..=1200).contains(&retry), "one interval (20 min) at most: {retry}");
    assert!(field(&over, "ratelimit").starts_with(r#""plan";r=0;t="#));
    let body = error_body(over, 429).await;
    assert!(!body.to_string().contains("alice"), "{body}");
    assert_eq!(statuses(gw.addr, "/b", "alice", 2).await, [429, 429]);
    // bob is another principal.
    assert_eq!(statuses(gw.addr, "/a", "bob", 4).await, [200, 200, 200, 429]);
    assert_eq!(up.seen().len(), 6, "exactly 3 + 3 reached the upstream");
    assert_eq!(
        gw.metric("portcullis_rate_limited_total{integration=\"a\",plan=\"p\"}")
            .await
            + gw.metric("portcullis_rate_limited_total{integration=\"b\",plan=\"p\"}")
                .await,
        4.0
    );
    assert_eq!(
        gw.metric(
            "portcullis_requests_total{auth_method=\"basic\",integration=\"a\",outcome=\"rate_limited\",plan=\"p\"}"
        )
        .await,
        2.0
    );
    gw.stop().await;
}

/// The plan's and the integration's limits both apply, each listed in the fields; `key =
/// "integration"` is one budget for every caller; `key = "client_ip"` one per address.
#[tokio::test]
async fn plan_and_integration_limits_both_apply_with_their_keys() {
    let up = Upstream::start().await;
    let config = body(&up.url(), |p| {
        p.set("rate", rule(r#"{ requests = 100, per = "1h", burst = 99 }"#))
            .integration("shared", |i| {
                i.path("/shared").methods(["GET"]).auth("basic").set(
                    "rate",
                    rule(r#"{ requests = 2, per = "1h", burst = 1, key = "integration" }"#),
                )
            })
            .integration("byip", |i| {
                i.path("/byip")
                    .methods(["GET"])
                    .auth("basic")
                    .set("rate", rule(r#"{ requests = 1, per = "1h", key = "client_ip" }"#))
            })
    });
    let gw = Gateway::start(&Config::new().merge(config).to_toml()).await;
    let r = get(gw.addr, "/shared", "alice").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        field(&r, "ratelimit-policy"),
        r#""plan";q=100;w=3600, "integration";q=2;w=3600"#
    );
    let state = field(&r, "ratelimit");
    assert!(
        state.starts_with(r#""plan";r=99;t="#) && state.contains(r#", "integration";r=1;t="#),
        "{state}"
    );
    // One budget for the integration, whoever calls.
    assert_eq!(get(gw.addr, "/shared", "bob").await.status(), 200);
    assert_eq!(get(gw.addr, "/shared", "bob").await.status(), 429);
    assert_eq!(get(gw.addr, "/shared", "alice").await.status(), 429);
    // By client address: alice and bob come from the same one.
    assert_eq!(get(gw.addr, "/byip", "alice").await.status(), 200);
    assert_eq!(get(gw.addr, "/byip", "bob").await.status(), 429);
    // The plan's budget was spent by every passing request (and by those the integration
    // refused after it: GCRA steps both, like redis-cell).
    let plan_left = field(&get(gw.addr, "/a", "alice").await, "ratelimit");
    assert!(plan_left.starts_with(r#""plan";r="#), "{plan_left}");
    gw.stop().await;
}

/// `check` refuses what a limit cannot mean, at its line.
#[test]
fn check_refuses_bad_limits() {
    for (rate, says) in [
        (r#"{ requests = 0, per = "1s" }"#, "rate.requests must be between 1"),
        (r#"{ requests = 5, per = "soon" }"#, "invalid duration `soon`"),
        (
            r#"{ requests = 5, per = "1s", burst = -1 }"#,
            "rate.burst must be between 0",
        ),
        (
            r#"{ requests = 5, per = "1s", key = "user" }"#,
            "rate.key `user`: expected \"principal\", \"client_ip\" or \"integration\"",
        ),
        (
            r#"{ requests = 5000000, per = "1s" }"#,
            "over one request per microsecond",
        ),
        (r#"{ requests = 5, per = "1s", burts = 2 }"#, "did you mean `burst`?"),
        (r#"{ requests = 5 }"#, "per"),
        (r#"{ requests = "5", per = "1s" }"#, "expected an integer"),
        // The arithmetic of a huge budget over a huge period: refused, not wrapped.
        (
            r#"{ requests = 1, per = "3650d", burst = 60000 }"#,
            "more than 10 years to refill",
        ),
    ] {
        let (code, err) = checked(&body("http://127.0.0.1:9", |p| p.set("rate", rule(rate))));
        assert_eq!(code, Some(1), "{rate}: {err}");
        assert!(err.contains(says), "{rate}: expected `{says}` in {err}");
    }
    let (_, err) = checked(&body("http://127.0.0.1:9", |p| p.set("rate_fail", "open")));
    assert!(err.contains("rate_fail `open`"), "{err}");
    // A limit's `key` words are the config's own, not secrets: diagnostics keep them.
    let (_, err) = checked(&body("http://127.0.0.1:9", |p| {
        p.set("rate", rule(r#"{ requests = 5, per = "1s", key = "integration" }"#))
            .integration("c", |i| {
                i.path("/c")
                    .methods(["GET"])
                    .auth("basic")
                    .set("rate", rule(r#"{ requests = 5, per = "1s", key = "client_ip" }"#))
            })
    }));
    assert!(!err.contains("<redacted>"), "{err}");
    assert!(err.contains("integration `p/a` has no `senders` rule"), "{err}");
}

/// `portcullis check` on `body` with listeners: its exit code and stderr.
fn checked(body: &Config) -> (Option<i32>, String) {
    let config = Config::new().merge(body.clone());
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &config.to_toml());
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `explain` names each limit and the budget left, without spending it.
#[test]
fn explain_shows_the_limits_and_spends_nothing() {
    let config = Config::new().merge(body("http://127.0.0.1:9", |p| {
        p.set("rate", rule(r#"{ requests = 3, per = "1h", burst = 2 }"#))
    }));
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &config.to_toml());
    for _ in 0..5 {
        let out = std::process::Command::new(bin())
            .args(["explain", "--config"])
            .arg(&path)
            .args([
                "-H",
                &format!("Authorization: {}", basic("alice", "alice-pw")),
                "GET",
                "/a",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{text}");
        assert!(
            text.contains("rate         plan: 3 per 1h, burst 2, per principal: 3 of a full budget"),
            "{text}"
        );
    }
}

/// Three replicas on one Redis: a burst spread round-robin passes exactly the budget in
/// total, and each replica refuses past it.
#[tokio::test]
async fn replicas_on_redis_share_one_budget() {
    let Some(redis) = Redis::start() else { return };
    let up = Upstream::start().await;
    let config = body(&up.url(), |p| {
        p.set("rate", rule(r#"{ requests = 5, per = "1h", burst = 4 }"#))
    });
    let (_dir, procs) = replicas(&redis, &config.to_toml());
    let mut passed = 0;
    for i in 0..15 {
        let s = get(procs[i % 3].addr, "/a", "alice").await.status().as_u16();
        assert!(s == 200 || s == 429, "{s}");
        passed += usize::from(s == 200);
    }
    assert_eq!(passed, 5, "burst 4 passes 5 in total, not 5 per replica");
    assert_eq!(up.seen().len(), 5);
    for p in &procs {
        assert_eq!(get(p.addr, "/a", "alice").await.status(), 429);
        assert_eq!(get(p.addr, "/a", "bob").await.status(), 200, "bob's budget is his own");
    }
    let mut limited = 0.0;
    for p in &procs {
        limited += metric_of(p, "portcullis_rate_limited_total{integration=\"a\",plan=\"p\"}").await;
    }
    assert_eq!(limited, 13.0);
}

/// Redis stopped: `rate_fail = "local"` counts against this replica's share (one
/// replica seen: the whole budget) and says so in a metric; `"closed"` refuses with 503.
#[tokio::test]
async fn redis_down_counts_locally_or_refuses_as_configured() {
    let Some(mut redis) = Redis::start() else { return };
    let up = Upstream::start().await;
    let config = body(&up.url(), |p| {
        p.integration("local", |i| {
            i.path("/local")
                .methods(["GET"])
                .auth("basic")
                .set("rate", rule(r#"{ requests = 2, per = "1h", burst = 1 }"#))
        })
        .integration("closed", |i| {
            i.path("/closed")
                .methods(["GET"])
                .auth("basic")
                .set("rate", rule(r#"{ requests = 2, per = "1h", burst = 1 }"#))
                .set("rate_fail", "closed")
        })
    });
    let dir = tempfile::tempdir().unwrap();
    let p = Process::start(&replica(dir.path(), 0, &redis, &config.to_toml()), &[]);
    assert_eq!(get(p.addr, "/closed", "alice").await.status(), 200);
    assert_eq!(
        get(p.addr, "/local", "alice").await.status(),
        200,
        "and the Basic check is cached"
    );
    redis.stop();
    let closed = get(p.addr, "/closed", "alice").await;
    assert_eq!(closed.status(), 503);
    assert!(closed.headers().get("retry-after").is_some());
    // The local table starts fresh: it passes the whole budget (one replica seen), then 429.
    assert_eq!(statuses(p.addr, "/local", "alice", 3).await, [200, 200, 429]);
    assert!(metric_of(&p, "portcullis_rate_local_total{integration=\"local\",plan=\"p\"}").await >= 3.0);
    assert!(metric_of(&p, "portcullis_shared_errors_total{op=\"rate\"}").await >= 1.0);
    let log = p.logs();
    assert!(log.contains("rate_unavailable"), "{log}");
    // Back: Redis decides again (its budget for /closed still has one left).
    redis.run();
    let back = eventually(PATIENCE, || async {
        get(p.addr, "/closed", "alice").await.status() == 200
    })
    .await;
    assert!(back);
}

/// The moves a caller makes to get a second budget: a spoofed `X-Forwarded-For` (the
/// peer is not a trusted proxy), a percent-encoded or otherwise spelled path to the same
/// integration, the same user by another credential (an API key beside the password).
/// Each spends the one budget it already has.
#[tokio::test]
async fn a_second_budget_cannot_be_had_by_spoofing_spelling_or_another_credential() {
    let up = Upstream::start().await;
    let secret = "k-secret";
    let config = Config::new()
        .merge(body(&up.url(), |p| {
            p.integration("both", |i| {
                i.path("/both")
                    .methods(["GET"])
                    .auths(["basic", "api_key"])
                    .set("rate", rule(r#"{ requests = 2, per = "1h", burst = 1 }"#))
            })
            .integration("byip", |i| {
                i.path("/byip")
                    .methods(["GET"])
                    .auth("basic")
                    .set("rate", rule(r#"{ requests = 1, per = "1h", key = "client_ip" }"#))
            })
        }))
        .api_key("alice-key", &sha256_hex(secret), "alice", "p/both");
    let gw = Gateway::start(&config.to_toml()).await;
    // One budget of 2 for alice, whether by password or by her API key.
    assert_eq!(get(gw.addr, "/both", "alice").await.status(), 200);
    let by_key = http()
        .get(gw.url("/both"))
        .basic_auth("alice-key", Some(secret))
        .send()
        .await
        .unwrap();
    assert_eq!(by_key.status(), 200);
    let by_key = http()
        .get(gw.url("/both"))
        .basic_auth("alice-key", Some(secret))
        .send()
        .await
        .unwrap();
    assert_eq!(by_key.status(), 429, "the key is alice: her budget is spent");
    // Another spelling of the path is the same integration, and the same budget.
    for path in ["/%62oth", "/both?x=1", "/%62%6F%74%68"] {
        let r = get(gw.addr, path, "alice").await;
        assert_eq!(r.status(), 429, "{path}");
    }
    // Per address: a client-sent X-Forwarded-For from an untrusted peer changes nothing.
    assert_eq!(get(gw.addr, "/byip", "alice").await.status(), 200);
    for xff in ["203.0.113.7", "198.51.100.1, 203.0.113.9", "::1"] {
        let r = http()
            .get(gw.url("/byip"))
            .basic_auth("alice", Some("alice-pw"))
            .header("x-forwarded-for", xff)
            .header("x-real-ip", xff)
            .header("forwarded", format!("for={xff}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 429, "{xff}");
    }
    gw.stop().await;
}

/// An IPv6 client is its /64 (as the lockout counts it): other addresses of it spend its
/// one budget. And addresses fill only their half of the memory table: principals keep
/// theirs whatever the addresses do.
#[tokio::test]
async fn an_ipv6_client_is_one_address_and_a_flood_of_addresses_spares_the_principals() {
    let up = Upstream::start().await;
    let config = Config::new()
        .section_toml("listen", r#"trusted_proxies = ["127.0.0.1/32"]"#)
        .merge(body(&up.url(), |p| {
            p.integration("open", |i| {
                i.path("/open")
                    .methods(["GET"])
                    .auth("none")
                    .set("rate", rule(r#"{ requests = 1, per = "1h", burst = 1 }"#))
            })
        }));
    let gw = Gateway::start(&config.to_toml()).await;
    let open = |xff: String| {
        let url = gw.url("/open");
        async move {
            http()
                .get(url)
                .header("x-forwarded-for", xff)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(open("2001:db8:1:2::a".into()).await, 200);
    assert_eq!(open("2001:db8:1:2::b".into()).await, 200);
    assert_eq!(
        open("2001:db8:1:2:ffff::c".into()).await,
        429,
        "one /64, one budget of 2"
    );
    assert_eq!(open("2001:db8:1:3::a".into()).await, 200, "another /64");
    assert_eq!(open("::ffff:198.51.100.7".into()).await, 200);
    assert_eq!(open("198.51.100.7".into()).await, 200);
    assert_eq!(
        open("198.51.100.7".into()).await,
        429,
        "a mapped IPv4 address is that address"
    );
    gw.stop().await;
}

/// A caller over its own limit is refused there, before the budget it shares with every
/// caller: it cannot keep that one at zero for the others.
#[tokio::test]
async fn a_caller_over_its_own_limit_does_not_drain_a_shared_budget() {
    let up = Upstream::start().await;
    let config = Config::new().merge(body(&up.url(), |p| {
        p.set("rate", rule(r#"{ requests = 1, per = "1h" }"#))
            .integration("shared", |i| {
                i.path("/shared").methods(["GET"]).auth("basic").set(
                    "rate",
                    rule(r#"{ requests = 1, per = "1h", burst = 2, key = "integration" }"#),
                )
            })
    }));
    let gw = Gateway::start(&config.to_toml()).await;
    assert_eq!(
        statuses(gw.addr, "/shared", "alice", 8).await,
        [200, 429, 429, 429, 429, 429, 429, 429]
    );
    let bob = get(gw.addr, "/shared", "bob").await;
    assert_eq!(bob.status(), 200, "alice's refusals spent nothing of the shared budget");
    let state = field(&bob, "ratelimit");
    assert!(state.contains(r#""integration";r=1;"#), "{state}");
    gw.stop().await;
}

/// A reload that raises a limit applies to budgets already spent under the old one.
#[tokio::test]
async fn a_raised_limit_applies_at_once_to_spent_budgets() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let slow = Config::new().merge(body(&up.url(), |p| {
        p.set("rate", rule(r#"{ requests = 1, per = "1h" }"#))
    }));
    let gw = Gateway::start_in(dir, &slow.to_toml()).await;
    assert_eq!(statuses(gw.addr, "/a", "alice", 2).await, [200, 429]);
    let fast = Config::new().merge(body(&up.url(), |p| {
        p.set("rate", rule(r#"{ requests = 1000, per = "1s", burst = 10 }"#))
    }));
    let path = write_config(gw.dir.path(), &fast.to_toml());
    portcullis::reload::reload(&gw.state, &path, "test").unwrap();
    // At most one interval (1 ms) to wait under the new limit, not an hour.
    let passed = eventually(PATIENCE, || async { get(gw.addr, "/a", "alice").await.status() == 200 }).await;
    assert!(passed, "the raised limit decides at once");
    gw.stop().await;
}
