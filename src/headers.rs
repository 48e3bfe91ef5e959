//! Header names and the edits made to every forwarded message, in place.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The IETF rate-limit fields (draft-ietf-httpapi-ratelimit-headers).
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_PORTCULLIS_USER: HeaderName = HeaderName::from_static("x-portcullis-user");
pub const X_PORTCULLIS_ROLES: HeaderName = HeaderName::from_static("x-portcullis-roles");
pub const X_PORTCULLIS_AUTH_METHOD: HeaderName = HeaderName::from_static("x-portcullis-auth-method");
pub const X_PORTCULLIS_PLAN: HeaderName = HeaderName::from_static("x-portcullis-plan");
pub const X_PORTCULLIS_INTEGRATION: HeaderName = HeaderName::from_static("x-portcullis-integration");
pub const X_PORTCULLIS_CLIENT_ID: HeaderName = HeaderName::from_static("x-portcullis-client-id");
/// The OAuth issuer (its configured name) whose token named the principal.
pub const X_PORTCULLIS_ISSUER: HeaderName = HeaderName::from_static("x-portcullis-issuer");
pub const X_PORTCULLIS_ASSERTION: HeaderName = HeaderName::from_static("x-portcullis-assertion");

const PORTCULLIS_PREFIX: &str = "x-portcullis-";

/// Hop-by-hop headers (RFC 9110 section 7.6.1, plus the legacy `Keep-Alive` and
/// `Proxy-Connection`, and `HTTP2-Settings`, which belongs to an h2c upgrade of one
/// connection): they describe one connection and are never forwarded.
/// `Connection` comes first: [`remove_hop_by_hop`] reads its bit as bit 0.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("http2-settings"),
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];
const TE_INDEX: usize = 6;
const TE_CODING_INDEX: usize = 8;

/// Removes the hop-by-hop headers and every header named in `Connection`.
///
/// One pass over the names finds what is there: most messages carry none of these, or
/// only `Connection` (most responses), and a removal per listed name would hash each of
/// them.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Bit i: HOP_BY_HOP[i] is present; the bit after them: `Upgrade`.
    let upgrade_bit = 1u16 << HOP_BY_HOP.len();
    let mut present = 0u16;
    for k in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present |= 1 << i;
        } else if k == header::UPGRADE {
            present |= upgrade_bit;
        }
    }
    if present == 0 {
        return;
    }
    // Names listed in Connection are hop-by-hop too (RFC 9110 section 7.6.1). A token
    // that is itself a hop-by-hop name (`keep-alive`, the usual one) goes anyway.
    let mut named: Vec<HeaderName> = Vec::new();
    if present & 1 != 0 {
        for t in headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
        {
            let t = t.trim();
            let known = HOP_BY_HOP
                .iter()
                .chain([&header::UPGRADE])
                .any(|h| h.as_str().eq_ignore_ascii_case(t));
            if t.is_empty() || known {
                continue;
            }
            if let Ok(n) = HeaderName::from_bytes(t.as_bytes()) {
                named.push(n);
            }
        }
    }
    for n in named {
        headers.remove(n);
    }
    // `TE: trailers` says the client takes trailers (gRPC needs it); Portcullis streams
    // trailers back, so that one value goes on. Nothing else of TE does.
    let trailers = present & (1 << TE_INDEX) != 0
        && headers
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    for (i, n) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(n);
        }
    }
    if present & upgrade_bit != 0 {
        headers.remove(header::UPGRADE);
    }
    // A message framed by Transfer-Encoding and also carrying Content-Length is framed by
    // the former; the length goes too (RFC 9112 section 6.3), or the next hop would cut
    // the body at it.
    if present & (1 << TE_CODING_INDEX) != 0 {
        headers.remove(header::CONTENT_LENGTH);
    }
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Request headers a client must never set: lenient frameworks route, dispatch or
/// identify the client by them, so only a proxy in front may. Portcullis sets the
/// `X-Forwarded-*` family itself and forwards none of these from a client.
const SPOOFABLE: [&str; 19] = [
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-forwarded-uri",
    "x-forwarded-path",
    "x-forwarded-prefix",
    "x-forwarded-method",
    "x-forwarded-server",
    "x-forwarded-port",
    "x-original-method",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-envoy-original-path",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "forwarded",
];

