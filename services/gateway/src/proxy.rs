//! Forwarding one gRPC service's calls to its backend: the HTTP/2 request as it came
//! (headers, grpc-timeout, body streaming in either direction) to the backend, through the
//! mesh library's policies (Istio's retries, timeouts, pool limits, outlier detection).
//! Unary answers are buffered to read their status; a stream's answer passes through as
//! it comes, judged by its headers (`mesh::classify::Streaming`). A backend that cannot
//! be reached is answered with a gRPC status, never a bare HTTP error a gRPC client cannot
//! read.

use axum::body::Body as AxumBody;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::ServiceExt;

/// One backend service's calls of one kind.
#[derive(Clone)]
pub struct Forward {
    /// The backend's name, for messages.
    pub backend: &'static str,
    pub mesh: mesh::MeshClient,
    /// Server-streaming calls: passed through unbuffered.
    pub streaming: bool,
}

/// The gRPC answer for a failed forward: the mesh's own status (UNAVAILABLE with a
/// `retry-after` when the circuit is open, UNAVAILABLE on its timeout, as Envoy), or
/// UNAVAILABLE naming the backend.
pub fn failure(backend: &str, error: &mesh::error::BoxError) -> http::Response<AxumBody> {
    if let Some(status) = error.downcast_ref::<tonic::Status>() {
        let mut response: http::Response<AxumBody> = status.clone().into_http();
        if let Some(open) = mesh::error::find::<mesh::error::CircuitOpen>(status) {
            let secs = open.retry_after.as_secs().max(1);
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        }
        return response;
    }
    tracing::warn!(backend, %error, "backend unreachable");
    tonic::Status::unavailable(format!("{backend} is unavailable right now; retry shortly"))
        .into_http()
}

impl<B> tower::Service<http::Request<B>> for Forward
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<AxumBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let mesh = self.mesh.clone();
        let backend = self.backend;
        let streaming = self.streaming;
        Box::pin(async move {
            let mut request = request.map(tonic::body::Body::new);
            if streaming {
                request.extensions_mut().insert(mesh::classify::Streaming);
            }
            // The backend's span becomes a child of this call's gateway span.
            parking_common::propagation::inject(request.headers_mut());
            match mesh.oneshot(request).await {
                Ok(response) => Ok(response.map(AxumBody::new)),
                Err(error) => Ok(failure(backend, &error)),
            }
        })
    }
}
