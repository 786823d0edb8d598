//! A scripted gRPC upstream that is not tonic: a bare hyper HTTP/2 server answering each
//! call the way its script says, in the exact wire forms other gRPC stacks use (grpc
//! C-core, grpc-go and Envoy answer an early error trailers-only: one HEADERS frame with
//! END_STREAM). It stands in for a backend where the tests need an answer tonic's server
//! would never give, and counts the calls it got.

use bytes::Bytes;
use http_body_util::Empty;
use hyper::body::Incoming;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// How the upstream answers one call.
#[derive(Debug, Clone)]
pub enum Answer {
    /// A gRPC error before any message, as one HEADERS frame with END_STREAM.
    TrailersOnly(tonic::Code, &'static str),
    /// A gRPC error as headers, then trailers (tonic's form).
    HeadersThenTrailers(tonic::Code, &'static str),
    /// Success: headers, one empty message, trailers with grpc-status 0.
    Ok,
    /// An HTTP status with no grpc-status (a proxy's or a non-gRPC server's answer).
    Http(u16),
    /// No answer: the stream is reset (RST_STREAM, INTERNAL_ERROR) before any headers.
    Reset,
    /// The answer, after a wait (before the headers).
    Delayed(std::time::Duration, Box<Answer>),
}

impl Answer {
    /// `answer` after `wait`.
    pub fn after(wait: std::time::Duration, answer: Answer) -> Answer {
        Answer::Delayed(wait, Box::new(answer))
    }
}

type Body = http_body_util::Either<
    Empty<Bytes>,
    http_body_util::StreamBody<
        futures::stream::Iter<std::vec::IntoIter<Result<hyper::body::Frame<Bytes>, Infallible>>>,
    >,
>;

fn answer(answer: &Answer) -> http::Response<Body> {
    let grpc = |builder: http::response::Builder| {
        builder
            .status(200)
            .header("content-type", "application/grpc")
    };
    match answer {
        Answer::TrailersOnly(code, message) => grpc(http::Response::builder())
            .header("grpc-status", (*code as i32).to_string())
            .header("grpc-message", *message)
            .body(http_body_util::Either::Left(Empty::new()))
            .expect("a valid response"),
        Answer::Ok => {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from(0));
            let frames = vec![
                // An empty message: no compression flag, length 0.
                Ok(hyper::body::Frame::data(Bytes::from_static(&[
                    0, 0, 0, 0, 0,
                ]))),
                Ok(hyper::body::Frame::trailers(trailers)),
            ];
            grpc(http::Response::builder())
                .body(http_body_util::Either::Right(
                    http_body_util::StreamBody::new(futures::stream::iter(frames)),
                ))
                .expect("a valid response")
        }
        Answer::Http(status) => http::Response::builder()
            .status(*status)
            .header("content-type", "text/plain")
            .body(http_body_util::Either::Left(Empty::new()))
            .expect("a valid response"),
        Answer::Reset | Answer::Delayed(..) => unreachable!("handled by the service"),
        Answer::HeadersThenTrailers(code, message) => {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from(*code as i32));
            if let Ok(value) = http::HeaderValue::from_str(message) {
                trailers.insert("grpc-message", value);
            }
            let frames = vec![Ok(hyper::body::Frame::trailers(trailers))];
            grpc(http::Response::builder())
                .body(http_body_util::Either::Right(
                    http_body_util::StreamBody::new(futures::stream::iter(frames)),
                ))
                .expect("a valid response")
        }
    }
}

/// The service error that makes hyper reset the stream.
#[derive(Debug)]
struct ScriptedReset;

impl std::fmt::Display for ScriptedReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("scripted stream reset")
    }
}

impl std::error::Error for ScriptedReset {}

/// A loopback port where nothing listens: connections to it are refused.
pub fn refused_port() -> u16 {
    crate::free_port()
}

/// A running scripted upstream; stops when dropped.
pub struct Upstream {
    pub port: u16,
    calls: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Upstream {
    /// Listens on a free loopback port; call `n` (from 0) gets `script(n)`.
    pub async fn start(script: impl Fn(usize) -> Answer + Send + Sync + 'static) -> Upstream {
        let port = crate::free_port();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("a free port");
        let calls = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let script = Arc::new(script);
        let (counted, stopped) = (calls.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stopped.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((stream, _)) = accepted else { continue };
                let (script, counted) = (script.clone(), counted.clone());
                let service =
                    hyper::service::service_fn(move |request: http::Request<Incoming>| {
                        let n = counted.fetch_add(1, Ordering::SeqCst);
                        let script = script.clone();
                        async move {
                            // The request body is not needed: drain it so the stream closes cleanly.
                            drop(request);
                            let mut scripted = script(n);
                            while let Answer::Delayed(wait, then) = scripted {
                                tokio::time::sleep(wait).await;
                                scripted = *then;
                            }
                            match scripted {
                                // hyper resets the stream when the service fails.
                                Answer::Reset => Err(ScriptedReset),
                                other => Ok(answer(&other)),
                            }
                        }
                    });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        Upstream { port, calls, stop }
    }

    /// Calls answered so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One unary gRPC call over a bare HTTP/2 connection, so the test sees the wire form of
/// the answer: its headers, whether they ended the stream (trailers-only), and the
/// trailers if any.
pub struct WireAnswer {
    pub headers: http::HeaderMap,
    pub headers_ended_stream: bool,
    pub trailers: Option<http::HeaderMap>,
}

impl WireAnswer {
    /// The grpc-status, from the trailers or a trailers-only answer's headers.
    pub fn code(&self) -> Option<i32> {
        let from = |h: &http::HeaderMap| {
            h.get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        };
        match &self.trailers {
            Some(trailers) => from(trailers),
            None if self.headers_ended_stream => from(&self.headers),
            None => None,
        }
    }
}

/// Calls `path` at `port` with an empty message and `authorization`.
pub async fn wire_call(port: u16, path: &str, authorization: &str) -> WireAnswer {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let request = http::Request::post(format!("http://127.0.0.1:{port}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", authorization)
        .body(())
        .expect("request");
    let (response, mut send) = client.send_request(request, false).expect("send");
    // An empty message: no compression flag, length 0.
    send.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .expect("body");
    let response = response.await.expect("response");
    let (parts, mut body) = response.into_parts();
    let headers_ended_stream = body.is_end_stream();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("data");
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.expect("trailers");
    WireAnswer {
        headers: parts.headers,
        headers_ended_stream,
        trailers,
    }
}
