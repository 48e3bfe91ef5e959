//! `[tracing]` (OpenTelemetry export) and `[runtime]` (the worker model).

use super::*;

impl Validator<'_> {
    pub(super) fn tracing(&mut self, t: Option<&raw::Tracing>) -> Tracing {
        let otlp_endpoint = t.and_then(|t| t.otlp_endpoint.as_ref()).and_then(|e| {
            match url::Url::parse(e.get_ref()) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Some(u),
                _ => {
                    self.error(
                        sp(e),
                        "tracing.otlp_endpoint must be the collector's http:// or https:// URL (OTLP/HTTP, e.g. http://127.0.0.1:4318)",
                    );
                    None
                }
            }
        });
        let protocol = match t.and_then(|t| t.protocol.as_ref()) {
            None => OtlpProtocol::Protobuf,
            Some(p) => match p.get_ref().as_str() {
                "http/protobuf" => OtlpProtocol::Protobuf,
                "http/json" => OtlpProtocol::Json,
                _ => {
                    self.error(sp(p), "tracing.protocol must be \"http/protobuf\" or \"http/json\"");
                    OtlpProtocol::Protobuf
                }
            },
        };
        let sample_ratio = match t.and_then(|t| t.sample_ratio.as_ref()) {
            None => 1.0,
            Some(r) if (0.0..=1.0).contains(r.get_ref()) => *r.get_ref(),
            Some(r) => {
                self.error(sp(r), "tracing.sample_ratio must be between 0.0 and 1.0");
                1.0
            }
        };
        Tracing {
            otlp_endpoint,
            protocol,
            sample_ratio,
            service_name: t
                .and_then(|t| t.service_name.as_ref())
                .map_or_else(|| "portcullis".to_string(), |s| s.get_ref().clone()),
        }
    }

    pub(super) fn runtime(&mut self, r: Option<&raw::Runtime>) -> Runtime {
        Runtime {
            worker_threads: r
                .and_then(|r| r.worker_threads.as_ref())
                .and_then(|n| self.count(n, 1, 1024, "runtime.worker_threads"))
                .map(|n| n as usize),
            model: match r.and_then(|r| r.model.as_ref()) {
                None => RuntimeModel::default(),
                Some(m) => match m.get_ref().as_str() {
                    "shared" => RuntimeModel::Shared,
                    "per_core" => RuntimeModel::PerCore,
                    other => {
                        self.error(
                            sp(m),
                            format!("runtime.model `{other}`: expected \"shared\" or \"per_core\""),
                        );
                        RuntimeModel::default()
                    }
                },
            },
        }
    }
}
