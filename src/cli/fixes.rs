//! What `explain` says to do about each refusal reason: the troubleshooting table of
//! README.md, row by row, in code. `explain` prints the fix of the first row that names
//! the reason; a test reads README.md and keeps the two tables equal.

/// One row: the reasons it names, and what to do.
pub(super) struct Fix {
    pub reasons: &'static [&'static str],
    pub fix: &'static str,
}

/// README's rows, in its order: the reasons of a row, then its fix.
#[rustfmt::skip]
pub(super) const FIXES: &[Fix] = &[
    Fix { reasons: &["no_credentials"], fix: "The caller sent nothing where the integration's method looks: e.g. Basic credentials on a `url_key` route, a Bearer token on a `basic` route, `apiKey` on an `api_key` route. Make the caller use the integration's `auth` method." },
    Fix { reasons: &["bad_password"], fix: "The password was rotated in one place only: update it in the calling system (or `password_hash` here via `portcullis hash-password`). The old password stops working at once after a reload." },
    Fix { reasons: &["password_expired"], fix: "`password_expires_at` has passed: set a new password and date." },
    Fix { reasons: &["user_disabled"], fix: "The `[[users]]` entry has `disabled = true`." },
    Fix { reasons: &["unknown_user", "unknown_key"], fix: "Typo in the user or key id, or the entry was removed." },
    Fix { reasons: &["key_wrong_integration"], fix: "A key is bound to ONE integration: make a key for this one with `portcullis keygen --integration PLAN/INTEGRATION`." },
    Fix { reasons: &["bad_secret"], fix: "The secret does not match `secret_hash`: the key was regenerated; update the caller." },
    Fix { reasons: &["bad_url_key"], fix: "The key in `?apiKey=` is wrong or was rotated (`portcullis urlkey`)." },
    Fix { reasons: &["credential_withdrawn"], fix: "With `[shared]`, a reload on another replica changed or removed this password, URL key, certificate name, API key or client secret: roll the new config out to every replica, and give the caller the new credential. If every credential is refused, the replica was told of more withdrawals than it keeps (`portcullis_table_full_total{table=\"withdrawals\"}`); it recovers once they end (a day)." },
    Fix { reasons: &["token_expired", "wrong_audience", "wrong_issuer", "unknown_kid", "bad_signature", "alg_not_allowed", "token_inactive"], fix: "Check the identity provider settings against `[oauth]` (`issuer`, `audience`, `jwks_url`, `algorithms`) and the clocks (`leeway`)." },
    Fix { reasons: &["no_plan_access"], fix: "The user lacks the role or name the plan's `access` rule asks for." },
    Fix { reasons: &["not_a_sender"], fix: "The user may use the plan but is not in the integration's `senders` rule." },
    Fix { reasons: &["policy_denied"], fix: "A `when` policy of the plan or the integration is false for this request: the log's `detail` (and the admin page's refusals) says which; `portcullis explain` shows each rule's value." },
    Fix { reasons: &["policy_error"], fix: "A `when` policy could not be evaluated (a claim the token lacks, a value of the wrong type, a result that is not true or false): the CEL message is in the log's `detail` and on the admin page, never in the answer. Guard optional claims with `has(claims.x)`." },
    Fix { reasons: &["locked_out"], fix: "Too many failures from this address for this user or key: fix the credentials, then wait `Retry-After` (`[lockout] duration`)." },
    Fix { reasons: &["rate_limited"], fix: "Over the plan's or the integration's `rate` (the `RateLimit-Policy` field names which: `\"plan\"` or `\"integration\"`): the caller sends faster than allowed, or several callers share one budget (`key = \"integration\"`). Slow the caller down to the policy, honour `Retry-After`, or raise `requests`/`burst` (a raised limit applies to budgets already spent at the next request). `portcullis explain` shows the limits that apply." },
    Fix { reasons: &["rate_unavailable"], fix: "A limit with `rate_fail = \"closed\"` could not be counted because Redis did not answer (`portcullis_shared_errors_total{op=\"rate\"}`): bring Redis back, or use `rate_fail = \"local\"` to count against this replica's share meanwhile." },
    Fix { reasons: &["rate_table_full"], fix: "The memory table of rate budgets is full (`portcullis_table_full_total{table=\"rate\"}`, 100 000 budgets, each live only until it is full again): a flood of distinct principals or client addresses on limited routes. Find the source in the access log; `key = \"integration\"` keeps one budget per route." },
    Fix { reasons: &["no_route", "method_not_allowed"], fix: "Wrong URL or method: compare with the integration's `path` and `methods` (the 405 lists them in `Allow`)." },
    Fix { reasons: &["target_unreachable", "token_fetch_failed"], fix: "The message says which: a wrong `base_url`, an untrusted or expired certificate, a name mismatch, or the token server's own error (`invalid_client`...). Try `portcullis endpoint test NAME`." },
    Fix { reasons: &["max_connections"], fix: "Each tunnel over HTTP/2 takes a place in the listener's `max_connections` (it holds an upstream socket of its own) and all are taken: close idle tunnels or raise `[limits] max_connections`." },
    Fix { reasons: &["introspection_unavailable", "jwks_unavailable"], fix: "The authorization server is down or slow; Portcullis fails closed." },
    Fix { reasons: &["ambiguous_credentials"], fix: "The request carried two `Authorization` headers, two different `apiKey` values, or a header credential and an `apiKey` together: send exactly one." },
    Fix { reasons: &["critical_header", "untrusted_key_header", "missing_claim", "malformed_token", "token_not_yet_valid", "client_not_allowed"], fix: "The token asks for what Portcullis never does (`crit`, `jku`, `x5c`...), lacks a required claim (`iss`, `aud`, `exp`), has non-numeric times or a future `iat`/`nbf`, or names a client outside `allowed_client_ids`." },
    Fix { reasons: &["overloaded"], fix: "The argon2id pool's queue is full or its deadline passed (a bad-login flood): the caller retries; raise `[auth] hash_workers` or `hash_queue` only with the memory to match." },
    Fix { reasons: &["body_timeout"], fix: "The request body stalled for `body_read_timeout` or was not complete within `request_timeout`: a slow or stuck client." },
    Fix { reasons: &["client_closed"], fix: "The client closed or reset before the answer (`portcullis_client_closed_total`); nothing to fix on the gateway." },
    Fix { reasons: &["no_client_credentials", "bad_client_credentials", "unsupported_client_authentication"], fix: "The client sent no credentials (or a `client_id` alone), ones that match no `[[oauth.clients]]` entry, or an `Authorization` scheme other than `Basic`: clients authenticate with HTTP Basic or with `client_id` and `client_secret` in the form." },
    Fix { reasons: &["ambiguous_token_request"], fix: "RFC 6749 forbids what the request did: a parameter sent twice (even with equal or empty values, or once percent-encoded as `grant%5Ftype`), a parameter name in another case (`Grant_Type`), two `Authorization` fields, or client credentials both in `Authorization: Basic` and in the form (`client_secret` in the form beside Basic, or a form `client_id` other than Basic's). Send each parameter once and authenticate the client one way." },
    Fix { reasons: &["malformed_token_request", "unsupported_grant_type", "bad_password", "bad_refresh_token"], fix: "The form is not `application/x-www-form-urlencoded` (or has a malformed `%` escape, a value that is not UTF-8, more than 32 parameters), the `Authorization: Basic` value is not base64 of `id:secret`, or a field is missing; the grant is not supported; the user's credentials are refused; the refresh token is unknown, used (its family is then revoked), expired or another client's." },
    Fix { reasons: &["cannot_sign"], fix: "The signing key could not sign: check `oauth.signing_key`." },
    Fix { reasons: &["malformed_credentials"], fix: "The `Authorization: Basic` value is not base64 of `user:secret` (or the user part is empty): fix the caller's encoding. (With a client certificate: see below.)" },
    Fix { reasons: &["no_password"], fix: "The `[[users]]` entry has no `password_hash`, so it cannot use `basic`: add one (`portcullis hash-password`) or use the user's other method." },
    Fix { reasons: &["oauth_not_configured"], fix: "The integration accepts `oauth` but the config has no `[oauth]` section." },
    Fix { reasons: &["bad_request"], fix: r#"The path is ambiguous (dot segments, `//`, encoded `/` `\` `;` `%`, bytes that are not UTF-8, a case or trailing-slash twin of another integration) or the target cannot be forwarded; the message says which."# },
    Fix { reasons: &["body_too_large", "headers_too_large"], fix: "The body is over `max_body_bytes`, or the head over `max_header_bytes` or `max_headers` fields." },
    Fix { reasons: &["headers_too_large", "uri_too_long", "malformed_request"], fix: "The HTTP/1.1 parser refused the head before routing: more than twice `max_headers` fields, a head past `max_header_bytes` plus 16 KiB, a URI over 64 KiB, or a malformed request line or header. Logged on `portcullis::access` and counted in `portcullis_malformed_requests_total{reason}`." },
    Fix { reasons: &["upstream_unreachable", "upstream_error"], fix: "The plan's `upstream` refused the connection or is down, or broke the response: check the service behind Portcullis." },
    Fix { reasons: &["upgrade_refused"], fix: "The service did not answer the gateway's WebSocket handshake with `101`, `Upgrade: websocket` and the matching `Sec-WebSocket-Accept` (or switched to another protocol, or answered `101` to a request that asked for no upgrade): check that the path is a WebSocket endpoint of the service. The client's connection closes." },
    Fix { reasons: &["ambiguous_original_request"], fix: "The subrequest names the original request twice and differently (`X-Original-*` and `X-Forwarded-*` disagree, or one of them is sent twice): set `[forward_auth] ingress` and have the ingress clear client copies (see the snippets above)." },
    Fix { reasons: &["assertion_signing_failed"], fix: "The `X-Portcullis-Assertion` could not be signed: check `[assertion] key`." },
    Fix { reasons: &["upstream_timeout"], fix: "The upstream did not answer its response head within `request_timeout`." },
    Fix { reasons: &["untrusted_forwarder"], fix: "The subrequest came from a peer outside `[listen] trusted_proxies`: add the ingress's address there." },
    Fix { reasons: &["unknown_certificate"], fix: "The certificate chains to `client_ca` but none of its names (SAN DNS, URI, email; the CN only when the certificate has no SAN of any type, so a UPN-only or IP-only SAN turns the CN off) is in any user's `cert_names`. A certificate of another CA, or a revoked one, fails the TLS handshake instead (`portcullis_tls_handshake_failures_total`)." },
    Fix { reasons: &["ambiguous_certificate"], fix: "The certificate's names belong to two different users (e.g. a SAN of one user's `cert_names` and a SAN of another's, or two CNs): reissue it with one user's names, or fix `cert_names`." },
    Fix { reasons: &["malformed_credentials"], fix: "The certificate verified but its subjectAltName extension is empty, repeated or not readable DER, or a Common Name is not a string: it names nobody; reissue it." },
    Fix { reasons: &["token_revoked"], fix: "The token was revoked at `POST /oauth/revoke` (on any replica): sign in again." },
    Fix { reasons: &["token_of_another_client"], fix: "A client may revoke only tokens issued to it." },
    Fix { reasons: &["refresh_unavailable", "revocation_unavailable"], fix: r#"`[shared] backend = "redis"` and Redis does not answer: rotation, sign-ins that issue refresh tokens, and revocation fail closed until it is back (`portcullis_shared_errors_total`); passwords, API keys and URL keys keep working; builtin bearer tokens get 503 while the replica cannot hear of revocations. On a Sentinel set also while fewer replicas than `wait_replicas` confirm writes (`portcullis_shared_errors_total{op="replicate"}`): after a failover with a single replica, until the old master has become the new one's replica."# },
    Fix { reasons: &["revocations_full", "client_revocations_full"], fix: "The table of revoked tokens still live is full (`[oauth] max_revocations`), or this client's share of it (`max_revocations_per_client`). The token was NOT revoked: retry after `Retry-After`, or raise the limit; a client that fills its share is revoking far more than usual." },
    Fix { reasons: &["revocation_unavailable"], fix: "With `[shared]`, the replica has not yet read the revocations from Redis (it started while Redis was down, or lost its events subscription and has not yet subscribed and read them again), or was told of more revocations than its `max_revocations` holds: give every replica the same `[oauth]` limits; it recovers by itself once Redis answers or the revocations expire." },
    Fix { reasons: &["locked_out"], fix: "The lockout table (`[cache] max_entries`) or the client address's share of it (`[lockout] max_entries_per_address`) is full, so a new (user, address) pair cannot be counted and is not verified. One address filling its share is a guessing attack; the table filling means many addresses." },
    Fix { reasons: &["bad_refresh_token"], fix: "A value in Redis failed its integrity check: written by something without `shared.secret`, by a replica with another secret, or by a version before the check (sign in again). Find who can write to Redis." },
    Fix { reasons: &["issuer_not_allowed"], fix: "The token's issuer is not in the integration's `issuers` list: use a token of an issuer it lists, or add the issuer there." },
    Fix { reasons: &["signing_key_unavailable"], fix: "The builtin issuer has no generated key it may sign with: the current `signing_key_rotation` period's must be agreed through `[shared]` (Redis), Redis does not answer, and the previous period's is gone too. Retry shortly, or configure `signing_keys`." },
    Fix { reasons: &["unknown_endpoint"], fix: "The first path segment names no `[[endpoints]]` entry." },
    Fix { reasons: &["cannot_sign", "body_too_large_to_digest"], fix: "The request cannot be signed as configured (e.g. a covered header is missing), or its body is over the largest whose `Content-Digest` is computed." },
    Fix { reasons: &["bad_header", "bad_token", "body_too_large_to_replay"], fix: "A signature header could not be formed; the token server gave a token that cannot be a header; the target asked for credentials again and the body was too large to keep for a replay." },
];

/// The fix of the first row that names `reason`.
pub(super) fn fix_for(reason: &str) -> Option<&'static str> {
    FIXES.iter().find(|f| f.reasons.contains(&reason)).map(|f| f.fix)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reason as the troubleshooting table writes it: a backticked snake_case word
    /// (metric names, also backticked in that column, are not reasons).
    fn is_reason(word: &str) -> bool {
        word.starts_with(|c: char| c.is_ascii_lowercase())
            && word
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !word.starts_with("portcullis_")
    }

    fn backticked(cell: &str) -> Vec<&str> {
        cell.split('`').skip(1).step_by(2).collect()
    }

    fn normalised(text: &str) -> String {
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// README's troubleshooting rows: the reasons each names and its fix.
    fn readme_rows() -> Vec<(Vec<String>, String)> {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
        let start = readme
            .find("### 401/403 troubleshooting")
            .expect("troubleshooting section");
        let section = &readme[start..];
        let section = &section[..section[4..].find("\n## ").map_or(section.len(), |i| i + 4)];
        section
            .lines()
            .filter(|l| l.starts_with('|'))
            // The header row, up to the `|---|` line under it.
            .skip_while(|l| !l.starts_with("|---"))
            .skip(1)
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').collect();
                let reasons: Vec<String> = backticked(cells.get(2)?)
                    .into_iter()
                    .filter(|w| is_reason(w))
                    .map(str::to_string)
                    .collect();
                let fix = normalised(cells.get(3)?);
                (!reasons.is_empty()).then_some((reasons, fix))
            })
            .collect()
    }

    /// The code's table is README's, row by row: the same reasons in the same rows, the
    /// same fix text, the same order (so the first row naming a reason is the same in
    /// both). Every reason of one is therefore in the other with the same fix.
    #[test]
    fn the_fixes_are_readmes_troubleshooting_table() {
        let readme = readme_rows();
        assert!(readme.len() >= 40, "{} rows read from README", readme.len());
        for (i, (reasons, fix)) in readme.iter().enumerate() {
            let Some(row) = FIXES.get(i) else {
                panic!("README row {} ({reasons:?}) is missing from FIXES", i + 1);
            };
            assert_eq!(row.reasons, reasons.as_slice(), "row {}", i + 1);
            assert_eq!(&normalised(row.fix), fix, "row {} ({reasons:?})", i + 1);
        }
        assert_eq!(FIXES.len(), readme.len(), "FIXES has rows README does not");
    }

    /// A reason named by two rows gets the first row's fix, as README reads top down.
    #[test]
    fn a_reason_gets_its_first_rows_fix() {
        assert!(fix_for("locked_out").is_some_and(|f| f.starts_with("Too many failures")));
        assert!(fix_for("malformed_credentials").is_some_and(|f| f.contains("Authorization: Basic")));
        assert!(fix_for("bad_password").is_some_and(|f| f.starts_with("The password was rotated")));
        assert_eq!(fix_for("reason"), None);
        assert_eq!(fix_for("no_such_reason"), None);
    }
}
