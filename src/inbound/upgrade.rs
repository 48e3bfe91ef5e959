//! WebSocket upgrades: an HTTP/1.1 `Upgrade: websocket` or an RFC 8441 extended
//! CONNECT, checked, asked of the upstream with a key of the gateway's own, and, once the
//! upstream's 101 proves it read that key, the tunnel between the two (bounded by
//! `upgrade_idle_timeout` and `upgrade_max_lifetime`).

use std::time::Duration;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Response, Version};

use super::ctx::Ctx;
use crate::authz::Permit;
use crate::error::{Body, Refusal};
use crate::gateway::Gateway;
use crate::server::activity::{Observed, Stamp};
use crate::server::listener::ConnInfo;

/// RFC 8441: a WebSocket over HTTP/2 arrives as an extended CONNECT (`:protocol`
/// websocket) on a path. It is routed, authenticated and authorized as the GET it stands
/// for (the method becomes GET here), and goes to the upstream as an HTTP/1.1 upgrade.
/// Whether the request is one.
pub(super) fn extended_connect(parts: &mut Parts) -> Result<bool, Refusal> {
    match parts.extensions.get::<hyper::ext::Protocol>() {
        Some(p) if parts.method == http::Method::CONNECT => {
            if !p.as_str().eq_ignore_ascii_case("websocket") {
                return Err(Refusal::BadRequest(
                    "extended CONNECT carries only the websocket protocol".into(),
                ));
            }
            parts.method = http::Method::GET;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// The upgrade phase: an authorized WebSocket upgrade, on an integration that allows it,
/// keeps the client's side of the connection. The upstream is asked for exactly
/// `websocket`, with a key of the gateway's own, whatever else the client offered (h2c
/// included).
pub(super) fn prepare(
    gw: &Gateway,
    conn: &ConnInfo,
    parts: &mut Parts,
    permit: &Permit,
    h2_websocket: bool,
) -> Result<Option<Upgrade>, Refusal> {
    let allowed = gw.routes()[permit.route()].websocket;
    if h2_websocket {
        if !allowed {
            return Err(Refusal::BadRequest(
                "WebSocket upgrades are not enabled for this integration".into(),
            ));
        }
        Ok(Some(h2_upgrade(conn, parts)?))
    } else if allowed && websocket_requested(parts) {
        Ok(Some(h1_upgrade(parts)?))
    } else {
        Ok(None)
    }
}

/// The tunnel phase: a tunnel opens only on a 101 that switched to WebSocket and proved
/// it read our key; anything else is the upstream refusing (or twisting) the upgrade,
/// and the client's connection closes with the 502. The client is answered with a head
/// of our own: 101 with the proof for its key (HTTP/1.1), or 200 (RFC 8441), and the
/// subprotocol and extensions agreed.
pub(super) fn open(
    limits: &crate::config::Limits,
    ctx: &mut Ctx,
    upgrade: Upgrade,
    mut resp: Response<Body>,
) -> Result<Response<Body>, Refusal> {
    if !websocket_accepted(&resp, &upgrade.key) {
        tracing::debug!(
            request_id = ?ctx.request_id,
            status = resp.status().as_u16(),
            "upstream did not accept the WebSocket handshake"
        );
        drop(resp);
        ctx.close = true;
        return Err(Refusal::BadGateway("upgrade_refused"));
    }
    let mut ok = Response::new(crate::error::full(bytes::Bytes::new()));
    for name in [header::SEC_WEBSOCKET_PROTOCOL, header::SEC_WEBSOCKET_EXTENSIONS] {
        for v in resp.headers().get_all(&name) {
            ok.headers_mut().append(name.clone(), v.clone());
        }
    }
    let (client, place) = match upgrade.side {
        Side::H1 { client, accept } => {
            *ok.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
            let h = ok.headers_mut();
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
            (client, None)
        }
        Side::H2 { client, place } => (client, place),
    };
    tokio::spawn(tunnel(
        client,
        hyper::upgrade::on(&mut resp),
        limits.upgrade_idle_timeout,
        limits.upgrade_max_lifetime,
        ctx.request_id.clone(),
        place,
    ));
    Ok(ok)
}

/// A WebSocket upgrade on its way to the upstream: the client's side of it, and the key
/// the gateway sends the upstream (its own, never the client's).
pub(super) struct Upgrade {
    side: Side,
    key: String,
}

impl Upgrade {
    /// The upgrade as the upstream is asked for it, on the rewritten head.
    pub(super) fn ask(&self, h: &mut http::HeaderMap) -> Result<(), Refusal> {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_str(&self.key).map_err(|_| Refusal::BadGateway("upgrade_refused"))?,
        );
        h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        Ok(())
    }
}

enum Side {
    /// HTTP/1.1 `Upgrade: websocket`; `accept` answers the client's own key.
    H1 {
        client: hyper::upgrade::OnUpgrade,
        accept: HeaderValue,
    },
    /// HTTP/2 extended CONNECT (RFC 8441), with the tunnel's place in `max_connections`.
    H2 {
        client: hyper::upgrade::OnUpgrade,
        place: Option<crate::server::listener::ConnGuard>,
    },
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes in base64 (RFC 6455 section 4.1).
fn websocket_key() -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, rand::random::<[u8; 16]>())
}

/// Whether the upstream's answer completes the WebSocket handshake for `key` (RFC 6455
/// section 4.1): 101, `Upgrade` exactly `websocket` (one line, one token), `Connection`
/// naming `upgrade`, and one `Sec-WebSocket-Accept` that proves it read `key`.
fn websocket_accepted(resp: &Response<Body>, key: &str) -> bool {
    let h = resp.headers();
    let single = |name: header::HeaderName| {
        let mut all = h.get_all(name).into_iter();
        match (all.next(), all.next()) {
            (Some(v), None) => Some(v.as_bytes()),
            _ => None,
        }
    };
    resp.status() == http::StatusCode::SWITCHING_PROTOCOLS
        && single(header::UPGRADE).is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"websocket"))
        && tokens(h, header::CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade"))
        && single(header::SEC_WEBSOCKET_ACCEPT).is_some_and(|v| v == websocket_accept(key).as_bytes())
}

