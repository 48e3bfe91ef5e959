//! Forward-auth mode: a real nginx (`auth_request`, `auth_request_set`) in front of a
//! recording application asks Portcullis's `[forward_auth]` listener about each request;
//! Traefik's `X-Forwarded-*` form and Envoy's ext_authz form are driven directly.
//!
//! Without nginx the nginx test prints SKIPPED (it fails under
//! PORTCULLIS_REQUIRE_TOOLS=1, as `.ci/run` sets after installing it).

use crate::support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use support::*;

fn fa_config(extra: &str) -> Config {
    Config::new()
        .section("forward_auth", |s| s.set("address", "127.0.0.1:0"))
        .section("lockout", |s| s.set("max_failures", 3))
        .user("alice", |u| u.roles(["rest"]).password_hash(&argon2_hash("alice-pw")))
        .user("bob", |u| u.roles(["other"]).password_hash(&argon2_hash("bob-pw")))
        .plan("app", |p| {
            p.upstream("http://127.0.0.1:9")
                .access_all()
                .integration("api", |i| {
                    i.path("/api/*")
                        .methods(["GET", "POST"])
                        .auth("basic")
                        .senders_roles(["rest"])
                })
                .integration("public", |i| i.path("/public").methods(["GET"]).auth("none"))
        })
        .toml(extra)
}

/// `[listen] trusted_proxies`.
fn trusting(config: Config, proxies: &str) -> String {
    config
        .section("listen", |s| s.set("trusted_proxies", vec![proxies]))
        .to_toml()
}

async fn forward_auth_addr(p: &Process) -> SocketAddr {
    listening_addr(p, "forward_auth").await
}

/// The gateway with `[forward_auth] ingress = "{ingress}"`.
fn start_ingress(ingress: &str) -> (tempfile::TempDir, Process) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &trusting(
            fa_config("").section("forward_auth", |s| s.set("ingress", ingress)),
            "127.0.0.1/32",
        ),
    );
    let p = Process::start(&path, &[]);
    (dir, p)
}

fn start(extra: &str) -> (tempfile::TempDir, Process) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &trusting(fa_config(extra), "127.0.0.1/32"));
    let p = Process::start(&path, &[]);
    (dir, p)
}

/// Traefik's ForwardAuth form: `X-Forwarded-Method`, `-Uri`, `-Host` from a trusted peer.
#[tokio::test]
async fn traefik_and_envoy_subrequests_get_the_decision_and_the_principal_headers() {
    let (_dir, p) = start("");
    let fa = forward_auth_addr(&p).await;
    let ask = |method: &'static str, uri: &'static str, auth: Option<String>| async move {
        let mut r = client()
            .get(format!("http://{fa}/"))
            .header("x-forwarded-method", method)
            .header("x-forwarded-uri", uri)
            .header("x-forwarded-host", "app.example")
            .header("x-forwarded-proto", "https");
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send().await.unwrap()
    };
    let ok = ask("GET", "/api/items?x=1", Some(basic("alice", "alice-pw"))).await;
    assert_eq!(ok.status(), 200);
    let h = ok.headers();
    assert_eq!(h["x-portcullis-user"], "alice");
    assert_eq!(h["x-portcullis-roles"], "rest");
    assert_eq!(h["x-portcullis-auth-method"], "basic");
    assert_eq!(h["x-portcullis-plan"], "app");
    assert_eq!(h["x-portcullis-integration"], "api");
    assert!(h.contains_key("x-portcullis-assertion"));
    assert!(h.contains_key("x-request-id"));

    let none = ask("GET", "/api/items", None).await;
    assert_eq!(none.status(), 401);
    assert!(none.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));
    assert!(!none.headers().contains_key("x-portcullis-user"));
    let wrong = ask("POST", "/api/items", Some(basic("alice", "wrong"))).await;
    assert_eq!(wrong.status(), 401);
    let bob = ask("GET", "/api/items", Some(basic("bob", "bob-pw"))).await;
    assert_eq!(bob.status(), 403);
    assert_eq!(
        ask("DELETE", "/api/items", Some(basic("alice", "alice-pw")))
            .await
            .status(),
        405
    );
    assert_eq!(ask("GET", "/nowhere", None).await.status(), 404);
    // The path rules hold for the original URI too.
    assert_eq!(ask("GET", "/public/../api/items", None).await.status(), 400);
    let public = ask("GET", "/public", None).await;
    assert_eq!(public.status(), 200);
    assert_eq!(public.headers()["x-portcullis-auth-method"], "none");
    // Past the lockout budget: 429, even with the right password.
    for _ in 0..2 {
        assert_eq!(ask("GET", "/api/a", Some(basic("alice", "bad"))).await.status(), 401);
    }
    assert_eq!(
        ask("GET", "/api/a", Some(basic("alice", "alice-pw"))).await.status(),
        429
    );

    // Envoy's ext_authz (HTTP service): the check request carries the original method
    // and path itself.
    let envoy = client().get(format!("http://{fa}/public")).send().await.unwrap();
    assert_eq!(envoy.status(), 200);
    let envoy = client().post(format!("http://{fa}/api/items")).send().await.unwrap();
    assert_eq!(envoy.status(), 401);
}

