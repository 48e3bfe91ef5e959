//! Redis as it is really deployed: a Sentinel set (one master, one replica, three
//! sentinels) and a Redis Cluster of three masters, started by the tests on loopback, with
//! real Portcullis processes in front. Lockout, refresh rotation and revocation on both;
//! a `SENTINEL FAILOVER` in the middle of traffic; a credential withdrawn by one
//! replica's reload refused by the others before their own files change.
//!
//! Without `redis-server` / `redis-cli` the tests print SKIPPED (they fail under
//! PORTCULLIS_REQUIRE_TOOLS=1, as `.ci/run` sets after installing them).

use crate::shared::{
    bearer, body, form, listeners, login, metric_of, oauth_body_locking, refresh, status, SHARED_SECRET,
};
use crate::support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

/// A `redis-server` (or sentinel) this test started; ended when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether `tool --version` runs; without it the test is skipped (or fails under
/// PORTCULLIS_REQUIRE_TOOLS).
fn have(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("PORTCULLIS_REQUIRE_TOOLS").is_none(),
            "PORTCULLIS_REQUIRE_TOOLS is set but `{tool}` is missing"
        );
        skipped(&format!(
            "{tool} is not installed (apt-get install redis-server redis-tools redis-sentinel)"
        ));
    }
    found
}

fn conn(port: u16) -> redis::RedisResult<redis::Connection> {
    let c = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    c.get_connection_with_timeout(Duration::from_secs(2))
}

fn cmd<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> redis::RedisResult<T> {
    let mut c = conn(port)?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut c)
}

/// `redis-server` on `port` with `args`, answering PING (or the test panics).
async fn server(dir: &Path, port: u16, args: &[String]) -> Server {
    let child = Command::new("redis-server")
        .args(args)
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let s = Server { child, port };
    let up = eventually(PATIENCE, || async move { cmd::<String>(port, &["PING"]).is_ok() }).await;
    assert!(up, "redis-server on {port} did not start");
    s
}

const MASTER: &str = "mymaster";

/// One master, one replica, three sentinels watching them.
struct SentinelSet {
    _dir: tempfile::TempDir,
    _data: Vec<Server>,
    sentinels: Vec<Server>,
}

impl SentinelSet {
    async fn start() -> Option<SentinelSet> {
        if !have("redis-server") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let (pm, pr) = (free_port(), free_port());
        let sub = |name: &str| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            d
        };
        let master = server(&sub("master"), pm, &[]).await;
        let replica = server(
            &sub("replica"),
            pr,
            &["--replicaof".into(), "127.0.0.1".into(), pm.to_string()],
        )
        .await;
        let synced = eventually(PATIENCE, || async move {
            cmd::<String>(pr, &["INFO", "replication"]).is_ok_and(|i| i.contains("master_link_status:up"))
        })
        .await;
        assert!(synced, "the replica did not sync");
        let mut sentinels = Vec::new();
        for n in 0..3 {
            let port = free_port();
            let conf = dir.path().join(format!("sentinel-{n}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {MASTER} 127.0.0.1 {pm} 2\nsentinel down-after-milliseconds {MASTER} 2000\nsentinel failover-timeout {MASTER} 10000\n",
                    sub(&format!("s{n}")).display()
                ),
            )
            .unwrap();
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            sentinels.push(Server { child, port });
        }
        // Every sentinel knows the replica and the two other sentinels.
        for s in &sentinels {
            let port = s.port;
            let ready = eventually(PATIENCE, || async move {
                let replicas = cmd::<Vec<redis::Value>>(port, &["SENTINEL", "REPLICAS", MASTER]);
                let others = cmd::<Vec<redis::Value>>(port, &["SENTINEL", "SENTINELS", MASTER]);
                matches!((replicas, others), (Ok(r), Ok(o)) if r.len() == 1 && o.len() == 2)
            })
            .await;
            assert!(ready, "sentinel {port} did not discover the set");
        }
        Some(SentinelSet {
            _dir: dir,
            _data: vec![master, replica],
            sentinels,
        })
    }

    fn addrs(&self) -> Vec<String> {
        self.sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect()
    }

    /// The master's port, as the first sentinel names it now.
    fn master_port(&self) -> u16 {
        let (_, port): (String, String) =
            cmd(self.sentinels[0].port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER]).unwrap();
        port.parse().unwrap()
    }

    /// `[shared]` for this set, named by the keys or by a URL.
    fn shared(&self, by_url: bool) -> Config {
        let addrs = self.addrs();
        ha_shared(|s| {
            if by_url {
                s.set("url", format!("redis+sentinel://{}/{MASTER}", addrs.join(",")))
            } else {
                s.set("sentinels", addrs.clone()).set("master_name", MASTER)
            }
        })
    }
}

