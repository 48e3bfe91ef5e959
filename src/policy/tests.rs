use super::*;

fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn eval(expr: &str, claims: serde_json::Value, p: &http::request::Parts, roles: &[&str]) -> Result<bool, String> {
    let claims = claims.as_object().cloned();
    let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
    let input = Input {
        name: "alice",
        roles: &roles,
        method: "oauth",
        issuer: Some("corp"),
        client_id: None,
        claims: claims.as_ref(),
        request: p,
        source: "10.1.2.3".parse().unwrap(),
        // Monday 2026-12-07 12:00 UTC.
        now: std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_644_800),
    };
    compile(expr).unwrap().evaluate(&input)
}

#[test]
fn the_examples_evaluate() {
    let get = parts("GET", "/x?a=1", &[]);
    let post = parts("POST", "/x", &[]);
    let scope = serde_json::json!({"scope": "incidents:read incidents:write", "tenant": 42});
    let ex1 = "'incidents:write' in claims.scope.split(' ')";
    assert_eq!(eval(ex1, scope.clone(), &get, &[]), Ok(true));
    assert_eq!(
        eval(ex1, serde_json::json!({"scope": "incidents:read"}), &get, &[]),
        Ok(false)
    );
    assert_eq!(eval("claims.tenant == 42", scope.clone(), &get, &[]), Ok(true));
    assert_eq!(
        eval("claims.tenant == 42", serde_json::json!({"tenant": 7}), &get, &[]),
        Ok(false)
    );
    // A string "42" is not the number 42.
    assert_eq!(
        eval("claims.tenant == 42", serde_json::json!({"tenant": "42"}), &get, &[]),
        Ok(false)
    );
    let ex3 = "request.method == 'GET' || 'admin' in principal.roles";
    assert_eq!(eval(ex3, scope.clone(), &get, &[]), Ok(true));
    assert_eq!(eval(ex3, scope.clone(), &post, &["admin"]), Ok(true));
    assert_eq!(eval(ex3, scope.clone(), &post, &["rest"]), Ok(false));
    assert_eq!(eval("source.ip.startsWith('10.')", scope.clone(), &get, &[]), Ok(true));
    assert_eq!(
        eval("source.ip.startsWith('192.')", scope.clone(), &get, &[]),
        Ok(false)
    );
    assert_eq!(
        eval("now.getDayOfWeek() in [1, 2, 3, 4, 5]", scope.clone(), &get, &[]),
        Ok(true)
    );
    assert_eq!(
        eval("now.getDayOfWeek() in [0, 6]", scope.clone(), &get, &[]),
        Ok(false)
    );
    assert_eq!(
        eval(
            "principal.issuer == 'corp' && principal.client_id == null",
            scope,
            &get,
            &[]
        ),
        Ok(true)
    );
}

#[test]
fn evaluation_errors_are_errors_not_answers() {
    let get = parts("GET", "/", &[]);
    let e = eval("claims.tenant == 42", serde_json::json!({}), &get, &[]).unwrap_err();
    assert!(e.contains("tenant"), "{e}");
    // The wrong type: scope as a number.
    assert!(eval(
        "'a' in claims.scope.split(' ')",
        serde_json::json!({"scope": 5}),
        &get,
        &[]
    )
    .is_err());
    // No claims at all: an empty map.
    assert!(eval("claims.tenant == 1", serde_json::Value::Null, &get, &[]).is_err());
    assert_eq!(eval("size(claims) == 0", serde_json::Value::Null, &get, &[]), Ok(true));
    let e = eval("1 + 1", serde_json::json!({}), &get, &[]).unwrap_err();
    assert!(e.contains("int"), "{e}");
}

#[test]
fn headers_are_joined_and_lower_case_query_takes_the_first_value() {
    let p = parts(
        "GET",
        "/x?team=a&team=b&apiKey=secret&e=%41",
        &[
            ("X-Team", "red"),
            ("x-team", "blue"),
            ("Authorization", "Basic c2VjcmV0"),
        ],
    );
    let t = |e: &str| eval(e, serde_json::json!({}), &p, &[]);
    assert_eq!(t("request.headers['x-team'] == 'red, blue'"), Ok(true));
    assert_eq!(t("'X-Team' in request.headers"), Ok(false));
    assert_eq!(t("'authorization' in request.headers"), Ok(false));
    assert_eq!(t("request.query.team == 'a'"), Ok(true));
    assert_eq!(t("request.query.e == 'A'"), Ok(true));
    assert_eq!(t("'apiKey' in request.query"), Ok(false));
}

#[test]
fn reads_are_decided_when_compiling() {
    let r = |e: &str| compile(e).unwrap().reads();
    assert_eq!(r("true"), Reads::default());
    let h = r("request.headers['x-a'] == 'b'");
    assert!(h.request && h.headers && !h.query && h.client_controlled());
    let q = r("request.query.a == 'b'");
    assert!(q.query && !q.headers && q.client_controlled());
    let m = r("request.method == 'GET' || 'admin' in principal.roles");
    assert!(m.request && m.principal && !m.client_controlled());
    // `request` as a whole may be read for anything.
    assert!(r("request == {}").client_controlled());
    assert!(r("[1].all(x, x == 1)") == Reads::default());
    assert!(r("claims.exists(k, k == 'a')").claims);
}