/// Whether a header name, read the way CGI, WSGI, PHP and Rack read it (`_` and `-`
/// alike, any case), is in the `X-Portcullis-` family.
fn is_portcullis(name: &str) -> bool {
    let n = name.as_bytes();
    let p = PORTCULLIS_PREFIX.as_bytes();
    n.len() >= p.len()
        && n[..p.len()]
            .iter()
            .zip(p)
            .all(|(a, b)| a.eq_ignore_ascii_case(b) || (*a == b'_' && *b == b'-'))
}

/// Whether a client-sent request header is dropped before anything else looks at it.
fn dropped(name: &str, underscores: bool) -> bool {
    is_portcullis(name) || (!underscores && name.contains('_')) || SPOOFABLE.contains(&name)
}

/// Removes from a client's request every header only Portcullis may set: the
/// `X-Portcullis-*` family in every spelling (`X_Portcullis_User` too), every name with
/// an `_` unless `underscores` (as nginx's `underscores_in_headers off`), and the
/// routing and client-identity overrides in [`SPOOFABLE`].
pub fn sanitize(headers: &mut HeaderMap, underscores: bool) {
    // Fast path: most requests carry none, and scanning keys allocates nothing.
    if !headers.keys().any(|k| dropped(k.as_str(), underscores)) {
        return;
    }
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| dropped(k.as_str(), underscores))
        .cloned()
        .collect();
    for n in spoofed {
        headers.remove(n);
    }
}

/// Removes every client-sent `X-Portcullis-*` header, however spelled.
pub fn strip_portcullis(headers: &mut HeaderMap) {
    if !headers.keys().any(|k| is_portcullis(k.as_str())) {
        return;
    }
    let spoofed: Vec<HeaderName> = headers.keys().filter(|k| is_portcullis(k.as_str())).cloned().collect();
    for n in spoofed {
        headers.remove(n);
    }
}

/// Appends the client address to `X-Forwarded-For` and sets `-Proto` and `-Host`.
/// `client` is the peer's address as a header value, made once per connection; the
/// common case (no `X-Forwarded-For` from the client) allocates nothing. Several
/// `X-Forwarded-For` lines are one list (RFC 9110 section 5.3): they are joined in order
/// into one line, so the upstream reads the same list the gateway read.
pub fn set_forwarded(headers: &mut HeaderMap, client: &HeaderValue, tls: bool, host: Option<&HeaderValue>) {
    let mut joined: Vec<u8> = Vec::new();
    for prev in headers.get_all(&X_FORWARDED_FOR) {
        let prev = prev.as_bytes().trim_ascii();
        if !prev.is_empty() {
            joined.extend_from_slice(prev);
            joined.extend_from_slice(b", ");
        }
    }
    if joined.is_empty() {
        headers.insert(X_FORWARDED_FOR, client.clone());
    } else {
        joined.extend_from_slice(client.as_bytes());
        // Joined from valid values with ", ": always a valid value.
        match HeaderValue::from_bytes(&joined) {
            Ok(v) => {
                headers.insert(X_FORWARDED_FOR, v);
            }
            Err(_) => {
                headers.insert(X_FORWARDED_FOR, client.clone());
            }
        }
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    match host {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST, h.clone());
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
}

/// Total size of a header block as counted against `max_header_bytes`: names, values and
/// the `: ` and CRLF around each.
pub fn size(headers: &HeaderMap) -> usize {
    headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum()
}

/// Accepts a client's `X-Request-Id` only if it is short and plain, so it is safe to log.
pub fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
}

/// A fresh request id: 128 random bits as 32 hex digits.
pub fn new_request_id() -> HeaderValue {
    let id: u128 = rand::random();
    let mut buf = [0u8; 32];
    // 16 bytes always encode into exactly 32 hex digits.
    let _ = hex::encode_to_slice(id.to_be_bytes(), &mut buf);
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// The request's id: the client's `X-Request-Id` when it is one to keep
/// ([`valid_request_id`]), else a fresh one. Inbound and egress take it the same way.
pub fn request_id(h: &http::HeaderMap) -> HeaderValue {
    match h.get(X_REQUEST_ID) {
        Some(v) if valid_request_id(v) => v.clone(),
        _ => new_request_id(),
    }
}

/// Whether a `Content-Type` is gRPC's (`application/grpc`, `application/grpc+proto`,
/// with parameters or not; media types ignore case). gRPC-Web (`application/grpc-web`)
/// is another protocol and is not.
pub fn is_grpc(content_type: &HeaderValue) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    let v = content_type.as_bytes().trim_ascii();
    v.len() >= GRPC.len()
        && v[..GRPC.len()].eq_ignore_ascii_case(GRPC)
        && matches!(v.get(GRPC.len()), None | Some(b'+' | b';' | b' ' | b'\t'))
}