/// The listeners and `[shared]` on Redis with the test's prefix and secret; `place` says
/// where Redis is.
fn ha_shared(place: impl FnOnce(Table) -> Table) -> Config {
    listeners().section("shared", |s| {
        place(
            s.set("backend", "redis")
                .set("key_prefix", "pc-ha:")
                .set("secret", SHARED_SECRET)
                .set("command_timeout", "1s"),
        )
    })
}

/// Three masters, their slots assigned by `redis-cli --cluster create`.
struct Cluster {
    _dir: tempfile::TempDir,
    nodes: Vec<Server>,
}

impl Cluster {
    async fn start() -> Option<Cluster> {
        if !have("redis-server") || !have("redis-cli") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for n in 0..3 {
            let (port, bus) = (free_port(), free_port());
            let d = dir.path().join(format!("n{n}"));
            std::fs::create_dir_all(&d).unwrap();
            let args = [
                "--cluster-enabled".to_string(),
                "yes".into(),
                "--cluster-port".into(),
                bus.to_string(),
                "--cluster-config-file".into(),
                d.join("nodes.conf").display().to_string(),
                "--cluster-node-timeout".into(),
                "5000".into(),
            ];
            nodes.push(server(&d, port, &args).await);
        }
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .arg("--cluster-yes")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        for n in &nodes {
            let port = n.port;
            let ok = eventually(PATIENCE, || async move {
                cmd::<String>(port, &["CLUSTER", "INFO"]).is_ok_and(|i| i.contains("cluster_state:ok"))
            })
            .await;
            assert!(ok, "the cluster did not form");
        }
        Some(Cluster { _dir: dir, nodes })
    }

    fn shared(&self, by_url: bool) -> Config {
        let nodes: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        ha_shared(|s| {
            if by_url {
                s.set("url", format!("redis://{}", nodes[0])).set("cluster", true)
            } else {
                s.set("nodes", nodes.clone())
            }
        })
    }

    /// Keys on each node, by `KEYS prefix*`.
    fn keys_per_node(&self) -> Vec<Vec<String>> {
        self.nodes
            .iter()
            .map(|n| cmd::<Vec<String>>(n.port, &["KEYS", "pc-ha:*"]).unwrap())
            .collect()
    }
}

/// `n` replicas of `shared` + `body` (TOML), each with a config file of its own.
fn gateways(shared: &Config, body: &str, n: usize) -> (tempfile::TempDir, Vec<PathBuf>, Vec<Process>) {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    let mut procs = Vec::new();
    for i in 0..n {
        let path = dir.path().join(format!("replica-{i}.toml"));
        std::fs::write(&path, shared.clone().toml(body).to_toml()).unwrap();
        procs.push(Process::start(&path, &[]));
        paths.push(path);
    }
    (dir, paths, procs)
}

