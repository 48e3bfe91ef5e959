//! `portcullis check`: every error as FILE:LINE:COL: message, exit 1; warnings exit 0.

use crate::support;

use std::process::Command;

use support::*;

struct Checked {
    code: i32,
    stdout: String,
    stderr: String,
    file: String,
}

fn check(toml: &str) -> Checked {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), toml);
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("PORTCULLIS_TEST_UNSET")
        .output()
        .unwrap();
    Checked {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        file: path.display().to_string(),
    }
}

impl Checked {
    /// Asserts an error line at LINE:COL containing `text`.
    fn has(&self, line: usize, col: usize, text: &str) {
        let prefix = format!("{}:{line}:{col}: ", self.file);
        assert!(
            self.stderr.lines().any(|l| l.starts_with(&prefix) && l.contains(text)),
            "expected `{prefix}...{text}` in:\n{}",
            self.stderr
        );
    }
}

const BASE: &str = r#"[listen]
address = "127.0.0.1:0"

[[users]]
name = "u1"
roles = ["r"]

[[plans]]
name = "p"
upstream = "builtin:echo"
access = { all = true }

[[plans.integrations]]
name = "i"
path = "/i"
methods = ["POST"]
auth = "api_key"
"#;

#[test]
fn a_good_config_passes_and_warnings_do_not_fail() {
    let c = check(&format!(
        "{BASE}\n[[plans.integrations]]\nname = \"pub\"\npath = \"/pub\"\nmethods = [\"GET\"]\nauth = \"none\"\n\n[assertion]\nkey = \"0123456789abcdef0123456789abcdef\"\n"
    ));
    assert_eq!(c.code, 0, "{}", c.stderr);
    assert!(c.stdout.contains(": ok"));
    assert!(
        c.stderr.contains("warning: integration `p/pub` has auth = \"none\""),
        "{}",
        c.stderr
    );
    assert!(c.stderr.contains("literal secret"), "{}", c.stderr);
}