/// An authority as `host[:port]`, never with its user info: how the access log, spans,
/// `explain`, the admin page and a `Host` header name an upstream or a URL's server, so
/// that a password in a URL cannot reach any of them.
pub struct HostPort<'a> {
    pub host: &'a str,
    pub port: Option<u16>,
}

impl<'a> HostPort<'a> {
    /// The host, and the port when the authority names one.
    pub fn of(a: &'a http::uri::Authority) -> Self {
        HostPort {
            host: a.host(),
            port: a.port_u16(),
        }
    }

    /// The host and always a port: the authority's, else `default`.
    pub fn with_port(a: &'a http::uri::Authority, default: u16) -> Self {
        HostPort {
            host: a.host(),
            port: Some(a.port_u16().unwrap_or(default)),
        }
    }

    /// The host, and the port unless it is `default` (what a client puts in `Host`).
    pub fn without_default(a: &'a http::uri::Authority, default: u16) -> Self {
        HostPort {
            host: a.host(),
            port: a.port_u16().filter(|p| *p != default),
        }
    }
}

impl std::fmt::Display for HostPort<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.host),
            None => f.write_str(self.host),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_is_known_by_its_media_type_in_any_case() {
        for yes in [
            "application/grpc",
            "application/GRPC",
            "Application/grpc+proto",
            "application/grpc; charset=x",
        ] {
            assert!(is_grpc(&HeaderValue::from_static(yes)), "{yes}");
        }
        for no in [
            "application/grpcfoo",
            "application/grpc-web+proto",
            "application/json",
            "application/grp",
        ] {
            assert!(!is_grpc(&HeaderValue::from_static(no)), "{no}");
        }
    }

    #[test]
    fn host_and_port_never_show_user_info() {
        let a: http::uri::Authority = "user:secret@example.com:8443".parse().unwrap();
        assert_eq!(HostPort::of(&a).to_string(), "example.com:8443");
        assert_eq!(HostPort::without_default(&a, 8443).to_string(), "example.com");
        let plain: http::uri::Authority = "u:p@[::1]".parse().unwrap();
        assert_eq!(HostPort::with_port(&plain, 443).to_string(), "[::1]:443");
        assert_eq!(HostPort::of(&plain).to_string(), "[::1]");
    }

    #[test]
    fn a_client_request_id_is_kept_only_when_plain() {
        let mut h = http::HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-1"));
        assert_eq!(request_id(&h), "abc-1");
        h.insert(X_REQUEST_ID, HeaderValue::from_static("a b"));
        assert_ne!(request_id(&h), "a b");
        assert_eq!(request_id(&h).len(), 32);
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        assert_eq!(HOP_BY_HOP[0], header::CONNECTION);
        assert_eq!(HOP_BY_HOP[TE_INDEX], header::TE);
        assert_eq!(HOP_BY_HOP[TE_CODING_INDEX], header::TRANSFER_ENCODING);
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, X-Secret-Hop"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("gzip, trailers"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
        assert!(h.contains_key("x-kept"));
        // Only `trailers` of TE goes on: the gateway passes trailers back.
        assert_eq!(h[header::TE], "trailers");
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        remove_hop_by_hop(&mut h);
        assert!(h.is_empty());
        // Every line of Connection counts, names match in any case, and a token that
        // names no header present removes nothing else.
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("close"));
        h.append(header::CONNECTION, HeaderValue::from_static(" X-A ,, x-b"));
        for n in ["x-a", "x-b", "x-c", "close-not", "proxy-connection", "http2-settings"] {
            h.insert(n, HeaderValue::from_static("1"));
        }
        h.insert(header::TRAILER, HeaderValue::from_static("x"));
        h.insert(header::PROXY_AUTHORIZATION, HeaderValue::from_static("Basic x"));
        remove_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["close-not", "x-c"]);
        // Transfer-Encoding and Content-Length together: the length goes with the coding.
        let mut h = HeaderMap::new();
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        remove_hop_by_hop(&mut h);
        assert!(h.is_empty());
        // A message without any keeps every header.
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn portcullis_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert("x-portcullis-user", HeaderValue::from_static("admin"));
        h.insert("X-Portcullis-Roles", HeaderValue::from_static("root"));
        h.insert("x-portcullisx", HeaderValue::from_static("kept"));
        h.insert("x_portcullis_user", HeaderValue::from_static("admin"));
        h.insert("x-portcullis_roles", HeaderValue::from_static("root"));
        strip_portcullis(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn sanitize_drops_underscores_and_overrides() {
        let mut h = HeaderMap::new();
        h.insert("x_custom", HeaderValue::from_static("1"));
        h.insert("x-original-url", HeaderValue::from_static("/admin"));
        h.insert("x-http-method-override", HeaderValue::from_static("DELETE"));
        h.insert("x_portcullis_user", HeaderValue::from_static("admin"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let mut allowed = h.clone();
        sanitize(&mut h, false);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), vec!["x-kept"]);
        // The opt-out keeps other underscored names, never the X-Portcullis family.
        sanitize(&mut allowed, true);
        let mut kept: Vec<_> = allowed.keys().map(|k| k.as_str().to_string()).collect();
        kept.sort();
        assert_eq!(kept, vec!["x-kept", "x_custom"]);
    }

    #[test]
    fn request_ids() {
        assert!(valid_request_id(&HeaderValue::from_static("abc-123")));
        assert!(!valid_request_id(&HeaderValue::from_static("a b")));
        assert!(!valid_request_id(&HeaderValue::from_str(&"a".repeat(129)).unwrap()));
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert_ne!(id, new_request_id());
    }
}

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A request's place in a trace: the trace, the caller's span (`None`: no valid
/// `traceparent`, so a new trace), the flags, the gateway's own span and the span of its
/// upstream call (the parent the upstream sees).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceIds {
    pub trace: [u8; 16],
    pub parent: Option<[u8; 8]>,
    pub flags: u8,
    pub server_span: [u8; 8],
    pub hop_span: [u8; 8],
}