async fn errors(procs: &[Process], op: &str) -> f64 {
    let mut total = 0.0;
    for p in procs {
        total += metric_of(p, &format!(r#"portcullis_shared_errors_total{{op="{op}"}}"#)).await;
    }
    total
}

/// The builtin issuer (clients jira and other, user alice), user bob, a lockout of
/// `max_failures`, routes `/login` (Basic) and `/events` (OAuth).
fn issuer_body(upstream: &str, max_failures: u32) -> String {
    oauth_body_locking(upstream, max_failures)
        .user("bob", |u| u.roles(["rest"]).password_hash(&argon2_hash("bob-pw")))
        .plan("limited", |p| {
            p.upstream(upstream).access_roles(["rest"]).integration("r", |i| {
                i.path("/rated")
                    .methods(["GET"])
                    .auth("basic")
                    .set("rate", rule(r#"{ requests = 4, per = "1h", burst = 3 }"#))
            })
        })
        .to_toml()
}

/// What every deployment must keep, on `procs` (at least three): a rate budget spread
/// over replicas passes once in total; failures spread over
/// replicas lock after `max_failures` in total; a refresh token rotated on one replica,
/// reused on another, revokes its family everywhere; of two replicas rotating one token
/// at once exactly one wins; a revocation on one is refused by all. Nothing fails in
/// the store meanwhile.
async fn shared_state_holds(procs: &[Process]) {
    let (a, b, c) = (procs[0].addr, procs[1].addr, procs[2].addr);
    // One rate budget for alice across the replicas: burst 3 passes 4 in total.
    let mut passed = 0;
    for i in 0..12 {
        let s = status([a, b, c][i % 3], "/rated", "alice", "alice-pw").await;
        assert!(s == 200 || s == 429, "{s}");
        passed += usize::from(s == 200);
    }
    assert_eq!(passed, 4, "one budget across replicas");
    for p in [a, b, c] {
        assert_eq!(status(p, "/login", "bob", "wrong").await, 401);
    }
    for p in [a, b, c] {
        assert_eq!(
            status(p, "/login", "bob", "bob-pw").await,
            429,
            "locked on every replica"
        );
    }
    let (access, rt1) = login(a).await;
    for p in [a, b, c] {
        assert_eq!(bearer(p, &access).await, 200, "one signing key");
    }
    let (s, body) = refresh(b, &rt1).await;
    assert_eq!(s, 200, "{body}");
    let rt2 = body["refresh_token"].as_str().unwrap().to_string();
    let (s, body) = refresh(c, &rt1).await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_grant")), "reuse");
    let (s, _) = refresh(a, &rt2).await;
    assert_eq!(s, 400, "the family is revoked everywhere");
    let (_, rt3) = login(a).await;
    let (r1, r2) = tokio::join!(refresh(b, &rt3), refresh(c, &rt3));
    assert_eq!([r1.0, r2.0].iter().filter(|s| **s == 200).count(), 1, "{r1:?} {r2:?}");
    let (s, _) = form(b, "/oauth/revoke", ("jira", "jira-secret"), &[("token", &access)]).await;
    assert_eq!(s, 200);
    for p in [a, b, c] {
        let refused = eventually(PATIENCE, || async { bearer(p, &access).await == 401 }).await;
        assert!(refused, "a revoked access token is refused on every replica");
    }
    for op in portcullis::metrics::SHARED_OPS {
        assert_eq!(errors(procs, op).await, 0.0, "no {op} error");
    }
}

/// [`shared_state_holds`] on three replicas named `first`, then on three named `second`
/// (the other form of the same store), where the lock of the first run still holds.
/// Returns the second three.
async fn holds_in_both_forms(first: Config, second: Config) -> (tempfile::TempDir, Vec<Process>) {
    let up = Upstream::start().await;
    let (_d, _p, procs) = gateways(&first, &issuer_body(&up.url(), 3), 3);
    shared_state_holds(&procs).await;
    drop(procs);
    let (dir, _p, procs) = gateways(&second, &issuer_body(&up.url(), 3), 3);
    assert_eq!(
        status(procs[0].addr, "/login", "bob", "bob-pw").await,
        429,
        "the lock holds in the other form"
    );
    (dir, procs)
}

/// On a Sentinel set (named by keys, or by a `redis+sentinel://` URL): lockout, refresh
/// rotation and revocation hold across three replicas, on the master the sentinels name.
#[tokio::test]
async fn a_sentinel_set_holds_lockout_rotation_and_revocation_across_replicas() {
    let Some(set) = SentinelSet::start().await else { return };
    holds_in_both_forms(set.shared(false), set.shared(true)).await;
}

/// On a Redis Cluster of three masters (a seed URL with `cluster = true`, or `nodes`):
/// the same, with every script's keys in one slot (a CROSSSLOT error would count as a
/// store error), and the keys spread over more than one node.
#[tokio::test]
async fn a_cluster_holds_lockout_rotation_and_revocation_across_replicas() {
    let Some(cluster) = Cluster::start().await else { return };
    let _running = holds_in_both_forms(cluster.shared(true), cluster.shared(false)).await;
    // Where keys land depends on their hash slots only (fixed names, fixed secret), not
    // on how fast anything ran: not every key is on one node.
    let per_node = cluster.keys_per_node();
    let holding: Vec<usize> = (0..per_node.len()).filter(|&n| !per_node[n].is_empty()).collect();
    assert!(
        holding.len() > 1,
        "keys of different operations land on different nodes: {per_node:?}"
    );
}

/// One rotation attempt of the traffic during a failover.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    at: Instant,
    status: u16,
}

/// A refresh-token chain rotated alternately on `addrs` until `stop`: a 200 moves to the
/// next token, a 503 retries the same one. A 400 right after a 503 is a rotation whose
/// replication was not confirmed (so answered 503) but took effect: its retry is a reuse,
/// which revokes the family (failing closed); the chain starts again from a sign-in.
/// Any other answer ends the loop (and fails the test). Each attempt comes with a wrong
/// password for bob (401 always). Returns the last token granted, the one before it,
/// and how many wrong passwords were sent.
async fn rotate_until(
    addrs: Vec<SocketAddr>,
    mut rt: String,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Attempt>>>,
) -> (String, Option<String>, usize) {
    let mut previous = None;
    let mut turn = 0;
    let mut last = 200;
    while !stop.load(Ordering::Relaxed) {
        let addr = addrs[turn % addrs.len()];
        turn += 1;
        assert_eq!(status(addr, "/login", "bob", "wrong").await, 401);
        let (s, body) = refresh(addr, &rt).await;
        log.lock().unwrap().push(Attempt {
            at: Instant::now(),
            status: s,
        });
        match (s, last) {
            (200, _) => {
                let next = body["refresh_token"].as_str().unwrap().to_string();
                previous = Some(std::mem::replace(&mut rt, next));
            }
            (503, _) => {}
            (400, 503) => loop {
                // Signs in again (503 while the store cannot confirm a write).
                let fields = [
                    ("grant_type", "password"),
                    ("username", "alice"),
                    ("password", "alice-pw"),
                ];
                let (s, body) = form(addr, "/oauth/token", ("jira", "jira-secret"), &fields).await;
                if s == 200 {
                    rt = body["refresh_token"].as_str().unwrap().to_string();
                    previous = None;
                    log.lock().unwrap().push(Attempt {
                        at: Instant::now(),
                        status: 201,
                    });
                    break;
                }
                assert_eq!(s, 503, "{body}");
            },
            _ => break,
        }
        last = s;
    }
    (rt, previous, turn)
}

/// `SENTINEL FAILOVER` while two replicas rotate a refresh-token chain and count wrong
/// passwords: every rotation answered 200 holds (the chain goes on, and each token
/// rotated is refused as a reuse afterwards: rotation stays exactly-once); every
/// failure counted while the store answered is still counted on the new master; the
/// replicas find the new master through the sentinels without a restart, and a
/// revocation after the failover reaches both. The time without a usable store is
/// printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_mid_traffic_loses_no_acknowledged_write_and_recovers_by_itself() {
    let Some(set) = SentinelSet::start().await else { return };
    let up = Upstream::start().await;
    const MAX: u32 = 400;
    let (_d, _p, procs) = gateways(&set.shared(false), &issuer_body(&up.url(), MAX), 2);
    let addrs = vec![procs[0].addr, procs[1].addr];
    let (_, rt) = login(addrs[0]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let rotations = tokio::spawn(rotate_until(addrs.clone(), rt, stop.clone(), log.clone()));
    let flowing = eventually(PATIENCE, || async { log.lock().unwrap().len() >= 5 }).await;
    assert!(flowing);

    let old = set.master_port();
    let started = Instant::now();
    let _: String = cmd(set.sentinels[0].port, &["SENTINEL", "FAILOVER", MASTER]).unwrap();
    let switched = eventually(PATIENCE, || async { set.master_port() != old }).await;
    assert!(switched, "the sentinels never named a new master");
    // Traffic goes on until a rotation succeeds well after the switch: recovered.
    let after = Instant::now();
    let recovered = eventually(PATIENCE, || async {
        let l = log.lock().unwrap();
        l.iter().filter(|a| a.at > after && a.status == 200).count() >= 3
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (rt, previous, sent) = rotations.await.unwrap();
    assert!(
        sent < MAX as usize,
        "the lockout stays below max_failures during the traffic"
    );
    let log = log.lock().unwrap().clone();
    assert!(recovered, "rotation never recovered: {log:?}");

    // Every attempt was granted or refused as unavailable, or was the reuse of a token
    // whose rotation took effect unconfirmed (then a sign-in, logged as 201).
    let odd: Vec<_> = log
        .windows(2)
        .filter(|w| !matches!((w[0].status, w[1].status), (_, 200 | 503 | 201) | (503, 400)))
        .collect();
    assert!(odd.is_empty(), "a rotation was lost or applied twice: {odd:?}");
    let signins = log.iter().filter(|a| a.status == 201).count();
    // The longest stretch between two grants that held an unavailable answer.
    let mut outage = Duration::ZERO;
    let mut last_ok = log.first().map_or(started, |a| a.at);
    let mut failed = false;
    for a in &log {
        if a.status == 200 {
            if failed {
                outage = outage.max(a.at - last_ok);
            }
            last_ok = a.at;
            failed = false;
        } else {
            failed = true;
        }
    }
    let unavailable = log.iter().filter(|a| a.status == 503).count();
    let unconfirmed = errors(&procs, "replicate").await;
    println!(
        "SENTINEL FAILOVER: no usable store for {} ms ({} of {} rotations answered 503, {} writes unconfirmed by a replica, {} families revoked by an unconfirmed rotation; new master after {} ms)",
        outage.as_millis(),
        unavailable,
        log.len(),
        unconfirmed,
        signins,
        (after - started).as_millis()
    );

    // The chain holds on both replicas: the last token granted rotates, the one before is
    // spent (a reuse, which revokes the family).
    let (s, body) = refresh(addrs[1], &rt).await;
    assert_eq!(s, 200, "{body}");
    if let Some(previous) = previous {
        let (s, _) = refresh(addrs[0], &previous).await;
        assert_eq!(s, 400, "a token rotated before or during the failover stays spent");
    }

    // Failures: each one whose shared count was acknowledged is still counted. The
    // store's errors (counted per command) bound from above the unacknowledged ones.
    let unacknowledged = errors(&procs, "lockout").await as usize;
    let acknowledged = sent.saturating_sub(unacknowledged);
    let mut more = 0;
    while status(addrs[more % 2], "/login", "bob", "wrong").await == 401 {
        more += 1;
        assert!(more <= MAX as usize, "never locked");
    }
    println!("lockout: {sent} failures during the failover, at least {acknowledged} acknowledged; locked after {more} more (max_failures {MAX})");
    assert!(
        more <= MAX as usize - acknowledged,
        "acknowledged failures were lost: {sent} sent, {unacknowledged} store errors, {more} more needed"
    );

    // A revocation after the failover reaches both replicas (events on the new master).
    let (access, _) = login(addrs[0]).await;
    let (s, _) = form(
        addrs[1],
        "/oauth/revoke",
        ("jira", "jira-secret"),
        &[("token", &access)],
    )
    .await;
    assert_eq!(s, 200);
    for p in &addrs {
        let refused = eventually(PATIENCE, || async { bearer(*p, &access).await == 401 }).await;
        assert!(refused, "a revocation after the failover is refused everywhere");
    }
}

/// Alice with `password`, the builtin issuer's client jira with `client_secret`, an API
/// key `k1` with `key_secret` for alice on `p/keyed`, and the routes `/login` (Basic) and
/// `/keyed` (API key).
fn credentials_body(upstream: &str, password: &str, key_secret: &str, client_secret: &str) -> String {
    let client = |c: Table| {
        c.set("client_id", "jira")
            .set("client_secret_hash", sha256_hex(client_secret))
    };
    Config::bare()
        .user("alice", |u| u.roles(["rest"]).password_hash(&argon2_hash(password)))
        .section("oauth", |s| {
            s.set("mode", "builtin")
                .set("access_token_ttl", "10m")
                .entry("clients", client)
        })
        .plan("p", |p| {
            p.upstream(upstream)
                .access_roles(["rest"])
                .integration("login", |i| i.path("/login").methods(["GET"]).auth("basic"))
                .integration("keyed", |i| i.path("/keyed").methods(["GET"]).auth("api_key"))
        })
        .api_key("k1", &sha256_hex(key_secret), "alice", "p/keyed")
        .to_toml()
}

/// `[shared]` on one plain Redis.
fn plain_shared(port: u16) -> Config {
    ha_shared(|s| s.set("url", format!("redis://127.0.0.1:{port}/0")))
}

/// The client-credentials answer of `addr` for jira with `secret`.
async fn client_status(addr: SocketAddr, secret: &str) -> u16 {
    form(
        addr,
        "/oauth/token",
        ("jira", secret),
        &[("grant_type", "client_credentials")],
    )
    .await
    .0
}

/// The answer of `addr` to the API key k1 with `secret`.
async fn key(addr: SocketAddr, secret: &str) -> u16 {
    let url = format!("http://{addr}/keyed");
    client()
        .get(url)
        .basic_auth("k1", Some(secret))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn refusals(p: &Process, reason: &str) -> f64 {
    metric_of(p, &failures(reason, "basic")).await + metric_of(p, &failures(reason, "api_key")).await
}

/// A password, an API key and an OAuth client secret rotated in one replica's file (and
/// reloaded there) are refused by the two others before their own files change, even
/// though each had verified and cached them; the new ones pass there once their files
/// change too; a replica started later with the old file refuses them as well (read
/// back from Redis); undoing the rotation puts them back everywhere. Withdrawals that
/// are forged (a wrong MAC, no MAC, a member written into Redis) are ignored and
/// counted; they withdraw nothing.
#[tokio::test]
async fn a_credential_rotated_on_one_replica_is_refused_by_the_others_before_their_files_change() {
    if !have("redis-server") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = server(dir.path(), free_port(), &[]).await;
    let up = Upstream::start().await;
    let old = credentials_body(&up.url(), "old-pw", "old-key", "old-client");
    let (_d, paths, procs) = gateways(&plain_shared(redis.port), &old, 3);
    for p in &procs {
        assert_eq!(
            status(p.addr, "/login", "alice", "old-pw").await,
            200,
            "verified, and cached"
        );
        assert_eq!(key(p.addr, "old-key").await, 200);
        assert_eq!(client_status(p.addr, "old-client").await, 200);
    }

    // Forged withdrawals (a MAC under another key, none at all) change nothing.
    let channel = "pc-ha:events:all";
    let fake = format!("withdrawn {} {}", u64::MAX / 2, "ab".repeat(32));
    let _: i64 = cmd(
        redis.port,
        &["PUBLISH", channel, &format!("v1.{}.{fake}", "00".repeat(32))],
    )
    .unwrap();
    let _: i64 = cmd(redis.port, &["PUBLISH", channel, &fake]).unwrap();
    for p in &procs {
        let counted = eventually(PATIENCE, || async {
            metric_of(p, r#"portcullis_shared_integrity_failures_total{kind="event"}"#).await >= 2.0
        })
        .await;
        assert!(counted, "forged withdrawals are counted");
        assert_eq!(status(p.addr, "/login", "alice", "old-pw").await, 200);
    }

    let new = credentials_body(&up.url(), "new-pw", "new-key", "new-client");
    std::fs::write(&paths[0], plain_shared(redis.port).toml(&new).to_toml()).unwrap();
    procs[0].signal("HUP");
    let reloaded = eventually(PATIENCE, || async {
        status(procs[0].addr, "/login", "alice", "new-pw").await == 200
    })
    .await;
    assert!(reloaded);
    for p in &procs[1..] {
        let refused = eventually(PATIENCE, || async {
            status(p.addr, "/login", "alice", "old-pw").await == 401
                && key(p.addr, "old-key").await == 401
                && client_status(p.addr, "old-client").await == 401
        })
        .await;
        assert!(
            refused,
            "the old credentials are refused before this replica's file changes"
        );
        assert!(refusals(p, "credential_withdrawn").await >= 2.0);
        assert_eq!(
            status(p.addr, "/login", "alice", "new-pw").await,
            401,
            "its file does not know the new one yet"
        );
    }
    // Replica 1's file catches up: the new credentials pass there, the old ones stay refused.
    std::fs::write(&paths[1], plain_shared(redis.port).toml(&new).to_toml()).unwrap();
    procs[1].signal("HUP");
    let caught_up = eventually(PATIENCE, || async {
        status(procs[1].addr, "/login", "alice", "new-pw").await == 200
            && key(procs[1].addr, "new-key").await == 200
            && client_status(procs[1].addr, "new-client").await == 200
    })
    .await;
    assert!(caught_up);
    assert_eq!(status(procs[1].addr, "/login", "alice", "old-pw").await, 401);
    // Replica 2 still refuses both: its file holds only the withdrawn ones.
    assert_eq!(status(procs[2].addr, "/login", "alice", "old-pw").await, 401);
    // A replica started afterwards with the old file (it heard nothing) reads the
    // withdrawals back from Redis before it serves.
    let late_path = paths[0].with_file_name("late.toml");
    std::fs::write(&late_path, plain_shared(redis.port).toml(&old).to_toml()).unwrap();
    let late = Process::start(&late_path, &[]);
    assert_eq!(status(late.addr, "/login", "alice", "old-pw").await, 401);
    assert_eq!(key(late.addr, "old-key").await, 401);
    assert_eq!(client_status(late.addr, "old-client").await, 401);
    // A withdrawal written into Redis by something without the secret withdraws nothing.
    let table = "pc-ha:withdrawn:all";
    let until = (u64::MAX / 4).to_string();
    let _: i64 = cmd(
        redis.port,
        &[
            "ZADD",
            table,
            &until,
            &format!("{} {until} {}", "cd".repeat(32), "00".repeat(32)),
        ],
    )
    .unwrap();
    let late2 = Process::start(&paths[1], &[]);
    assert_eq!(status(late2.addr, "/login", "alice", "new-pw").await, 200);
    assert!(metric_of(&late2, r#"portcullis_shared_integrity_failures_total{kind="event"}"#).await >= 1.0);
    // Replica 0 goes back to the old file (the rotation undone): the old credentials are
    // put back, and pass again on replica 2, whose file never changed.
    std::fs::write(&paths[0], plain_shared(redis.port).toml(&old).to_toml()).unwrap();
    procs[0].signal("HUP");
    let back = eventually(PATIENCE, || async {
        status(procs[2].addr, "/login", "alice", "old-pw").await == 200 && key(procs[2].addr, "old-key").await == 200
    })
    .await;
    assert!(back, "credentials put back are accepted again");
}

/// Redis over TLS (a certificate of the test's own CA, given as `tls_ca_file`) with an
/// ACL user (`username` / `password`; the default user off): two replicas share the
/// lockout through it. The same store with a wrong password, or without the CA (the
/// public roots do not know it), cannot be used: its failures are counted locally only
/// and as store errors.
#[tokio::test]
async fn redis_over_tls_with_an_acl_user_and_refused_without_the_ca_or_password() {
    if !have("redis-server") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cert = self_signed(dir.path(), "redis");
    let port = free_port();
    let args: Vec<String> = [
        "--port",
        "0",
        "--tls-port",
        &port.to_string(),
        "--tls-cert-file",
        &cert.cert_path.display().to_string(),
        "--tls-key-file",
        &cert.key_path.display().to_string(),
        "--tls-ca-cert-file",
        &cert.cert_path.display().to_string(),
        "--tls-auth-clients",
        "no",
        "--user",
        "default",
        "off",
        "--user",
        "pc",
        "on",
        ">pc-pass",
        "~*",
        "&*",
        "+@all",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let child = Command::new("redis-server")
        .args(&args)
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _redis = Server { child, port };
    let listening = eventually(PATIENCE, || async move {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    assert!(listening, "redis-server (TLS) did not start");
    let up = Upstream::start().await;
    let lockout_body = |max: u32| {
        body(&up.url(), max, |p| p)
            .user("bob", |u| u.roles(["rest"]).password_hash(&argon2_hash("bob-pw")))
            .to_toml()
    };
    let tls = |password: &'static str, ca: bool| {
        let ca_path = cert.cert_path.display().to_string();
        ha_shared(move |s| {
            let s = s
                .set("url", format!("rediss://127.0.0.1:{port}/0"))
                .set("username", "pc")
                .set("password", password);
            if ca {
                s.set("tls_ca_file", ca_path)
            } else {
                s
            }
        })
    };
    let (_d, _p, procs) = gateways(&tls("pc-pass", true), &lockout_body(2), 2);
    let (a, b) = (procs[0].addr, procs[1].addr);
    assert_eq!(status(a, "/login", "bob", "wrong").await, 401);
    assert_eq!(status(b, "/login", "bob", "wrong").await, 401);
    for p in [a, b] {
        assert_eq!(
            status(p, "/login", "bob", "bob-pw").await,
            429,
            "the lockout is shared over TLS"
        );
    }
    assert_eq!(errors(&procs, "lockout").await, 0.0);
    for (password, ca) in [("wrong-pass", true), ("pc-pass", false)] {
        let (_d, _p, others) = gateways(&tls(password, ca), &lockout_body(2), 1);
        assert_eq!(status(others[0].addr, "/login", "alice", "wrong").await, 401);
        assert!(
            errors(&others, "lockout").await >= 1.0,
            "password {password}, CA {ca}: the store refused"
        );
        assert_eq!(
            status(others[0].addr, "/login", "bob", "bob-pw").await,
            200,
            "the lock of the store is not seen"
        );
    }
}

/// More withdrawals than the shared table keeps (10 000): the replica that announced
/// them, and a replica started later that reads the table back, both refuse every
/// credential checked against a stored value (fail closed), not only the ones kept.
#[tokio::test]
async fn a_replica_started_after_the_withdrawal_table_overflowed_fails_closed_too() {
    if !have("redis-server") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = server(dir.path(), free_port(), &[]).await;
    let up = Upstream::start().await;
    let base = credentials_body(&up.url(), "pw", "key", "client");
    // 10 010 URL keys of users that a reload removes: one withdrawal each.
    let mut many = Config::bare();
    for i in 0..10_010 {
        many = many.user(&format!("u{i}"), |u| {
            u.roles(["rest"])
                .set("url_key_hash", sha256_hex(&format!("url-key-{i}")))
        });
    }
    let with_many = Config::bare().toml(&base).merge(many).to_toml();
    let (_d, paths, procs) = gateways(&plain_shared(redis.port), &with_many, 1);
    assert_eq!(status(procs[0].addr, "/login", "alice", "pw").await, 200);
    std::fs::write(&paths[0], plain_shared(redis.port).toml(&base).to_toml()).unwrap();
    procs[0].signal("HUP");
    let closed = eventually(PATIENCE, || async {
        status(procs[0].addr, "/login", "alice", "pw").await == 401
    })
    .await;
    assert!(closed, "the announcing replica fails closed");
    // A replica started now, with the original file, reads the table back.
    let (_d2, _p2, late) = gateways(&plain_shared(redis.port), &with_many, 1);
    assert_eq!(
        status(late[0].addr, "/login", "alice", "pw").await,
        401,
        "the late replica fails closed as well"
    );
}
