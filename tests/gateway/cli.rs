//! `hash-password`, `keygen` and `urlkey`: their output works in a real config; `health`
//! asks the running server whatever the file now says; `explain`, `check`, `export` and
//! the other subcommands never print a secret.

use crate::support;

use std::io::Write;
use std::process::{Command, Stdio};

use support::*;

fn run(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn value_after<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` in:\n{text}"))
        .trim()
}

#[tokio::test]
async fn generated_credentials_authenticate() {
    let (code, hash, _) = run(&["hash-password"], "p4ss word\n");
    assert_eq!(code, 0);
    let hash = hash.trim().to_string();
    assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
    let (code, _, err) = run(&["hash-password"], "");
    assert_eq!(code, 1);
    assert!(err.contains("no password"));

    let (code, key_out, _) = run(&["keygen", "--user", "svc", "--integration", "p/keyed"], "");
    assert_eq!(code, 0);
    let key = value_after(&key_out, "API key:").to_string();
    let secret = value_after(&key_out, "API secret:").to_string();
    assert!(key.starts_with("pk_") && secret.len() >= 22);
    let snippet = &key_out[key_out.find("[[api_keys]]").unwrap()..];
    assert!(!snippet.contains(&secret), "the secret is stored only as a hash");
    let (code, _, err) = run(&["keygen", "--user", "svc", "--integration", "nope"], "");
    assert_eq!(code, 1);
    assert!(err.contains("PLAN/INTEGRATION"));

    let (code, url_out, _) = run(&["urlkey", "--user", "svc"], "");
    assert_eq!(code, 0);
    let url_key = value_after(&url_out, "URL key:").to_string();
    let url_line = url_out.lines().find(|l| l.starts_with("url_key_hash")).unwrap();

    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&format!(
        r#"
[[users]]
name = "svc"
roles = ["r"]
password_hash = "{hash}"
{url_line}

[[plans]]
name = "p"
upstream = "{up}"
access = {{ all = true }}

[[plans.integrations]]
name = "pw"
path = "/pw"
methods = ["GET"]
auth = "basic"

[[plans.integrations]]
name = "keyed"
path = "/keyed"
methods = ["GET"]
auth = "api_key"

[[plans.integrations]]
name = "url"
path = "/url"
methods = ["GET"]
auth = "url_key"

{snippet}
"#,
        up = up.url()
    )))
    .await;
    let c = client();
    let s = |r: reqwest::RequestBuilder| async move { r.send().await.unwrap().status().as_u16() };
    assert_eq!(
        s(c.get(gw.url("/pw")).header("authorization", basic("svc", "p4ss word"))).await,
        200
    );
    assert_eq!(
        s(c.get(gw.url("/keyed")).header("authorization", basic(&key, &secret))).await,
        200
    );
    assert_eq!(s(c.get(gw.url(&format!("/url?apiKey={url_key}")))).await, 200);
    assert_eq!(
        s(c.get(gw.url("/keyed")).header("authorization", basic(&key, "x"))).await,
        401
    );
    gw.stop().await;
}

/// One config that writes its secrets in every TOML form: comments (own line and
/// trailing), inline tables, inline arrays of tables, dotted keys, multi-line and literal
/// strings, and URLs with userinfo and query strings.
#[test]
fn export_removes_secrets_in_every_toml_form() {
    let secrets = [
        "comment-secret-AAAA",
        "trailing-comment-secret-BBBB",
        "inline-assertion-key-CCCC-0123456789",
        "inline-users-hash-DDDD",
        "inline-endpoint-password-EEEE",
        "dotted-client-secret-FFFF",
        "multiline-signing-key-GGGG",
        "url-userinfo-password-HHHH",
        "url-query-secret-IIII",
        "literal-api-secret-hash-JJJJ",
        "redis-password-KKKK",
    ];
    let toml = format!(
        r#"
# password: {c0}
assertion = {{ key = "{a}", ttl = "60s" }}

users = [ {{ name = "u", roles = ["r"], password_hash = "{u}" }} ]

plans = [ {{ name = "p", upstream = "https://svc:{up}@up.test/base?token={q}", integrations = [
  {{ name = "i", path = "/i", methods = ["GET"], auth = "api_key" }} ] }} ]

api_keys = [ {{ key = "k1", secret_hash = '{lit}', user = "u", integration = "p/i" }} ]

oauth.mode = "introspection"
oauth.introspection_url = "https://idp.test/introspect"
oauth.client_id = "pc"
oauth.client_secret = "{dotted}"
oauth.signing_key = """
{ml}
"""

shared = {{ backend = "redis", url = "redis://:{redis}@127.0.0.1:6379/0" }}

endpoints = [ {{ name = "b", base_url = "https://b.test", auth = {{ type = "basic", username = "svc", password = "{ep}" }} }} ]

[listen]
address = "127.0.0.1:0" # the old key was {c1}
"#,
        c0 = secrets[0],
        c1 = secrets[1],
        a = secrets[2],
        u = secrets[3],
        ep = secrets[4],
        dotted = secrets[5],
        ml = secrets[6],
        up = secrets[7],
        q = secrets[8],
        lit = secrets[9],
        redis = secrets[10],
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &toml);
    let (code, out, err) = run(&["export", "--config", path.to_str().unwrap()], "");
    assert_eq!(code, 0, "{err}");
    for s in secrets {
        assert!(!out.contains(s), "`{s}` is in the export:\n{out}");
    }
    // What is not secret is still there, so the export is useful.
    for kept in [
        "up.test/base",
        "token=REMOVED",
        "/i",
        "introspect",
        "127.0.0.1:6379",
        "p/i",
    ] {
        assert!(out.contains(kept), "`{kept}` missing from:\n{out}");
    }
    // And it is still a TOML document.
    let _: toml::Value = toml::from_str(&out).expect("export is TOML");
}

/// `explain` gives the decision the server would give (argon2id checked for real), its
/// reason and the documented fix, and never prints a secret.
#[test]
fn explain_says_what_the_gateway_would_do_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let key_secret = "explain-key-secret-0123456789";
    let path = write_config(
        dir.path(),
        &config(&format!(
            r#"
[[users]]
name = "alice"
roles = ["rest"]
password_hash = "{alice}"

[[users]]
name = "bob"
roles = ["other"]
password_hash = "{bob}"

[[plans]]
name = "p"
upstream = "http://127.0.0.1:9/base"
access = {{ all = true }}

[[plans.integrations]]
name = "login"
path = "/login/*"
methods = ["GET"]
auth = ["basic", "api_key"]
senders = {{ roles = ["rest"] }}

[[api_keys]]
key = "k1"
secret_hash = "{key}"
user = "alice"
integration = "p/login"
"#,
            alice = argon2_hash("alice-pw"),
            bob = argon2_hash("bob-pw"),
            key = sha256_hex(key_secret),
        )),
    );
    let cfg = path.to_str().unwrap();
    let auth = |u: &str, p: &str| format!("Authorization: {}", basic(u, p));

    let (code, out, _) = run(
        &[
            "explain",
            "--config",
            cfg,
            "GET",
            "/login/x",
            "-H",
            &auth("alice", "alice-pw"),
        ],
        "",
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("plan `p`, integration `login`"), "{out}");
    assert!(out.contains("auth         basic, api_key"), "{out}");
    assert!(out.contains("principal    `alice` by basic, roles [rest]"), "{out}");
    assert!(
        out.contains("allowed: forwarded to http://127.0.0.1:9/base/login/x"),
        "{out}"
    );

    let (code, out, _) = run(
        &[
            "explain",
            "--config",
            cfg,
            "GET",
            "/login/x",
            "-H",
            &auth("alice", "wrong-pw"),
        ],
        "",
    );
    assert_eq!(code, 2);
    assert!(out.contains("decision     401 bad_password"), "{out}");
    assert!(
        out.contains("fix          The password was rotated in one place only"),
        "{out}"
    );
    assert!(!out.contains("wrong-pw"), "a password was printed: {out}");

    let (code, out, _) = run(
        &[
            "explain",
            "--config",
            cfg,
            "GET",
            "/login/x",
            "-H",
            &auth("bob", "bob-pw"),
        ],
        "",
    );
    assert_eq!(code, 2);
    assert!(out.contains("principal    `bob` by basic"), "{out}");
    assert!(out.contains("decision     403 not_a_sender"), "{out}");

    let (code, out, _) = run(
        &[
            "explain",
            "--config",
            cfg,
            "GET",
            "/login/x",
            "-H",
            &auth("k1", key_secret),
        ],
        "",
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("user part `k1`"), "{out}");
    assert!(out.contains("by api_key"), "{out}");
    assert!(!out.contains(key_secret), "a secret was printed: {out}");

    let (code, out, _) = run(&["explain", "--config", cfg, "POST", "/login/x"], "");
    assert_eq!(code, 2);
    assert!(out.contains("405 method_not_allowed"), "{out}");
    let (code, out, _) = run(&["explain", "--config", cfg, "GET", "/login/x"], "");
    assert_eq!(code, 2);
    assert!(out.contains("credentials  none found"), "{out}");
    assert!(out.contains("401 no_credentials"), "{out}");
    let (code, out, _) = run(&["explain", "--config", cfg, "GET", "/nowhere"], "");
    assert_eq!(code, 2);
    assert!(out.contains("404 no_route"), "{out}");
    let (code, _, err) = run(&["explain", "--config", cfg, "GET", "/login/x", "-H", "no-colon"], "");
    assert_eq!(code, 1);
    assert!(err.contains("is not `Name: value`"), "{err}");
}

/// A config for `health`: the admin listener at `admin`, `extra` appended.
/// A config whose admin listener is at `admin`, with `extra` appended as text (some tests
/// append malformed TOML on purpose).
fn health_cfg(admin: &str, extra: &str) -> String {
    let config = Config::bare()
        .section("listen", |s| s.set("address", "127.0.0.1:0"))
        .section("admin", |s| s.set("address", admin))
        .section("assertion", |s| {
            s.set("key", table([("file", "{dir}/assertion-key".into())]))
        })
        .plan("p", |p| {
            p.upstream("builtin:echo")
                .access_all()
                .integration("open", |i| i.path("/open").methods(["GET"]).auth("none"))
        });
    format!("{}{extra}\n", config.to_toml())
}

/// `health --config F` reads only `[admin] address`: after edits the running server
/// refuses at reload (and keeps serving without), it still exits 0 while the server
/// answers; only an unreadable admin section (or none) fails it, with a clear message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_asks_the_running_server_whatever_the_config_now_says() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("assertion-key"),
        "health-assertion-key-0123456789abcdef",
    )
    .unwrap();
    let path = write_config(dir.path(), &health_cfg("127.0.0.1:0", ""));
    let p = Process::start(&path, &[]);
    let admin = p.admin.unwrap().to_string();
    let cfg = path.to_str().unwrap().to_string();
    let failures = || {
        let admin = admin.clone();
        async move {
            let m = client()
                .get(format!("http://{admin}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            metric_value(&m, r#"portcullis_config_reloads_total{outcome="failure"}"#)
        }
    };
    let health = |args: &[&str]| {
        let mut all = vec!["health"];
        all.extend_from_slice(args);
        run(&all, "")
    };

    let (code, out, err) = health(&["--config", &cfg]);
    assert_eq!(code, 1, "port 0 in the file names no listener to ask: {out}{err}");

    let sighup_refused = |toml: String| {
        let p = &p;
        let path = path.clone();
        async move {
            let before = failures().await;
            write_config(path.parent().unwrap(), &toml);
            p.signal("HUP");
            assert!(
                eventually(PATIENCE, || async { failures().await > before }).await,
                "the reload was refused:\n{}",
                p.logs()
            );
        }
    };
    let breaks = [
        // The admin port as bound, with an unknown key (and a moved listener: the file
        // said port 0).
        ("unknown key", health_cfg(&admin, "\n[limits]\nnonsense = 1\n")),
        (
            "missing secret file",
            health_cfg(&admin, "").replace("assertion-key\"", "no-such-file\""),
        ),
        (
            "bad rule",
            health_cfg(&admin, "").replace("access = { all = true }", "access = { roles = \"admin\" }"),
        ),
        (
            "unknown auth method",
            health_cfg(&admin, "").replace("auth = \"none\"", "auth = \"telepathy\""),
        ),
        (
            "not TOML below [admin]",
            health_cfg(&admin, "\n[[users]]\nname = \"unterminated\n"),
        ),
        ("not TOML above [admin]", format!("[oops\n{}", health_cfg(&admin, ""))),
    ];
    for (what, toml) in breaks {
        sighup_refused(toml).await;
        let (code, out, err) = health(&["--config", &cfg]);
        assert_eq!(code, 0, "{what}: {out}{err}");
        assert!(out.contains(&format!("http://{admin}/healthz: 200")), "{what}: {out}");
        let (code, out, err) = health(&["--config", &cfg, "--ready"]);
        assert_eq!(code, 0, "{what}, --ready: {out}{err}");
    }
    // The server kept serving throughout.
    let resp = client().get(format!("http://{}/open", p.addr)).send().await.unwrap();
    assert_eq!(resp.status(), 200);

    // The flag wins: no file is read at all.
    let (code, out, err) = health(&["--config", "/nonexistent/portcullis.toml", "--admin", &admin]);
    assert_eq!(code, 0, "{out}{err}");

    // What health cannot use fails it, saying why.
    let refusals: [(&str, String, &str); 6] = [
        (
            "unreadable address",
            health_cfg("not-an-address", ""),
            "[admin] address is not IP:PORT",
        ),
        (
            "address not a string",
            health_cfg("x", "").replace("\"x\"", "9901"),
            "[admin] address is not a string",
        ),
        (
            "no [admin]",
            health_cfg(&admin, "").replace("[admin]\n", "[unused]\n"),
            "has no [admin] listener",
        ),
        (
            "not TOML, no [admin] line",
            format!("[oops\n{}", health_cfg(&admin, "").replace("[admin]\n", "")),
            "is not valid TOML at line 1",
        ),
        (
            "not TOML, two [admin] lines",
            format!("[oops\n{}\n[admin]\n", health_cfg(&admin, "")),
            "more than one [admin]",
        ),
        (
            "not TOML, address not a plain string",
            format!(
                "[oops\n{}",
                health_cfg(&admin, "").replace(&format!("\"{admin}\""), "'x'")
            ),
            "not a plain string",
        ),
    ];
    for (what, toml, says) in refusals {
        write_config(dir.path(), &toml);
        let (code, out, err) = health(&["--config", &cfg]);
        assert_eq!(code, 1, "{what}: {out}{err}");
        assert!(err.contains(says), "{what}: {err}");
    }
    let (code, _, err) = health(&["--config", "/nonexistent/portcullis.toml"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read /nonexistent/portcullis.toml"), "{err}");
    // A server that is gone fails it (the process is ended by its Drop).
    drop(p);
    let (code, out, _) = health(&["--admin", &admin]);
    assert_eq!(code, 1);
    assert!(out.contains("no answer"), "{out}");
}

/// `explain` prints the path and the query's names, never what the request carries:
/// query values, header values (Authorization of any scheme, Cookie, API key headers),
/// URL user info, a Basic user part that names nobody, a refused principal that names
/// nobody; nor do its errors quote the arguments (swapped METHOD and URL, a header
/// without a colon, a bad header value, a URL that does not parse).
#[test]
fn explain_never_prints_what_the_request_carries() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &config(&format!(
            r#"
[[users]]
name = "alice"
roles = ["rest"]
password_hash = "{alice}"

[[plans]]
name = "p"
upstream = "http://127.0.0.1:9/base"
access = {{ all = true }}

[[plans.integrations]]
name = "login"
path = "/login/*"
methods = ["GET", "POST"]
auth = ["basic", "api_key"]
"#,
            alice = argon2_hash("alice-pw"),
        )),
    );
    let cfg = path.to_str().unwrap();
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let runs: Vec<(Vec<String>, &[&str])> = vec![
        (
            vec![
                "POST".into(),
                "/login/x?apiKey=QUERY-SECRET-1&token=QUERY-SECRET-2&flag".into(),
            ],
            &["QUERY-SECRET-1", "QUERY-SECRET-2"],
        ),
        (
            vec![
                "GET".into(),
                "https://svc:USERINFO-SECRET-3@gw.test:8443/login/x?sig=QUERY-SECRET-4".into(),
                "-H".into(),
                format!("Authorization: {}", basic("alice", "alice-pw")),
            ],
            &["USERINFO-SECRET-3", "QUERY-SECRET-4", "alice-pw"],
        ),
        (
            vec![
                "GET".into(),
                "/login/x".into(),
                "-H".into(),
                "Authorization: Bearer OPAQUE-SECRET-5".into(),
            ],
            &["OPAQUE-SECRET-5"],
        ),
        (
            vec![
                "GET".into(),
                "/login/x".into(),
                "-H".into(),
                "Authorization: RAW-SECRET-6".into(),
            ],
            &["RAW-SECRET-6"],
        ),
        (
            vec![
                "GET".into(),
                "/login/x".into(),
                "-H".into(),
                "Authorization: Token TOKEN-SECRET-7".into(),
            ],
            &["TOKEN-SECRET-7"],
        ),
        (
            vec![
                "GET".into(),
                "/login/x".into(),
                "-H".into(),
                format!("Authorization: {}", basic("PW-IN-USER-SECRET-8", "x")),
            ],
            &["PW-IN-USER-SECRET-8"],
        ),
        (
            vec![
                "GET".into(),
                "/login/x".into(),
                "-H".into(),
                format!("Authorization: Basic {}", b64("NO-COLON-SECRET-9")),
            ],
            &["NO-COLON-SECRET-9"],
        ),
        (
            vec![
                "GET".into(),
                "/login/x".into(),
                "-H".into(),
                "Cookie: session=COOKIE-SECRET-10".into(),
                "-H".into(),
                "X-API-Key: HEADER-SECRET-11".into(),
                "-H".into(),
                format!("Proxy-Authorization: {}", basic("proxy", "PROXY-SECRET-12")),
            ],
            &["COOKIE-SECRET-10", "HEADER-SECRET-11", "PROXY-SECRET-12"],
        ),
        // Errors: the arguments swapped, a header without a colon, a bad header value, a
        // URL that does not parse.
        (
            vec!["/login/x?apiKey=SWAPPED-SECRET-13".into(), "POST".into()],
            &["SWAPPED-SECRET-13"],
        ),
        (
            vec![
                "GET".into(),
                "/login/x".into(),
                "-H".into(),
                "Bearer NO-COLON-HEADER-SECRET-14".into(),
            ],
            &["NO-COLON-HEADER-SECRET-14"],
        ),
        (
            vec![
                "GET".into(),
                "/login/x".into(),
                "-H".into(),
                "X-Key: BAD\u{1}VALUE-SECRET-15".into(),
            ],
            &["VALUE-SECRET-15"],
        ),
        (vec!["GET".into(), "/login/x?k=URL SECRET-16".into()], &["SECRET-16"]),
    ];
    for (args, secrets) in &runs {
        let mut all = vec!["explain", "--config", cfg];
        all.extend(args.iter().map(String::as_str));
        let (code, out, err) = run(&all, "");
        for secret in *secrets {
            assert!(
                !out.contains(secret) && !err.contains(secret),
                "`{secret}` printed by explain {args:?} (exit {code}):\n{out}{err}"
            );
        }
    }
    // Still useful: the query's names, the scheme, a configured user's name, the reason.
    let (_, out, _) = run(
        &[
            "explain",
            "--config",
            cfg,
            "POST",
            "/login/x?apiKey=QUERY-SECRET-1&token=QUERY-SECRET-2&flag",
        ],
        "",
    );
    assert!(
        out.contains("POST /login/x?apiKey=REMOVED&token=REMOVED&REMOVED from"),
        "{out}"
    );
    let (code, out, _) = run(
        &[
            "explain",
            "--config",
            cfg,
            "GET",
            "https://svc:USERINFO-SECRET-3@gw.test:8443/login/x?sig=QUERY-SECRET-4",
            "-H",
            &format!("Authorization: {}", basic("alice", "alice-pw")),
        ],
        "",
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("user part `alice`"), "{out}");
    assert!(out.contains("forwarded to http://127.0.0.1:9/base/login/x\n"), "{out}");
    let (_, out, _) = run(
        &[
            "explain",
            "--config",
            cfg,
            "GET",
            "/login/x",
            "-H",
            "Authorization: Token TOKEN-SECRET-7",
        ],
        "",
    );
    assert!(out.contains("scheme `Token`"), "{out}");
    let (code, out, _) = run(
        &[
            "explain",
            "--config",
            cfg,
            "GET",
            "/login/x",
            "-H",
            &format!("Authorization: {}", basic("PW-IN-USER-SECRET-8", "x")),
        ],
        "",
    );
    assert_eq!(code, 2);
    assert!(out.contains("not a configured user or key id"), "{out}");
    let (code, _, err) = run(
        &["explain", "--config", cfg, "/login/x?apiKey=SWAPPED-SECRET-13", "POST"],
        "",
    );
    assert_eq!(code, 1);
    assert!(err.contains("METHOD argument"), "{err}");
}

/// `check`, `serve`, `explain` and `endpoint test` print a refused config's diagnostics
/// without the secrets they would quote (URLs with user info and query values; a
/// literal secret quoted by a message), and keep the rest so they stay useful.
#[test]
fn config_diagnostics_never_print_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = [
        "UPSTREAM-PW-SECRET-1",
        "UPSTREAM-QUERY-SECRET-2",
        "ENDPOINT-PW-SECRET-3",
        "ENDPOINT-QUERY-SECRET-4",
        "INTROSPECT-PW-SECRET-5",
    ];
    let path = write_config(
        dir.path(),
        &config(&format!(
            r#"
[oauth]
mode = "introspection"
introspection_url = "http://pc:{s4}@idp.test/introspect"
client_id = "pc"
client_secret = "introspection-client-secret"

[[plans]]
name = "p"
upstream = "https://svc:{s0}@up.test:99999/base?token={s1}"
access = {{ all = true }}

[[plans.integrations]]
name = "i"
path = "/i"
methods = ["GET"]
auth = "oauth"

[[endpoints]]
name = "e"
base_url = "https://u:{s2}@bad host.test/?token={s3}"
auth = {{ type = "none" }}
"#,
            s0 = secrets[0],
            s1 = secrets[1],
            s2 = secrets[2],
            s3 = secrets[3],
            s4 = secrets[4],
        )),
    );
    let cfg = path.to_str().unwrap();
    for args in [
        vec!["check", "--config", cfg],
        vec!["check", "--strict", "--config", cfg],
        vec!["serve", "--config", cfg],
        vec!["explain", "--config", cfg, "GET", "/i"],
        vec!["endpoint", "test", "e", "--config", cfg],
    ] {
        let (code, out, err) = run(&args, "");
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        for s in secrets {
            assert!(
                !out.contains(s) && !err.contains(s),
                "`{s}` printed by {args:?}:\n{out}{err}"
            );
        }
        assert!(err.contains("up.test:99999/base?token=REMOVED"), "{args:?}: {err}");
    }
}

/// `health --config` reads its file by the same rules as `serve`: a FIFO, a link to
/// `/dev/zero` or a huge file is a clear failure, never a hang or a memory blow-up.
#[test]
fn health_refuses_special_and_huge_config_files() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.toml");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let zero = dir.path().join("zero.toml");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let huge = dir.path().join("huge.toml");
    std::fs::File::create(&huge).unwrap().set_len(64 << 20).unwrap();
    for (path, says) in [
        (&fifo, "not a regular file"),
        (&zero, "not a regular file"),
        (&huge, "limit"),
    ] {
        let mut child = Command::new(bin())
            .args(["health", "--config"])
            .arg(path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A safety net against a hang, far past any machine's speed: the test fails.
        let deadline = std::time::Instant::now() + PATIENCE;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("health hung on {}", path.display());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let out = child.wait_with_output().unwrap();
        assert!(!status.success(), "{}", path.display());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{}: {err}", path.display());
    }
}

/// `explain` runs what the server runs before a route: the head's checks, the builtin
/// issuer's own endpoints (also spelled with escapes), and the WebSocket handshake's
/// checks on an integration that allows upgrades, so it agrees with the server.
#[test]
fn explain_agrees_with_the_server_on_heads_issuer_endpoints_and_upgrades() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &config(&format!(
            r#"
[oauth]
mode = "builtin"

[[oauth.clients]]
client_id = "c1"
client_secret_hash = "{secret}"

[[users]]
name = "alice"
roles = ["rest"]
password_hash = "{alice}"

[[plans]]
name = "p"
upstream = "http://127.0.0.1:9"
access = {{ all = true }}

[[plans.integrations]]
name = "ws"
path = "/ws/*"
methods = ["GET"]
auth = "basic"
upgrades = ["websocket"]
"#,
            secret = sha256_hex("c1-secret"),
            alice = argon2_hash("alice-pw"),
        )),
    );
    let cfg = path.to_str().unwrap();
    let auth = format!("Authorization: {}", basic("alice", "alice-pw"));
    let explain = |args: &[&str]| {
        let mut all = vec!["explain", "--config", cfg];
        all.extend_from_slice(args);
        run(&all, "")
    };
    for target in ["/oauth/token", "/oauth/%74oken", "/oauth/jwks.json", "/oauth/revoke"] {
        let (code, out, _) = explain(&["POST", target]);
        assert_eq!(code, 0, "{target}: {out}");
        assert!(
            out.contains("answered by the builtin OAuth issuer itself"),
            "{target}: {out}"
        );
    }
    let upgrade = ["Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13"];
    let mut args = vec!["GET", "/ws/feed", "-H", &auth];
    for h in upgrade {
        args.extend(["-H", h]);
    }
    let good_key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";
    let (code, out, _) = explain(&[&args[..], &["-H", good_key]].concat());
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = explain(&[&args[..], &["-H", "Sec-WebSocket-Key: AAAA"]].concat());
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("400 bad_request"), "{out}");
    // Two Host headers: the head's own check refuses before any route.
    let (code, out, _) = explain(&[
        "GET",
        "http://gw.example/ws/feed",
        "-H",
        &auth,
        "-H",
        "Host: other.example",
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("400 bad_request"), "{out}");
}

/// With `--config`, `keygen` and `urlkey` refuse a user or an integration that config
/// does not have (a key for it would never work), and make the key for names it has.
#[test]
fn keygen_and_urlkey_check_their_names_against_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &config(
            r#"
[[users]]
name = "svc"
roles = ["r"]

[[plans]]
name = "p"
upstream = "builtin:echo"
access = { all = true }

[[plans.integrations]]
name = "keyed"
path = "/k"
methods = ["GET"]
auth = "api_key"
"#,
        ),
    );
    let cfg = path.to_str().unwrap();
    let (code, out, err) = run(
        &["keygen", "--user", "svc", "--integration", "p/keyed", "--config", cfg],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("integration = \"p/keyed\""), "{out}");
    for (user, integration, says) in [
        ("nobody", "p/keyed", "no [[users]] entry is named `nobody`"),
        ("svc", "p/other", "no integration is `p/other`"),
        ("svc", "q/keyed", "no integration is `q/keyed`"),
    ] {
        let (code, out, err) = run(
            &["keygen", "--user", user, "--integration", integration, "--config", cfg],
            "",
        );
        assert_eq!(code, 1, "{user} {integration}");
        assert!(err.contains(says), "{err}");
        assert!(!out.contains("API secret"), "no key is made: {out}");
    }
    let (code, out, _) = run(&["urlkey", "--user", "svc", "--config", cfg], "");
    assert_eq!(code, 0);
    assert!(out.contains("url_key_hash"), "{out}");
    let (code, out, err) = run(&["urlkey", "--user", "nobody", "--config", cfg], "");
    assert_eq!(code, 1);
    assert!(err.contains("no [[users]] entry is named `nobody`"), "{err}");
    assert!(!out.contains("URL key:"), "{out}");
}

/// `portcullis endpoint test` works on the demo's own endpoint: its base URL and its
/// credentials reach a route of the demo that answers them (the demo config, with its
/// listeners on ephemeral ports and the endpoint pointed at the one the gateway got).
#[tokio::test]
async fn endpoint_test_works_on_the_demo_endpoint() {
    let root = env!("CARGO_MANIFEST_DIR");
    let demo = std::fs::read_to_string(format!("{root}/config/portcullis.toml"))
        .unwrap()
        .replace("\"config/tls/", &format!("\"{root}/config/tls/"));
    let ephemeral = ["127.0.0.1:8443", "127.0.0.1:9901", "127.0.0.1:9902"]
        .iter()
        .fold(demo.clone(), |t, a| {
            t.replace(&format!("address = \"{a}\""), "address = \"127.0.0.1:0\"")
        });
    let gw = Gateway::start(&ephemeral).await;
    let dir = tempfile::tempdir().unwrap();
    let pointed = ephemeral.replace(
        "https://localhost:8443/",
        &format!("https://localhost:{}/", gw.addr.port()),
    );
    assert_ne!(pointed, ephemeral, "the demo endpoint points at the demo's listener");
    let path = write_config(dir.path(), &pointed);
    let out = tokio::task::spawn_blocking(move || {
        run(
            &["endpoint", "test", "demo-self", "--config", path.to_str().unwrap()],
            "",
        )
    })
    .await
    .unwrap();
    assert_eq!(out.0, 0, "{} {}", out.1, out.2);
    assert!(out.1.contains("OK: endpoint `demo-self` answered 200"), "{}", out.1);
    gw.stop().await;
}

/// Runs git in the package's directory: its output, or None without git or a checkout of
/// this package (an unpacked source tarball, a Docker build context).
fn git(args: &[&str]) -> Option<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let run = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .env("TZ", "UTC")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let top = run(&["rev-parse", "--show-toplevel"])?;
    let ours = std::fs::canonicalize(top).ok()? == std::fs::canonicalize(root).ok()?;
    ours.then(|| run(args)).flatten()
}

#[test]
fn version_names_the_commit_the_build_date_and_rustc() {
    for flag in ["--version", "-V"] {
        let (code, out, err) = run(&[flag], "");
        assert_eq!(code, 0, "{err}");
        let line = out.trim();
        assert_eq!(line.lines().count(), 1, "{out}");
        // `portcullis 0.1.0 (commit 9f7f7b9, built 2026-12-05, rustc 1.95.0)`
        let rest = line
            .strip_prefix(&format!("portcullis {} (commit ", env!("CARGO_PKG_VERSION")))
            .unwrap_or_else(|| panic!("{line}"));
        let (commit, rest) = rest.split_once(", built ").unwrap_or_else(|| panic!("{line}"));
        let (date, rest) = rest.split_once(", rustc ").unwrap_or_else(|| panic!("{line}"));
        let rustc = rest.strip_suffix(')').unwrap_or_else(|| panic!("{line}"));
        assert!(
            commit == "unknown" || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())),
            "{line}"
        );
        let d: Vec<&str> = date.split('-').collect();
        assert!(
            d.len() == 3
                && [4, 2, 2] == [d[0].len(), d[1].len(), d[2].len()]
                && d.iter().all(|p| p.chars().all(|c| c.is_ascii_digit())),
            "{line}"
        );
        let v: Vec<&str> = rustc.split('.').collect();
        assert!(
            v.len() == 3 && v[0] == "1" && v[1].parse::<u32>().unwrap() >= 89,
            "{line}"
        );
        // The binary and the library (portcullis_build_info) say the same.
        assert_eq!(line, format!("portcullis {}", portcullis::metrics::build::LONG_VERSION));
        // Built from this checkout: the commit is HEAD's (build.rs reruns when HEAD or its
        // branch moves), and the date is SOURCE_DATE_EPOCH's or else the commit's.
        if let Some(head) = git(&["rev-parse", "--short=7", "HEAD"]) {
            assert_eq!(commit, head, "{line}");
            if std::env::var("SOURCE_DATE_EPOCH").map_or(true, |v| v.trim().is_empty()) {
                let day = git(&["log", "-1", "--date=format-local:%Y-%m-%d", "--format=%cd", "HEAD"]);
                assert_eq!(Some(date.to_string()), day, "{line}");
            }
        }
    }
}

/// `portcullis completions bash` is a script bash loads, and it completes subcommands and
/// the flags of the subcommand typed; zsh and fish get their own formats.
#[test]
fn completions_complete_subcommands_and_their_flags() {
    let complete = |words: &str| {
        let script = format!(
            "source <('{bin}' completions bash) || exit 9
             COMP_WORDS=({words}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
             _portcullis portcullis \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            bin = bin()
        );
        let out = Command::new("bash").args(["-c", &script]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let subs = complete("portcullis ch");
    assert_eq!(subs.trim(), "check", "{subs}");
    let flags = complete("portcullis serve --");
    assert!(flags.lines().any(|l| l == "--log-format"), "{flags}");
    assert!(flags.lines().any(|l| l == "--config"), "{flags}");
    let flags = complete("portcullis check --");
    assert!(flags.lines().any(|l| l == "--strict"), "{flags}");
    assert!(
        !flags.lines().any(|l| l == "--log-format"),
        "check takes no log format: {flags}"
    );

    for (shell, marker) in [("zsh", "#compdef portcullis"), ("fish", "complete -c portcullis")] {
        let out = Command::new(bin()).args(["completions", shell]).output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            out.status.success() && text.contains(marker) && text.contains("explain"),
            "{shell}: {text}"
        );
    }
    let out = Command::new(bin()).args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "an unknown shell is a usage error");
}

/// `--log-format` is `serve`'s: accepted after it and before it, refused with a clear error
/// for a subcommand that does not log.
#[test]
fn log_format_belongs_to_serve() {
    let out = Command::new(bin())
        .args(["--log-format", "json", "check", "--config", "config/portcullis.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--log-format applies to `serve` only"));
    let out = Command::new(bin())
        .args(["check", "--log-format", "json", "--config", "config/portcullis.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "check has no --log-format");
    let help = Command::new(bin()).args(["serve", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--log-format"));
}
