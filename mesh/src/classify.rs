//! Classifying a gRPC outcome the way Envoy's outlier detection and retry policy see it.
//! The grpc-status comes from the trailers, or from the headers of a trailers-only
//! response; without one, a non-200 HTTP status is judged as HTTP (a 429 is no 5xx).
//! For outlier detection Envoy maps grpc-status to
//! HTTP (UNAVAILABLE 503, DEADLINE_EXCEEDED 504, INTERNAL / UNKNOWN / DATA_LOSS 500,
//! UNIMPLEMENTED 501), so those count as 5xx and UNAVAILABLE / DEADLINE_EXCEEDED as
//! gateway errors (502-504). Failures of our own side (connect, reset, per-try timeout)
//! count as both, as Envoy counts local-origin errors when they are not split.

use crate::error::BoxError;
use bytes::Bytes;
use http::HeaderMap;
use http_body::Frame;
use http_body_util::BodyExt;
use tonic::body::Body;
use tonic::Code;

/// What one call came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// grpc-status 0.
    Ok,
    /// A non-OK grpc-status from the upstream.
    Grpc(Code),
    /// An HTTP status other than 200 with no grpc-status (a proxy's or a non-gRPC answer).
    Http(u16),
    /// No answer: connect failure, reset, per-try timeout.
    LocalOrigin,
}

impl Outcome {
    /// Counts toward consecutive5xxErrors.
    pub fn is_5xx(self) -> bool {
        match self {
            Outcome::Ok => false,
            Outcome::LocalOrigin => true,
            Outcome::Grpc(code) => matches!(
                code,
                Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::Internal
                    | Code::Unknown
                    | Code::DataLoss
                    | Code::Unimplemented
            ),
            Outcome::Http(status) => status >= 500,
        }
    }

    /// Counts toward consecutiveGatewayErrors.
    pub fn is_gateway(self) -> bool {
        match self {
            Outcome::Ok => false,
            Outcome::LocalOrigin => true,
            Outcome::Grpc(code) => matches!(code, Code::Unavailable | Code::DeadlineExceeded),
            Outcome::Http(status) => (502..=504).contains(&status),
        }
    }
}

/// What a try's answer came to, as the layers above the endpoint read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judged {
    pub outcome: Outcome,
    /// The grpc-status came in the headers (a trailers-only answer), the only place Envoy
    /// reads a status for `retryOn`: a status in trailers comes after the headers went
    /// downstream, too late for Envoy to retry, so the mesh does not either.
    pub status_in_headers: bool,
}

/// Named once: looking a header up by `&str` parses the name on every call.
static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    headers
        .get(&GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(Code::from_i32)
}

