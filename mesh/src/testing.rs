//! Helpers for the unit tests of the layers.

use crate::{Request, Response};
use http::HeaderMap;

/// A unary gRPC request with a small body.
pub fn request() -> Request {
    let mut request = http::Request::new(tonic::body::Body::new(http_body_util::Full::new(
        bytes::Bytes::from_static(b"\0\0\0\0\x02\x08\x01"),
    )));
    *request.uri_mut() =
        http::Uri::from_static("http://delivery/parking.v1.TicketDeliveryService/CancelDelivery");
    request
}

/// An OK gRPC response, already classified.
pub fn ok_response() -> Response {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let mut response = http::Response::new(crate::classify::replay_body(
        bytes::Bytes::new(),
        Some(trailers),
    ));
    response
        .extensions_mut()
        .insert(crate::classify::Classified(crate::classify::Outcome::Ok));
    response
}

/// A tower-test mock made always ready, as every layer of the mesh is: the layers call the
/// one below without a readiness wait (see [`crate::MeshService`]).
#[derive(Clone)]
pub struct Ready<S>(pub S);

impl<S> tower::Service<Request> for Ready<S>
where
    S: tower::Service<Request, Response = Response> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<crate::error::BoxError>,
{
    type Response = Response;
    type Error = crate::error::BoxError;
    type Future = crate::BoxFuture<Result<Response, crate::error::BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move {
            tower::ServiceExt::oneshot(inner, request)
                .await
                .map_err(Into::into)
        })
    }
}