/// The comma-separated tokens of every line of a header, trimmed.
fn tokens(h: &http::HeaderMap, name: header::HeaderName) -> impl Iterator<Item = &str> {
    h.get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// An HTTP/1.1 WebSocket upgrade checked (RFC 6455 section 4.2.1: one `Sec-WebSocket-Key`
/// of 16 bytes, version 13) and turned into the upgrade the upstream gets.
fn h1_upgrade(parts: &mut Parts) -> Result<Upgrade, Refusal> {
    let accept = handshake(parts)?;
    let client = parts
        .extensions
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or_else(|| Refusal::BadRequest("this connection cannot be upgraded".into()))?;
    Ok(Upgrade {
        side: Side::H1 { client, accept },
        key: websocket_key(),
    })
}

/// The client's side of an HTTP/1.1 WebSocket handshake checked (RFC 6455 section
/// 4.2.1: one `Sec-WebSocket-Key` of 16 bytes, version 13), and the
/// `Sec-WebSocket-Accept` that answers it. `explain` runs it too.
pub(super) fn handshake(parts: &Parts) -> Result<HeaderValue, Refusal> {
    let bad = |m: &'static str| Refusal::BadRequest(m.into());
    let one = |name: header::HeaderName| {
        let mut all = parts.headers.get_all(name).into_iter();
        match (all.next(), all.next()) {
            (Some(v), None) => Some(v.clone()),
            _ => None,
        }
    };
    let client_key = one(header::SEC_WEBSOCKET_KEY)
        .filter(|k| {
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, k.as_bytes())
                .is_ok_and(|b| b.len() == 16)
        })
        .ok_or_else(|| bad("a WebSocket upgrade needs one Sec-WebSocket-Key of 16 bytes in base64"))?;
    if one(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes().trim_ascii() != b"13") {
        return Err(bad("a WebSocket upgrade needs Sec-WebSocket-Version: 13"));
    }
    HeaderValue::from_str(&websocket_accept(client_key.to_str().unwrap_or("")))
        .map_err(|_| bad("the WebSocket key cannot be answered"))
}

/// An RFC 8441 WebSocket turned into the HTTP/1.1 upgrade request the upstream expects,
/// with the client's side of it and the tunnel's place in `max_connections`.
fn h2_upgrade(conn: &ConnInfo, parts: &mut Parts) -> Result<Upgrade, Refusal> {
    let Some(client) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        return Err(Refusal::BadRequest(
            "extended CONNECT without a stream to upgrade".into(),
        ));
    };
    // The tunnel will hold a socket to the upstream without a connection of its own
    // from the client: it takes its own place in max_connections.
    let place = match conn.places.as_ref().map(|p| p.take()) {
        Some(None) => return Err(Refusal::Unavailable("max_connections")),
        Some(place) => place,
        None => None,
    };
    parts.extensions.remove::<hyper::ext::Protocol>();
    parts.version = Version::HTTP_11;
    Ok(Upgrade {
        side: Side::H2 { client, place },
        key: websocket_key(),
    })
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 section 4.2.2).
fn websocket_accept(key: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, ctx.finish())
}

/// Whether an HTTP/1.1 request asks for a WebSocket upgrade: a GET with `Connection`
/// naming `upgrade` and `Upgrade` naming `websocket` among whatever else it offers.
pub(super) fn websocket_requested(parts: &Parts) -> bool {
    parts.version == Version::HTTP_11
        && parts.method == http::Method::GET
        && tokens(&parts.headers, header::CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade"))
        && tokens(&parts.headers, header::UPGRADE).any(|t| t.eq_ignore_ascii_case("websocket"))
}

/// Bytes both ways between the client and the upstream of an upgraded connection, until
/// either closes, nothing moves for `idle`, or `lifetime` has passed. `_place` (an HTTP/2
/// tunnel's place in `max_connections`) is held until then.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    idle: Duration,
    lifetime: Duration,
    request_id: HeaderValue,
    _place: Option<crate::server::listener::ConnGuard>,
) {
    let (client, upstream) = match tokio::join!(client, upstream) {
        (Ok(c), Ok(u)) => (c, u),
        _ => {
            tracing::debug!(request_id = ?request_id, "upgrade did not complete on both sides");
            return;
        }
    };
    let stamp = Stamp::default();
    let mut client = Observed {
        inner: hyper_util::rt::TokioIo::new(client),
        observer: stamp.clone(),
    };
    let mut upstream = Observed {
        inner: hyper_util::rt::TokioIo::new(upstream),
        observer: stamp.clone(),
    };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    let deadline = tokio::time::sleep(lifetime);
    tokio::pin!(deadline);
    let check = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = &mut copy => return,
            _ = &mut deadline => {
                tracing::info!(request_id = ?request_id, "upgraded connection reached upgrade_max_lifetime; closed");
                return;
            }
            _ = tokio::time::sleep(check) => {
                if stamp.idle_for() >= idle {
                    tracing::info!(request_id = ?request_id, "upgraded connection idle for upgrade_idle_timeout; closed");
                    return;
                }
            }
        }
    }
}
