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
    tracing::Span::current().record("correlation_id", reservation_id);
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

/// Counts a call once its code is known: from the trailers, or when the answer's body is
/// dropped without any (the client went away: CANCELLED).
struct Outcome {
    metrics: RpcMetrics,
    method: String,
    done: bool,
}

impl Outcome {
    fn finish(&mut self, code: tonic::Code) {
        if !self.done {
            self.done = true;
            self.metrics.record(&self.method, code);
        }
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        self.finish(tonic::Code::Cancelled);
    }
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
        let method = path.trim_start_matches('/').to_owned();
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %method,
            otel.kind = "server",
            rpc.system = if grpc { "grpc" } else { "http" },
            correlation_id = tracing::field::Empty,
        );
        let parent = propagation::extract(request.headers());
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        // Series for gRPC only: REST paths carry ids and would grow without bound (the
        // backends count the gRPC calls REST turns into).
        let metrics = grpc.then(|| self.metrics.clone());
        Box::pin(
            async move {
                let started = Instant::now();
                let response = future.await?;
                let Some(metrics) = metrics else {
                    return Ok(response);
                };
                metrics
                    .duration
                    .get_or_create(&MethodLabels {
                        method: method.clone(),
                    })
                    .observe(started.elapsed().as_secs_f64());
                let mut outcome = Outcome {
                    metrics,
                    method,
                    done: false,
                };
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