/// Only peers in `[listen] trusted_proxies` may ask: anyone else could otherwise name
/// any URI and probe credentials through the side door.
#[tokio::test]
async fn untrusted_peers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &trusting(fa_config(""), "10.0.0.0/8"));
    let p = Process::start(&path, &[]);
    let fa = forward_auth_addr(&p).await;
    let resp = client()
        .get(format!("http://{fa}/"))
        .header("x-original-method", "GET")
        .header("x-original-uri", "/api/items")
        .header("authorization", basic("alice", "alice-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(!resp.headers().contains_key("x-portcullis-user"));
}

struct Nginx {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to the master, which stops its worker; SIGKILL would orphan the worker.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn nginx_bin() -> Option<&'static str> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

/// nginx with `auth_request` to Portcullis, proxying allowed requests to `app` with the
/// principal headers Portcullis answered (a client's own `X-Portcullis-*` are replaced).
fn nginx(bin: &str, fa: SocketAddr, app: &str) -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = dir.path().display();
    let conf = format!(
        r#"
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};
  uwsgi_temp_path {d}; scgi_temp_path {d};
  server {{
    listen 127.0.0.1:{port};
    location / {{
      auth_request /_portcullis;
      auth_request_set $pc_user $upstream_http_x_portcullis_user;
      auth_request_set $pc_roles $upstream_http_x_portcullis_roles;
      auth_request_set $pc_assertion $upstream_http_x_portcullis_assertion;
      proxy_set_header X-Portcullis-User $pc_user;
      proxy_set_header X-Portcullis-Roles $pc_roles;
      proxy_set_header X-Portcullis-Assertion $pc_assertion;
      proxy_set_header Authorization "";
      proxy_pass {app};
    }}
    location = /_portcullis {{
      internal;
      proxy_pass http://{fa};
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Forwarded-Uri "";
      proxy_set_header X-Forwarded-Method "";
      proxy_set_header X-Forwarded-For $remote_addr;
    }}
  }}
}}
"#
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let child = Command::new(bin)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(std::time::Instant::now() < deadline, "nginx did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Nginx { child, addr, _dir: dir }
}

