//! Connection-pool limits (DestinationRule `connectionPool`), as Envoy's circuit breakers
//! enforce them: at most `http2MaxRequests` requests in flight to the host and at most
//! `http1MaxPendingRequests` waiting for one of those slots; anything beyond fails at once
//! with [`Overflow`] (UNAVAILABLE), never queues without bound.
//!
//! Differences from Envoy: gRPC uses one HTTP/2 connection per endpoint here, so
//! `tcp.maxConnections` is met by construction (any value >= 1), and the pending queue
//! holds requests waiting for an in-flight slot rather than for a connection.

use crate::error::{self, BoxError, Overflow};
use crate::metrics::MeshMetrics;
use crate::{Call, Hop, Request, Response};
use futures::future::Either;
use futures::FutureExt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::Semaphore;
use tower::Layer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// http2MaxRequests: requests in flight at once.
    pub max_requests: usize,
    /// http1MaxPendingRequests: requests allowed to wait for a slot.
    pub max_pending: usize,
}

impl Default for Config {
    /// Istio's defaults: 2^32 - 1 each, i.e. no limit.
    fn default() -> Self {
        Self {
            max_requests: u32::MAX as usize,
            max_pending: u32::MAX as usize,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PoolLayer {
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    host: String,
    config: Config,
    /// In-flight slots.
    slots: Arc<Semaphore>,
    /// Requests waiting for a slot now.
    pending: AtomicUsize,
    metrics: MeshMetrics,
}

impl PoolLayer {
    pub fn layer(host: &str, config: Config, metrics: MeshMetrics) -> Self {
        let permits = config.max_requests.min(Semaphore::MAX_PERMITS);
        Self {
            state: Arc::new(State {
                host: host.to_owned(),
                config,
                slots: Arc::new(Semaphore::new(permits)),
                pending: AtomicUsize::new(0),
                metrics,
            }),
        }
    }
}

impl<S> Layer<S> for PoolLayer {
    type Service = Pool<S>;
    fn layer(&self, inner: S) -> Pool<S> {
        Pool {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Pool<S> {
    inner: S,
    state: Arc<State>,
}

impl<S: Hop> Hop for Pool<S> {
    /// A full pool is answered at once, as Envoy does.
    fn call<'a>(
        &'a self,
        request: Request,
        call: &'a mut Call,
    ) -> impl Future<Output = Result<Response, BoxError>> + Send + 'a {
        let state = &self.state;
        let streaming = call.streaming;
        // The slot is held for the try; a stream's goes on with its body.
        let settle = move |result: Result<Response, BoxError>, permit| match result {
            Ok(response) if streaming => Ok(response.map(|body| hold(body, permit))),
            other => other,
        };
        match state.slots.clone().try_acquire_owned() {
            // The usual case: the inner future wrapped as it is (see Hop).
            Ok(permit) => Either::Left(
                self.inner
                    .call(request, call)
                    .map(move |result| settle(result, permit)),
            ),
            // A full pool, boxed apart: it holds the request across its wait.
            Err(_) => Either::Right(Box::pin(async move {
                let waiting = state.pending.fetch_add(1, Ordering::AcqRel);
                // Released however the wait ends, a timeout dropping it included.
                let queued = Queued(&state.pending);
                if waiting >= state.config.max_pending {
                    state.metrics.overflow(&state.host);
                    return Err(error::overflow(Overflow {
                        host: state.host.clone(),
                        in_flight: state.config.max_requests,
                        pending: waiting,
                    }));
                }
                let permit = state
                    .slots
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|e| -> BoxError { Box::new(e) })?;
                drop(queued);
                let result = self.inner.call(request, call).await;
                settle(result, permit)
            })
                as crate::BoxFutureRef<'a, Result<Response, BoxError>>),
        }
    }
}

/// `body` keeping `guard` (an in-flight slot) alive until the body is dropped: a stream is
/// in flight until its body ends.
pub fn hold<G: Send + Unpin + 'static>(body: tonic::body::Body, guard: G) -> tonic::body::Body {
    tonic::body::Body::new(Holding {
        body,
        _guard: guard,
    })
}

struct Holding<G> {
    body: tonic::body::Body,
    _guard: G,
}

impl<G: Unpin> http_body::Body for Holding<G> {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// One place in the pending queue, given back on drop.
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{call_hop, ok_response, request};
    use crate::TowerHop;
    use tokio_test::{assert_pending, assert_ready};
    use tower_test::mock;

    #[tokio::test]
    async fn overflow_fails_fast_and_frees_on_completion() {
        let (inner, mut handle) = mock::pair::<Request, Response>();
        let metrics = MeshMetrics::default();
        let svc = PoolLayer::layer(
            "delivery",
            Config {
                max_requests: 1,
                max_pending: 1,
            },
            metrics.clone(),
        )
        .layer(TowerHop(inner));
        // One in flight, one waiting, the third refused at once.
        let mut first = tokio_test::task::spawn(call_hop(&svc, request()));
        assert_pending!(first.poll());
        let (_, first_send) = handle.next_request().await.expect("first called");
        let mut second = tokio_test::task::spawn(call_hop(&svc, request()));
        assert_pending!(second.poll());
        let mut third = tokio_test::task::spawn(call_hop(&svc, request()));
        let err = assert_ready!(third.poll()).expect_err("overflow");
        let status = err.downcast_ref::<tonic::Status>().expect("a status");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(crate::error::find::<Overflow>(&*err).is_some());
        assert_eq!(metrics.snapshot("delivery").2, 1);

        first_send.send_response(ok_response());
        assert!(assert_ready!(first.poll()).is_ok());
        // The waiting one now goes through.
        assert_pending!(second.poll());
        let (_, second_send) = handle.next_request().await.expect("second called");
        second_send.send_response(ok_response());
        assert!(assert_ready!(second.poll()).is_ok());
    }

    #[tokio::test]
    async fn a_stream_holds_its_slot_until_its_body_ends() {
        let (inner, mut handle) = mock::pair::<Request, Response>();
        let svc = PoolLayer::layer(
            "status",
            Config {
                max_requests: 1,
                max_pending: 0,
            },
            MeshMetrics::default(),
        )
        .layer(TowerHop(inner));
        let streaming = || {
            let mut r = request();
            r.extensions_mut().insert(crate::classify::Streaming);
            r
        };
        let mut first = tokio_test::task::spawn(call_hop(&svc, streaming()));
        assert_pending!(first.poll());
        let (_, send) = handle.next_request().await.expect("called");
        // Headers now, the body still open (a watch stream).
        let (_tx, rx) =
            tokio::sync::mpsc::channel::<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>(1);
        let open = tonic::body::Body::new(http_body_util::StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ));
        send.send_response(http::Response::new(open));
        let stream = assert_ready!(first.poll()).expect("the stream started");
        // The stream is still in flight: the next call overflows.
        let mut second = tokio_test::task::spawn(call_hop(&svc, streaming()));
        assert!(assert_ready!(second.poll()).is_err(), "slot still held");
        drop(stream);
        let mut third = tokio_test::task::spawn(call_hop(&svc, streaming()));
        assert_pending!(third.poll());
        assert!(handle.next_request().await.is_some(), "slot given back");
    }

    #[tokio::test]
    async fn zero_pending_refuses_everything_beyond_in_flight() {
        let (inner, mut handle) = mock::pair::<Request, Response>();
        let svc = PoolLayer::layer(
            "h",
            Config {
                max_requests: 2,
                max_pending: 0,
            },
            MeshMetrics::default(),
        )
        .layer(TowerHop(inner));
        let mut a = tokio_test::task::spawn(call_hop(&svc, request()));
        let mut b = tokio_test::task::spawn(call_hop(&svc, request()));
        assert_pending!(a.poll());
        assert_pending!(b.poll());
        let _a = handle.next_request().await;
        let _b = handle.next_request().await;
        let mut c = tokio_test::task::spawn(call_hop(&svc, request()));
        assert!(assert_ready!(c.poll()).is_err());
    }

    #[tokio::test]
    async fn a_waiting_call_dropped_gives_its_place_back() {
        let (inner, mut handle) = mock::pair::<Request, Response>();
        let svc = PoolLayer::layer(
            "h",
            Config {
                max_requests: 1,
                max_pending: 1,
            },
            MeshMetrics::default(),
        )
        .layer(TowerHop(inner));
        let mut first = tokio_test::task::spawn(call_hop(&svc, request()));
        assert_pending!(first.poll());
        let _first = handle.next_request().await;
        for _ in 0..5 {
            // Wait, then give up (a timeout): the place must come back every time.
            let mut waiting = tokio_test::task::spawn(call_hop(&svc, request()));
            assert_pending!(waiting.poll());
            drop(waiting);
        }
        let mut last = tokio_test::task::spawn(call_hop(&svc, request()));
        assert_pending!(last.poll());
    }
}
