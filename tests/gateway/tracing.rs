//! OpenTelemetry export: with `[tracing] otlp_endpoint`, each request's server span and
//! its upstream call's client span reach an OTLP/HTTP collector (here a recording one on
//! loopback), in the caller's trace; refused requests are traced too; a collector that
//! is down changes nothing for requests.

use crate::support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use support::*;

/// Each body the collector received: its content type, and its spans as OTLP JSON.
type Bodies = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

/// A collector that keeps every `/v1/traces` body: protobuf is decoded with the OTLP
/// message definitions and turned into OTLP JSON, so both encodings are read alike.
pub(crate) async fn collector() -> (std::net::SocketAddr, Bodies) {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let keep = bodies.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let keep = keep.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let keep = keep.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let kind = req.headers().get("content-type").cloned();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        if path == "/v1/traces" {
                            let v = match kind.as_ref().map(|k| k.as_bytes()) {
                                Some(b"application/x-protobuf") => ExportTraceServiceRequest::decode(body.as_ref())
                                    .ok()
                                    .and_then(|m| serde_json::to_value(m).ok()),
                                Some(b"application/json") => serde_json::from_slice(&body).ok(),
                                _ => None,
                            };
                            let kind = kind.and_then(|k| k.to_str().ok().map(str::to_string));
                            keep.lock().unwrap().extend(v.map(|v| (kind.unwrap_or_default(), v)));
                        }
                        Ok::<_, Infallible>(hyper::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from_static(b"{}"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, bodies)
}

pub(crate) fn spans(bodies: &[(String, serde_json::Value)]) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for (_, b) in bodies {
        for rs in b["resourceSpans"].as_array().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                out.extend(ss["spans"].as_array().into_iter().flatten().cloned());
            }
        }
    }
    out
}

pub(crate) fn attr(span: &serde_json::Value, key: &str) -> serde_json::Value {
    span["attributes"]
        .as_array()
        .and_then(|a| a.iter().find(|kv| kv["key"] == key))
        .map(|kv| {
            let v = &kv["value"];
            v.get("stringValue")
                .or_else(|| v.get("intValue"))
                .or_else(|| v.get("boolValue"))
                .cloned()
                .unwrap_or_default()
        })
        .unwrap_or_default()
}

fn cfg(upstream: &str, endpoint: &str, protocol: &str) -> String {
    Config::new()
        .section("tracing", |s| s.set("otlp_endpoint", endpoint).merge_toml(protocol))
        .user("alice", |u| u.roles(["rest"]).password_hash(&argon2_hash("alice-pw")))
        .plan("p", |p| {
            p.upstream(upstream)
                .access_all()
                .integration("i", |i| i.path("/i").methods(["GET"]).auth("basic"))
        })
        .to_toml()
}

