//! Property-based fuzzing of every parser on the path from a client's bytes to a decision,
//! on stable Rust (proptest): path checking and routing, credential parsing, header
//! hygiene, config loading and export. `PORTCULLIS_FUZZ_CASES` sets the cases per target
//! (CI runs more than the default); a failure prints the shrunk input, which then becomes
//! a regression case in `regressions()` below or in the module's unit tests.

#[path = "support/builder.rs"]
#[allow(dead_code)]
mod builder;

use std::net::IpAddr;
use std::path::Path;

use base64::Engine;
use builder::Config;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use portcullis::auth::{url_key, Auth, Failure, RouteRef};
use portcullis::config::{AuthMethod, PathPattern};
use portcullis::headers;
use portcullis::metrics::Metrics;
use portcullis::path::{self, check_path, normalize};
use portcullis::route::{Match, Router, Target};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("PORTCULLIS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 255,
    }
}

/// Fully percent-decodes, as the most lenient upstream would (once).
fn decode(path: &str) -> Vec<u8> {
    let b = path.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() && hex(b[i + 1]) < 16 && hex(b[i + 2]) < 16 {
            out.push(hex(b[i + 1]) << 4 | hex(b[i + 2]));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Path-like strings built from the pieces attacks are made of.
fn path_strategy() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_string()),
        Just("//".to_string()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just(";".to_string()),
        Just("%2e".to_string()),
        Just("%2E".to_string()),
        Just("%2f".to_string()),
        Just("%5c".to_string()),
        Just("%3b".to_string()),
        Just("%25".to_string()),
        Just("%c0%ae".to_string()),
        Just("%73".to_string()),
        Just("%00".to_string()),
        Just("\\".to_string()),
        Just("public".to_string()),
        Just("secret".to_string()),
        Just("SECRET".to_string()),
        "[a-zA-Z0-9._~%-]{0,4}",
    ];
    proptest::collection::vec(piece, 0..10).prop_map(|v| format!("/{}", v.concat()))
}

fn router() -> Router {
    let t = |i| Target {
        plan: 0,
        integration: i,
    };
    Router::new_checked(vec![
        (PathPattern::Prefix("/public".into()), vec![Method::GET], t(0)),
        (PathPattern::Prefix("/secret".into()), vec![Method::GET], t(1)),
        (PathPattern::Exact("/secret-admin".into()), vec![Method::GET], t(2)),
    ])
}

