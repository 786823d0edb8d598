//! The route's overall `timeout` (VirtualService `http[].timeout`): retries included.

use crate::error::{self, BoxError, Timeout as TimeoutError};
use crate::{BoxFuture, Request, Response};
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Config {
    /// None: no overall timeout (Istio's default).
    pub timeout: Option<Duration>,
}

/// The route's deadline, handed to the retry layer below so that it bounds each try by
/// the sooner of the deadline and its per-try timeout: one timer per try, not two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteDeadline {
    pub at: tokio::time::Instant,
    /// The route's timeout, for the error.
    pub limit: Duration,
}

#[derive(Debug, Clone)]
pub struct TimeoutLayer {
    config: Config,
    /// The layer below enforces a [`RouteDeadline`] (the retry layer does).
    enforced_below: bool,
}

impl TimeoutLayer {
    pub fn layer(config: Config) -> Self {
        Self {
            config,
            enforced_below: false,
        }
    }

    /// Over the retry layer, which enforces the deadline this layer hands it.
    pub fn over_retry(config: Config) -> Self {
        Self {
            config,
            enforced_below: true,
        }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            config: self.config,
            enforced_below: self.enforced_below,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    config: Config,
    enforced_below: bool,
}

impl<S> Service<Request> for Timeout<S>
where
    S: Service<Request, Response = Response, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        if let (Some(limit), true) = (self.config.timeout, self.enforced_below) {
            request.extensions_mut().insert(RouteDeadline {
                at: tokio::time::Instant::now() + limit,
                limit,
            });
            return Box::pin(self.inner.call(request));
        }
        // Every layer of the mesh is always ready: called as it is (see crate::MeshService).
        let call = self.inner.call(request);
        match self.config.timeout {
            None => Box::pin(call),
            Some(limit) => Box::pin(async move {
                tokio::time::timeout(limit, call)
                    .await
                    .unwrap_or_else(|_| Err(error::timeout(TimeoutError(limit))))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ok_response, request};
    use tokio_test::{assert_pending, assert_ready};
    use tower_test::mock;

    #[tokio::test(start_paused = true)]
    async fn fails_at_the_deadline_not_before() {
        let (inner, mut handle) = mock::pair::<Request, Response>();
        let inner = crate::testing::Ready(inner);
        let mut svc = TimeoutLayer::layer(Config {
            timeout: Some(Duration::from_millis(100)),
        })
        .layer(inner);
        let mut call = tokio_test::task::spawn(svc.call(request()));
        assert_pending!(call.poll());
        let (_req, _send) = handle
            .next_request()
            .await
            .expect("the call reached the host");
        tokio::time::advance(Duration::from_millis(99)).await;
        assert_pending!(call.poll());
        tokio::time::advance(Duration::from_millis(2)).await;
        let err = assert_ready!(call.poll()).expect_err("timed out");
        assert!(crate::error::find::<TimeoutError>(&*err).is_some());
        // Envoy's 504 "upstream request timeout", as a gRPC caller reads it.
        let status = err.downcast_ref::<tonic::Status>().expect("a status");
        assert_eq!(status.code(), tonic::Code::Unavailable);
    }

    #[tokio::test(start_paused = true)]
    async fn no_timeout_passes_through() {
        let (inner, mut handle) = mock::pair::<Request, Response>();
        let inner = crate::testing::Ready(inner);
        let mut svc = TimeoutLayer::layer(Config::default()).layer(inner);
        let mut call = tokio_test::task::spawn(svc.call(request()));
        assert_pending!(call.poll());
        let (_req, send) = handle.next_request().await.expect("called");
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_pending!(call.poll());
        send.send_response(ok_response());
        assert!(assert_ready!(call.poll()).is_ok());
    }
}
