//! W3C trace context across process boundaries, so one application is one trace from the
//! gateway to the last consumer:
//!
//! - gRPC in: `observe::ObserveLayer` opens a server span per call, child of the
//!   caller's `traceparent` header ([`extract`]).
//! - gRPC out: [`Inject`] (or [`inject`]) writes the current span's `traceparent`.
//! - Events: [`current`] is stored in each event's envelope, so in the outbox row and a
//!   trace survives a relay restart; the relay opens a producer span under it and sends
//!   that span's context as the NATS `traceparent` header; a consumer span is a child of
//!   that header's context and links to it (see `outbox` and `consumer`).

/// The header the gateway gives every call it forwards (a fresh UUID, whatever the client
/// sent, as Envoy does at the edge). A retry of the call (the mesh's retry policy) carries
/// the same value, so a backend can tell a retry from a new call: ReserveTicket uses it as
/// the idempotency key when the client gave none.
pub const REQUEST_ID: &str = "x-request-id";

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use std::task::{Context as TaskContext, Poll};
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HttpInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HttpInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HttpExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HttpExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct Pair<'a>(&'a str, &'a str);

impl Extractor for Pair<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" if !self.0.is_empty() => Some(self.0),
            "tracestate" if !self.1.is_empty() => Some(self.1),
            _ => None,
        }
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// The context a set of headers carries (empty when none).
pub fn extract(headers: &http::HeaderMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HttpExtractor(headers)))
}

/// The context a `traceparent` / `tracestate` pair carries.
pub fn from_pair(traceparent: &str, tracestate: &str) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&Pair(traceparent, tracestate)))
}

/// Writes the current span's context into `headers`.
pub fn inject(headers: &mut http::HeaderMap) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&context, &mut HttpInjector(headers))
    });
}

/// The current span's `(traceparent, tracestate)`; empty strings outside any trace.
pub fn current() -> (String, String) {
    let mut headers = http::HeaderMap::new();
    inject(&mut headers);
    let get = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    (get("traceparent"), get("tracestate"))
}

/// Makes `span` a child of `parent` and links it there too (messaging convention: the
/// consumer's span links to the producer's). Nothing happens for an empty context.
pub fn adopt(span: &tracing::Span, parent: opentelemetry::Context) {
    let producer = parent.span().span_context().clone();
    if producer.is_valid() {
        let _ = span.set_parent(parent);
        span.add_link(producer);
    }
}

/// Writes the current span's context into every outgoing request (wrap a gRPC client's
/// transport in it).
#[derive(Debug, Clone)]
pub struct Inject<S>(pub S);

impl<S, B> tower::Service<http::Request<B>> for Inject<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> S::Future {
        inject(request.headers_mut());
        self.0.call(request)
    }
}
