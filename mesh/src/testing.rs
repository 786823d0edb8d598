//! Helpers for the unit tests of the layers.

use crate::classify::Outcome;
use crate::error::BoxError;
use crate::{Call, Hop, Request, Response};
use http::HeaderMap;

/// One call through `hop`, as it enters the stack.
pub async fn call_hop<H: Hop>(hop: &H, request: Request) -> Result<Response, BoxError> {
    let mut call = Call::new(&request);
    hop.call(request, &mut call).await
}

/// One call through `hop`: what its last try's answer came to (None: no answer).
pub async fn call_judged<H: Hop>(hop: &H, request: Request) -> Option<Outcome> {
    let mut call = Call::new(&request);
    let answered = hop.call(request, &mut call).await.is_ok();
    call.judged.filter(|_| answered).map(|j| j.outcome)
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

/// An OK gRPC response.
pub fn ok_response() -> Response {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    http::Response::new(crate::classify::replay_body(
        bytes::Bytes::new(),
        Some(trailers),
    ))
}
