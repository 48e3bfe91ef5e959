//! The form of a token or revocation request (RFC 6749 3.2, RFC 7009 2.1): strictly
//! decoded, every parameter at most once, one spelling of each name.

use std::collections::HashMap;

use http::StatusCode;

use crate::error::OAuthError;

/// The parameters the token and revocation endpoints read (all lowercase). A name that
/// differs from one of them only in ASCII case is refused, not ignored as unknown: one
/// spelling per request, whatever a client or an intermediary thinks names are.
const KNOWN_PARAMS: &[&str] = &[
    "grant_type",
    "username",
    "password",
    "refresh_token",
    "scope",
    "client_id",
    "client_secret",
    "token",
    "token_type_hint",
];

/// More parameters than any token or revocation request has (the form is 64 KiB at most).
const MAX_PARAMS: usize = 32;

/// A 400 `invalid_request` (RFC 6749 5.2).
pub(super) fn invalid_request(description: &'static str, reason: &'static str) -> OAuthError {
    OAuthError::new(StatusCode::BAD_REQUEST, "invalid_request", description, None, reason)
}

/// The parameters of an `application/x-www-form-urlencoded` token or revocation request.
///
/// - Every name at most once (RFC 6749 3.2), compared after percent-decoding
///   (`grant%5Ftype` is `grant_type`) and without regard to ASCII case; a repeat is
///   refused even with equal or empty values. A case variant of a name this endpoint
///   reads (`Grant_Type`) is refused too.
/// - Names and values are strictly percent-decoded: a malformed escape (`%zz`, `%4`) or
///   bytes that are not UTF-8 are refused, never replaced.
/// - A parameter with an empty value is treated as omitted (RFC 6749 3.2).
pub(super) fn parse_form(form: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let mut params = HashMap::new();
    let mut seen: Vec<String> = Vec::new();
    for piece in form.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        let (name, value) = match piece.iter().position(|b| *b == b'=') {
            Some(i) => (&piece[..i], &piece[i + 1..]),
            None => (piece, &b""[..]),
        };
        let malformed = || {
            invalid_request(
                "the form is not valid application/x-www-form-urlencoded UTF-8",
                "malformed_token_request",
            )
        };
        let name = form_decode(name).ok_or_else(malformed)?;
        let value = form_decode(value).ok_or_else(malformed)?;
        if name.is_empty() {
            return Err(malformed());
        }
        if seen.len() >= MAX_PARAMS {
            return Err(invalid_request("too many parameters", "malformed_token_request"));
        }
        let folded = name.to_ascii_lowercase();
        if seen.contains(&folded) {
            return Err(invalid_request(
                "a parameter is included more than once (RFC 6749 section 3.2)",
                "ambiguous_token_request",
            ));
        }
        if folded != name && KNOWN_PARAMS.contains(&folded.as_str()) {
            return Err(invalid_request(
                "parameter names are case-sensitive and lowercase (RFC 6749)",
                "ambiguous_token_request",
            ));
        }
        seen.push(folded);
        if !value.is_empty() {
            params.insert(name, value);
        }
    }
    Ok(params)
}

/// Strict `application/x-www-form-urlencoded` decoding of one name or value: `+` is a
/// space, `%XX` a byte; a malformed escape or a result that is not UTF-8 is `None`.
pub(super) fn form_decode(raw: &[u8]) -> Option<String> {
    // `to_digit(16)` takes exactly 0-9, a-f and A-F.
    let hex = |b: u8| char::from(b).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = hex(*bytes.next()?)?;
                let lo = hex(*bytes.next()?)?;
                out.push((hi << 4) | lo);
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding_is_strict() {
        assert_eq!(form_decode(b"a+b%20c%2B").as_deref(), Some("a b c+"));
        assert_eq!(
            form_decode(b"%4a%4A").as_deref(),
            Some("JJ"),
            "either case of hex digit"
        );
        for bad in [&b"%zz"[..], b"%4", b"%", b"%g0", b"%ff", b"%c3%28"] {
            assert_eq!(form_decode(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_name_twice_or_in_another_case_is_refused() {
        assert!(parse_form(b"grant_type=password&grant%5Ftype=password").is_err());
        assert!(parse_form(b"Grant_Type=password").is_err());
        assert!(
            parse_form(b"scope=&scope=a").is_err(),
            "a repeat is refused even when empty"
        );
        let params = parse_form(b"grant_type=client_credentials&scope=&x-custom=1").unwrap();
        assert_eq!(params.get("grant_type").map(String::as_str), Some("client_credentials"));
        assert!(!params.contains_key("scope"), "an empty value is omitted");
    }
}
