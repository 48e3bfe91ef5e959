//! OpenTelemetry spans, exported by OTLP/HTTP (protobuf by default, or JSON) when
//! `[tracing] otlp_endpoint` is set: one server span per request (route, auth method,
//! status, refusal reason) and a client span for its upstream call, in the trace the
//! request's `traceparent` names.
//!
//! A request's spans are known whole when it ends, so they are written as finished span
//! records (`SpanData`) straight to the SDK's batch processor, without the tracer's
//! per-span bookkeeping (sampler, context, live span): the sampling decision was made
//! when the request arrived ([`crate::headers::trace_of`]). The batch processor keeps a
//! bounded queue (2,048 spans; past it new spans are dropped) drained by its own thread,
//! so a collector that is down or slow costs requests nothing and memory stays bounded.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanProcessor};

use crate::config::{OtlpProtocol, Tracing};
use crate::headers::TraceIds;

pub struct Telemetry {
    /// New traces are sampled below this ([`crate::headers::sample_threshold`]).
    pub sample: u64,
    processor: BatchSpanProcessor,
    scope: InstrumentationScope,
}

/// One finished request, as its spans describe it.
pub struct RequestSpan<'a> {
    pub trace: TraceIds,
    pub start: SystemTime,
    pub end: SystemTime,
    /// When the upstream call started and ended, if one was made.
    pub upstream: Option<(SystemTime, SystemTime)>,
    pub method: &'a http::Method,
    pub path: &'a str,
    pub status: u16,
    /// The route's names and upstream, or a built-in endpoint's name.
    pub route: Option<&'a RouteSpan>,
    pub endpoint: Option<&'static str>,
    pub auth_method: &'static str,
    /// The OAuth issuer (its name) that named the principal.
    pub issuer: Option<&'a str>,
    /// Whether the credential came from a cache; `None` when none was checked.
    pub cache_hit: Option<bool>,
    pub reason: &'static str,
}

/// A route's span values, made once when the route is built: a span then shares them
/// (reference counts) instead of copying names per request.
pub struct RouteSpan {
    plan: Value,
    integration: Value,
    upstream: Value,
    /// ` plan/integration`, the server span's name after the method.
    name: String,
}

impl RouteSpan {
    pub fn new(plan: &str, integration: &str, upstream: &str) -> Self {
        let shared = |s: &str| Value::String(StringValue::from(Arc::<str>::from(s)));
        RouteSpan {
            plan: shared(plan),
            integration: shared(integration),
            upstream: shared(upstream),
            name: format!(" {plan}/{integration}"),
        }
    }
}

/// A standard method's name, without a copy.
fn static_method(m: &http::Method) -> Option<&'static str> {
    Some(match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => return None,
    })
}

fn method_name(m: &http::Method) -> Cow<'static, str> {
    static_method(m).map_or_else(|| Cow::Owned(m.as_str().to_string()), Cow::Borrowed)
}

