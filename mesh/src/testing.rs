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
