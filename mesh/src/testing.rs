//! Helpers for the unit tests of the layers.

use crate::error::BoxError;
use crate::outlier::Tried;
use crate::{Hop, Request, Response};
use http::HeaderMap;

/// One call through `hop`, as a call's first try.
pub async fn call_hop<H: Hop>(hop: &H, request: Request) -> Result<Response, BoxError> {
    hop.call(request, &mut Tried::default()).await
}

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