/// The sampling threshold of new traces for a ratio in 0.0..=1.0: see [`trace_of`].
pub fn sample_threshold(ratio: f64) -> u64 {
    // 2^63 × ratio, exact at both ends (0 and 2^63).
    (ratio.clamp(0.0, 1.0) * 9_223_372_036_854_775_808.0) as u64
}

/// The trace a request belongs to: its valid `traceparent`'s (and its `sampled` flag), or
/// a new one, sampled when the top 63 bits of its id's last 8 bytes fall below
/// `sample` ([`sample_threshold`]; 0 never, 2^63 always), as OpenTelemetry's trace-id
/// ratio sampler decides.
pub fn trace_of(h: &HeaderMap, sample: u64) -> TraceIds {
    // One draw for all three new ids; an id must not be all zeros (W3C), so a zero last
    // byte (which leaves the rest random) becomes 1.
    let mut r: [u8; 32] = rand::random();
    for end in [15, 23, 31] {
        if r[end] == 0 {
            r[end] = 1;
        }
    }
    let id8 = |at: usize| -> [u8; 8] { r[at..at + 8].try_into().expect("8 bytes") };
    let parsed = h.get(TRACEPARENT).and_then(|v| parse_traceparent(v.as_bytes()));
    let (trace, parent, flags) = match parsed {
        Some((t, p, f)) => (t, Some(p), f),
        None => {
            let low = u64::from_be_bytes(r[8..16].try_into().expect("8 bytes"));
            (r[..16].try_into().expect("16 bytes"), None, u8::from(low >> 1 < sample))
        }
    };
    TraceIds {
        trace,
        parent,
        flags,
        server_span: id8(16),
        hop_span: id8(24),
    }
}

