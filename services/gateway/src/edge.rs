//! The gateway's edge: how it takes connections and calls from the open network, bounded
//! so that a flood turns into refusals rather than memory growth. It owns the server loop
//! (hyper-util's HTTP/1.1 + h2c-prior-knowledge server on one port, with a cap on open
//! connections, a deadline for a connection's first request or HTTP/2 preface, HTTP/1
//! header-read and HTTP/2 stream, reset and header limits, keep-alive pings, graceful
//! drain) and the admission layer in front of every route (a global in-flight limit that
//! sheds the excess at once, a per-call deadline). The backends keep tonic's server
//! (`parking_common::grpc::serve`): they are not the public door, and every call they
//! take needs a token (and with mTLS, a certificate) before it costs them anything.

use http::{HeaderValue, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::transport::server::TcpConnectInfo;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// The edge's limits (environment `EDGE_*`).
#[derive(clap::Args, Debug, Clone)]
pub struct Edge {
    /// Connections open at once; beyond it a new connection is closed as soon as it is
    /// accepted (counted in edge_connections_refused_total). A connection holding half a
    /// request header costs about 13 KiB (hyper's 8 KiB read and write buffers), so the
    /// default bounds a flood of them to about 60 MiB; raise it with the memory limit.
    #[arg(long = "edge-max-connections", env = "EDGE_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
    /// Time a new connection has to send its first complete request header (HTTP/1.1) or
    /// its HTTP/2 preface, and an HTTP/1.1 connection each later request header.
    #[arg(long = "edge-header-read-timeout-ms", env = "EDGE_HEADER_READ_TIMEOUT_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub header_read_timeout_ms: u64,
    /// Concurrent streams (calls) per HTTP/2 connection.
    #[arg(long = "edge-max-concurrent-streams", env = "EDGE_MAX_CONCURRENT_STREAMS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_streams: u32,
    /// HTTP/2 streams a client may reset before the gateway took them, at once, before
    /// its connection is closed with GOAWAY ENHANCE_YOUR_CALM (rapid reset,
    /// CVE-2023-44487).
    #[arg(
        long = "edge-max-pending-resets",
        env = "EDGE_MAX_PENDING_RESETS",
        default_value_t = 20
    )]
    pub max_pending_resets: usize,
    /// HTTP/2 streams the gateway may reset for a client's protocol errors on one
    /// connection before closing it (the "MadeYouReset" variant of the same attack).
    #[arg(
        long = "edge-max-local-resets",
        env = "EDGE_MAX_LOCAL_RESETS",
        default_value_t = 1024
    )]
    pub max_local_resets: usize,
    /// Largest request header block, in bytes (HTTP/2 header list; HTTP/1.1 read buffer,
    /// at least 8 KiB).
    #[arg(long = "edge-max-header-bytes", env = "EDGE_MAX_HEADER_BYTES", default_value_t = 16 * 1024, value_parser = clap::value_parser!(u32).range(1024..=1024 * 1024))]
    pub max_header_bytes: u32,
    /// HTTP/2 keep-alive: a PING after this many idle seconds, and the connection closed
    /// if the answer takes as long (0: no pings).
    #[arg(
        long = "edge-keepalive-secs",
        env = "EDGE_KEEPALIVE_SECS",
        default_value_t = 30
    )]
    pub keepalive_secs: u64,
    /// Calls (streams included, for their whole life) served at once by the whole
    /// gateway; the excess is refused at once (RESOURCE_EXHAUSTED / 503 with
    /// Retry-After), never queued. Health checks and /status are not counted.
    #[arg(long = "edge-max-in-flight", env = "EDGE_MAX_IN_FLIGHT", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_in_flight: u32,
    /// Deadline of a unary call (gRPC or REST) that sent no grpc-timeout.
    #[arg(long = "edge-call-timeout-ms", env = "EDGE_CALL_TIMEOUT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub call_timeout_ms: u64,
    /// The longest deadline a unary call may ask for with grpc-timeout.
    #[arg(long = "edge-max-call-timeout-ms", env = "EDGE_MAX_CALL_TIMEOUT_MS", default_value_t = 120_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_call_timeout_ms: u64,
    /// Retry-After (seconds) sent with a shed call.
    #[arg(
        long = "edge-retry-after-secs",
        env = "EDGE_RETRY_AFTER_SECS",
        default_value_t = 1
    )]
    pub retry_after_secs: u64,
}

