//! What every gRPC call a server answers leaves behind: a server span, child of the
//! caller's trace, and the RED series: calls by method and gRPC code, and latency by
//! method. Health checks and reflection are left out (probes would drown the rest).

use crate::propagation;
use opentelemetry::trace::TraceContextExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

/// Latency buckets in seconds: 0.5 ms to 10 s, fine where the SLO (100 ms) is.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The RED series of one server; clones share them.
#[derive(Clone, Debug)]
pub struct RpcMetrics {
    calls: Family<CallLabels, Counter>,
    duration: Family<MethodLabels, Histogram>,
}

impl Default for RpcMetrics {
    fn default() -> Self {
        Self {
            calls: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(BUCKETS)),
        }
    }
}

impl RpcMetrics {
    /// Registers `rpc_server_calls_total{method,code}` and
    /// `rpc_server_duration_seconds{method}`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "rpc_server_calls",
            "gRPC calls answered, by method and gRPC status code",
            self.calls.clone(),
        );
        registry.register_with_unit(
            "rpc_server_duration",
            "Time to the answer's headers, by method (streams: to the first message)",
            Unit::Seconds,
            self.duration.clone(),
        );
    }

    fn record(&self, method: &str, code: tonic::Code) {
        self.calls
            .get_or_create(&CallLabels {
                method: method.to_owned(),
                code: code_name(code).to_owned(),
            })
            .inc();
    }
}

/// Marks the current call's span (and so its log lines and trace) with the reservation
/// it concerns, once a handler knows it.
pub fn correlate(reservation_id: i64) {
    // A string, as consumers record it from the envelope: one JSON type per log field.
    tracing::Span::current().record("correlation_id", reservation_id.to_string().as_str());
}

/// The canonical upper-case name of a gRPC code (`NOT_FOUND`).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

fn status_of(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from)
}

/// Every `package.Service/Method` of the contract: the only values the `method` label
/// takes, so a caller inventing paths cannot grow the series without bound.
static KNOWN_METHODS: std::sync::LazyLock<std::collections::HashSet<String>> =
    std::sync::LazyLock::new(|| {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(parking_proto::FILE_DESCRIPTOR_SET)
            .unwrap_or_default();
        set.file
            .iter()
            .flat_map(|file| {
                let package = file.package().to_owned();
                file.service.iter().flat_map(move |service| {
                    let prefix = format!("{package}.{}", service.name());
                    service
                        .method
                        .iter()
                        .map(move |m| format!("{prefix}/{}", m.name()))
                        .collect::<Vec<_>>()
                })
            })
            .collect()
    });

/// The `grpc-timeout` a caller set (`<digits><unit>`, at most 8 digits, unit H M S m u n);
/// anything else is no deadline.
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<std::time::Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    use std::time::Duration as D;
    Some(match unit {
        "H" => D::from_secs(n.saturating_mul(3600)),
        "M" => D::from_secs(n.saturating_mul(60)),
        "S" => D::from_secs(n),
        "m" => D::from_millis(n),
        "u" => D::from_micros(n),
        "n" => D::from_nanos(n),
        _ => return None,
    })
}

/// One call's series and span status, written once: when its code is known (trailers or
/// trailers-only headers) or when it is dropped unanswered (the client went away, or
/// tonic's deadline fired: CANCELLED or DEADLINE_EXCEEDED, with the time it ran).
struct Outcome {
    metrics: RpcMetrics,
    method: String,
    span: tracing::Span,
    started: Instant,
    deadline: Option<std::time::Duration>,
    timed: bool,
    done: bool,
}

impl Outcome {
    /// Latency: up to the answer's headers (or to the end, for a call never answered).
    fn time(&mut self) {
        if !self.timed {
            self.timed = true;
            self.metrics
                .duration
                .get_or_create(&MethodLabels {
                    method: self.method.clone(),
                })
                .observe(self.started.elapsed().as_secs_f64());
        }
    }

    fn finish(&mut self, code: tonic::Code) {
        if self.done {
            return;
        }
        self.done = true;
        self.time();
        self.metrics.record(&self.method, code);
        self.span.record("rpc.grpc.status_code", code as i64);
        if is_server_error(code) {
            self.span.record("otel.status_code", "ERROR");
        }
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        let expired = self.deadline.is_some_and(|d| self.started.elapsed() >= d);
        self.finish(if expired {
            tonic::Code::DeadlineExceeded
        } else {
            tonic::Code::Cancelled
        });
    }
}

/// Codes that are the server's fault (they spend the availability budget).
pub fn is_server_error(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unknown | Internal | Unavailable | DeadlineExceeded | DataLoss
    )
}

/// The span and the series around every call of a server.
#[derive(Clone, Debug, Default)]
pub struct ObserveLayer {
    pub metrics: RpcMetrics,
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Observe<S> {
    inner: S,
    metrics: RpcMetrics,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Observe<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_owned();
        if path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.") {
            return Box::pin(self.inner.call(request));
        }
        let grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            // gRPC-Web carries its status inside the body: the backend behind the gateway
            // counts those calls as plain gRPC.
            .is_some_and(|v| {
                v.starts_with("application/grpc") && !v.starts_with("application/grpc-web")
            });
        let name = path.trim_start_matches('/').to_owned();
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %name,
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = if grpc { "grpc" } else { "http" },
            rpc.grpc.status_code = tracing::field::Empty,
            correlation_id = tracing::field::Empty,
        );
        let parent = propagation::extract(request.headers());
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
        // Series for gRPC only: REST paths carry ids (the backends count the gRPC calls
        // REST turns into).
        let outcome = grpc.then(|| Outcome {
            metrics: self.metrics.clone(),
            method: if KNOWN_METHODS.contains(&name) {
                name
            } else {
                "other".to_owned()
            },
            span: span.clone(),
            started: Instant::now(),
            deadline: grpc_timeout(request.headers()),
            timed: false,
            done: false,
        });
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Box::pin(
            async move {
                // Dropped before an answer (deadline, client gone): `outcome` counts it.
                let response = future.await?;
                let Some(mut outcome) = outcome else {
                    return Ok(response);
                };
                outcome.time();
                // Trailers-only answers (most errors) carry the code in the headers.
                if let Some(code) = status_of(response.headers()) {
                    outcome.finish(code);
                    return Ok(response);
                }
                Ok(response.map(|body| {
                    use http_body_util::BodyExt;
                    tonic::body::Body::new(body.map_frame(move |frame| {
                        if let Some(code) = frame.trailers_ref().and_then(status_of) {
                            outcome.finish(code);
                        }
                        frame
                    }))
                }))
            }
            .instrument(span),
        )
    }
}