/// W3C Trace Context for the upstream hop: a valid `traceparent` continues its trace
/// (same trace id and flags, a new span id for this hop; `tracestate` passes on); an
/// invalid one is replaced, with its `tracestate`, by a new trace, as is a missing one,
/// so every forwarded request carries a trace the upstream can join.
pub fn continue_trace(h: &mut HeaderMap, ids: &TraceIds) {
    if ids.parent.is_none() {
        h.remove(TRACESTATE);
    }
    // `00-` trace `-` span `-` flags, written in place: one allocation, the value's own.
    let mut v = *b"00-00000000000000000000000000000000-0000000000000000-00";
    let ok = hex::encode_to_slice(ids.trace, &mut v[3..35]).is_ok()
        && hex::encode_to_slice(ids.hop_span, &mut v[36..52]).is_ok()
        && hex::encode_to_slice([ids.flags], &mut v[53..55]).is_ok();
    if let (true, Ok(v)) = (ok, HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(&v))) {
        h.insert(TRACEPARENT, v);
    }
}

/// `00-TRACE(32 hex)-PARENT(16 hex)-FLAGS(2 hex)`, lower-case, ids not all zero; a
/// higher version is read by its first four fields, as the specification asks.
fn parse_traceparent(v: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    if v.len() < 55 || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let lower_hex = |b: &[u8]| b.iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
    let (version, trace, parent, flags) = (&v[0..2], &v[3..35], &v[36..52], &v[53..55]);
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    if ![version, trace, parent, flags].iter().all(|f| lower_hex(f)) || version == b"ff" {
        return None;
    }
    if version == b"00" && v.len() != 55 {
        return None;
    }
    let mut t = [0u8; 16];
    hex::decode_to_slice(trace, &mut t).ok()?;
    let mut p = [0u8; 8];
    hex::decode_to_slice(parent, &mut p).ok()?;
    if t == [0; 16] || p == [0; 8] {
        return None;
    }
    let mut f = [0u8; 1];
    hex::decode_to_slice(flags, &mut f).ok()?;
    Some((t, p, f[0]))
}

#[cfg(test)]
mod trace_tests {
    use super::*;

    #[test]
    fn new_traces_are_sampled_by_their_id_and_callers_flags_are_followed() {
        let none = HeaderMap::new();
        for _ in 0..1000 {
            assert_eq!(trace_of(&none, sample_threshold(1.0)).flags, 1);
            assert_eq!(trace_of(&none, sample_threshold(0.0)).flags, 0);
            let half = trace_of(&none, sample_threshold(0.5));
            let low = u64::from_be_bytes(half.trace[8..].try_into().unwrap());
            assert_eq!(half.flags == 1, low < 1 << 63, "{:x?}", half.trace);
        }
        for (flags, want) in [("00", 0), ("01", 1)] {
            let mut h = HeaderMap::new();
            let v = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}");
            h.insert(TRACEPARENT, HeaderValue::from_str(&v).unwrap());
            for sample in [0, sample_threshold(0.5), sample_threshold(1.0)] {
                assert_eq!(trace_of(&h, sample).flags, want, "{v} at {sample}");
            }
        }
    }

    #[test]
    fn traceparent_is_continued_or_replaced() {
        let mut h = HeaderMap::new();
        h.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        h.insert(TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
        let ids = trace_of(&h, 0);
        continue_trace(&mut h, &ids);
        let tp = h[TRACEPARENT].to_str().unwrap().to_string();
        assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(tp.ends_with("-01"));
        assert_ne!(&tp[36..52], "00f067aa0ba902b7");
        assert_eq!(h[TRACESTATE], "congo=t61rcWkgMzE");
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            let mut h = HeaderMap::new();
            h.insert(TRACEPARENT, HeaderValue::from_static(bad));
            h.insert(TRACESTATE, HeaderValue::from_static("a=b"));
            let ids = trace_of(&h, 0);
            continue_trace(&mut h, &ids);
            let tp = h[TRACEPARENT].to_str().unwrap();
            assert!(parse_traceparent(tp.as_bytes()).is_some(), "{bad} -> {tp}");
            assert!(
                !tp.contains("4bf92f3577b34da6a3ce929d0e0e4736") || bad.contains("4BF"),
                "{bad}"
            );
            assert!(h.get(TRACESTATE).is_none(), "{bad}");
        }
        // A future version is read by its known fields.
        assert!(parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more").is_some());
    }
}
