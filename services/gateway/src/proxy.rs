//! Forwarding one gRPC service's calls to its backend: the HTTP/2 request as it came
//! (headers, grpc-timeout, body streaming in either direction) over a tonic channel to the
//! backend, the answer back as it comes. A backend that cannot be reached is answered with
//! UNAVAILABLE, never a bare HTTP error a gRPC client cannot read.

use axum::body::Body as AxumBody;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::transport::Channel;
use tower::{Service, ServiceExt};

/// One backend service.
#[derive(Clone, Debug)]
pub struct Forward {
    /// The backend's name, for messages.
    pub backend: &'static str,
    pub channel: Channel,
}

impl<B> Service<http::Request<B>> for Forward
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
        let channel = self.channel.clone();
        let backend = self.backend;
        Box::pin(async move {
            let request = request.map(tonic::body::Body::new);
            match channel.oneshot(request).await {
                Ok(response) => Ok(response.map(AxumBody::new)),
                Err(error) => {
                    tracing::warn!(backend, %error, "backend unreachable");
                    let status = tonic::Status::unavailable(format!(
                        "{backend} is unavailable right now; retry shortly"
                    ));
                    Ok(status.into_http())
                }
            }
        })
    }
}