/// gRPC's mapping of an HTTP status without grpc-status.
pub fn code_for_http(status: http::StatusCode) -> Code {
    match status.as_u16() {
        200 => Code::Unknown,
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// Reads the whole (unary) response body with its trailers and judges it; gives back an
/// equivalent response.
pub async fn buffer(
    response: http::Response<Body>,
) -> Result<(http::Response<Body>, Judged), BoxError> {
    let (parts, mut body) = response.into_parts();
    // Read frame by frame rather than `collect()`: a unary answer is one DATA frame, kept
    // as it came (no copy), and the trailers are taken, not cloned. This path runs on
    // every unary call, so its allocations are the mesh's overhead.
    let mut data = Buffered::default();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| -> BoxError { Box::new(e) })?;
        match frame.into_data() {
            Ok(chunk) => data.push(chunk),
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    let in_trailers = trailers.as_ref().and_then(grpc_status);
    let in_headers = if in_trailers.is_none() {
        grpc_status(&parts.headers)
    } else {
        None
    };
    // 200 without any status: a broken response, which gRPC reports as UNKNOWN.
    let judged = Judged {
        outcome: judge(
            in_trailers.or(in_headers),
            parts.status,
            Outcome::Grpc(Code::Unknown),
        ),
        status_in_headers: in_headers.is_some(),
    };
    let response = http::Response::from_parts(parts, replay_body(data.into_bytes(), trailers));
    Ok((response, judged))
}

/// The DATA of a buffered answer: the one chunk as it came, joined only when there are more.
#[derive(Default)]
struct Buffered {
    first: Bytes,
    more: Option<bytes::BytesMut>,
}

impl Buffered {
    fn push(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        if self.first.is_empty() && self.more.is_none() {
            self.first = chunk;
            return;
        }
        let joined = self
            .more
            .get_or_insert_with(|| bytes::BytesMut::from(&self.first[..]));
        joined.extend_from_slice(&chunk);
    }

    fn into_bytes(self) -> Bytes {
        match self.more {
            Some(joined) => joined.freeze(),
            None => self.first,
        }
    }
}

/// Marks a call whose answer streams (server streaming): the mesh passes its body through
/// as it comes instead of buffering it, judges the call by its response headers (a
/// trailers-only error, an HTTP status, or a stream that started), holds its
/// connection-pool slot until the body ends, and its timeouts bound the time to the
/// response headers only, as Envoy's do for a stream with `timeout` to first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streaming;

/// A call's outcome from its grpc-status, else its HTTP status as Envoy judges it (a 429
/// is no 5xx), else `no_status` (a 200 with no grpc-status).
fn judge(code: Option<Code>, status: http::StatusCode, no_status: Outcome) -> Outcome {
    match code {
        Some(Code::Ok) => Outcome::Ok,
        Some(code) => Outcome::Grpc(code),
        None if status != http::StatusCode::OK => Outcome::Http(status.as_u16()),
        None => no_status,
    }
}

/// Judges a streaming answer by its headers, leaving the body as it is.
pub fn head(response: &http::Response<Body>) -> Judged {
    let status = grpc_status(response.headers());
    Judged {
        // Headers without a status: the stream has started; how it ends is the caller's.
        outcome: judge(status, response.status(), Outcome::Ok),
        status_in_headers: status.is_some(),
    }
}

/// A body that yields `data` then `trailers`. Nothing at all is an empty body that says
/// so before it is polled: a trailers-only answer (the status in the headers, as grpc
/// C-core, grpc-go and Envoy send an early error) then leaves as one HEADERS frame with
/// END_STREAM again. A body that only turns out empty would be sent as headers plus an
/// empty DATA frame ending the stream: a response with no trailers, which strict clients
/// read as UNKNOWN ("Stream removed").
pub fn replay_body(data: Bytes, trailers: Option<HeaderMap>) -> Body {
    if data.is_empty() && trailers.is_none() {
        return Body::empty();
    }
    Body::new(Replayed {
        data: (!data.is_empty()).then_some(data),
        trailers,
    })
}

/// What [`replay_body`] sends: its data, then its trailers.
struct Replayed {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for Replayed {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = match self.data.take() {
            Some(data) => Some(Ok(Frame::data(data))),
            None => self.trailers.take().map(|t| Ok(Frame::trailers(t))),
        };
        std::task::Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    // No exact size hint: a layer that rewrites the body (gRPC-Web puts the trailers in
    // it) would pass it on as a Content-Length that cuts the trailers off.
}

/// A trailers-only gRPC response carrying `code` (what Envoy sends for a fault abort).
pub fn status_response(code: Code, message: &str) -> http::Response<Body> {
    let mut response = http::Response::new(Body::empty());
    let headers = response.headers_mut();
    headers.insert(
        "content-type",
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", http::HeaderValue::from(code as i32));
    if let Ok(v) = http::HeaderValue::from_str(message) {
        headers.insert("grpc-message", v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_judged_by_its_headers() {
        let judged = |status: u16, grpc: Option<&'static str>| {
            let mut response = http::Response::new(Body::empty());
            *response.status_mut() = http::StatusCode::from_u16(status).expect("status");
            if let Some(code) = grpc {
                response
                    .headers_mut()
                    .insert("grpc-status", http::HeaderValue::from_static(code));
            }
            let judged = head(&response);
            (judged.outcome, judged.status_in_headers)
        };
        assert_eq!(judged(200, None), (Outcome::Ok, false));
        assert_eq!(
            judged(200, Some("14")),
            (Outcome::Grpc(Code::Unavailable), true)
        );
        assert_eq!(judged(503, None), (Outcome::Http(503), false));
    }

    #[test]
    fn nothing_replays_as_a_body_known_to_be_empty() {
        use http_body::Body as _;
        assert!(replay_body(Bytes::new(), None).is_end_stream());
        assert!(!replay_body(Bytes::from_static(b"x"), None).is_end_stream());
        assert!(!replay_body(Bytes::new(), Some(HeaderMap::new())).is_end_stream());
    }

    #[test]
    fn envoy_mapping_of_codes() {
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Internal,
            Code::Unknown,
            Code::DataLoss,
            Code::Unimplemented,
        ] {
            assert!(Outcome::Grpc(code).is_5xx(), "{code:?}");
        }
        for code in [
            Code::NotFound,
            Code::InvalidArgument,
            Code::FailedPrecondition,
            Code::AlreadyExists,
            Code::ResourceExhausted,
        ] {
            assert!(!Outcome::Grpc(code).is_5xx(), "{code:?}");
        }
        assert!(Outcome::Grpc(Code::Unavailable).is_gateway());
        assert!(Outcome::Grpc(Code::DeadlineExceeded).is_gateway());
        assert!(!Outcome::Grpc(Code::Internal).is_gateway());
        assert!(Outcome::LocalOrigin.is_5xx() && Outcome::LocalOrigin.is_gateway());
        assert!(!Outcome::Http(429).is_5xx() && !Outcome::Http(404).is_5xx());
        assert!(
            Outcome::Http(503).is_gateway()
                && Outcome::Http(500).is_5xx()
                && !Outcome::Http(500).is_gateway()
        );
        assert!(!Outcome::Ok.is_5xx());
    }

    #[tokio::test]
    async fn reads_status_from_trailers_or_headers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
        let response = http::Response::new(replay_body(Bytes::from_static(b"x"), Some(trailers)));
        let (buffered, judged) = buffer(response).await.expect("buffers");
        assert_eq!(
            judged,
            Judged {
                outcome: Outcome::Grpc(Code::Unavailable),
                status_in_headers: false
            }
        );
        let body = buffered.into_body().collect().await.expect("body");
        assert!(body.trailers().is_some(), "trailers replayed");
        assert_eq!(body.to_bytes(), Bytes::from_static(b"x"));

        let only = status_response(Code::NotFound, "nope");
        assert_eq!(
            buffer(only).await.expect("buffers").1,
            Judged {
                outcome: Outcome::Grpc(Code::NotFound),
                status_in_headers: true
            }
        );

        let mut ok = HeaderMap::new();
        ok.insert("grpc-status", http::HeaderValue::from_static("0"));
        let response = http::Response::new(replay_body(Bytes::new(), Some(ok)));
        assert_eq!(
            buffer(response).await.expect("buffers").1.outcome,
            Outcome::Ok
        );
        // No status at all: broken, as gRPC reads it.
        let response = http::Response::new(replay_body(Bytes::from_static(b"x"), None));
        assert_eq!(
            buffer(response).await.expect("buffers").1.outcome,
            Outcome::Grpc(Code::Unknown)
        );
    }
}