#[test]
fn unknown_names_and_syntax_errors_have_their_offset() {
    let err = |e: &str| compile(e).unwrap_err();
    let e = err("claims.a == 1 && nope.b");
    assert_eq!(e.offset, "claims.a == 1 && ".len(), "{e:?}");
    assert!(e.message.contains("unknown variable `nope`"), "{e:?}");
    let e = err("principal.nmae == 'x'");
    assert_eq!(e.offset, 0, "{e:?}");
    assert!(e.message.contains("no field `nmae`"), "{e:?}");
    assert!(err("request.body == ''").message.contains("no field `body`"));
    assert!(err("source.port == 1").message.contains("no field `port`"));
    let e = err("claims.a == (1");
    assert!(e.message.starts_with("syntax error"), "{e:?}");
    assert_eq!(e.offset, "claims.a == (1".len(), "{e:?}");
    assert_eq!(err("'é' = 1").offset, "'é' ".len());
    let e = err("true &&\n  claims.a = 1");
    assert!(e.message.starts_with("syntax error"), "{e:?}");
    assert_eq!(&"true &&\n  claims.a = 1"[e.offset..e.offset + 1], "=", "{e:?}");
    assert!(err("").message.contains("empty"));
    assert!(err(&"true || ".repeat(1000)).message.contains("longer"));
    // Comprehension variables are bound only inside the comprehension.
    assert!(compile("principal.roles.all(r, r != 'x')").is_ok());
    assert!(err("principal.roles.all(r, r != 'x') && r == 'y'")
        .message
        .contains("`r`"));
}

/// Only the selected fields are built, and that changes no answer: an absent claim stays
/// absent, and any other use of a variable builds all of it.
#[test]
fn selecting_fields_changes_no_answer() {
    let get = parts("GET", "/", &[]);
    let c = serde_json::json!({"scope": "a b", "tenant": 42, "org": {"id": 7}});
    let t = |e: &str| eval(e, c.clone(), &get, &["rest"]);
    assert_eq!(t("!has(claims.missing) && has(claims.tenant)"), Ok(true));
    assert_eq!(t("claims.scope != '' && 'tenant' in claims"), Ok(true));
    assert_eq!(t("claims.tenant == 42 && size(claims) == 3"), Ok(true));
    assert_eq!(t("claims.org.id == 7 && claims['scope'] == 'a b'"), Ok(true));
    assert_eq!(t("principal.name == 'alice' && size(principal) == 5"), Ok(true));
    assert_eq!(t("request.method == 'GET' && size(request) == 4"), Ok(true));
    assert_eq!(t("claims.exists(k, k == 'org')"), Ok(true));
    let s = compile("claims.tenant == 1 && has(claims.org.id) && principal.roles.size() > 0").unwrap();
    assert_eq!(s.0.selected.claims, Fields::Only(vec!["tenant".into(), "org".into()]));
    assert_eq!(s.0.selected.principal, Fields::Only(vec!["roles".into()]));
    assert_eq!(s.0.selected.request, Fields::None);
}

/// Nesting past [`MAX_NESTING`] is refused before CEL's parser (which recurses per level)
/// sees it; the deepest allowed compiles, and evaluates on a worker-sized stack.
#[test]
fn deep_nesting_is_refused_before_the_parser_and_the_deepest_allowed_runs() {
    let parens = |n: usize| format!("{}true{}", "(".repeat(n), ")".repeat(n));
    let deepest = parens(MAX_NESTING);
    assert!(compile(&deepest).is_ok());
    for (src, what) in [
        (parens(MAX_NESTING + 1), "parens"),
        (parens(2000), "parens far past the bound"),
        (format!("{}[] == []", "[".repeat(60) + &"]".repeat(60)), "lists"),
        (format!("{}true", "!".repeat(40)), "negations"),
        (format!("{}1 == 1", "- ".repeat(40)), "minus signs"),
    ] {
        let e = compile(&src).unwrap_err();
        assert!(e.message.contains("nests deeper"), "{what}: {}", e.message);
    }
    // Brackets inside a string literal are text, not nesting.
    assert!(compile(&format!("'{}' != ''", "(".repeat(100))).is_ok());
    // A tokio worker's stack (2 MiB) evaluates the deepest expression allowed.
    let worker = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let p = parts("GET", "/", &[]);
            eval(&deepest, serde_json::json!({}), &p, &[])
        })
        .unwrap();
    assert_eq!(worker.join().unwrap(), Ok(true));
}

/// What would make one request cost without bound is refused by `check`: regular
/// expressions (compiled again at each call) and a comprehension inside another.
#[test]
fn unbounded_costs_are_refused_at_compile_time() {
    for src in [
        "request.headers['x-a'].split(',').exists(x, x.matches('^adm'))",
        "'admin'.matches('a')",
        "claims.big.exists(x, claims.big.exists(y, x == y))",
        "claims.big.all(x, claims.big.map(y, y).size() > 0)",
    ] {
        let e = compile(src).unwrap_err();
        assert!(
            e.message.contains("regular expressions") || e.message.contains("inside another"),
            "{src}: {}",
            e.message
        );
    }
    // One after another is linear: allowed.
    assert!(compile("claims.big.map(x, x + 'a').exists(y, y == 'ba')").is_ok());
}

/// CEL's error messages quote the values they met; the log and the admin page get them
/// without the strings.
#[test]
fn error_messages_leave_the_values_out() {
    let p = parts("GET", "/", &[("x-env", "SECRETVAL")]);
    let e = eval("request.headers['x-env'] + 1 == 2", serde_json::json!({}), &p, &[]).unwrap_err();
    assert!(!e.contains("SECRETVAL"), "{e}");
    assert!(e.contains("String(…)"), "{e}");
    assert_eq!(
        without_values(r#"bad: String("a\"b)c"), Int(1), Bytes([1, 2])"#),
        "bad: String(…), Int(1), Bytes(…)"
    );
}