proptest! {
    #![proptest_config(config())]

    /// A path that passes the check has one meaning: no dot segment, path parameter or
    /// empty segment even after decoding, and its normal form passes too and routes the
    /// same way, wherever a lenient reading would lead.
    #[test]
    fn paths_that_pass_have_one_meaning(path in path_strategy()) {
        let r = router();
        if check_path(&path).is_ok() {
            let decoded = decode(&path);
            let text = String::from_utf8(decoded).expect("passing paths decode to UTF-8");
            for seg in text.split('/').skip(1) {
                prop_assert!(seg != "." && seg != "..", "{path}: dot segment");
                prop_assert!(!seg.contains(';'), "{path}: parameter");
                prop_assert!(!seg.contains('\\'), "{path}: backslash");
            }
            prop_assert!(!text[1..].contains("//"), "{path}: empty segment");
            let normal = normalize(&path).into_owned();
            prop_assert!(check_path(&normal).is_ok(), "{path} -> {normal}");
            prop_assert_eq!(normalize(&normal).into_owned(), normal.clone());
            // Routing the normal form: if the lenient reading reaches an integration, it
            // is the same one, or the request is refused.
            if let Ok(Match::Found(t)) = r.route(&normal, &Method::GET) {
                let lenient = normal.trim_end_matches('/').to_ascii_lowercase();
                let lenient = if lenient.is_empty() { "/".to_string() } else { lenient };
                if let Ok(Match::Found(l)) = router_lenient_probe(&lenient) {
                    prop_assert_eq!(l, t, "{} reads as another integration", normal);
                }
            }
        }
    }

    /// Whatever is in the query, `strip` leaves no `apiKey` parameter however spelled,
    /// and `find` never answers One for a query with two different keys.
    #[test]
    fn url_keys_are_found_and_stripped(q in "[a-zA-Z0-9=&%;+]{0,40}(apiKey|api%4Bey|api%4bey|%61piKey)?=?[a-z0-9%&=]{0,10}") {
        if let Some(rest) = url_key::strip(&q) {
            prop_assert_eq!(url_key::find(Some(&rest)), url_key::Found::None, "{} -> {}", q, rest);
        }
        if let url_key::Found::One(k) = url_key::find(Some(&q)) {
            prop_assert!(!k.is_empty());
            // Pairs are split on `&` and on `;` (which some servers split on too).
            let values: Vec<String> = q
                .split(['&', ';'])
                .flat_map(|pair| url::form_urlencoded::parse(pair.as_bytes()))
                .filter(|(n, _)| n == url_key::PARAM)
                .map(|(_, v)| v.into_owned())
                .collect();
            prop_assert!(values.iter().all(|v| *v == k), "{}: {:?}", q, values);
        }
    }

    /// After hygiene no header that a CGI-style upstream reads as X-Portcullis-* is left,
    /// and no underscored name unless allowed.
    #[test]
    fn hygiene_leaves_no_identity_header(
        names in proptest::collection::vec("[xX][-_][pP][oO][rR][tT][cC][uU][lL][lL][iI][sS][-_][a-zA-Z_-]{0,8}|[a-z_-]{1,12}", 0..12),
        underscores in any::<bool>(),
    ) {
        let mut h = HeaderMap::new();
        for n in &names {
            if let Ok(name) = HeaderName::from_bytes(n.as_bytes()) {
                h.append(name, HeaderValue::from_static("admin"));
            }
        }
        headers::sanitize(&mut h, underscores);
        for k in h.keys() {
            let cgi = k.as_str().to_ascii_lowercase().replace('_', "-");
            prop_assert!(!cgi.starts_with("x-portcullis-"), "{} survived", k);
            prop_assert!(underscores || !k.as_str().contains('_'), "{} survived", k);
        }
    }

    /// Config loading never panics, whatever the text.
    #[test]
    fn config_loading_never_panics(text in "[\\[\\]a-z_.=\"{}, \n0-9:/*-]{0,300}") {
        let _ = portcullis::config::parse(Path::new("fuzz.toml"), &text);
        let _ = portcullis::cli::export_text(&text);
    }

    /// No secret value of a config survives export, whatever TOML form holds it.
    #[test]
    fn export_never_prints_a_secret(
        secret in "[A-Za-z0-9]{16,24}",
        form in 0usize..8,
        comment in any::<bool>(),
    ) {
        let body = match form {
            0 => format!("[assertion]\nkey = \"{secret}\"\n"),
            1 => format!("assertion = {{ key = \"{secret}\" }}\n"),
            2 => format!("users = [ {{ name = \"u\", password_hash = \"{secret}\" }} ]\n"),
            3 => format!("[[endpoints]]\nname = \"e\"\nbase_url = \"https://e.test\"\nauth = {{ type = \"basic\", username = \"u\", password = '{secret}' }}\n"),
            4 => format!("oauth.client_secret = \"\"\"\n{secret}\"\"\"\n"),
            5 => format!("[[plans]]\nname = \"p\"\nupstream = \"https://u:{secret}@up.test/?k={secret}\"\n"),
            6 => format!("[shared]\nurl = \"rediss://:{secret}@redis.test:6380\"\n"),
            _ => format!("[[api_keys]]\nkey = \"k\"\nsecret_hash = \"{secret}\"\n"),
        };
        let text = if comment { format!("# {secret}\n{body} # {secret}\n") } else { body };
        let out = portcullis::cli::export_text(&text).expect("valid TOML exports");
        prop_assert!(!out.contains(&secret), "form {}:\n{}", form, out);
    }
}

/// The lenient twin of [`router`], written independently of `route.rs`.
fn router_lenient_probe(path: &str) -> Result<Match<'static>, ()> {
    let t = |i| Target {
        plan: 0,
        integration: i,
    };
    let under = |base: &str| path == base || path.starts_with(&format!("{base}/"));
    Ok(if path == "/secret-admin" {
        Match::Found(t(2))
    } else if under("/secret") {
        Match::Found(t(1))
    } else if under("/public") {
        Match::Found(t(0))
    } else {
        Match::NotFound
    })
}

