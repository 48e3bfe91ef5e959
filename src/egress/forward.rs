//! The egress request, after its endpoint is known: the caller's head checked, the
//! initiator's assertion verified against `callers`, the outbound head made, the body
//! held where a scheme needs it again, the endpoint's credentials added, and the call.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;

use super::fail::{forbidden, EgressError, Fail};
use std::sync::Arc;

use super::{signer, token, Call, Credentials, Egress, Endpoint, REPLAY_LIMIT};
use crate::assertion::{Claims, Signer};
use crate::error::{full, Body, BoxError, Refusal};
use crate::headers;
use crate::upstream::{BodyError, BodyTiming, Overflow, RequestBody};

/// A request body that can be sent more than once, or only once.
pub(super) enum Payload {
    Held(Bytes),
    /// Streamed, with what tells how the caller's side of it ended.
    Stream(Body, Overflow),
}

impl Payload {
    fn body(&mut self) -> Option<Body> {
        match std::mem::replace(self, Payload::Held(Bytes::new())) {
            Payload::Held(b) => {
                *self = Payload::Held(b.clone());
                Some(full(b))
            }
            Payload::Stream(s, o) => {
                *self = Payload::Stream(full(Bytes::new()), o);
                Some(s)
            }
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, Payload::Held(_))
    }

    /// Why a call whose streamed body failed did not complete, when the caller's side
    /// says: its body stalled or ran past its time (408), or it went away (499).
    fn caller_fault(&self) -> Option<Refusal> {
        match self {
            Payload::Stream(_, o) if o.timed_out() => Some(Refusal::BodyTimeout),
            Payload::Stream(_, o) if o.client_gone() => Some(Refusal::ClientClosed),
            _ => None,
        }
    }
}

/// Reads up to `limit` bytes: the whole body if it fits, else the held part and the rest.
async fn hold(body: Body, overflow: &Overflow, limit: usize) -> Result<Payload, BoxError> {
    let mut body = body;
    let mut held = BytesMut::new();
    while held.len() <= limit {
        match body.frame().await {
            None => return Ok(Payload::Held(held.freeze())),
            Some(frame) => {
                if let Ok(data) = frame?.into_data() {
                    held.extend_from_slice(&data);
                }
            }
        }
    }
    Ok(Payload::Stream(
        crate::upstream::prefixed(held.freeze(), body),
        overflow.clone(),
    ))
}

/// The egress phases after the call's context exists: admit (head limits, path,
/// endpoint, initiator), the outbound head, the body held where the endpoint's scheme
/// needs it, and the call with the endpoint's credentials.
pub(super) async fn handle<B: RequestBody>(
    egress: &Egress,
    signer: &Signer,
    req: Request<B>,
    call: &mut Call,
) -> Result<Response<Body>, Fail> {
    let (mut parts, body) = req.into_parts();
    let (endpoint, rest, assertion) = match admit(egress, signer, &parts, call) {
        Ok(admitted) => admitted,
        Err(f) => {
            crate::upstream::drain(body);
            return Err(f);
        }
    };
    // The outbound head.
    let target = endpoint.target(&rest, parts.uri.query())?;
    let h = &mut parts.headers;
    headers::remove_hop_by_hop(h);
    headers::strip_portcullis(h);
    h.remove(header::AUTHORIZATION);
    h.remove(header::HOST);
    h.insert(headers::X_REQUEST_ID, call.request_id.clone());
    parts.uri = target;
    parts.version = http::Version::HTTP_11;
    let mut payload = payload(&endpoint, body, egress.body_timing(call.started)).await?;
    endpoint
        .dispatch(&mut parts, &mut payload, assertion)
        .await
        .map(|mut resp| {
            headers::remove_hop_by_hop(resp.headers_mut());
            resp
        })
}

