//! Path tricks: every ambiguous path is 400 JSON before routing or authentication, and
//! the path routing sees is exactly the path the upstream gets.

use crate::support;

use support::*;

fn cfg(upstream: &str) -> String {
    Config::new()
        .plan("p", |p| {
            p.upstream(upstream)
                .access_all()
                .integration("public", |i| i.path("/public/*").methods(["GET"]).auth("none"))
                .integration("secret", |i| i.path("/secret/*").methods(["GET"]).auth("basic"))
        })
        .to_toml()
}

#[tokio::test]
async fn ambiguous_paths_are_400_json() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&cfg(&up.url())).await;
    for path in [
        "/public/../secret/x",
        "/public/./x",
        "/public/%2e%2e/secret/x",
        "/public/%2E./secret/x",
        "/public/.%2e/secret/x",
        "/public%2F..%2Fsecret/x",
        "/public/a%2fb",
        "/public/a%5cb",
        "/public/a%5Cb",
        "/public/..",
        "/public/a%00b",
        "/public/a%0d%0ab",
        "/public/%zz",
        // Path parameters: Tomcat, Jetty and Spring read `/public/..;/secret/x` as
        // `/secret/x`.
        "/public/..;/secret/x",
        "/public/x;jsessionid=1",
        "/public/..%3B/secret/x",
        "/public/.%3b/secret/x",
        // Empty segments, merged by many servers.
        "//secret/x",
        "/public//x",
        // Double encoding, decoded twice by some.
        "/public/%252e%252e/secret/x",
        "/public/%252F",
        // Overlong UTF-8 for `.` and other bytes that are not UTF-8.
        "/public/%c0%ae%c0%ae/secret/x",
        "/public/%e0%80%ae",
        "/public/%ff",
        // Case or a trailing slash that a lenient upstream reads as the secret integration.
        "/SECRET/x",
        "/Public/../secret",
    ] {
        let out = raw(
            gw.addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 400"), "{path}: {out}");
        assert!(out.to_ascii_lowercase().contains("x-request-id:"), "{path}");
        let body = out.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["code"], 400);
        assert!(v["message"].as_str().unwrap().starts_with("path "), "{path}: {v}");
    }
    // A raw backslash never reaches routing as a path either (400 from us or hyper).
    let out = raw(
        gw.addr,
        b"GET /public/a\\b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(up.seen().is_empty(), "no ambiguous path was forwarded");
    gw.stop().await;
}

#[tokio::test]
async fn the_forwarded_path_is_the_routed_path() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&cfg(&up.url())).await;
    for (path, forwarded) in [
        ("/public/a%20b", "/public/a%20b"),
        ("/public/%41", "/public/A"),
        ("/public/a..b/...", "/public/a..b/..."),
        ("/%70ublic/%7Ex", "/public/~x"),
        ("/public/caf%C3%A9", "/public/caf%C3%A9"),
    ] {
        let out = raw(
            gw.addr,
            format!("GET {path}?q=%2F HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 200"), "{path}: {out}");
        assert_eq!(up.last().uri, format!("{forwarded}?q=%2F"));
    }
    // An encoded letter is read as the letter, as the upstream will: `/%73ecret/x` is the
    // secret integration, and needs its credentials.
    let before = up.seen().len();
    let out = raw(
        gw.addr,
        b"GET /%73ecret/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    assert_eq!(up.seen().len(), before);
    gw.stop().await;
}

#[tokio::test]
async fn absolute_form_and_asterisk_are_handled() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&cfg(&up.url())).await;
    let out = raw(gw.addr, b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let out = raw(
        gw.addr,
        b"GET http://x/public/y HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(up.last().uri, "/public/y");
    gw.stop().await;
}