/// Why span export cannot start.
#[derive(Debug, thiserror::Error)]
#[error("tracing.otlp_endpoint: {0}")]
pub struct StartError(#[from] opentelemetry_otlp::ExporterBuildError);

impl Telemetry {
    pub fn start(t: &Tracing, endpoint: &url::Url) -> Result<Self, StartError> {
        let base = endpoint.as_str().trim_end_matches('/');
        let url = if base.ends_with("/v1/traces") {
            base.to_string()
        } else {
            format!("{base}/v1/traces")
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(match t.protocol {
                OtlpProtocol::Protobuf => Protocol::HttpBinary,
                OtlpProtocol::Json => Protocol::HttpJson,
            })
            .with_endpoint(url)
            .with_timeout(Duration::from_secs(5))
            .build()?;
        let mut processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(2048)
                    .with_max_export_batch_size(512)
                    .with_scheduled_delay(Duration::from_millis(500))
                    .build(),
            )
            .build();
        processor.set_resource(
            &opentelemetry_sdk::Resource::builder()
                .with_service_name(t.service_name.clone())
                .build(),
        );
        let scope = InstrumentationScope::builder("portcullis")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        Ok(Telemetry {
            sample: crate::headers::sample_threshold(t.sample_ratio),
            processor,
            scope,
        })
    }

    /// Records the request's spans (not sampled: nothing).
    pub fn record(&self, r: &RequestSpan<'_>) {
        if r.trace.flags & 1 == 0 {
            return;
        }
        let trace_id = TraceId::from_bytes(r.trace.trace);
        let server_id = SpanId::from_bytes(r.trace.server_span);
        let context = |id: SpanId| SpanContext::new(trace_id, id, TraceFlags::SAMPLED, false, TraceState::default());
        // `GET plan/integration`, `GET portcullis/oauth_token`, or `GET (no route)`.
        let method = r.method.as_str();
        let mut name = String::with_capacity(method.len() + r.route.map_or(32, |t| t.name.len()));
        name.push_str(method);
        let mut attributes = Vec::with_capacity(8);
        attributes.extend([
            KeyValue::new("http.request.method", method_name(r.method)),
            KeyValue::new("url.path", r.path.to_string()),
            KeyValue::new("http.response.status_code", i64::from(r.status)),
        ]);
        match (r.route, r.endpoint) {
            (Some(route), _) => {
                name.push_str(&route.name);
                attributes.extend([
                    KeyValue::new("portcullis.plan", route.plan.clone()),
                    KeyValue::new("portcullis.integration", route.integration.clone()),
                ]);
            }
            (None, Some(endpoint)) => {
                name.push_str(" portcullis/");
                name.push_str(endpoint);
                attributes.extend([
                    KeyValue::new("portcullis.plan", "portcullis"),
                    KeyValue::new("portcullis.integration", endpoint),
                ]);
            }
            (None, None) => name.push_str(" (no route)"),
        }
        if !r.auth_method.is_empty() {
            attributes.push(KeyValue::new("portcullis.auth_method", r.auth_method));
        }
        if let Some(issuer) = r.issuer {
            attributes.push(KeyValue::new("portcullis.issuer", issuer.to_string()));
        }
        if let Some(hit) = r.cache_hit {
            attributes.push(KeyValue::new("portcullis.cache_hit", hit));
        }
        if !r.reason.is_empty() {
            attributes.push(KeyValue::new("portcullis.refusal_reason", r.reason));
        }
        if let (Some((start, end)), Some(route)) = (r.upstream, r.route) {
            // HTTP client spans are named by their method alone (OpenTelemetry's HTTP
            // conventions); the upstream is an attribute.
            self.processor.on_end(SpanData {
                parent_span_id: server_id,
                parent_span_is_remote: false,
                attributes: vec![KeyValue::new("server.address", route.upstream.clone())],
                status: Status::Unset,
                ..self.finished(
                    context(SpanId::from_bytes(r.trace.hop_span)),
                    SpanKind::Client,
                    method_name(r.method),
                    (start, end),
                )
            });
        }
        self.processor.on_end(SpanData {
            parent_span_id: r.trace.parent.map_or(SpanId::INVALID, SpanId::from_bytes),
            parent_span_is_remote: r.trace.parent.is_some(),
            attributes,
            status: if r.status >= 500 {
                Status::error(r.reason)
            } else {
                Status::Unset
            },
            ..self.finished(context(server_id), SpanKind::Server, Cow::Owned(name), (r.start, r.end))
        });
    }

    /// A finished span of this scope, without a parent, attributes or status yet.
    fn finished(
        &self,
        span_context: SpanContext,
        span_kind: SpanKind,
        name: Cow<'static, str>,
        (start_time, end_time): (SystemTime, SystemTime),
    ) -> SpanData {
        SpanData {
            span_context,
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind,
            name,
            start_time,
            end_time,
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::Unset,
            instrumentation_scope: self.scope.clone(),
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        let _ = self.processor.shutdown();
    }
}