/// The caller's head within `[limits]`, a path that names an endpoint, and the
/// initiator: a valid assertion or none (an invalid one is refused outright), allowed by
/// the endpoint's `callers`, and present where the endpoint passes it on. Gives the
/// endpoint, the rest of the path, and the assertion to pass on.
fn admit(
    egress: &Egress,
    signer: &Signer,
    parts: &http::request::Parts,
    call: &mut Call,
) -> Result<(Arc<Endpoint>, String, Option<HeaderValue>), Fail> {
    let (max_headers, max_bytes) = egress.head_limits;
    if parts.headers.len() > max_headers || headers::size(&parts.headers) > max_bytes {
        return Err(Refusal::HeadersTooLarge.into());
    }
    let path = parts.uri.path();
    crate::path::check_path(path).map_err(|e| Refusal::BadRequest(e.to_string().into()))?;
    let trimmed = &path[1..];
    let (name, rest) = match trimmed.find('/') {
        Some(i) => (&trimmed[..i], &trimmed[i..]),
        None => (trimmed, ""),
    };
    let endpoint = egress
        .endpoints
        .get(name)
        .cloned()
        .ok_or_else(|| EgressError::UnknownEndpoint(name.to_string()))?;
    call.endpoint = Some(endpoint.clone());
    // One assertion or none: two are refused, never resolved by picking one.
    let mut all = parts.headers.get_all(headers::X_PORTCULLIS_ASSERTION).iter();
    let assertion = all.next();
    if all.next().is_some() {
        return Err(forbidden("assertion_invalid"));
    }
    let claims: Option<Claims> = match assertion {
        None => None,
        Some(v) => match v.to_str().ok().map(|t| signer.verify(t)) {
            Some(Ok(c)) => Some(c),
            Some(Err(e)) if *e.kind() == jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                return Err(forbidden("assertion_expired"))
            }
            Some(Err(_)) | None => return Err(forbidden("assertion_invalid")),
        },
    };
    call.initiator = claims.as_ref().map(|c| c.sub.clone());
    if let Some(rule) = &endpoint.callers {
        match &claims {
            None => return Err(forbidden("no_initiator")),
            // Another issuer's user of a `[[users]]` name is matched by role only.
            Some(c) if !rule.allows(if c.local_user { &c.sub } else { "" }, &c.roles) => {
                return Err(forbidden("not_a_caller"))
            }
            Some(_) => {}
        }
    }
    if matches!(endpoint.credentials, Credentials::Principal) && claims.is_none() {
        return Err(forbidden("no_initiator"));
    }
    Ok((endpoint, rest.to_string(), assertion.cloned()))
}

/// The body as the endpoint's scheme needs it: held whole to be digested (signatures
/// covering `content-digest`) or to be sent again (a Basic challenge, an OAuth2 token
/// refresh), else streamed.
/// Every body, held or streamed, is bounded by `body_read_timeout` and `request_timeout`
/// (`timing`), as inbound.
async fn payload<B: RequestBody>(endpoint: &Endpoint, body: B, timing: BodyTiming) -> Result<Payload, Fail> {
    let (body, overflow) = match crate::upstream::limit_body(body, 0, None, timing).await {
        Ok(x) => x,
        Err(BodyError::Timeout) => return Err(Refusal::BodyTimeout.into()),
        Err(BodyError::Client(e)) if crate::upstream::client_gone(&e) => return Err(Refusal::ClientClosed.into()),
        Err(_) => return Err(Refusal::BadRequest("request body could not be read".into()).into()),
    };
    // A held body that could not be read: the caller's delay, its leaving, or its bytes.
    let unreadable = |overflow: &Overflow| {
        Fail::Refusal(if overflow.timed_out() {
            Refusal::BodyTimeout
        } else if overflow.client_gone() {
            Refusal::ClientClosed
        } else {
            Refusal::BadRequest("request body could not be read".into())
        })
    };
    let needs_replay = matches!(
        endpoint.credentials,
        Credentials::Basic { preemptive: false, .. } | Credentials::OAuth2(_)
    );
    match &endpoint.credentials {
        Credentials::Signature(s) if s.covers_digest() => match hold(body, &overflow, signer::DIGEST_LIMIT).await {
            Ok(p @ Payload::Held(_)) => Ok(p),
            Ok(Payload::Stream(..)) => Err(EgressError::BodyTooLargeToDigest.into()),
            Err(_) => Err(unreadable(&overflow)),
        },
        _ if needs_replay => hold(body, &overflow, REPLAY_LIMIT)
            .await
            .map_err(|_| unreadable(&overflow)),
        _ => Ok(Payload::Stream(body, overflow)),
    }
}