#[test]
fn the_shipped_demo_config_passes() {
    let out = Command::new(bin())
        .args(["check", "--config", "config/portcullis.toml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn every_unknown_key_is_reported_with_its_position() {
    let c = check(
        r#"[listen]
address = "127.0.0.1:0"
adress = "x"

[limits]
max_body = 5

[[plans]]
name = "p"
upstream = "builtin:echo"
colour = "red"

[[plans.integrations]]
name = "i"
path = "/i"
methods = ["GET"]
auth = "none"
senders = { roles = ["a"], rolez = ["b"] }
"#,
    );
    assert_eq!(c.code, 1);
    c.has(3, 1, "unknown key `listen.adress`: did you mean `address`?");
    c.has(6, 1, "unknown key `limits.max_body`: did you mean `max_body_bytes`?");
    c.has(11, 1, "unknown key `plans[0].colour`");
    assert!(
        !c.stderr.contains("colour`: did you mean"),
        "nothing is close to `colour`"
    );
    c.has(
        18,
        28,
        "unknown key `plans[0].integrations[0].senders.rolez`: did you mean `roles`?",
    );
}

#[test]
fn duplicates_overlaps_and_bad_references_are_all_reported() {
    let c = check(&format!(
        r#"{BASE}
[[plans.integrations]]
name = "i"
path = "/i"
methods = ["GET", "POST"]
auth = "basic"

[[plans.integrations]]
name = "all"
path = "/*"
methods = ["DELETE", "POST"]
auth = "basic"

[[users]]
name = "u1"

[[api_keys]]
key = "k1"
secret_hash = "sha256:{h}"
user = "ghost"
integration = "p/nope"

[[api_keys]]
key = "k1"
secret_hash = "md5:abc"
user = "u1"
integration = "p/i"
"#,
        h = "a".repeat(64)
    ));
    assert_eq!(c.code, 1, "{}", c.stderr);
    c.has(
        20,
        8,
        "duplicate integration name in plan `p` `i` (first defined on line 14)",
    );
    c.has(21, 8, "integration `p/i` (/i) overlaps `p/i` (/i, line 15) for POST");
    c.has(27, 8, "integration `p/all` (/*) overlaps `p/i` (/i, line 15) for POST");
    c.has(32, 8, "duplicate user name `u1` (first defined on line 5)");
    c.has(37, 8, "api key `k1` names unknown user `ghost`");
    c.has(38, 15, "api key `k1` names unknown integration `p/nope`");
    c.has(41, 7, "duplicate api key `k1` (first defined on line 35)");
    c.has(42, 15, "secret_hash of api key `k1`");
}

#[test]
fn bad_values_files_and_env_secrets_are_reported() {
    let c = check(
        r#"[listen]
address = "127.0.0.1:99999"
tls = { cert = "/nonexistent/server.crt", key = "/nonexistent/server.key" }

[limits]
request_timeout = "ten seconds"

[assertion]
key = { env = "PORTCULLIS_TEST_UNSET" }

[[plans]]
name = "p"
upstream = "htp//nowhere"

[[plans.integrations]]
name = "i"
path = "i"
methods = ["get"]
auth = "password"

[[endpoints]]
name = "e"
base_url = "not a url"

[tracing]
otlp_endpoint = "grpc://collector:4317"
protocol = "grpc"
sample_ratio = 2
"#,
    );
    assert_eq!(c.code, 1, "{}", c.stderr);
    c.has(2, 11, "invalid address `127.0.0.1:99999`");
    c.has(3, 16, "cannot read certificate `/nonexistent/server.crt`");
    c.has(6, 19, "invalid duration `ten seconds`");
    c.has(
        9,
        7,
        "environment variable `PORTCULLIS_TEST_UNSET` for assertion.key is not set",
    );
    c.has(13, 12, "invalid upstream `htp//nowhere`");
    c.has(17, 8, "invalid integration path `i`");
    c.has(18, 12, "invalid HTTP method `get`");
    c.has(19, 8, "unknown auth method `password`");
    c.has(23, 12, "invalid URL `not a url`");
    c.has(
        26,
        17,
        "tracing.otlp_endpoint must be the collector's http:// or https:// URL",
    );
    c.has(27, 12, r#"tracing.protocol must be "http/protobuf" or "http/json""#);
    c.has(28, 16, "tracing.sample_ratio must be between 0.0 and 1.0");
}

#[test]
fn an_unreadable_key_and_a_mismatched_key_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let a = self_signed(dir.path(), "a");
    let b = self_signed(dir.path(), "b");
    std::fs::write(dir.path().join("garbage.key"), "not a key").unwrap();
    let toml = |key: &std::path::Path| {
        format!(
            "[listen]\naddress = \"127.0.0.1:0\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
            a.cert_path.display(),
            key.display()
        )
    };
    let c = check(&toml(&dir.path().join("garbage.key")));
    assert_eq!(c.code, 1);
    assert!(
        c.stderr.contains(":3:") && c.stderr.contains("cannot read private key"),
        "{}",
        c.stderr
    );
    let c = check(&toml(&b.key_path));
    assert_eq!(c.code, 1);
    assert!(c.stderr.contains("does not fit certificate"), "{}", c.stderr);
    let c = check(&toml(&a.key_path));
    assert_eq!(c.code, 0, "{}", c.stderr);
}

#[test]
fn syntax_and_type_errors_have_positions() {
    let c = check("[listen]\naddress = \"127.0.0.1:0\n");
    assert_eq!(c.code, 1);
    assert!(c.stderr.starts_with(&format!("{}:2:", c.file)), "{}", c.stderr);
    let c = check("[listen]\naddress = 8080\n");
    assert_eq!(c.code, 1);
    c.has(2, 11, "invalid type");
    // Types in words, not Rust's names for them.
    for (value, words) in [
        ("\"many\"", "expected an integer"),
        ("1.5", "expected an integer"),
        ("[1]", "expected an integer"),
    ] {
        let c = check(&format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n\n[limits]\nmax_headers = {value}\n"
        ));
        assert_eq!(c.code, 1, "{value}");
        c.has(5, 15, words);
        assert!(!c.stderr.contains("i64"), "{}", c.stderr);
    }
}

#[test]
fn a_missing_file_is_an_error() {
    let out = Command::new(bin())
        .args(["check", "--config", "/nonexistent/p.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("/nonexistent/p.toml:1:1: cannot read config file"));
}

#[test]
fn fail_open_defaults_are_positioned_warnings_and_strict_refuses_them() {
    let toml = r#"[listen]
address = "127.0.0.1:0"

[[users]]
name = "u1"
roles = ["r"]

[oauth]
mode = "jwt"
issuer = "https://idp.test"
jwks_url = "http://idp.test/jwks"

[[plans]]
name = "open"
upstream = "builtin:echo"

[[plans.integrations]]
name = "i"
path = "/i"
methods = ["GET"]
auth = "oauth"
"#;
    let c = check(toml);
    assert_eq!(c.code, 0, "{}", c.stderr);
    c.has(13, 1, "warning: plan `open` has no `access` rule");
    c.has(17, 1, "warning: integration `open/i` has no `senders` rule");
    c.has(8, 1, "warning: oauth.mode = \"jwt\" without `audience`");
    c.has(11, 12, "warning: oauth.jwks_url uses plain http://");
    // --strict: the same warnings fail the check.
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), toml);
    let out = Command::new(bin())
        .args(["check", "--strict", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused by --strict"));
    // A leeway past five minutes is an error.
    let c = check(&toml.replace(
        "jwks_url = \"http://idp.test/jwks\"",
        "jwks_url = \"https://idp.test/jwks\"\naudience = \"a\"\nleeway = \"1h\"",
    ));
    assert_eq!(c.code, 1, "{}", c.stderr);
    c.has(13, 10, "oauth.leeway may be at most 5m");
}

/// An endpoint's `callers` rule is checked against the `[[users]]` entries like every
/// other rule: a user that exists is no warning (so `--strict` accepts it), one that does
/// not is a positioned warning (and `--strict` refuses it).
#[test]
fn endpoint_callers_are_checked_against_the_users() {
    let endpoint = |callers: &str| {
        format!(
            "{BASE}senders = {{ roles = [\"r\"] }}\n\n[egress]\naddress = \"127.0.0.1:0\"\n\n[[endpoints]]\nname = \"e2\"\nbase_url = \"https://svc.test/api\"\ncallers = {{ users = [\"{callers}\"] }}\n"
        )
    };
    let strict = |toml: &str| {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(dir.path(), toml);
        let out = Command::new(bin())
            .args(["check", "--strict", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let known = endpoint("u1");
    let c = check(&known);
    assert_eq!(c.code, 0, "{}", c.stderr);
    assert!(!c.stderr.contains("not a [[users]] entry"), "{}", c.stderr);
    let (code, stderr) = strict(&known);
    assert_eq!(code, Some(0), "--strict accepts a caller that is a user: {stderr}");

    let unknown = endpoint("ghost");
    let c = check(&unknown);
    assert_eq!(c.code, 0, "{}", c.stderr);
    let line = unknown.lines().position(|l| l.starts_with("callers")).unwrap() + 1;
    c.has(
        line,
        22,
        "warning: callers of endpoint `e2` names `ghost`, which is not a [[users]] entry",
    );
    let (code, stderr) = strict(&unknown);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("refused by --strict"), "{stderr}");
}

/// Upgrades reach the service over HTTP/1.1: an `h2c://` plan cannot carry them, and
/// they use GET.
#[test]
fn websocket_upgrades_need_an_http1_upstream_and_get() {
    let c = check(
        r#"[[plans]]
name = "g"
upstream = "h2c://127.0.0.1:50051"
access = { all = true }

[[plans.integrations]]
name = "live"
path = "/live"
methods = ["GET"]
auth = "none"
upgrades = ["websocket"]

[[plans.integrations]]
name = "post"
path = "/post"
methods = ["POST"]
auth = "none"
upgrades = ["websocket", "h2c"]

[[plans.integrations]]
name = "tunnel"
path = "/tunnel"
methods = ["CONNECT"]
auth = "none"
"#,
    );
    assert_eq!(c.code, 1, "{}", c.stderr);
    c.has(6, 1, "integration `g/live` allows websocket upgrades, which reach the upstream over HTTP/1.1, but plan `g` has an h2c:// upstream");
    c.has(13, 1, "integration `g/post` allows websocket upgrades but not GET");
    c.has(18, 26, "unknown upgrade `h2c`");
    c.has(23, 12, "CONNECT cannot be routed");
}

/// The demo's credentials are published: any config but the demo's refuses them, at
/// their positions; the demo itself loads.
#[test]
fn the_demos_published_credentials_are_refused_elsewhere() {
    let demo = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/portcullis.toml"))
        .unwrap()
        .replace(
            "\"config/tls/",
            concat!("\"", env!("CARGO_MANIFEST_DIR"), "/config/tls/"),
        );
    let c = check(&demo);
    assert_eq!(c.code, 0, "{}", c.stderr);
    let copied = demo.replacen("# Portcullis demo configuration", "# our gateway", 1);
    let c = check(&copied);
    assert_eq!(c.code, 1, "{}", c.stderr);
    for what in [
        "password_hash of user `jira-integration`",
        "password_hash of user `alice`",
        "url_key_hash of user `alice`",
        "secret_hash of api key `pk_demo_servicenow`",
        "client_secret_hash of client `demo-client`",
    ] {
        assert!(
            c.stderr
                .lines()
                .any(|l| l.contains(what) && l.contains("one of the demo's published credentials")),
            "{what}: {}",
            c.stderr
        );
    }
}

/// A diagnostic that describes a URL's form is printed whole: the scrubbing of user info
/// in printed URLs does not eat the description of where a password may go.
#[test]
fn the_shared_url_diagnostic_describes_the_form_readably() {
    let c = check(&format!(
        "{BASE}\n[shared]\nbackend = \"redis\"\nurl = \"http://127.0.0.1:6379\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n"
    ));
    assert_eq!(c.code, 1);
    assert!(
        c.stderr
            .contains("shared.url must be redis://HOST[:PORT][/DB] (user and password allowed before the host)"),
        "{}",
        c.stderr
    );
}