#[tokio::test]
async fn nginx_auth_request_in_front_of_an_application() {
    let Some(bin) = nginx_bin() else {
        assert!(
            std::env::var_os("PORTCULLIS_REQUIRE_TOOLS").is_none(),
            "PORTCULLIS_REQUIRE_TOOLS is set but nginx is missing"
        );
        skipped("nginx is not installed (apt-get install nginx-light)");
        return;
    };
    let app = Upstream::start().await;
    let (_dir, p) = start("");
    let fa = forward_auth_addr(&p).await;
    let ng = nginx(bin, fa, &app.url());
    // A client naming another request in the other family's headers: nginx, configured
    // as the README says, clears them, so the decision is for the real request.
    let forged = client()
        .get(format!("http://{}/api/items", ng.addr))
        .header("x-forwarded-uri", "/public")
        .header("x-forwarded-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let get = |path: &'static str, auth: Option<String>| {
        let addr = ng.addr;
        async move {
            let mut r = client()
                .get(format!("http://{addr}{path}"))
                .header("x-portcullis-user", "spoofed-admin");
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            r.send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(get("/api/items", None).await, 401);
    assert_eq!(get("/api/items", Some(basic("alice", "wrong"))).await, 401);
    assert_eq!(get("/api/items", Some(basic("bob", "bob-pw"))).await, 403);
    assert!(app.seen().is_empty(), "a refused request reached the application");
    assert_eq!(get("/api/items?page=2", Some(basic("alice", "alice-pw"))).await, 200);
    let seen = app.last();
    assert_eq!(seen.headers["x-portcullis-user"], "alice");
    assert_eq!(seen.headers["x-portcullis-roles"], "rest");
    assert!(seen.headers.contains_key("x-portcullis-assertion"));
    assert!(!seen.headers.contains_key("authorization"));
    assert_eq!(app.seen().len(), 1);
}

/// A forward-auth subrequest from the ingress, with `headers` (pairs, repeats allowed).
async fn subrequest(fa: SocketAddr, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = client().get(format!("http://{fa}{path}"));
    for (n, v) in headers {
        r = r.header(*n, *v);
    }
    r.send().await.unwrap()
}

/// An ingress may copy the client's own headers into the subrequest, so the client can
/// add the other family's `X-Original-*` or `X-Forwarded-*` naming a public path: named,
/// the ingress's family alone counts; left to detect, two families that disagree, or one
/// header sent twice, are a 400 `ambiguous_original_request`.
#[tokio::test]
async fn a_client_copy_of_another_header_family_never_decides() {
    let secret_as_public = [
        ("x-forwarded-method", "GET"),
        ("x-forwarded-uri", "/api/items"),
        ("x-original-method", "GET"),
        ("x-original-uri", "/public"),
    ];
    // Detect: disagreeing families (URI or method) are ambiguous, never the public path.
    let (_dir, p) = start("");
    let fa = forward_auth_addr(&p).await;
    let r = subrequest(fa, "/", &secret_as_public).await;
    let body = error_body(r, 400).await;
    assert!(body["message"].as_str().unwrap().contains("ingress"), "{body}");
    let method_twist = [
        ("x-forwarded-method", "POST"),
        ("x-forwarded-uri", "/api/items"),
        ("x-original-method", "GET"),
        ("x-original-uri", "/api/items"),
    ];
    assert_eq!(subrequest(fa, "/", &method_twist).await.status(), 400);
    // A list where one value is expected: two lines of one header.
    let twice = [
        ("x-forwarded-method", "GET"),
        ("x-forwarded-uri", "/public"),
        ("x-forwarded-uri", "/api/items"),
    ];
    assert_eq!(subrequest(fa, "/", &twice).await.status(), 400);
    // Half a family is not a request.
    assert_eq!(
        subrequest(fa, "/", &[("x-original-uri", "/public")]).await.status(),
        400
    );
    assert_eq!(
        subrequest(fa, "/", &[("x-forwarded-method", "GET")]).await.status(),
        400
    );
    // Families that agree are one request.
    let agree = [
        ("x-forwarded-method", "GET"),
        ("x-forwarded-uri", "/public"),
        ("x-original-method", "GET"),
        ("x-original-uri", "/public"),
    ];
    assert_eq!(subrequest(fa, "/", &agree).await.status(), 200);
    // Envoy passing the client's headers on: the check request is itself the original
    // request, and a family naming another one is ambiguous (also for a path that only a
    // lenient ingress would route); an auth endpoint path of the ingress is no route.
    let public = [("x-original-method", "GET"), ("x-original-uri", "/public")];
    for own in ["/api/items", "/api/./items", "/api/items/..;/x"] {
        assert_eq!(subrequest(fa, own, &public).await.status(), 400, "{own}");
    }
    let r = client()
        .post(format!("http://{fa}/api/items"))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/public")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(subrequest(fa, "/_portcullis", &public).await.status(), 200);
    assert_eq!(subrequest(fa, "/public", &public).await.status(), 200);
    let log = p.logs_when(|l| l.contains("ambiguous_original_request")).await;
    assert!(log.contains("ambiguous_original_request"));
    drop(p);

    // Named ingresses read their own family only.
    for (ingress, own, other) in [
        (
            "traefik",
            ("x-forwarded-method", "x-forwarded-uri"),
            ("x-original-method", "x-original-uri"),
        ),
        (
            "nginx",
            ("x-original-method", "x-original-uri"),
            ("x-forwarded-method", "x-forwarded-uri"),
        ),
    ] {
        let (_dir, p) = start_ingress(ingress);
        let fa = forward_auth_addr(&p).await;
        let forged = [
            (own.0, "GET"),
            (own.1, "/api/items"),
            (other.0, "GET"),
            (other.1, "/public"),
        ];
        assert_eq!(subrequest(fa, "/", &forged).await.status(), 401, "{ingress}");
        // Without its own family the subrequest names nothing.
        let only_other = [(other.0, "GET"), (other.1, "/public")];
        assert_eq!(subrequest(fa, "/", &only_other).await.status(), 400, "{ingress}");
        let ok = [
            (own.0, "GET"),
            (own.1, "/public"),
            (other.0, "GET"),
            (other.1, "/api/items"),
        ];
        assert_eq!(subrequest(fa, "/", &ok).await.status(), 200, "{ingress}");
    }

    // Envoy: the check request's own method and path, whatever headers say.
    let (_dir, p) = start_ingress("envoy");
    let fa = forward_auth_addr(&p).await;
    let forged = [("x-original-method", "GET"), ("x-original-uri", "/public")];
    assert_eq!(subrequest(fa, "/api/items", &forged).await.status(), 401);
    assert_eq!(subrequest(fa, "/public", &[]).await.status(), 200);
}

/// The client a forward-auth decision is about is the trusted ingress's
/// `X-Forwarded-For` (every line, rightmost untrusted hop): one client's failures lock
/// it out, not another client behind the same ingress, and a line of its own does not
/// give it a fresh budget.
#[tokio::test]
async fn lockout_follows_the_client_the_ingress_names() {
    let (_dir, p) = start("");
    let fa = forward_auth_addr(&p).await;
    let ask = |xff: Vec<&'static str>, pw: &'static str| async move {
        let mut r = client()
            .get(format!("http://{fa}/"))
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-uri", "/api/items")
            .header("authorization", basic("alice", pw));
        for line in xff {
            r = r.header("x-forwarded-for", line);
        }
        r.send().await.unwrap().status().as_u16()
    };
    for i in 0..3 {
        let own: &'static str = ["10.0.0.1", "10.0.0.2", "10.0.0.3"][i];
        assert_eq!(ask(vec![own, "198.51.100.7"], "wrong").await, 401);
    }
    assert_eq!(ask(vec!["198.51.100.7"], "alice-pw").await, 429);
    assert_eq!(ask(vec!["203.0.113.99", "198.51.100.7"], "alice-pw").await, 429);
    assert_eq!(ask(vec!["198.51.100.8"], "alice-pw").await, 200);
}