/// Alice's GET of `/i`, in the caller's trace `traceparent` when given; must be 200.
async fn alice_get(gw: &Gateway, traceparent: Option<String>) {
    let mut req = client().get(gw.url("/i")).basic_auth("alice", Some("alice-pw"));
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    assert_eq!(req.send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_their_upstream_calls_are_exported_in_the_callers_trace() {
    exported_in_the_callers_trace("", "application/x-protobuf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_encoding_carries_the_same_spans() {
    exported_in_the_callers_trace(r#"protocol = "http/json""#, "application/json").await;
}

async fn exported_in_the_callers_trace(protocol: &str, content_type: &str) {
    let up = Upstream::start().await;
    let (addr, bodies) = collector().await;
    let gw = Gateway::start(&cfg(&up.url(), &format!("http://{addr}"), protocol)).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    alice_get(&gw, Some(format!("00-{trace}-00f067aa0ba902b7-01"))).await;
    let hop = up.last().headers["traceparent"].to_str().unwrap()[36..52].to_string();
    let refused = client().get(gw.url("/i")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    // The same credentials again: verified from the cache this time.
    let again = "0af7651916cd43dd8448eb211c80319c";
    alice_get(&gw, Some(format!("00-{again}-b7ad6b7169203331-01"))).await;

    let found = eventually(PATIENCE, || {
        let all = spans(&bodies.lock().unwrap());
        async move {
            all.iter().any(|s| s["traceId"] == trace && s["kind"] == 2)
                && all.iter().any(|s| s["traceId"] == again && s["kind"] == 2)
                && all
                    .iter()
                    .any(|s| attr(s, "portcullis.refusal_reason") == "no_credentials")
                && all.iter().any(|s| s["kind"] == 3)
        }
    })
    .await;
    assert!(found, "spans never reached the collector: {:?}", bodies.lock().unwrap());
    assert!(
        bodies.lock().unwrap().iter().all(|(kind, _)| kind == content_type),
        "every export is {content_type}"
    );
    let all = spans(&bodies.lock().unwrap());
    let server = all.iter().find(|s| s["traceId"] == trace && s["kind"] == 2).unwrap();
    assert_eq!(
        server["parentSpanId"], "00f067aa0ba902b7",
        "the caller's span is the parent"
    );
    assert_eq!(attr(server, "portcullis.plan"), "p");
    assert_eq!(attr(server, "portcullis.integration"), "i");
    assert_eq!(attr(server, "portcullis.auth_method"), "basic");
    assert_eq!(attr(server, "http.response.status_code"), "200");
    assert_eq!(attr(server, "http.request.method"), "GET");
    assert_eq!(attr(server, "url.path"), "/i");
    assert_eq!(server["name"], "GET p/i");
    assert_eq!(attr(server, "portcullis.cache_hit"), false, "the first check is a miss");
    let cached = all.iter().find(|s| s["traceId"] == again && s["kind"] == 2).unwrap();
    assert_eq!(attr(cached, "portcullis.cache_hit"), true, "the second is a hit");
    let client_span = all.iter().find(|s| s["kind"] == 3).unwrap();
    assert_eq!(client_span["traceId"], trace);
    assert_eq!(
        client_span["spanId"], hop,
        "the upstream's parent is the exported client span"
    );
    assert_eq!(client_span["parentSpanId"], server["spanId"]);
    assert_eq!(
        attr(client_span, "server.address"),
        up.url().trim_start_matches("http://")
    );
    let refusal = all
        .iter()
        .find(|s| attr(s, "portcullis.refusal_reason") == "no_credentials")
        .unwrap();
    assert_eq!(attr(refusal, "http.response.status_code"), "401");
    assert_eq!(
        attr(refusal, "portcullis.cache_hit"),
        serde_json::Value::Null,
        "no credential was checked"
    );
    gw.stop().await;
}

/// `sample_ratio = 0.0`: a new trace is not sampled (the upstream sees flags `00`) and
/// exports nothing; a caller's sampled trace is still followed and exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_ratio_decides_new_traces_and_the_callers_flag_is_followed() {
    let up = Upstream::start().await;
    let (addr, bodies) = collector().await;
    let gw = Gateway::start(&cfg(&up.url(), &format!("http://{addr}"), "sample_ratio = 0.0")).await;
    alice_get(&gw, None).await;
    let unsampled = up.last().headers["traceparent"].to_str().unwrap().to_string();
    assert!(unsampled.ends_with("-00"), "{unsampled}");
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    alice_get(&gw, Some(format!("00-{trace}-00f067aa0ba902b7-01"))).await;
    // Spans leave in the order they are recorded, so by the time the sampled request's
    // span is in, the unsampled one (recorded first, had it been) is normally in too.
    let found = eventually(PATIENCE, || {
        let all = spans(&bodies.lock().unwrap());
        async move { all.iter().any(|s| s["traceId"] == trace && s["kind"] == 2) }
    })
    .await;
    assert!(found, "the caller's sampled trace was not exported");
    let all = spans(&bodies.lock().unwrap());
    assert!(
        all.iter().all(|s| s["traceId"] == trace),
        "only the sampled trace is exported: {all:?}"
    );
    gw.stop().await;
}

/// A collector that is not there: requests are served all the same.
#[tokio::test]
async fn a_collector_that_is_down_changes_nothing_for_requests() {
    let up = Upstream::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = Gateway::start(&cfg(&up.url(), &format!("http://{closed}"), "")).await;
    for _ in 0..20 {
        alice_get(&gw, None).await;
    }
    assert_eq!(up.seen().len(), 20);
    gw.stop().await;
}
