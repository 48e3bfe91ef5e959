//! OpenTelemetry spans, exported by OTLP/HTTP (JSON) when `[tracing] otlp_endpoint` is
//! set: one server span per request (route, auth method, status, refusal reason) and a
//! client span for its upstream call, in the trace the request's `traceparent` names.
//!
//! Spans go through the SDK's batch processor: a bounded queue (2,048 spans; past it new
//! spans are dropped) drained by its own thread, so a collector that is down or slow
//! costs requests nothing and memory stays bounded.

use std::time::{Duration, SystemTime};

use opentelemetry::trace::{Span, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, Tracer};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider};

use crate::headers::TraceIds;

pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

/// One finished request, as its spans describe it.
pub struct RequestSpan<'a> {
    pub trace: TraceIds,
    pub start: SystemTime,
    pub end: SystemTime,
    /// When the upstream call started and ended, if one was made.
    pub upstream: Option<(SystemTime, SystemTime, &'a str)>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub plan: &'a str,
    pub integration: &'a str,
    pub auth_method: &'a str,
    pub reason: &'a str,
    pub request_id: &'a str,
}

impl Telemetry {
    pub fn start(endpoint: &url::Url, service_name: &str) -> Result<Self, String> {
        let base = endpoint.as_str().trim_end_matches('/');
        let url = if base.ends_with("/v1/traces") {
            base.to_string()
        } else {
            format!("{base}/v1/traces")
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(url)
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("tracing.otlp_endpoint: {e}"))?;
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(2048)
                    .with_max_export_batch_size(512)
                    .with_scheduled_delay(Duration::from_millis(500))
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(service_name.to_string())
                    .build(),
            )
            .build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "portcullis");
        Ok(Telemetry { provider, tracer })
    }

    /// Records the request's spans (not sampled by the caller: nothing).
    pub fn record(&self, r: &RequestSpan<'_>) {
        if r.trace.flags & 1 == 0 {
            return;
        }
        let trace_id = TraceId::from_bytes(r.trace.trace);
        let parent = match r.trace.parent {
            Some(p) => Context::new().with_remote_span_context(SpanContext::new(
                trace_id,
                SpanId::from_bytes(p),
                TraceFlags::SAMPLED,
                true,
                Default::default(),
            )),
            None => Context::new(),
        };
        let server_id = SpanId::from_bytes(r.trace.server_span);
        let mut attributes = vec![
            KeyValue::new("http.request.method", r.method.to_string()),
            KeyValue::new("url.path", r.path.to_string()),
            KeyValue::new("http.response.status_code", i64::from(r.status)),
            KeyValue::new("portcullis.request_id", r.request_id.to_string()),
        ];
        for (k, v) in [
            ("portcullis.plan", r.plan),
            ("portcullis.integration", r.integration),
            ("portcullis.auth_method", r.auth_method),
            ("portcullis.refusal_reason", r.reason),
        ] {
            if !v.is_empty() {
                attributes.push(KeyValue::new(k, v.to_string()));
            }
        }
        let mut server = self
            .tracer
            .span_builder(if r.integration.is_empty() {
                format!("{} (no route)", r.method)
            } else {
                format!("{} {}/{}", r.method, r.plan, r.integration)
            })
            .with_kind(SpanKind::Server)
            .with_trace_id(trace_id)
            .with_span_id(server_id)
            .with_start_time(r.start)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        if r.status >= 500 {
            server.set_status(opentelemetry::trace::Status::error(r.reason.to_string()));
        }
        if let Some((start, end, upstream)) = r.upstream {
            let in_server = Context::new().with_remote_span_context(SpanContext::new(
                trace_id,
                server_id,
                TraceFlags::SAMPLED,
                false,
                Default::default(),
            ));
            let mut client = self
                .tracer
                .span_builder(format!("upstream {upstream}"))
                .with_kind(SpanKind::Client)
                .with_trace_id(trace_id)
                .with_span_id(SpanId::from_bytes(r.trace.hop_span))
                .with_start_time(start)
                .with_attributes(vec![KeyValue::new("server.address", upstream.to_string())])
                .start_with_context(&self.tracer, &in_server);
            client.end_with_timestamp(end);
        }
        server.end_with_timestamp(r.end);
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}