/// The edge's series; clones share them.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    open: Gauge,
    refused: Counter,
    timed_out: Counter,
    shed: Counter,
    deadline: Counter,
}

impl Metrics {
    /// Registers `edge_connections_open`, `edge_connections_refused_total`,
    /// `edge_connections_timed_out_total`, `edge_calls_shed_total` and
    /// `edge_calls_deadline_exceeded_total`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "edge_connections_open",
            "Client connections open now",
            self.open.clone(),
        );
        registry.register(
            "edge_connections_refused",
            "Connections closed at once because EDGE_MAX_CONNECTIONS were open",
            self.refused.clone(),
        );
        registry.register(
            "edge_connections_timed_out",
            "Connections closed before a first request: no complete request header or HTTP/2 preface in time, or a broken one",
            self.timed_out.clone(),
        );
        registry.register(
            "edge_calls_shed",
            "Calls refused at once because EDGE_MAX_IN_FLIGHT calls were in flight",
            self.shed.clone(),
        );
        registry.register(
            "edge_calls_deadline_exceeded",
            "Calls answered DEADLINE_EXCEEDED by the edge's per-call deadline",
            self.deadline.clone(),
        );
    }
}

/// Serves `service` on `listener` with the edge's limits until `shutdown`; then probes see
/// NOT_SERVING, the listener closes and in-flight calls finish before this returns.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    health: HealthReporter,
    edge: &Edge,
    metrics: Metrics,
    shutdown: CancellationToken,
) where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    tracing::info!(addr = ?listener.local_addr().ok(), limits = ?edge, "gateway listening");
    let header_timeout = Duration::from_millis(edge.header_read_timeout_ms);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        // hyper's floor is 8 KiB; the default (~400 KiB) would let one slow client grow
        // a buffer that large.
        .max_buf_size((edge.max_header_bytes as usize).max(8192));
    let keepalive = (edge.keepalive_secs > 0).then(|| Duration::from_secs(edge.keepalive_secs));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(edge.max_concurrent_streams)
        .max_pending_accept_reset_streams(edge.max_pending_resets)
        .max_local_error_reset_streams(edge.max_local_resets)
        .max_header_list_size(edge.max_header_bytes)
        .keep_alive_interval(keepalive)
        .keep_alive_timeout(keepalive.unwrap_or(Duration::from_secs(20)));
    let builder = Arc::new(builder);
    let max = edge.max_connections;
    let slots = Arc::new(Semaphore::new(max as usize));
    let drain = CancellationToken::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Typically EMFILE: retrying at once would spin on the error while the
                // descriptors are still taken.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Full: close now rather than leave the accept queue to fill. The client learns
        // at once (and a balancer tries elsewhere) instead of waiting on a SYN that is
        // never answered, and when slots free up they go to clients that are still
        // there, not to a backlog of stale ones.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.refused.inc();
            drop(stream);
            continue;
        };
        // Without it a stream's next message (WatchReservationStatus) waits for the peer's
        // delayed ACK of the previous one (Nagle): 40 ms on Linux.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set");
        }
        let info = TcpConnectInfo {
            local_addr: stream.local_addr().ok(),
            remote_addr: Some(peer),
        };
        tokio::spawn(connection(
            builder.clone(),
            stream,
            info,
            service.clone(),
            header_timeout,
            metrics.clone(),
            drain.clone(),
            slot,
        ));
    }
    // Probes first, so a balancer stops sending before the listener goes.
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    drop(listener);
    drain.cancel();
    // Every connection holds a slot until it is closed: all of them back means drained.
    // A watch stream can stay open as long as its backend keeps it going: past the grace
    // period the remaining connections are dropped with the process.
    if tokio::time::timeout(DRAIN_GRACE, slots.acquire_many(max))
        .await
        .is_err()
    {
        tracing::warn!(grace = ?DRAIN_GRACE, "connections still open after the grace period; closing them");
    }
    tracing::info!("gateway stopped");
}

