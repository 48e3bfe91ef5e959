//! Reload without restart: under load, refused when bad, rotated passwords and
//! certificates, SIGHUP and file changes.

use crate::support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use portcullis::reload;
use support::*;

fn cfg(upstream: &str, password_hash: &str, ttl: &str) -> String {
    Config::new()
        .section("cache", |s| s.set("ttl", ttl))
        .user("svc", |u| u.roles(["rest"]).password_hash(password_hash))
        .plan("p", |p| {
            p.upstream(upstream)
                .access_roles(["rest"])
                .integration("i", |i| i.path("/i").methods(["GET"]).auth("basic"))
        })
        .to_toml()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_steady_traffic_drop_nothing() {
    let up = Upstream::start().await;
    let hash = argon2_hash("svc-pw");
    let gw = Gateway::start(&cfg(&up.url(), &hash, "60s")).await;
    let path = gw.dir.path().join("portcullis.toml");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    // One keep-alive connection, requests back to back: any drop or failure fails the test.
    let traffic = {
        let stop = stop.clone();
        let served = served.clone();
        let addr = gw.addr;
        tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            while !stop.load(Ordering::Relaxed) {
                let req = hyper::Request::get("/i")
                    .header("host", "gw")
                    .header("authorization", basic("svc", "svc-pw"))
                    .body(Empty::<bytes::Bytes>::new())
                    .unwrap();
                let resp = send.send_request(req).await.expect("connection kept across reloads");
                assert_eq!(resp.status(), 200);
                resp.into_body().collect().await.unwrap();
                served.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    for i in 0..50 {
        let ttl = format!("{}s", 30 + i);
        std::fs::write(&path, cfg(&up.url(), &hash, &ttl)).unwrap();
        reload::reload(&gw.state, &path, "test").unwrap();
        // Traffic goes on between every two reloads: wait for one more answered request,
        // however long this machine takes (a failed request ends the traffic task).
        let before = served.load(Ordering::Relaxed);
        let moved = eventually(PATIENCE, || {
            let served = served.clone();
            let finished = traffic.is_finished();
            async move { finished || served.load(Ordering::Relaxed) > before }
        })
        .await;
        assert!(moved && !traffic.is_finished(), "traffic stopped after reload {i}");
    }
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(&m, r#"portcullis_config_reloads_total{outcome="success"}"#),
        50.0
    );
    assert_eq!(
        metric_value(&m, r#"portcullis_config_reloads_total{outcome="failure"}"#),
        0.0
    );
    // Only the ttl changed: the one cached credential survived every reload.
    assert_eq!(
        metric_value(&m, r#"portcullis_cache_requests_total{cache="basic",result="miss"}"#),
        1.0
    );
    assert_eq!(gw.state.gateway().config.cache.ttl, Duration::from_secs(79));
    gw.stop().await;
}

fn two_users(upstream: &str, svc: &str, other: &str, extra_svc: &str) -> String {
    Config::new()
        .user("svc", |u| {
            let u = u.roles(["rest"]).password_hash(svc);
            // `extra_svc`: more `key = value` lines of svc.
            let extra: toml::Table = toml::from_str(extra_svc).unwrap();
            extra.into_iter().fold(u, |u, (k, v)| u.set(&k, v))
        })
        .user("other", |u| u.roles(["rest"]).password_hash(other))
        .plan("p", |p| {
            p.upstream(upstream)
                .access_roles(["rest"])
                .integration("i", |i| i.path("/i").methods(["GET"]).auth("basic"))
        })
        .to_toml()
}

#[tokio::test]
async fn a_reload_keeps_cached_credentials_of_unchanged_users_only() {
    let up = Upstream::start().await;
    let svc = argon2_hash("svc-pw");
    let gw = Gateway::start(&two_users(&up.url(), &svc, &argon2_hash("other-pw"), "")).await;
    let path = gw.dir.path().join("portcullis.toml");
    let get = |user: &'static str, pw: &'static str| {
        let url = gw.url("/i");
        async move {
            client()
                .get(url)
                .header("authorization", basic(user, pw))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let misses = r#"portcullis_cache_requests_total{cache="basic",result="miss"}"#;
    let hits = r#"portcullis_cache_requests_total{cache="basic",result="hit"}"#;
    assert_eq!(get("svc", "svc-pw").await, 200);
    assert_eq!(get("svc", "svc-pw").await, 200);
    assert_eq!(gw.metric(misses).await, 1.0);
    assert_eq!(gw.metric(hits).await, 1.0);

    // Another user's password rotates: svc's cached decision stays, no argon2 for svc.
    std::fs::write(&path, two_users(&up.url(), &svc, &argon2_hash("other-new"), "")).unwrap();
    reload::reload(&gw.state, &path, "test").unwrap();
    assert_eq!(get("svc", "svc-pw").await, 200);
    assert_eq!(
        gw.metric(misses).await,
        1.0,
        "a reload that left svc alone cost svc an argon2 run"
    );
    assert_eq!(gw.metric(hits).await, 2.0);

    // svc's own password rotates: the old one is refused at once, the new one passes.
    let rotated = argon2_hash("svc-new");
    std::fs::write(&path, two_users(&up.url(), &rotated, &argon2_hash("other-new"), "")).unwrap();
    reload::reload(&gw.state, &path, "test").unwrap();
    assert_eq!(get("svc", "svc-pw").await, 401);
    assert_eq!(get("svc", "svc-new").await, 200);

    // A change to svc's roles or standing evicts its decision too.
    std::fs::write(
        &path,
        two_users(&up.url(), &rotated, &argon2_hash("other-new"), "disabled = true"),
    )
    .unwrap();
    reload::reload(&gw.state, &path, "test").unwrap();
    assert_eq!(get("svc", "svc-new").await, 401);
    let logs = gw.metrics().await;
    assert_eq!(metric_value(&logs, &failures("user_disabled", "basic")), 1.0);
    gw.stop().await;
}

#[tokio::test]
async fn a_bad_config_is_refused_and_the_old_one_keeps_serving() {
    let up = Upstream::start().await;
    let hash = argon2_hash("svc-pw");
    let gw = Gateway::start(&cfg(&up.url(), &hash, "60s")).await;
    let path = gw.dir.path().join("portcullis.toml");
    std::fs::write(&path, cfg(&up.url(), &hash, "sixty seconds")).unwrap();
    let err = reload::reload(&gw.state, &path, "test").unwrap_err();
    assert!(matches!(err, reload::ReloadError::Invalid(_)), "{err}");
    assert!(err.to_string().contains("invalid duration"), "{err}");
    // A listener may not move under a running process.
    std::fs::write(
        &path,
        cfg(&up.url(), &hash, "60s").replacen("127.0.0.1:0", "127.0.0.1:1", 1),
    )
    .unwrap();
    let err = reload::reload(&gw.state, &path, "test").unwrap_err();
    assert!(matches!(err, reload::ReloadError::NeedsRestart(_)), "{err}");
    assert!(err.to_string().contains("restart"), "{err}");
    let resp = client()
        .get(gw.url("/i"))
        .header("authorization", basic("svc", "svc-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(&m, r#"portcullis_config_reloads_total{outcome="failure"}"#),
        2.0
    );
    let status: serde_json::Value = client()
        .get(gw.admin_url("/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["last_reload"]["ok"], false);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_a_password_without_restart() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &cfg(&up.url(), &argon2_hash("old-pw"), "60s"));
    let gw = Process::start(&path, &[]);
    let url = format!("http://{}/i", gw.addr);
    let status = |pw: &'static str| {
        let url = url.clone();
        async move {
            client()
                .get(url)
                .header("authorization", basic("svc", pw))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status("old-pw").await, 200, "cached now");
    // Write the new file in place but keep the watcher from seeing it first: same
    // content length does not matter; SIGHUP makes the reload immediate.
    std::fs::write(&path, cfg(&up.url(), &argon2_hash("new-pw"), "60s")).unwrap();
    gw.signal("HUP");
    assert!(eventually(PATIENCE, || async { status("new-pw").await == 200 }).await);
    assert_eq!(
        status("old-pw").await,
        401,
        "the old password fails at once, cache or not"
    );
    assert!(gw.logs().contains("config reloaded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_to_new_tls_clients() {
    let dir = tempfile::tempdir().unwrap();
    let old = self_signed(dir.path(), "server");
    let toml = cfg("builtin:echo", &argon2_hash("pw"), "60s").replace(
        "address = \"127.0.0.1:0\"\n\n[admin]",
        &format!(
            "address = \"127.0.0.1:0\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n\n[admin]",
            old.cert_path.display(),
            old.key_path.display()
        ),
    );
    let path = write_config(dir.path(), &toml);
    let gw = Process::start(&path, &[]);
    let url = format!("https://localhost:{}/i", gw.addr.port());
    assert_eq!(tls_client(&old).get(&url).send().await.unwrap().status(), 401);
    // Rotate the files in place (as a Kubernetes Secret update does); no signal.
    let new_dir = tempfile::tempdir().unwrap();
    let new = self_signed(new_dir.path(), "server");
    std::fs::write(&old.key_path, &new.key_pem).unwrap();
    std::fs::write(&old.cert_path, &new.cert_pem).unwrap();
    let seen = eventually(PATIENCE, || {
        let c = tls_client(&new);
        let url = url.clone();
        async move { c.get(url).send().await.is_ok_and(|r| r.status() == 401) }
    })
    .await;
    assert!(seen, "a new TLS client gets the new certificate:\n{}", gw.logs());
    assert!(
        tls_client(&old).get(&url).send().await.is_err(),
        "the old certificate is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_names_the_refusal_reason_in_json() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &cfg(&up.url(), &argon2_hash("right-pw"), "60s"));
    let gw = Process::start(&path, &[]);
    let resp = client()
        .get(format!("http://{}/i?apiKey=leak-me-not", gw.addr))
        .header("authorization", basic("svc", "wrong-pw"))
        .header("x-request-id", "diag-42")
        .header("user-agent", "ServiceNow/2.0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let sent_back = resp.bytes().await.unwrap().len() as u64;
    let logs = gw.logs_when(|l| l.contains("diag-42")).await;
    let line: serde_json::Value = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["request_id"] == "diag-42")
        .expect("an access-log line for the request");
    assert_eq!(line["reason"], "bad_password");
    assert_eq!(line["status"], 401);
    assert_eq!(line["principal"], "");
    assert_eq!(line["path"], "/i");
    assert_eq!(line["client"], "127.0.0.1");
    assert_eq!(
        (line["plan"].as_str(), line["integration"].as_str()),
        (Some("p"), Some("i"))
    );
    assert!(line["timestamp"].is_string() && line["latency_ms"].is_number());
    assert_eq!(line["protocol"], "HTTP/1.1");
    assert_eq!(line["host"], gw.addr.to_string());
    assert_eq!(line["user_agent"], "ServiceNow/2.0");
    assert_eq!(line["bytes_in"], 0);
    assert_eq!(line["bytes_out"], sent_back);
    assert_eq!(line["upstream"], up.url().trim_start_matches("http://"));
    for secret in ["wrong-pw", "leak-me-not", "apiKey"] {
        assert!(!logs.contains(secret), "{secret} leaked");
    }
}

#[tokio::test]
async fn a_reload_does_not_forgive_failed_logins() {
    let up = Upstream::start().await;
    let hash = argon2_hash("svc-pw");
    let with_lockout = |ttl: &str| {
        cfg(&up.url(), &hash, ttl).replace(
            "[cache]",
            "[lockout]\nmax_failures = 3\nwindow = \"1h\"\nduration = \"1h\"\n\n[cache]",
        )
    };
    let gw = Gateway::start(&with_lockout("60s")).await;
    let path = gw.dir.path().join("portcullis.toml");
    let get = |pw: &'static str| {
        let url = gw.url("/i");
        async move {
            client()
                .get(url)
                .header("authorization", basic("svc", pw))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(get("wrong-1").await, 401);
    assert_eq!(get("wrong-2").await, 401);
    std::fs::write(&path, with_lockout("61s")).unwrap();
    reload::reload(&gw.state, &path, "test").unwrap();
    assert_eq!(get("wrong-3").await, 401);
    // The third failure, across the reload, locks the user out.
    assert_eq!(get("svc-pw").await, 429);
    gw.stop().await;
}

/// A `{ file = ... }` secret is watched like the config file: rotating the file (as a
/// Kubernetes Secret volume does) applies the new secret without a restart.
#[tokio::test]
async fn a_rotated_secret_file_applies_without_a_restart() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("endpoint-password");
    std::fs::write(&secret, "first-password\n").unwrap();
    let toml = config(&format!(
        r#"
[egress]
address = "127.0.0.1:0"

[[endpoints]]
name = "api"
base_url = "{up}"
auth = {{ type = "basic", username = "svc", password = {{ file = "{secret}" }} }}
"#,
        up = up.url(),
        secret = secret.display()
    ));
    let path = write_config(dir.path(), &toml);
    let gw = Process::start(&path, &[]);
    let egress = listening_addr(&gw, "egress").await;
    let call = || async move {
        let resp = client().get(format!("http://{egress}/api/x")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    };
    call().await;
    assert_eq!(
        up.last().headers["authorization"],
        basic("svc", "first-password").as_str()
    );
    std::fs::write(&secret, "second-password\n").unwrap();
    let rotated = eventually(PATIENCE, || async {
        call().await;
        up.last().headers["authorization"] == basic("svc", "second-password").as_str()
    })
    .await;
    assert!(rotated, "the rotated secret file was not applied");
}

/// Replaces `path` atomically (rename over it) by what `make` creates at a temporary name
/// beside it: a file, a symlink, a FIFO.
fn swap_in(path: &std::path::Path, make: impl FnOnce(&std::path::Path)) {
    let tmp = path.with_extension("incoming");
    let _ = std::fs::remove_file(&tmp);
    make(&tmp);
    std::fs::rename(&tmp, path).unwrap();
}

fn mkfifo(path: &std::path::Path) {
    let ok = std::process::Command::new("mkfifo").arg(path).status().unwrap();
    assert!(ok.success(), "mkfifo {}", path.display());
}

/// Issue 23, class 13: a watched secret file replaced by something that must not be read
/// (2 MiB of text, a sparse 256 MiB file, a symlink to /dev/zero, a FIFO nobody writes)
/// is a refused reload, counted, logged and shown on /status, while the running config
/// keeps serving and the admin listener keeps answering; the process does not swell, and
/// the watcher (polling and SIGHUP) is never stuck: a good file afterwards applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_file_replaced_by_a_huge_or_special_file_is_a_refused_reload() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("endpoint-password");
    std::fs::write(&secret, "first-password\n").unwrap();
    let toml = config(&format!(
        r#"
[egress]
address = "127.0.0.1:0"

[[endpoints]]
name = "api"
base_url = "{up}"
auth = {{ type = "basic", username = "svc", password = {{ file = "{secret}" }} }}
"#,
        up = up.url(),
        secret = secret.display()
    ));
    let path = write_config(dir.path(), &toml);
    let gw = Process::start(&path, &[]);
    let egress = listening_addr(&gw, "egress").await;
    let admin = gw.admin.unwrap();
    let calls_with = |password: &'static str| {
        let up = up.clone();
        async move {
            let resp = client().get(format!("http://{egress}/api/x")).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(up.last().headers["authorization"], basic("svc", password).as_str());
        }
    };
    let metrics = || async move {
        client()
            .get(format!("http://{admin}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let failures = || async move {
        metric_value(
            &metrics().await,
            r#"portcullis_config_reloads_total{outcome="failure"}"#,
        )
    };
    let status = || async move {
        client()
            .get(format!("http://{admin}/status"))
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    calls_with("first-password").await;
    let peak_before = gw.peak_rss_kib();

    let two_mib = |p: &std::path::Path| std::fs::write(p, vec![b'x'; 2 << 20]).unwrap();
    let sparse = |p: &std::path::Path| {
        std::fs::File::create(p).unwrap().set_len(256 << 20).unwrap();
    };
    let dev_zero = |p: &std::path::Path| std::os::unix::fs::symlink("/dev/zero", p).unwrap();
    type Make<'a> = &'a dyn Fn(&std::path::Path);
    let cases: [(&str, Make, &str); 4] = [
        (
            "2 MiB file",
            &two_mib,
            "larger than the 65536-byte limit for this file (2097152 bytes",
        ),
        (
            "sparse 256 MiB file",
            &sparse,
            "larger than the 65536-byte limit for this file (268435456 bytes",
        ),
        (
            "symlink to /dev/zero",
            &dev_zero,
            "not a regular file (a character device)",
        ),
        ("FIFO", &mkfifo, "not a regular file (a FIFO)"),
    ];
    for (n, (what, make, says)) in cases.into_iter().enumerate() {
        swap_in(&secret, make);
        // Reported on /status: the admin listener answers every poll while the watcher
        // works; and counted (before /status shows it).
        let reported = eventually(PATIENCE, || async {
            let s = status().await;
            s["last_reload"]["ok"] == false
                && s["last_reload"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("endpoint-password") && m.contains(says))
        })
        .await;
        assert!(reported, "{what}: no refused reload reported:\n{}", gw.logs());
        assert_eq!(failures().await, (n + 1) as f64, "{what}: one refusal per change");
        // Logged, and the running config still serves with the old secret.
        gw.logs_when(|l| l.contains(says) && l.contains("config reload refused"))
            .await;
        calls_with("first-password").await;
        assert_eq!(
            client()
                .get(format!("http://{admin}/healthz"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    // SIGHUP with the FIFO in place: refused too, not stuck opening it.
    gw.signal("HUP");
    let refused = eventually(PATIENCE, || async {
        let s = status().await;
        s["last_reload"]["trigger"] == "sighup" && s["last_reload"]["ok"] == false
    })
    .await;
    assert!(refused, "SIGHUP with a FIFO in place:\n{}", gw.logs());
    assert_eq!(failures().await, 5.0);
    // Nothing was read into memory: the peak stays far below what one read would take.
    let grown = gw.peak_rss_kib().saturating_sub(peak_before);
    assert!(grown < 64 * 1024, "peak RSS grew by {grown} KiB");
    // A good secret again: the watcher applies it.
    swap_in(&secret, |p| std::fs::write(p, "second-password\n").unwrap());
    let applied = eventually(PATIENCE, || async {
        let resp = client().get(format!("http://{egress}/api/x")).send().await.unwrap();
        resp.status() == 200 && up.last().headers["authorization"] == basic("svc", "second-password").as_str()
    })
    .await;
    assert!(applied, "the good secret file was not applied:\n{}", gw.logs());
    assert_eq!(status().await["last_reload"]["ok"], true);
}

/// The same files at start are config errors, each named with its path and why, and
/// `portcullis check` returns (a FIFO does not hang it): a secret file that is a FIFO, a
/// JWKS file that is a symlink to /dev/zero, a TLS certificate over its 1 MiB limit, a
/// client CA that is a directory, a CRL that is a socket-less special file (/dev/null).
#[test]
fn huge_or_special_files_are_config_errors_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cert = self_signed(d, "server");
    mkfifo(&d.join("secret.fifo"));
    std::os::unix::fs::symlink("/dev/zero", d.join("jwks.json")).unwrap();
    let mut big = cert.cert_pem.clone();
    while big.len() <= 1 << 20 {
        big.push_str(&cert.cert_pem);
    }
    std::fs::write(d.join("big.crt"), big).unwrap();
    std::fs::create_dir(d.join("ca-dir")).unwrap();
    let toml = config(&format!(
        r#"
[oauth]
mode = "jwt"
issuer = "https://idp.test"
audience = "portcullis"
jwks_file = "{d}/jwks.json"

[egress]
address = "127.0.0.1:0"

[[endpoints]]
name = "api"
base_url = "http://127.0.0.1:9"
auth = {{ type = "basic", username = "svc", password = {{ file = "{d}/secret.fifo" }} }}
"#,
        d = d.display()
    ))
    .replace(
        "[listen]\naddress = \"127.0.0.1:0\"",
        &format!(
            "[listen]\naddress = \"127.0.0.1:0\"\ntls = {{ cert = \"{d}/big.crt\", key = \"{}\", client_ca = \"{d}/ca-dir\", client_crl = \"/dev/null\" }}",
            cert.key_path.display(),
            d = d.display()
        ),
    );
    let path = write_config(d, &toml);
    let mut child = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("portcullis check did not return");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for says in [
        "secret.fifo` for endpoint `api` auth.password: not a regular file (a FIFO)",
        "jwks.json`: not a regular file (a character device)",
        "big.crt`: larger than the 1048576-byte limit",
    ] {
        assert!(stderr.contains(says), "missing {says:?} in:\n{stderr}");
    }
    // The client CA and CRL are read once the certificate loads: check them alone.
    let toml = toml.replace(
        &format!("{}/big.crt", d.display()),
        &cert.cert_path.display().to_string(),
    );
    std::fs::write(&path, &toml).unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ca-dir`: not a regular file (a directory)"), "{stderr}");
    std::fs::create_dir(d.join("ca-ok")).unwrap();
    let ca = d.join("ca-ok").join("ca.crt");
    std::fs::write(&ca, &cert.cert_pem).unwrap();
    std::fs::write(
        &path,
        toml.replace(&format!("{}/ca-dir", d.display()), &ca.display().to_string()),
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("client_crl `/dev/null`: not a regular file (a character device)"),
        "{stderr}"
    );
}

/// A refused reload's message (the log, the admin page's `last_reload`) quotes the file:
/// never its secrets, the user info of its URLs, or their query values.
#[tokio::test]
async fn a_refused_reload_never_repeats_a_secret() {
    let up = Upstream::start().await;
    let hash = argon2_hash("svc-pw");
    let gw = Gateway::start(&cfg(&up.url(), &hash, "60s")).await;
    let path = gw.dir.path().join("portcullis.toml");
    let secrets = ["Pa55wordInUserInfo", "QueryValue0123"];
    for bad in [
        // A URL with user info and a query, refused for its scheme.
        cfg(
            "htps://svc:Pa55wordInUserInfo@up.test/?token=QueryValue0123",
            &hash,
            "60s",
        ),
        // The same URL refused for its host.
        cfg("https://svc:Pa55wordInUserInfo@/?token=QueryValue0123", &hash, "60s"),
    ] {
        std::fs::write(&path, &bad).unwrap();
        let err = reload::reload(&gw.state, &path, "test").unwrap_err().to_string();
        let status = client()
            .get(gw.admin_url("/status"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for s in secrets {
            assert!(!err.contains(s), "{err}");
            assert!(!status.contains(s), "{status}");
        }
    }
    gw.stop().await;
}