impl Endpoint {
    /// Adds the endpoint's credentials and sends, replaying once where the scheme asks.
    pub(super) async fn dispatch(
        &self,
        parts: &mut http::request::Parts,
        payload: &mut Payload,
        assertion: Option<HeaderValue>,
    ) -> Result<Response<Body>, Fail> {
        let endpoint = self;
        match &endpoint.credentials {
            Credentials::None => send(endpoint, parts, payload).await,
            Credentials::Principal => {
                if let Some(a) = assertion {
                    parts.headers.insert(headers::X_PORTCULLIS_ASSERTION, a);
                }
                send(endpoint, parts, payload).await
            }
            Credentials::Basic {
                header: auth,
                preemptive: true,
            } => {
                parts.headers.insert(header::AUTHORIZATION, auth.clone());
                send(endpoint, parts, payload).await
            }
            Credentials::Basic {
                header: auth,
                preemptive: false,
            } => {
                let first = send(endpoint, parts, payload).await?;
                if !(first.status() == StatusCode::UNAUTHORIZED && basic_challenge(&first)) {
                    return Ok(first);
                }
                if !payload.replayable() {
                    return Err(too_large_to_replay("a Basic challenge"));
                }
                parts.headers.insert(header::AUTHORIZATION, auth.clone());
                send(endpoint, parts, payload).await
            }
            Credentials::OAuth2(source) => {
                let (token, fresh) = source.get().await.map_err(token_failure)?;
                parts.headers.insert(header::AUTHORIZATION, bearer(&token)?);
                let first = send(endpoint, parts, payload).await?;
                if first.status() != StatusCode::UNAUTHORIZED {
                    return Ok(first);
                }
                source.invalidate(&token).await;
                if fresh {
                    // A token fetched for this very request was refused: no second fetch.
                    return Ok(first);
                }
                if !payload.replayable() {
                    return Err(too_large_to_replay("an OAuth2 token refresh"));
                }
                let (token, _) = source.get().await.map_err(token_failure)?;
                parts.headers.insert(header::AUTHORIZATION, bearer(&token)?);
                send(endpoint, parts, payload).await
            }
            Credentials::Signature(s) => {
                if s.covers_digest() {
                    if let Payload::Held(b) = &payload {
                        let digest = HeaderValue::from_str(&signer::content_digest(b)).map_err(|_| bad_header())?;
                        parts.headers.insert("content-digest", digest);
                    }
                }
                let created = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                let m = signer::Message {
                    method: &parts.method,
                    uri: &parts.uri,
                    headers: &parts.headers,
                };
                let (input, sig) = s
                    .sign(&m, created)
                    .map_err(|e| Fail::from(EgressError::CannotSign(e)))?;
                parts.headers.insert(
                    "signature-input",
                    HeaderValue::from_str(&input).map_err(|_| bad_header())?,
                );
                parts
                    .headers
                    .insert("signature", HeaderValue::from_str(&sig).map_err(|_| bad_header())?);
                send(endpoint, parts, payload).await
            }
        }
    }
}

fn bad_header() -> Fail {
    EgressError::BadHeader.into()
}

fn bearer(token: &str) -> Result<HeaderValue, Fail> {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| Fail::from(EgressError::BadToken))?;
    v.set_sensitive(true);
    Ok(v)
}

pub(super) fn token_failure(e: token::FetchError) -> EgressError {
    EgressError::TokenServer(e.0)
}

fn too_large_to_replay(why: &'static str) -> Fail {
    EgressError::BodyTooLargeToReplay(why).into()
}

fn basic_challenge(resp: &Response<Body>) -> bool {
    resp.headers()
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .any(|v| v.as_bytes().len() >= 5 && v.as_bytes()[..5].eq_ignore_ascii_case(b"basic"))
}

async fn send(
    endpoint: &Endpoint,
    parts: &http::request::Parts,
    payload: &mut Payload,
) -> Result<Response<Body>, Fail> {
    let mut head = Request::new(payload.body().unwrap_or_else(|| full(Bytes::new())));
    *head.method_mut() = parts.method.clone();
    *head.uri_mut() = parts.uri.clone();
    *head.version_mut() = parts.version;
    *head.headers_mut() = parts.headers.clone();
    match tokio::time::timeout(endpoint.timeout, endpoint.client.request(head)).await {
        Err(_) => Err(payload.caller_fault().unwrap_or(Refusal::GatewayTimeout).into()),
        Ok(Err(_)) if payload.caller_fault().is_some() => {
            Err(payload.caller_fault().unwrap_or(Refusal::ClientClosed).into())
        }
        Ok(Err(e)) => {
            let detail = error_chain(&e);
            tracing::warn!(endpoint = %endpoint.name, error = %detail, "egress: target unreachable");
            Err(EgressError::Unreachable {
                endpoint: endpoint.name.clone(),
                detail,
            }
            .into())
        }
        Ok(Ok(resp)) => Ok(resp.map(|b| b.map_err(BoxError::from).boxed_unsync())),
    }
}

/// An error and its sources on one line, escaped, e.g. "client error (Connect): invalid
/// peer certificate: Expired": a TLS error quotes the names the peer's
/// certificate presented, a connection error what the peer sent.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    crate::util::escaped(chain(e))
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