fn fuzz_auth() -> Auth {
    let pw = portcullis::auth::basic::hash_password("right-pw").unwrap();
    let toml = Config::bare()
        .section("listen", |s| s.set("address", "127.0.0.1:0"))
        .section("lockout", |s| s.set("max_failures", 1000000))
        .user("alice", |u| {
            u.roles(["rest"])
                .password_hash(&pw)
                .set("url_key_hash", sha("url-key-0123456789abcdef"))
        })
        .plan("p", |p| {
            p.upstream("builtin:echo").access_all().integration("i", |i| {
                i.path("/i")
                    .methods(["GET"])
                    .auths(["basic", "api_key", "url_key"])
                    .senders_all()
            })
        })
        .api_key("k1", &sha("key-secret-0123456789"), "alice", "p/i")
        .to_toml();
    let cfg = portcullis::config::parse(Path::new("fuzz.toml"), &toml).unwrap().config;
    Auth::new(
        &cfg,
        &Metrics::new(),
        &portcullis::auth::Lasting::default(),
        &portcullis::upstream::client(),
    )
    .unwrap()
}

fn sha(s: &str) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(s.as_bytes())))
}

/// Credentials arbitrary or nearly right never authenticate unless exactly right.
#[test]
fn credential_parsing_accepts_only_the_exact_credentials() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let auth = fuzz_auth();
    let methods = [AuthMethod::Basic, AuthMethod::ApiKey, AuthMethod::UrlKey];
    let route = RouteRef {
        plan: "p",
        integration: "i",
    };
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    let exact = [
        format!("Basic {}", b64(b"alice:right-pw")),
        format!("Basic {}", b64(b"k1:key-secret-0123456789")),
    ];
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        // argon2 runs for each Basic candidate: fewer cases, each costly.
        cases: (cases() / 8).max(16),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        prop_oneof![
            "[ -~]{0,40}".prop_map(|s| s.into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..40),
            // Near misses of the right credentials: a byte changed, dropped or added.
            (0usize..2, any::<usize>(), any::<u8>(), 0u8..3).prop_map(move |(which, at, b, op)| {
                let raw: &[u8] = if which == 0 {
                    b"alice:right-pw"
                } else {
                    b"k1:key-secret-0123456789"
                };
                let mut v = raw.to_vec();
                let i = at % v.len();
                match op {
                    0 => v[i] = if v[i] == b { b.wrapping_add(1) } else { b },
                    1 => {
                        v.remove(i);
                    }
                    _ => v.insert(i, b),
                }
                format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(&v)).into_bytes()
            }),
        ],
        proptest::option::of("[a-zA-Z0-9=&%]{0,30}"),
    );
    runner
        .run(&strategy, |(value, query)| {
            let uri = match &query {
                Some(q) => format!("/i?{q}"),
                None => "/i".to_string(),
            };
            let Ok(mut req) = Request::get(uri).body(()) else {
                return Ok(());
            };
            let Ok(v) = HeaderValue::from_bytes(&value) else {
                return Ok(());
            };
            req.headers_mut().insert(http::header::AUTHORIZATION, v);
            let (parts, _) = req.into_parts();
            let result = rt.block_on(auth.authenticate(&methods, route, &parts, ip));
            let is_exact = exact.iter().any(|e| e.as_bytes() == value.as_slice());
            if result.is_ok() {
                prop_assert!(
                    is_exact,
                    "authenticated with {:?} {:?}",
                    String::from_utf8_lossy(&value),
                    query
                );
            }
            if let Err(f) = &result {
                let unavailable = matches!(f, Failure::Unavailable { .. });
                prop_assert!(!unavailable, "unavailable");
            }
            Ok(())
        })
        .unwrap();
}

/// Inputs that once broke a property, kept as plain regression cases.
#[test]
fn regressions() {
    for p in ["/public/%2", "/%", "/public/%25%32%65", "/a/%2e%2e%3b"] {
        let _ = check_path(p);
    }
    assert!(path::check_path("/public/%25%32%65").is_err());
}