/// One connection, from accept to close.
#[allow(clippy::too_many_arguments)]
async fn connection<S>(
    builder: Arc<hyper_util::server::conn::auto::Builder<TokioExecutor>>,
    stream: TcpStream,
    info: TcpConnectInfo,
    service: S,
    header_timeout: Duration,
    metrics: Metrics,
    drain: CancellationToken,
    slot: OwnedSemaphorePermit,
) where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    metrics.open.inc();
    let greeted = CancellationToken::new();
    let io = TokioIo::new(Greeting {
        inner: stream,
        matched: 0,
        greeted: greeted.clone(),
    });
    let service = hyper_util::service::TowerToHyperService::new(PerConnection {
        inner: service,
        info,
        greeted: greeted.clone(),
    });
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    // hyper's HTTP/1 header timeout starts only once hyper knows the protocol, and
    // nothing times out an HTTP/2 preface or a connection that sends a few bytes of it
    // (or nothing): this deadline covers both.
    let first = tokio::time::sleep(header_timeout);
    tokio::pin!(first);
    let mut draining = false;
    loop {
        tokio::select! {
            served = &mut conn => {
                if let Err(error) = served {
                    // hyper's own HTTP/1 header timeout may fire a moment before ours.
                    if !greeted.is_cancelled() {
                        metrics.timed_out.inc();
                    }
                    tracing::debug!(%error, "connection ended with an error");
                }
                break;
            }
            _ = &mut first, if !greeted.is_cancelled() => {
                // Greeted while we waited: the guard turns this branch off from now on.
                if greeted.is_cancelled() {
                    continue;
                }
                metrics.timed_out.inc();
                break;
            }
            _ = drain.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
    metrics.open.dec();
    drop(slot);
}

/// The HTTP/2 client preface (RFC 9113 section 3.4).
/// How long a stopping gateway waits for open connections (streams) to finish, within
/// Kubernetes' default 30 s termination grace.
const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(20);

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// `matched` once the first bytes are not the preface: an HTTP/1 connection.
const NOT_H2: usize = usize::MAX;

/// A socket that says when the whole HTTP/2 preface has come in: from then on an HTTP/2
/// connection may idle (keep-alive pings watch it); before, it is half-open.
struct Greeting {
    inner: TcpStream,
    matched: usize,
    greeted: CancellationToken,
}

impl AsyncRead for Greeting {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.matched < PREFACE.len() {
            for &byte in &buf.filled()[before..] {
                if PREFACE.get(self.matched) == Some(&byte) {
                    self.matched += 1;
                    if self.matched == PREFACE.len() {
                        self.greeted.cancel();
                        break;
                    }
                } else {
                    self.matched = NOT_H2;
                    break;
                }
            }
        }
        polled
    }
}

impl AsyncWrite for Greeting {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The routes as one connection calls them: tonic's body, the peer's address where the
/// guard looks for it (as tonic's server sets it), and the first request noted.
#[derive(Clone)]
struct PerConnection<S> {
    inner: S,
    info: TcpConnectInfo,
    greeted: CancellationToken,
}

impl<S> tower::Service<Request<hyper::body::Incoming>> for PerConnection<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<hyper::body::Incoming>) -> Self::Future {
        self.greeted.cancel();
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(self.info.clone());
        self.inner.call(request)
    }
}

/// What the admission layer needs to know.
#[derive(Debug, Clone)]
pub struct Admission {
    in_flight: Arc<Semaphore>,
    /// Paths of streaming methods: no default deadline (see [`Admitted::call`]).
    streams: Arc<HashSet<String>>,
    call_timeout: Duration,
    max_call_timeout: Duration,
    retry_after_secs: u64,
    metrics: Metrics,
}

impl Admission {
    pub fn new(edge: &Edge, streams: impl IntoIterator<Item = String>, metrics: Metrics) -> Self {
        Admission {
            in_flight: Arc::new(Semaphore::new(edge.max_in_flight as usize)),
            streams: Arc::new(streams.into_iter().collect()),
            call_timeout: Duration::from_millis(edge.call_timeout_ms),
            max_call_timeout: Duration::from_millis(edge.max_call_timeout_ms.max(1)),
            retry_after_secs: edge.retry_after_secs,
            metrics,
        }
    }
}

impl<S> tower::Layer<S> for Admission {
    type Service = Admitted<S>;
    fn layer(&self, inner: S) -> Admitted<S> {
        Admitted {
            inner,
            admission: self.clone(),
        }
    }
}

/// The in-flight limit and the per-call deadline in front of every route.
#[derive(Clone)]
pub struct Admitted<S> {
    inner: S,
    admission: Admission,
}

/// Health checks (probes must see the gateway while it sheds) and the status page.
fn exempt(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path == "/status"
}

fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// A refusal in the caller's protocol: gRPC trailers-only (in the request's content type,
/// so gRPC-Web clients read it too) or the REST JSON error.
fn refusal(
    grpc: Option<HeaderValue>,
    status: tonic::Status,
    retry_after: Option<u64>,
) -> Response<Body> {
    let rejection = crate::guard::Rejection {
        status,
        retry_after,
    };
    match grpc {
        Some(content_type) => {
            let mut response = rejection.grpc().map(Body::new);
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, content_type);
            response
        }
        None => rejection.json().map(Body::new),
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tower::Service<Request<Body>> for Admitted<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future =
        futures_util::future::Either<S::Future, BoxFuture<Result<Response<Body>, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    /// Exempt paths pass untouched. Others take an in-flight slot or are refused at once;
    /// the slot is held until the answer's body is done (a stream's whole life: a stream
    /// holds a backend connection's stream and buffers as long as it is open). Unary calls
    /// get a deadline: the caller's grpc-timeout capped to the maximum, or the default;
    /// the backend is told the same deadline. Streams keep the caller's grpc-timeout as
    /// it came and get none of their own: a status watch is meant to stay open.
    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        use futures_util::future::Either;
        let path = request.uri().path();
        if exempt(path) {
            return Either::Left(self.inner.call(request));
        }
        let stream = self.admission.streams.contains(path) || path.starts_with("/grpc.reflection.");
        let grpc = is_grpc(request.headers()).then(|| {
            request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static("application/grpc"))
        });
        let admission = &self.admission;
        let Ok(slot) = admission.in_flight.clone().try_acquire_owned() else {
            admission.metrics.shed.inc();
            let secs = admission.retry_after_secs;
            let status = if grpc.is_some() {
                tonic::Status::resource_exhausted(format!(
                    "the gateway is at its limit of calls in flight; retry after {secs} s"
                ))
            } else {
                // REST callers get 503, what HTTP clients and balancers retry.
                tonic::Status::unavailable(format!(
                    "the gateway is at its limit of calls in flight; retry after {secs} s"
                ))
            };
            return Either::Right(Box::pin(std::future::ready(Ok(refusal(
                grpc,
                status,
                Some(secs),
            )))));
        };
        let deadline = if stream {
            None
        } else {
            let asked = parking_common::observe::grpc_timeout(request.headers());
            let deadline = asked.map_or(admission.call_timeout, |t| {
                t.min(admission.max_call_timeout)
            });
            if grpc.is_some() {
                // Milliseconds, rounded up: never tell the backend less than we wait.
                let millis = deadline.as_nanos().div_ceil(1_000_000).clamp(1, 99_999_999);
                if let Ok(value) = HeaderValue::from_str(&format!("{millis}m")) {
                    request.headers_mut().insert("grpc-timeout", value);
                }
            }
            Some(deadline)
        };
        let metrics = admission.metrics.clone();
        let call = self.inner.call(request);
        Either::Right(Box::pin(async move {
            let answer = match deadline {
                None => call.await,
                Some(deadline) => match tokio::time::timeout(deadline, call).await {
                    Ok(answer) => answer,
                    Err(_) => {
                        metrics.deadline.inc();
                        return Ok(refusal(
                            grpc,
                            tonic::Status::deadline_exceeded(format!(
                                "no answer within the call's deadline of {} ms",
                                deadline.as_millis()
                            )),
                            None,
                        ));
                    }
                },
            };
            // The slot goes with the answer's body (a stream's whole life).
            answer.map(|response| response.map(|body| mesh::pool::hold(body, slot)))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_are_read_and_nonsense_ignored() {
        let mut headers = http::HeaderMap::new();
        let mut with = |v: &'static str| {
            headers.insert("grpc-timeout", HeaderValue::from_static(v));
            parking_common::observe::grpc_timeout(&headers)
        };
        assert_eq!(with("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(with("2S"), Some(Duration::from_secs(2)));
        assert_eq!(with("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(with("m"), None);
        assert_eq!(with("123456789m"), None, "more than 8 digits");
        assert_eq!(with("5x"), None);
    }

    #[test]
    fn health_and_status_are_exempt_from_shedding() {
        assert!(exempt("/grpc.health.v1.Health/Check"));
        assert!(exempt("/status"));
        assert!(!exempt(
            "/parking.v1.TicketReservationService/ReserveTicket"
        ));
        assert!(!exempt("/oauth2/token"));
    }
}
