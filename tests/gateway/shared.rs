//! Many replicas on one Redis (`[shared] backend = "redis"`): a real `redis-server` on
//! 127.0.0.1 and three real Portcullis processes. Lockout across replicas, refresh-token
//! rotation and reuse detection across replicas, RFC 7009 revocation everywhere, one
//! egress token fetch for all, and the failure modes with Redis stopped and restarted.
//!
//! Without `redis-server` the tests print SKIPPED (they fail under
//! PORTCULLIS_REQUIRE_TOOLS=1, as `.ci/run` sets after installing it).

use crate::support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use support::*;

pub(crate) struct Redis {
    child: Option<Child>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    /// A fresh `redis-server` on a free loopback port, or `None` (skipped) without one.
    pub(crate) fn start() -> Option<Redis> {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            assert!(
                std::env::var_os("PORTCULLIS_REQUIRE_TOOLS").is_none(),
                "PORTCULLIS_REQUIRE_TOOLS is set but `redis-server` is missing"
            );
            skipped("redis-server is not installed (apt-get install redis-server)");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = Redis {
            child: None,
            port,
            _dir: tempfile::tempdir().unwrap(),
        };
        r.run();
        Some(r)
    }

    /// (Re)starts the server on its port, empty, and waits until it answers PING.
    pub(crate) fn run(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "yes"])
            .arg("--dir")
            .arg(self._dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let ok = redis::Client::open(self.url())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok();
            if ok {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) const SHARED_SECRET: &str = "a-shared-secret-of-at-least-32-bytes-0123";

/// Writes one replica's config (every replica listens on its own ephemeral ports).
/// Replica `n`'s config file: listeners on port 0, the shared store on `redis`, and
/// `body` (TOML text) merged in.
pub(crate) fn replica(dir: &std::path::Path, n: usize, redis: &Redis, body: &str) -> PathBuf {
    let path = dir.join(format!("replica-{n}.toml"));
    let config = listeners()
        .section("shared", |s| {
            s.set("backend", "redis")
                .set("url", redis.url())
                .set("key_prefix", "pc-test:")
                .set("secret", SHARED_SECRET)
                .set("command_timeout", "2s")
        })
        .toml(body);
    std::fs::write(&path, config.to_toml()).unwrap();
    path
}

/// Inbound and admin listeners on port 0, and nothing else.
pub(crate) fn listeners() -> Config {
    Config::bare()
        .section("listen", |s| s.set("address", "127.0.0.1:0"))
        .section("admin", |s| s.set("address", "127.0.0.1:0"))
}

pub(crate) fn replicas(redis: &Redis, body: &str) -> (tempfile::TempDir, Vec<Process>) {
    let dir = tempfile::tempdir().unwrap();
    let procs = (0..3)
        .map(|n| Process::start(&replica(dir.path(), n, redis, body), &[]))
        .collect();
    (dir, procs)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

pub(crate) async fn metric_of(p: &Process, series: &str) -> f64 {
    let text = http()
        .get(format!("http://{}/metrics", p.admin.unwrap()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metric_value(&text, series)
}

fn basic_config(upstream: &str, max_failures: u32) -> String {
    body(upstream, max_failures, |p| p).to_toml()
}

/// A lockout, user alice and plan `p` with a Basic route `/login`; `more` adds to the plan.
pub(crate) fn body(upstream: &str, max_failures: u32, more: impl FnOnce(Plan) -> Plan) -> Config {
    Config::bare()
        .section("lockout", |s| {
            s.set("max_failures", i64::from(max_failures))
                .set("window", "10m")
                .set("duration", "10m")
        })
        .user("alice", |u| u.roles(["rest"]).password_hash(&argon2_hash("alice-pw")))
        .plan("p", |p| {
            more(
                p.upstream(upstream)
                    .access_roles(["rest"])
                    .integration("login", |i| i.path("/login").methods(["GET"]).auth("basic")),
            )
        })
}

pub(crate) async fn status(addr: SocketAddr, path: &str, user: &str, pw: &str) -> u16 {
    http()
        .get(format!("http://{addr}{path}"))
        .basic_auth(user, Some(pw))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Failures spread round-robin over three replicas lock the pair after `max_failures`
/// in total, on every replica, even with the right password; another user is not
/// affected.
#[tokio::test]
async fn failures_spread_over_replicas_lock_out_after_max_failures_in_total() {
    let Some(redis) = Redis::start() else { return };
    let up = Upstream::start().await;
    let (_dir, procs) = replicas(&redis, &basic_config(&up.url(), 3));
    for p in &procs {
        assert_eq!(status(p.addr, "/login", "alice", "wrong").await, 401);
    }
    for p in &procs {
        assert_eq!(
            status(p.addr, "/login", "alice", "alice-pw").await,
            429,
            "locked on every replica"
        );
    }
    assert!(up.seen().is_empty());
    // Without the shared store, each replica alone would have allowed 3 guesses (9).
    let mut locked = 0;
    for p in &procs {
        locked += metric_of(p, &failures("locked_out", "basic")).await as u32;
    }
    assert_eq!(locked, 3);
    assert_eq!(status(procs[0].addr, "/login", "bob", "x").await, 401);
}

fn oauth_config(upstream: &str) -> String {
    oauth_body(upstream).to_toml()
}

/// The builtin issuer with clients jira and other, and an OAuth route `/events`.
fn oauth_body(upstream: &str) -> Config {
    oauth_body_locking(upstream, 100)
}

/// [`oauth_body`] with a lockout of `max_failures`.
pub(crate) fn oauth_body_locking(upstream: &str, max_failures: u32) -> Config {
    let client = |id: &'static str, secret: &'static str| {
        move |c: Table| c.set("client_id", id).set("client_secret_hash", sha256_hex(secret))
    };
    Config::bare()
        .section("oauth", |s| {
            s.set("mode", "builtin")
                .set("access_token_ttl", "10m")
                .entry("clients", client("jira", "jira-secret"))
                .entry("clients", client("other", "other-secret"))
        })
        .merge(body(upstream, max_failures, |p| {
            p.integration("events", |i| i.path("/events").methods(["GET"]).auth("oauth"))
        }))
}

pub(crate) async fn form(
    addr: SocketAddr,
    path: &str,
    client: (&str, &str),
    fields: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let resp = http()
        .post(format!("http://{addr}{path}"))
        .basic_auth(client.0, Some(client.1))
        .form(fields)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

pub(crate) async fn login(addr: SocketAddr) -> (String, String) {
    let (s, body) = form(
        addr,
        "/oauth/token",
        ("jira", "jira-secret"),
        &[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "alice-pw"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{body}");
    (
        body["access_token"].as_str().unwrap().to_string(),
        body["refresh_token"].as_str().unwrap().to_string(),
    )
}

pub(crate) async fn refresh(addr: SocketAddr, rt: &str) -> (u16, serde_json::Value) {
    form(
        addr,
        "/oauth/token",
        ("jira", "jira-secret"),
        &[("grant_type", "refresh_token"), ("refresh_token", rt)],
    )
    .await
}

pub(crate) async fn bearer(addr: SocketAddr, token: &str) -> u16 {
    http()
        .get(format!("http://{addr}/events"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A token from one replica passes on all (one signing key, agreed through Redis); a
/// refresh token issued by one is rotated by another; its reuse on a third revokes the
/// family everywhere; two replicas rotating one token at once: exactly one wins.
/// Revocation (RFC 7009) on one replica takes effect on the others.
#[tokio::test]
async fn refresh_families_and_revocation_hold_across_replicas() {
    let Some(redis) = Redis::start() else { return };
    let up = Upstream::start().await;
    let (_dir, procs) = replicas(&redis, &oauth_config(&up.url()));
    let (a, b, c) = (procs[0].addr, procs[1].addr, procs[2].addr);
    let (access, rt1) = login(a).await;
    for p in [a, b, c] {
        assert_eq!(bearer(p, &access).await, 200, "a token of replica A passes everywhere");
    }
    let (s, body) = refresh(b, &rt1).await;
    assert_eq!(s, 200, "{body}");
    let rt2 = body["refresh_token"].as_str().unwrap().to_string();
    // rt1 again, on C: reuse; the family (rt2 too) is revoked everywhere.
    let (s, body) = refresh(c, &rt1).await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_grant")));
    let (s, body) = refresh(a, &rt2).await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");

    // Two replicas rotating one token at once: exactly one gets a new token.
    let (_, rt3) = login(a).await;
    let (r1, r2) = tokio::join!(refresh(b, &rt3), refresh(c, &rt3));
    let wins = [r1.0, r2.0].iter().filter(|s| **s == 200).count();
    assert_eq!(wins, 1, "{r1:?} {r2:?}");

    // Another client cannot revoke jira's tokens; jira can, from any replica.
    let (access4, rt4) = login(a).await;
    let (s, body) = form(b, "/oauth/revoke", ("other", "other-secret"), &[("token", &rt4)]).await;
    assert_eq!((s, body["error"].as_str()), (400, Some("unauthorized_client")));
    let (s, _) = form(b, "/oauth/revoke", ("jira", "jira-secret"), &[("token", &rt4)]).await;
    assert_eq!(s, 200);
    let (s, _) = refresh(c, &rt4).await;
    assert_eq!(s, 400, "a revoked family cannot be refreshed anywhere");
    assert_eq!(bearer(c, &access4).await, 200);
    let (s, _) = form(b, "/oauth/revoke", ("jira", "jira-secret"), &[("token", &access4)]).await;
    assert_eq!(s, 200);
    for p in [a, b, c] {
        let refused = eventually(PATIENCE, || async { bearer(p, &access4).await == 401 }).await;
        assert!(refused, "a revoked access token is refused on every replica");
    }
    // Unknown tokens: 200, as RFC 7009 asks.
    let (s, _) = form(a, "/oauth/revoke", ("jira", "jira-secret"), &[("token", "nonsense")]).await;
    assert_eq!(s, 200);
    assert_eq!(bearer(a, &access).await, 200, "other tokens are unaffected");
}

/// A token server that counts its fetches and answers after a short pause, so that
/// concurrent callers overlap.
async fn token_server(fetches: Arc<AtomicUsize>) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let fetches = fetches.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let fetches = fetches.clone();
                    async move {
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        let n = fetches.fetch_add(1, Ordering::SeqCst) + 1;
                        let body =
                            format!(r#"{{"access_token":"shared-tok-{n}","token_type":"Bearer","expires_in":3600}}"#);
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "application/json")
                                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

async fn egress_addr(p: &Process) -> SocketAddr {
    listening_addr(p, "egress").await
}

/// 50 concurrent egress calls spread over three replicas cause one token fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_egress_calls_over_three_replicas_fetch_one_token() {
    let Some(redis) = Redis::start() else { return };
    let up = Upstream::start().await;
    let fetches = Arc::new(AtomicUsize::new(0));
    let tokens = token_server(fetches.clone()).await;
    let auth = table([
        ("type", "oauth2".into()),
        ("grant", "client_credentials".into()),
        ("token_url", format!("http://{tokens}/token").into()),
        ("client_id", "egress-client".into()),
        ("client_secret", "egress-secret".into()),
    ]);
    let body = Config::bare()
        .section("egress", |s| s.set("address", "127.0.0.1:0"))
        .entry("endpoints", |e| {
            e.set("name", "api").set("base_url", up.url()).set("auth", auth)
        })
        .plan("p", |p| {
            p.upstream("builtin:echo")
                .integration("open", |i| i.path("/open").methods(["GET"]).auth("none"))
        })
        .to_toml();
    let (_dir, procs) = replicas(&redis, &body);
    let mut addrs = Vec::new();
    for p in &procs {
        addrs.push(egress_addr(p).await);
    }
    let mut calls = Vec::new();
    for i in 0..50 {
        let addr = addrs[i % 3];
        calls.push(tokio::spawn(async move {
            http()
                .get(format!("http://{addr}/api/items/{i}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for c in calls {
        assert_eq!(c.await.unwrap(), 200);
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "one fetch for all replicas");
    let seen = up.seen();
    assert_eq!(seen.len(), 50);
    assert!(seen.iter().all(|r| r.headers["authorization"] == "Bearer shared-tok-1"));
}

/// Redis stopped: cached and fast credentials keep flowing, failures fall back to local
/// counters (counted as shared errors), rotation and revocation answer 503; Redis back:
/// everything works again, without a restart.
#[tokio::test]
async fn redis_down_keeps_requests_flowing_and_fails_rotation_closed_until_it_returns() {
    let Some(mut redis) = Redis::start() else { return };
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let p = Process::start(&replica(dir.path(), 0, &redis, &oauth_config(&up.url())), &[]);
    assert_eq!(status(p.addr, "/login", "alice", "alice-pw").await, 200);
    let (access, rt) = login(p.addr).await;

    redis.stop();
    assert_eq!(status(p.addr, "/login", "alice", "alice-pw").await, 200, "cached Basic");
    // Without its events subscription this replica cannot hear of revocations: its
    // builtin tokens fail closed (503 revocation_unavailable) until Redis is back.
    let closed = eventually(PATIENCE, || async { bearer(p.addr, &access).await == 503 }).await;
    assert!(
        closed,
        "a builtin token is answered 503 while revocations cannot be heard"
    );
    assert_eq!(
        status(p.addr, "/login", "alice", "wrong").await,
        401,
        "local lockout decides"
    );
    let (s, body) = refresh(p.addr, &rt).await;
    assert_eq!((s, body["error"].as_str()), (503, Some("temporarily_unavailable")));
    let (s, _) = form(p.addr, "/oauth/revoke", ("jira", "jira-secret"), &[("token", &rt)]).await;
    assert_eq!(s, 503);
    assert!(metric_of(&p, "portcullis_shared_errors_total{op=\"refresh\"}").await >= 1.0);
    assert!(metric_of(&p, "portcullis_shared_errors_total{op=\"lockout\"}").await >= 1.0);

    redis.run();
    // Reconnection is automatic: a new sign-in and its rotation work again.
    let back = eventually(PATIENCE, || async {
        form(
            p.addr,
            "/oauth/token",
            ("jira", "jira-secret"),
            &[
                ("grant_type", "password"),
                ("username", "alice"),
                ("password", "alice-pw"),
            ],
        )
        .await
        .0 == 200
    })
    .await;
    assert!(back);
    let (_, rt2) = login(p.addr).await;
    let (s, body) = refresh(p.addr, &rt2).await;
    assert_eq!(s, 200, "{body}");
    // Resubscribed and the revocations read again: the old token passes once more.
    let open = eventually(PATIENCE, || async { bearer(p.addr, &access).await == 200 }).await;
    assert!(open, "the replica vouches for its builtin tokens again once caught up");
}

/// A replica that lost its events subscription (Redis restarted) cannot know of the
/// revocations made meanwhile on another: from the moment replica A answers 200 to a
/// revocation, replica B never answers 200 for that token. It answers 503
/// `revocation_unavailable` until it has resubscribed and read every live revocation
/// back, then 401 `token_revoked`.
#[tokio::test]
async fn after_a_redis_restart_no_replica_accepts_a_token_revoked_meanwhile() {
    let Some(mut redis) = Redis::start() else { return };
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let procs: Vec<Process> = (0..2)
        .map(|n| Process::start(&replica(dir.path(), n, &redis, &oauth_config(&up.url())), &[]))
        .collect();
    let (a, b) = (procs[0].addr, procs[1].addr);
    let (access, _) = login(a).await;
    let (other, _) = login(a).await;
    assert_eq!(bearer(b, &access).await, 200, "a token of A passes on B");

    redis.stop();
    redis.run();
    // A reconnects by itself; the first revocation it answers 200 is in Redis.
    let revoked = eventually(PATIENCE, || async {
        form(a, "/oauth/revoke", ("jira", "jira-secret"), &[("token", &access)])
            .await
            .0
            == 200
    })
    .await;
    assert!(revoked, "A revokes once Redis is back");
    let seen = std::sync::Mutex::new(Vec::new());
    let refused = eventually(PATIENCE, || async {
        let s = bearer(b, &access).await;
        seen.lock().unwrap().push(s);
        s == 401
    })
    .await;
    let seen = seen.into_inner().unwrap();
    assert!(refused, "B refuses the revoked token once caught up: {seen:?}");
    assert!(
        seen.iter().all(|s| *s == 503 || *s == 401),
        "B never accepts the revoked token, it answers 503 until it knows: {seen:?}"
    );
    // Caught up, B still accepts what was not revoked; A refuses the revoked one too.
    assert_eq!(bearer(b, &other).await, 200, "other tokens pass again on B");
    assert_eq!(bearer(a, &access).await, 401);
    let lost = metric_of(&procs[1], "portcullis_shared_errors_total{op=\"subscribe\"}").await;
    assert!(lost >= 1.0, "the lost subscription is counted");
}

/// An events subscription that goes quiet without closing (here: Redis pauses every
/// client) is found by its unanswered PING: the replica fails closed for builtin tokens
/// (503) instead of trusting a mirror it no longer hears, and vouches for them again
/// once it has resubscribed and read the revocations back.
#[tokio::test]
async fn a_subscription_that_goes_quiet_fails_closed_until_it_answers_again() {
    let Some(redis) = Redis::start() else { return };
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let p = Process::start(&replica(dir.path(), 0, &redis, &oauth_config(&up.url())), &[]);
    let (access, _) = login(p.addr).await;
    assert_eq!(bearer(p.addr, &access).await, 200);
    // Long enough for a PING to go unanswered past command_timeout (2 s here).
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(6000)
        .arg("ALL")
        .query(&mut redis_conn(&redis))
        .unwrap();
    let closed = eventually(PATIENCE, || async { bearer(p.addr, &access).await == 503 }).await;
    assert!(closed, "a quiet subscription is found and builtin tokens fail closed");
    let open = eventually(PATIENCE, || async { bearer(p.addr, &access).await == 200 }).await;
    assert!(open, "resubscribed and caught up, the token passes again");
}

// === attack: whoever can write to Redis without shared.secret ===
//
// attacker move -> test that refutes it
// - rewrite a stored refresh grant's subject to another user -> refresh_grants_tampered_in_redis_give_no_token
// - flip a byte of a stored grant's MAC                      -> refresh_grants_tampered_in_redis_give_no_token
// - copy a valid grant under another token's key name        -> refresh_grants_tampered_in_redis_give_no_token
// - write a grant in the unsealed format of older versions   -> refresh_grants_tampered_in_redis_give_no_token
// - extend a family's end by rewriting its value             -> refresh_grants_tampered_in_redis_give_no_token
// - publish forged lock and revocation events                -> forged_events_and_revocations_are_refused_and_a_late_replica_knows_every_revocation
// - add a forged revocation to the table                     -> forged_events_and_revocations_are_refused_and_a_late_replica_knows_every_revocation
// - revoke while a replica is not yet running                -> forged_events_and_revocations_are_refused_and_a_late_replica_knows_every_revocation
// - fill the revocation table (one client, then all)         -> a_full_revocation_table_refuses_with_503_and_each_client_has_its_share
// - fill the lockout table from one address, then from many  -> a_full_lockout_table_refuses_what_it_cannot_count_and_each_address_has_its_share

fn redis_conn(redis: &Redis) -> redis::Connection {
    redis::Client::open(redis.url()).unwrap().get_connection().unwrap()
}

fn keys(redis: &Redis, pattern: &str) -> std::collections::BTreeSet<String> {
    redis::cmd("KEYS")
        .arg(pattern)
        .query::<Vec<String>>(&mut redis_conn(redis))
        .unwrap()
        .into_iter()
        .collect()
}

/// Signs in on `addr` and returns the tokens and the Redis key of the new refresh token.
async fn login_keyed(redis: &Redis, addr: SocketAddr) -> (String, String, String) {
    let before = keys(redis, "pc-test:rt:*");
    let (access, rt) = login(addr).await;
    let after = keys(redis, "pc-test:rt:*");
    let new: Vec<_> = after.difference(&before).cloned().collect();
    assert_eq!(new.len(), 1, "{new:?}");
    (access, rt, new[0].clone())
}

fn hget(redis: &Redis, key: &str, field: &str) -> String {
    redis::cmd("HGET")
        .arg(key)
        .arg(field)
        .query(&mut redis_conn(redis))
        .unwrap()
}

fn hset(redis: &Redis, key: &str, fields: &[(&str, &str)]) {
    let mut cmd = redis::cmd("HSET");
    cmd.arg(key);
    for (f, v) in fields {
        cmd.arg(*f).arg(*v);
    }
    cmd.query::<i64>(&mut redis_conn(redis)).unwrap();
}

fn two_users_config(upstream: &str) -> String {
    oauth_body(upstream)
        .user("mallory", |u| {
            u.roles(["rest"]).password_hash(&argon2_hash("mallory-pw"))
        })
        .to_toml()
}

/// A refresh grant whose subject, MAC, key name, format or family was changed in Redis
/// gives no token at all (never one for another user), is counted by kind and logged;
/// untouched grants keep working.
#[tokio::test]
async fn refresh_grants_tampered_in_redis_give_no_token() {
    let Some(redis) = Redis::start() else { return };
    let up = Upstream::start().await;
    let (_dir, procs) = replicas(&redis, &two_users_config(&up.url()));
    let (a, b) = (procs[0].addr, procs[1].addr);
    let refused = |(s, body): (u16, serde_json::Value)| {
        assert_eq!((s, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
        assert!(body.get("access_token").is_none());
    };

    // The subject rewritten to another user, the MAC kept.
    let (_, rt, key) = login_keyed(&redis, a).await;
    let v = hget(&redis, &key, "v");
    assert!(v.starts_with("v1.") && v.contains(r#"\"sub\":\"alice\""#), "{v}");
    hset(
        &redis,
        &key,
        &[("v", &v.replace(r#"\"sub\":\"alice\""#, r#"\"sub\":\"mallory\""#))],
    );
    refused(refresh(b, &rt).await);

    // One byte of the MAC flipped.
    let (_, rt, key) = login_keyed(&redis, a).await;
    let v = hget(&redis, &key, "v");
    let flipped = format!("v1.{}{}", if &v[3..4] == "0" { "1" } else { "0" }, &v[4..]);
    hset(&redis, &key, &[("v", &flipped)]);
    refused(refresh(b, &rt).await);

    // A valid grant moved under another token's key name.
    let (_, _, key1) = login_keyed(&redis, a).await;
    let (_, rt2, key2) = login_keyed(&redis, a).await;
    hset(&redis, &key2, &[("v", &hget(&redis, &key1, "v"))]);
    refused(refresh(b, &rt2).await);

    // The unsealed format of older versions.
    let (_, rt, key) = login_keyed(&redis, a).await;
    let v = hget(&redis, &key, "v");
    let fam = v
        .split(r#""fam":""#)
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    redis::cmd("DEL")
        .arg(&key)
        .query::<i64>(&mut redis_conn(&redis))
        .unwrap();
    hset(
        &redis,
        &key,
        &[
            ("fam", &fam),
            ("grant", r#"{"sub":"mallory"}"#),
            ("used", "0"),
            ("client", "jira"),
            ("exp", "99999999999"),
        ],
    );
    refused(refresh(b, &rt).await);
    assert!(
        metric_of(
            &procs[1],
            r#"portcullis_shared_integrity_failures_total{kind="refresh"}"#
        )
        .await
            >= 4.0
    );

    // A family's end rewritten (to outlive its configured lifetime).
    let (_, rt, key) = login_keyed(&redis, a).await;
    let v = hget(&redis, &key, "v");
    let fam = v
        .split(r#""fam":""#)
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    redis::cmd("SET")
        .arg(format!("pc-test:rf:{fam}"))
        .arg("99999999999")
        .query::<()>(&mut redis_conn(&redis))
        .unwrap();
    refused(refresh(b, &rt).await);
    assert_eq!(
        metric_of(
            &procs[1],
            r#"portcullis_shared_integrity_failures_total{kind="family"}"#
        )
        .await,
        1.0
    );
    procs[1].logs_when(|l| l.contains("failed its integrity check")).await;

    // A used token's standing written back to unused: the used state is under the MAC,
    // so neither a `used` field nor a flag rewritten in the record gives a fresh token;
    // the reuse revokes the family, its newer token included.
    let (_, rt, key) = login_keyed(&redis, a).await;
    let (s, body) = refresh(b, &rt).await;
    assert_eq!(s, 200, "{body}");
    let newer = body["refresh_token"].as_str().unwrap().to_string();
    let spent = hget(&redis, &key, "v");
    assert!(spent.contains(r#""spent":true"#), "{spent}");
    hset(&redis, &key, &[("used", "0")]);
    hset(&redis, &key, &[("v", &spent.replace(r#","spent":true"#, ""))]);
    refused(refresh(b, &rt).await);
    hset(&redis, &key, &[("v", &spent)]);
    refused(refresh(b, &rt).await);
    refused(refresh(procs[2].addr, &newer).await);

    // Untouched grants rotate as before, for their own user.
    let (_, rt, _) = login_keyed(&redis, a).await;
    let (s, body) = refresh(b, &rt).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(bearer(procs[2].addr, body["access_token"].as_str().unwrap()).await, 200);
}

/// Events on the channel and revocations in the table that do not carry a valid MAC are
/// refused and counted; a replica started after a revocation refuses the token (it reads
/// the table back), and ignores a forged entry there.
#[tokio::test]
async fn forged_events_and_revocations_are_refused_and_a_late_replica_knows_every_revocation() {
    let Some(redis) = Redis::start() else { return };
    let up = Upstream::start().await;
    let (dir, procs) = replicas(&redis, &oauth_config(&up.url()));
    let a = procs[0].addr;
    let (access, _) = login(a).await;
    let (revoked, _) = login(a).await;
    let (s, _) = form(a, "/oauth/revoke", ("jira", "jira-secret"), &[("token", &revoked)]).await;
    assert_eq!(s, 200);

    // Forged events: the old unsigned format, and a signed-looking one with a bad MAC.
    let exp = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600)
        .to_string();
    let claims = access.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims).unwrap(),
    )
    .unwrap();
    let jti = claims["jti"].as_str().unwrap();
    let mut c = redis_conn(&redis);
    for forged in [
        format!("jti {jti} {exp}"),
        format!("v1.{}.jti {jti} {exp}", "00".repeat(32)),
        format!("v1.{}.lock pc-test:lock:00 99999999999999", "11".repeat(32)),
    ] {
        redis::cmd("PUBLISH")
            .arg("pc-test:events:all")
            .arg(forged)
            .query::<i64>(&mut c)
            .unwrap();
    }
    // A forged entry in the revocation table.
    redis::cmd("ZADD")
        .arg("pc-test:revoked:all")
        .arg(&exp)
        .arg(format!("{jti} {exp} {}", "22".repeat(32)))
        .query::<i64>(&mut c)
        .unwrap();
    for p in &procs {
        let seen = eventually(PATIENCE, || async {
            metric_of(p, r#"portcullis_shared_integrity_failures_total{kind="event"}"#).await >= 3.0
        })
        .await;
        assert!(seen, "every replica refuses the three forged events");
        assert_eq!(
            bearer(p.addr, &access).await,
            200,
            "a forged revocation revokes nothing"
        );
        assert_eq!(
            status(p.addr, "/login", "alice", "alice-pw").await,
            200,
            "a forged lock locks nothing"
        );
    }

    // A replica started after the revocation knows it, and ignores the forged entry.
    let late = Process::start(&replica(dir.path(), 9, &redis, &oauth_config(&up.url())), &[]);
    assert_eq!(bearer(late.addr, &revoked).await, 401, "revoked before it started");
    assert_eq!(bearer(late.addr, &access).await, 200);
    assert_eq!(
        metric_of(
            &late,
            r#"portcullis_shared_integrity_failures_total{kind="revocation"}"#
        )
        .await,
        1.0
    );
}

fn revocation_limits(upstream: &str) -> String {
    oauth_body(upstream)
        .section("oauth", |s| {
            s.set("max_revocations", 3).set("max_revocations_per_client", 2)
        })
        .to_toml()
}

async fn login_as(addr: SocketAddr, client: (&str, &str)) -> String {
    let (s, body) = form(
        addr,
        "/oauth/token",
        client,
        &[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "alice-pw"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{body}");
    body["access_token"].as_str().unwrap().to_string()
}

/// Revokes tokens until the caps, on the given replicas: a revoke answered 200 is refused
/// everywhere from then on; past a client's share, or the table's total, the answer is
/// 503 `temporarily_unavailable` (counted), and the token is honestly still valid.
async fn fill_revocations(procs: &[&Process]) {
    let addrs: Vec<SocketAddr> = procs.iter().map(|p| p.addr).collect();
    let metrics = || async {
        let (mut t, mut c) = (0.0, 0.0);
        for p in procs {
            t += metric_of(p, r#"portcullis_table_full_total{limit="total",table="revocations"}"#).await;
            c += metric_of(
                p,
                r#"portcullis_table_full_total{limit="per_client",table="revocations"}"#,
            )
            .await;
        }
        (t, c)
    };
    let jira = ("jira", "jira-secret");
    let other = ("other", "other-secret");
    let a = addrs[0];
    let t1 = login_as(a, jira).await;
    let t2 = login_as(a, jira).await;
    let t3 = login_as(a, jira).await;
    for t in [&t1, &t2] {
        let (s, _) = form(a, "/oauth/revoke", jira, &[("token", t)]).await;
        assert_eq!(s, 200);
    }
    let (s, body) = form(a, "/oauth/revoke", jira, &[("token", &t3)]).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (503, Some("temporarily_unavailable")),
        "{body}"
    );
    assert_eq!(metrics().await.1, 1.0, "counted as the client's share");
    // Another client still has room in the table.
    let o1 = login_as(a, other).await;
    let o2 = login_as(a, other).await;
    let (s, _) = form(a, "/oauth/revoke", other, &[("token", &o1)]).await;
    assert_eq!(s, 200);
    let (s, body) = form(a, "/oauth/revoke", other, &[("token", &o2)]).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (503, Some("temporarily_unavailable")),
        "{body}"
    );
    assert_eq!(metrics().await.0, 1.0, "counted as the whole table");
    // Revoking one already revoked needs no room.
    let (s, _) = form(a, "/oauth/revoke", jira, &[("token", &t1)]).await;
    assert_eq!(s, 200);
    for p in &addrs {
        for t in [&t1, &t2, &o1] {
            let refused = eventually(PATIENCE, || async { bearer(*p, t).await == 401 }).await;
            assert!(refused, "answered 200: refused everywhere");
        }
        for t in [&t3, &o2] {
            assert_eq!(bearer(*p, t).await, 200, "answered 503: not revoked");
        }
    }
}

#[tokio::test]
async fn a_full_revocation_table_refuses_with_503_and_each_client_has_its_share() {
    let up = Upstream::start().await;
    // In one process (no shared store).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("memory.toml");
    std::fs::write(&path, listeners().toml(&revocation_limits(&up.url())).to_toml()).unwrap();
    let p = Process::start(&path, &[]);
    fill_revocations(&[&p]).await;

    // Across replicas on Redis: the caps hold for all of them together.
    let Some(redis) = Redis::start() else { return };
    let (_dir, procs) = replicas(&redis, &revocation_limits(&up.url()));
    fill_revocations(&procs.iter().collect::<Vec<_>>()).await;
}

async fn login_from(addr: SocketAddr, from: &str, user: &str, pw: &str) -> u16 {
    http()
        .get(format!("http://{addr}/login"))
        .header("x-forwarded-for", from)
        .basic_auth(user, Some(pw))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The lockout table holds 4 pairs, 2 per client address (an IPv6 /64 is one address):
/// an address past its share, or anyone once the table is full, cannot have a new pair
/// counted, so it is not verified at all (429, even with the right password); pairs
/// already in the table are unaffected; both limits are counted.
#[tokio::test]
async fn a_full_lockout_table_refuses_what_it_cannot_count_and_each_address_has_its_share() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lockout.toml");
    let config = listeners()
        .section("listen", |s| s.set("trusted_proxies", vec!["127.0.0.1/32"]))
        .merge(body(&up.url(), 5, |p| p))
        .section("lockout", |s| s.set("max_entries_per_address", 2))
        .section("cache", |s| s.set("max_entries", 4));
    std::fs::write(&path, config.to_toml()).unwrap();
    let p = Process::start(&path, &[]);
    let addr = p.addr;
    // 2001:db8::1 and 2001:db8::2 are one /64: their share is 2.
    assert_eq!(login_from(addr, "2001:db8::1", "u1", "x").await, 401);
    assert_eq!(login_from(addr, "2001:db8::2", "alice", "wrong").await, 401);
    assert_eq!(
        login_from(addr, "2001:db8::3", "alice", "alice-pw").await,
        429,
        "the /64's share is full: a new pair is not counted, so not checked, even right"
    );
    assert_eq!(login_from(addr, "2001:db8::3", "u2", "x").await, 429);
    assert_eq!(
        login_from(addr, "2001:db8::2", "alice", "alice-pw").await,
        200,
        "a pair in the table is unaffected"
    );
    assert_eq!(
        metric_of(&p, r#"portcullis_table_full_total{limit="per_client",table="lockout"}"#).await,
        2.0
    );
    // Another address has its own share, until the table (4) is full.
    assert_eq!(login_from(addr, "10.0.0.1", "u3", "x").await, 401);
    assert_eq!(login_from(addr, "10.0.0.1", "u4", "x").await, 401);
    assert_eq!(
        login_from(addr, "10.0.0.2", "alice", "guess").await,
        429,
        "the table is full: a guess from a new pair is not checked"
    );
    assert_eq!(
        metric_of(&p, r#"portcullis_table_full_total{limit="total",table="lockout"}"#).await,
        1.0
    );
    assert!(
        up.seen().len() == 1,
        "only the pair already counted reached the upstream"
    );
}
