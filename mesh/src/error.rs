//! The mesh's own failures, one marker type each (as linkerd does): callers and the retry
//! policy branch on these types, never on strings. Each converts to the gRPC status Envoy
//! would send for it, carrying the marker as its source so a tonic caller can still find
//! it with [`find`].

use std::time::Duration;
use tonic::{Code, Status};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every endpoint of the host is ejected: the circuit is open.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no healthy upstream for {host}: circuit open, retry after {retry_after:?}")]
pub struct CircuitOpen {
    pub host: String,
    /// When the first endpoint comes back.
    pub retry_after: Duration,
}

/// The connection pool's request limits are full: the call fails fast.
#[derive(Debug, Clone, thiserror::Error)]
#[error("upstream {host} overflow: {in_flight} requests in flight and {pending} waiting (connection pool limits)")]
pub struct Overflow {
    pub host: String,
    pub in_flight: usize,
    pub pending: usize,
}

/// The route's overall timeout expired (retries included).
#[derive(Debug, Clone, thiserror::Error)]
#[error("upstream request timeout after {0:?}")]
pub struct Timeout(pub Duration);

/// One attempt's perTryTimeout expired.
#[derive(Debug, Clone, thiserror::Error)]
#[error("upstream per-try timeout after {0:?}")]
pub struct PerTryTimeout(pub Duration);

/// The try got no answer: connection refused or lost, stream reset before the response.
#[derive(Debug, thiserror::Error)]
#[error("{host} is unavailable right now (upstream connect error or disconnect/reset before headers: {source}); retry shortly")]
pub struct UpstreamFailure {
    pub host: String,
    #[source]
    pub source: BoxError,
}

/// No route of the VirtualService matched the call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no route for {path} on {host}")]
pub struct NoRoute {
    pub host: String,
    pub path: String,
}

/// The first mesh marker of type `E` in an error's source chain (a tonic `Status` included).
pub fn find<'a, E: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// True when the error is one the mesh raised without calling the upstream (fail fast).
pub fn is_fail_fast(error: &(dyn std::error::Error + 'static)) -> bool {
    find::<CircuitOpen>(error).is_some() || find::<Overflow>(error).is_some()
}

/// The status a gRPC caller gets for a mesh failure, with the marker as source.
pub fn to_status<E: std::error::Error + Send + Sync + 'static>(code: Code, error: E) -> BoxError {
    let mut status = Status::new(code, error.to_string());
    status.set_source(std::sync::Arc::new(error));
    Box::new(status)
}

/// The marker of a failure as a status (UNAVAILABLE for fail-fast, as Envoy's 503s map).
pub fn circuit_open(e: CircuitOpen) -> BoxError {
    to_status(Code::Unavailable, e)
}

pub fn overflow(e: Overflow) -> BoxError {
    to_status(Code::Unavailable, e)
}

/// UNAVAILABLE, as Envoy answers: its local reply is a 504 "upstream request timeout",
/// and gRPC maps HTTP 504 to UNAVAILABLE (the caller's own deadline, when it has one, is
/// what reports DEADLINE_EXCEEDED).
pub fn timeout(e: Timeout) -> BoxError {
    to_status(Code::Unavailable, e)
}

/// UNAVAILABLE when the last try timed out, as [`timeout`].
pub fn per_try_timeout(e: PerTryTimeout) -> BoxError {
    to_status(Code::Unavailable, e)
}

/// UNAVAILABLE, as Envoy answers a try that got no response (its local 503).
pub fn upstream_failure(host: &str, source: BoxError) -> BoxError {
    to_status(
        Code::Unavailable,
        UpstreamFailure {
            host: host.to_owned(),
            source,
        },
    )
}

pub fn no_route(e: NoRoute) -> BoxError {
    to_status(Code::Unimplemented, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_survive_as_status_sources() {
        let err = circuit_open(CircuitOpen {
            host: "delivery".into(),
            retry_after: Duration::from_secs(3),
        });
        let status = err.downcast_ref::<Status>().expect("a status");
        assert_eq!(status.code(), Code::Unavailable);
        assert!(is_fail_fast(&*err));
        assert_eq!(
            find::<CircuitOpen>(&*err).map(|c| c.retry_after),
            Some(Duration::from_secs(3))
        );
        assert!(!is_fail_fast(&*timeout(Timeout(Duration::from_secs(1)))));
    }
}
