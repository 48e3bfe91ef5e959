//! The admin listener: `/healthz`, `/readyz` and `/metrics` (Prometheus text).
//! It never sees inbound traffic and never shows a secret.

use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::error::{full, json_error, Body};
use crate::gateway::State;
use crate::headers;
use crate::server::listener::ConnInfo;

pub async fn handle(state: Arc<State>, req: Request<Incoming>, _conn: Arc<ConnInfo>) -> Response<Body> {
    let request_id = headers::new_request_id();
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "admin endpoints answer GET only",
            &request_id,
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let (status, content_type, body) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, "text/plain; charset=utf-8", "ok\n".to_string()),
        "/readyz" if state.is_ready() => (StatusCode::OK, "text/plain; charset=utf-8", "ready\n".to_string()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            "not ready\n".to_string(),
        ),
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics.render(),
        ),
        _ => return json_error(StatusCode::NOT_FOUND, "no such admin endpoint", &request_id),
    };
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(headers::X_REQUEST_ID, request_id);
    resp
}
