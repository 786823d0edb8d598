//! Retries (VirtualService `http[].retries`): `attempts` retries after the first try,
//! each try bounded by `perTryTimeout`, on the conditions of `retryOn`, spaced by Envoy's
//! fully jittered exponential back-off (25 ms base, 250 ms cap: the n-th retry waits a
//! random time in [0, min((2^n - 1) x 25 ms, 250 ms)]).
//!
//! The request body streams through on the first try while a copy is kept, so every
//! retry sends the same bytes without delaying the first ([`crate::replay`]).
//! Fail-fast answers (circuit open, pool overflow) are never retried: Envoy's local
//! replies are not, and they must stay fast.

use crate::classify::{Judged, Outcome};
use crate::error::{self, is_fail_fast, BoxError, PerTryTimeout, Timeout as RouteTimeout};
use crate::metrics::MeshMetrics;
use crate::replay::Replay;
use crate::{Call, Hop, Request, Response};
use rand::Rng;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;
use tower::Layer;

/// Envoy's back-off base interval.
pub const BASE_INTERVAL: Duration = Duration::from_millis(25);
/// Envoy's default back-off cap (10 x base).
pub const MAX_INTERVAL: Duration = Duration::from_millis(250);

/// The conditions of `retryOn`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// "5xx": an HTTP 5xx, no answer, per-try timeout.
    pub five_xx: bool,
    /// "gateway-error": an HTTP 502-504, no answer, per-try timeout.
    pub gateway_error: bool,
    /// "connect-failure", "refused-stream": no answer from the upstream.
    pub local_origin: bool,
    /// "reset": no answer, or none in time (per-try timeout).
    pub reset: bool,
    /// gRPC names: "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable".
    pub codes: Vec<Code>,
    /// HTTP statuses ("503").
    pub http_statuses: Vec<u16>,
}

impl RetryOn {
    /// Parses Istio's comma-separated `retryOn`; an unknown condition is an error naming it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut on = RetryOn::default();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item {
                "5xx" => on.five_xx = true,
                "gateway-error" => on.gateway_error = true,
                "reset" => on.reset = true,
                "connect-failure" | "refused-stream" => on.local_origin = true,
                // The codes come from Istio's default policy only (503); alone it adds none.
                "retriable-status-codes" => {}
                "cancelled" => on.codes.push(Code::Cancelled),
                "deadline-exceeded" => on.codes.push(Code::DeadlineExceeded),
                "internal" => on.codes.push(Code::Internal),
                "resource-exhausted" => on.codes.push(Code::ResourceExhausted),
                "unavailable" => on.codes.push(Code::Unavailable),
                other => match other.parse::<u16>() {
                    Ok(status) if (100..600).contains(&status) => on.http_statuses.push(status),
                    _ => {
                        return Err(format!(
                            "retryOn condition {other:?} is not supported (use 5xx, gateway-error, reset, connect-failure, \
                             refused-stream, retriable-status-codes, an HTTP status, or the gRPC names cancelled, \
                             deadline-exceeded, internal, resource-exhausted, unavailable)"
                        ))
                    }
                },
            }
        }
        Ok(on)
    }

    /// Whether a try's result (its answer judged as `judged`) is worth another try. As
    /// Envoy: `5xx` and `gateway-error` look at the HTTP status (200 for every gRPC
    /// answer) and at tries that got no answer; the gRPC names look at grpc-status only.
    pub fn matches(&self, result: &Result<Response, BoxError>, judged: Option<Judged>) -> bool {
        match result {
            Ok(response) => {
                let status = response.status().as_u16();
                // As Envoy: only a status in the headers (trailers-only) is seen in time.
                let code_hit = judged.is_some_and(|j| {
                    j.status_in_headers
                        && matches!(j.outcome, Outcome::Grpc(code) if self.codes.contains(&code))
                });
                code_hit
                    || (self.five_xx && status >= 500)
                    || (self.gateway_error && (502..=504).contains(&status))
                    || self.http_statuses.contains(&status)
            }
            Err(e) if is_fail_fast(&**e) => false,
            // A try that timed out: "reset" covers read timeouts too.
            Err(e) if error::find::<PerTryTimeout>(&**e).is_some() => {
                self.five_xx || self.gateway_error || self.reset
            }
            // No answer at all: connect failure, refused or reset stream.
            Err(_) => self.five_xx || self.gateway_error || self.reset || self.local_origin,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Retries after the first try (Istio's `attempts`).
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub retry_on: RetryOn,
}

impl Default for Config {
    /// Istio's default policy when a route says nothing: 2 retries on
    /// connect-failure, refused-stream, unavailable, cancelled, retriable-status-codes.
    fn default() -> Self {
        Self {
            attempts: 2,
            per_try_timeout: None,
            retry_on: RetryOn {
                local_origin: true,
                codes: vec![Code::Unavailable, Code::Cancelled],
                http_statuses: vec![503],
                ..RetryOn::default()
            },
        }
    }
}

/// The wait before the `retry`-th retry (1-based): uniform in [0, min((2^n - 1) x base, cap)].
pub fn backoff(retry: u32) -> Duration {
    let upper = jitter_upper(retry);
    if upper.is_zero() {
        return upper;
    }
    let nanos = rand::thread_rng().gen_range(0..=upper.as_nanos() as u64);
    Duration::from_nanos(nanos)
}

/// The upper bound of the back-off before the `retry`-th retry.
pub fn jitter_upper(retry: u32) -> Duration {
    let factor = (1u64 << retry.min(20)).saturating_sub(1);
    (BASE_INTERVAL * factor as u32).min(MAX_INTERVAL)
}

/// How long a retry waits for the previous try's request body to be handed back.
const BODY_BACK_WITHIN: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct RetryLayer(Arc<Policy>);

/// What every try of every call reads.
#[derive(Debug, Clone)]
struct Policy {
    host: String,
    config: Config,
    /// The route's overall timeout (retries and back-off included).
    route_timeout: Option<Duration>,
    metrics: MeshMetrics,
}

impl RetryLayer {
    pub fn layer(host: &str, config: Config, metrics: MeshMetrics) -> Self {
        Self(Arc::new(Policy {
            host: host.to_owned(),
            config,
            route_timeout: None,
            metrics,
        }))
    }

    /// Enforces the route's timeout too: each try is bounded by the sooner of the route's
    /// deadline and its per-try timeout, so a try needs one timer, not two.
    pub fn with_route_timeout(mut self, route: crate::timeout::Config) -> Self {
        Arc::make_mut(&mut self.0).route_timeout = route.timeout;
        self
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            layer: self.clone(),
        }
    }
}

/// When the route's timeout ends a call, and how long it was.
#[derive(Debug, Clone, Copy)]
struct RouteDeadline {
    at: tokio::time::Instant,
    limit: Duration,
}

#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    layer: RetryLayer,
}

/// What a retry sends again of the call's head. The first try takes the head itself, so
/// the call keeps only this copy, with the headers as a list (one allocation; a header
/// map's copy takes three). Not the extensions: what
/// the layers below read is in the [`Call`], and hyper reads none of a gRPC request's.
struct Head {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl Head {
    fn of(parts: &http::request::Parts) -> Self {
        Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
        }
    }

    /// A retry's request, with `body`.
    fn request(&self, body: tonic::body::Body) -> Request {
        let mut request = http::Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        let headers = request.headers_mut();
        headers.reserve(self.headers.len());
        for (name, value) in &self.headers {
            headers.append(name.clone(), value.clone());
        }
        request
    }
}

impl<S: Hop> Hop for Retry<S> {
    /// Every try of the call shares its [`Call`]: the balancer steers retries away from the
    /// endpoints already tried.
    fn call<'a>(
        &'a self,
        request: Request,
        call: &'a mut Call,
    ) -> impl Future<Output = Result<Response, BoxError>> + Send + 'a {
        let layer = &*self.layer.0;
        let inner = &self.inner;
        // Taken apart before the async block: the block then keeps the head once, not the
        // request as well (see Hop).
        let (parts, body) = request.into_parts();
        let replay = Replay::new(body);
        let head = Head::of(&parts);
        let mut first = Some(parts);
        async move {
            // The route's deadline: each try is bounded by the sooner of it and the per-try
            // timeout, with one timer.
            let deadline = layer.route_timeout.map(|limit| RouteDeadline {
                at: tokio::time::Instant::now() + limit,
                limit,
            });
            let route_timeout = |d: RouteDeadline| error::timeout(RouteTimeout(d.limit));
            let mut retry = 0u32;
            loop {
                call.judged = None;
                let request = match first.take() {
                    Some(parts) => Request::from_parts(parts, replay.body()),
                    None => head.request(replay.body()),
                };
                let attempt = inner.call(request, call);
                let per_try = layer
                    .config
                    .per_try_timeout
                    .map(|limit| (tokio::time::Instant::now() + limit, limit));
                // The route's deadline bounds this try when it comes first (or alone).
                let by_route = deadline.filter(|d| per_try.is_none_or(|(at, _)| d.at <= at));
                let result = match (by_route, per_try) {
                    (Some(d), _) => match tokio::time::timeout_at(d.at, attempt).await {
                        Ok(result) => result,
                        Err(_) => return Err(route_timeout(d)),
                    },
                    (None, Some((at, limit))) => tokio::time::timeout_at(at, attempt)
                        .await
                        .unwrap_or_else(|_| Err(error::per_try_timeout(PerTryTimeout(limit)))),
                    (None, None) => attempt.await,
                };
                if retry >= layer.config.attempts
                    || !layer.config.retry_on.matches(&result, call.judged)
                {
                    return result;
                }
                retry += 1;
                let pause = tokio::time::Instant::now() + backoff(retry);
                match deadline {
                    Some(d) if d.at <= pause => {
                        tokio::time::sleep_until(d.at).await;
                        return Err(route_timeout(d));
                    }
                    _ => tokio::time::sleep_until(pause).await,
                }
                // The answer may have come before the client was done sending the body:
                // wait for it to come back (briefly) rather than give up the retry.
                let within = deadline.map_or(BODY_BACK_WITHIN, |d| {
                    BODY_BACK_WITHIN
                        .min(d.at.saturating_duration_since(tokio::time::Instant::now()))
                });
                if !replay.wait_available(within).await {
                    return result;
                }
                layer.metrics.retry(&layer.host);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::status_response;
    use crate::testing::{call_hop, call_judged, ok_response, request};
    use crate::TowerHop;
    use tokio_test::{assert_pending, assert_ready};
    use tower_test::mock;

    type Mocked = Retry<TowerHop<mock::Mock<Request, Response>>>;

    fn layer(
        attempts: u32,
        per_try: Option<Duration>,
        on: &str,
    ) -> (Mocked, mock::Handle<Request, Response>, MeshMetrics) {
        layer_timed(attempts, per_try, on, None)
    }

    fn layer_timed(
        attempts: u32,
        per_try: Option<Duration>,
        on: &str,
        route_timeout: Option<Duration>,
    ) -> (Mocked, mock::Handle<Request, Response>, MeshMetrics) {
        let (inner, handle) = mock::pair::<Request, Response>();
        let metrics = MeshMetrics::default();
        let config = Config {
            attempts,
            per_try_timeout: per_try,
            retry_on: RetryOn::parse(on).expect("valid"),
        };
        (
            RetryLayer::layer("h", config, metrics.clone())
                .with_route_timeout(crate::timeout::Config {
                    timeout: route_timeout,
                })
                .layer(TowerHop(inner)),
            handle,
            metrics,
        )
    }

    #[test]
    fn parses_istio_conditions_and_refuses_unknown_ones() {
        let on =
            RetryOn::parse("gateway-error,connect-failure,refused-stream,reset").expect("valid");
        assert!(on.gateway_error && on.local_origin && on.reset && !on.five_xx);
        let on = RetryOn::parse("unavailable, cancelled,503").expect("valid");
        assert_eq!(on.codes, vec![Code::Unavailable, Code::Cancelled]);
        assert_eq!(on.http_statuses, vec![503]);
        let err = RetryOn::parse("5xx,retriable-headers").expect_err("refused");
        assert!(err.contains("retriable-headers"), "{err}");
    }

    #[test]
    fn backoff_bounds_follow_envoy() {
        assert_eq!(jitter_upper(1), Duration::from_millis(25));
        assert_eq!(jitter_upper(2), Duration::from_millis(75));
        assert_eq!(jitter_upper(3), Duration::from_millis(175));
        assert_eq!(jitter_upper(4), Duration::from_millis(250));
        assert_eq!(jitter_upper(30), Duration::from_millis(250));
        for retry in 1..6 {
            for _ in 0..200 {
                assert!(backoff(retry) <= jitter_upper(retry));
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_exactly_attempts_times_then_gives_the_last_answer() {
        let (svc, mut handle, metrics) = layer(3, None, "unavailable");
        let mut call = tokio_test::task::spawn(call_judged(&svc, request()));
        for _ in 0..4 {
            assert_pending!(call.poll());
            // Let the back-off sleep run out.
            tokio::time::advance(MAX_INTERVAL).await;
            assert_pending!(call.poll());
            let (_, send) = handle.next_request().await.expect("a try");
            send.send_response(status_response(Code::Unavailable, "down"));
        }
        assert_eq!(
            assert_ready!(call.poll()),
            Some(Outcome::Grpc(Code::Unavailable))
        );
        assert_eq!(metrics.snapshot("h").0, 3, "three retries, four tries");
        // No fifth try was sent.
        assert!(futures::FutureExt::now_or_never(handle.next_request()).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn every_try_sends_the_same_head_and_body() {
        use http_body_util::BodyExt;
        let (svc, mut handle, _) = layer(2, None, "unavailable");
        let mut sent = request();
        *sent.method_mut() = http::Method::PUT;
        let headers = sent.headers_mut();
        headers.insert(
            "content-type",
            http::HeaderValue::from_static("application/grpc"),
        );
        headers.append("x-tag", http::HeaderValue::from_static("a"));
        headers.append("x-tag", http::HeaderValue::from_static("b"));
        let expected = (
            sent.method().clone(),
            sent.uri().clone(),
            sent.headers().clone(),
        );
        let mut call = tokio_test::task::spawn(call_judged(&svc, sent));
        for _ in 0..3 {
            assert_pending!(call.poll());
            tokio::time::advance(MAX_INTERVAL).await;
            assert_pending!(call.poll());
            let (tried, send) = handle.next_request().await.expect("a try");
            let (parts, body) = tried.into_parts();
            assert_eq!(
                (parts.method, parts.uri, parts.headers),
                expected,
                "a try's head differs"
            );
            let bytes = body.collect().await.expect("body").to_bytes();
            assert_eq!(&bytes[..], b"\0\0\0\0\x02\x08\x01");
            send.send_response(status_response(Code::Unavailable, "down"));
        }
        assert_eq!(
            assert_ready!(call.poll()),
            Some(Outcome::Grpc(Code::Unavailable))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_status_in_trailers_comes_too_late_to_retry() {
        let (svc, mut handle, metrics) = layer(3, None, "unavailable");
        let mut call = tokio_test::task::spawn(call_judged(&svc, request()));
        assert_pending!(call.poll());
        let (_, send) = handle.next_request().await.expect("a try");
        // UNAVAILABLE after the headers: Envoy has sent them on and cannot retry.
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
        send.send_response(http::Response::new(crate::classify::replay_body(
            bytes::Bytes::new(),
            Some(trailers),
        )));
        assert_eq!(
            assert_ready!(call.poll()),
            Some(Outcome::Grpc(Code::Unavailable))
        );
        assert_eq!(metrics.snapshot("h").0, 0, "no retry");
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_the_first_success_and_ignores_other_codes() {
        let (svc, mut handle, metrics) = layer(5, None, "unavailable");
        let mut call = tokio_test::task::spawn(call_hop(&svc, request()));
        assert_pending!(call.poll());
        let (_, send) = handle.next_request().await.expect("first try");
        send.send_response(status_response(Code::Unavailable, "down"));
        assert_pending!(call.poll());
        tokio::time::advance(MAX_INTERVAL).await;
        assert_pending!(call.poll());
        let (_, send) = handle.next_request().await.expect("second try");
        send.send_response(ok_response());
        assert!(assert_ready!(call.poll()).is_ok());
        assert_eq!(metrics.snapshot("h").0, 1);

        // NOT_FOUND is not in retryOn: one try only.
        let mut call = tokio_test::task::spawn(call_judged(&svc, request()));
        assert_pending!(call.poll());
        let (_, send) = handle.next_request().await.expect("a try");
        send.send_response(status_response(Code::NotFound, "no"));
        assert_eq!(
            assert_ready!(call.poll()),
            Some(Outcome::Grpc(Code::NotFound))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn per_try_timeout_is_retried_within_the_attempts() {
        let (svc, mut handle, metrics) =
            layer(1, Some(Duration::from_millis(100)), "gateway-error");
        let mut call = tokio_test::task::spawn(call_hop(&svc, request()));
        assert_pending!(call.poll());
        let (_, _first_never_answered) = handle.next_request().await.expect("first try");
        tokio::time::advance(Duration::from_millis(101)).await;
        assert_pending!(call.poll());
        tokio::time::advance(MAX_INTERVAL).await;
        assert_pending!(call.poll());
        let (_, _second_never_answered) = handle.next_request().await.expect("second try");
        tokio::time::advance(Duration::from_millis(101)).await;
        let err = assert_ready!(call.poll()).expect_err("timed out twice");
        assert!(crate::error::find::<PerTryTimeout>(&*err).is_some());
        assert_eq!(metrics.snapshot("h").0, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn fail_fast_is_not_retried() {
        let (inner, _handle) = mock::pair::<Request, Response>();
        let failing = tower::service_fn(|_req: Request| async {
            Err::<Response, BoxError>(crate::error::circuit_open(crate::error::CircuitOpen {
                host: "h".into(),
                retry_after: Duration::from_secs(1),
            }))
        });
        let _ = inner;
        let metrics = MeshMetrics::default();
        let svc = RetryLayer::layer(
            "h",
            Config {
                attempts: 5,
                per_try_timeout: None,
                retry_on: RetryOn::parse("5xx,unavailable").expect("valid"),
            },
            metrics.clone(),
        )
        .layer(TowerHop(failing));
        assert!(call_hop(&svc, request()).await.is_err());
        assert_eq!(metrics.snapshot("h").0, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn overall_timeout_cuts_the_tries_short() {
        let (svc, mut handle, metrics) = layer_timed(
            5,
            Some(Duration::from_millis(100)),
            "gateway-error",
            Some(Duration::from_millis(250)),
        );
        let started = tokio::time::Instant::now();
        let mut call = tokio_test::task::spawn(call_hop(&svc, request()));
        let mut tries = 0;
        let mut pending = vec![];
        for _ in 0..30 {
            let _ = call.poll();
            while let Some(Some((request, send))) =
                futures::FutureExt::now_or_never(handle.next_request())
            {
                tries += 1;
                drop(request); // the upstream read the request...
                pending.push(send); // ...and never answers: every try runs into its per-try timeout
            }
            tokio::time::advance(Duration::from_millis(10)).await;
            if let std::task::Poll::Ready(result) = call.poll() {
                let err = result.expect_err("the route timeout ends it");
                assert!(
                    crate::error::find::<crate::error::Timeout>(&*err).is_some(),
                    "{err}"
                );
                // Tries start at 0 ms, ~100-125 ms, ~200-300 ms: two or three fit in 250 ms.
                assert!((2..=3).contains(&tries), "{tries} tries");
                assert!(metrics.snapshot("h").0 >= 1);
                let at = started.elapsed();
                assert!(
                    at >= Duration::from_millis(250) && at <= Duration::from_millis(260),
                    "ended at {at:?}"
                );
                return;
            }
        }
        panic!("the overall timeout never fired");
    }

    // The route timeout on its own (no retries): what the timeout layer's tests asserted.
    #[tokio::test(start_paused = true)]
    async fn fails_at_the_deadline_not_before() {
        let (svc, mut handle, _) =
            layer_timed(0, None, "unavailable", Some(Duration::from_millis(100)));
        let mut call = tokio_test::task::spawn(call_hop(&svc, request()));
        assert_pending!(call.poll());
        let (_req, _send) = handle
            .next_request()
            .await
            .expect("the call reached the host");
        tokio::time::advance(Duration::from_millis(99)).await;
        assert_pending!(call.poll());
        tokio::time::advance(Duration::from_millis(2)).await;
        let err = assert_ready!(call.poll()).expect_err("timed out");
        assert!(crate::error::find::<crate::error::Timeout>(&*err).is_some());
        // Envoy's 504 "upstream request timeout", as a gRPC caller reads it.
        let status = err.downcast_ref::<tonic::Status>().expect("a status");
        assert_eq!(status.code(), tonic::Code::Unavailable);
    }

    #[tokio::test(start_paused = true)]
    async fn no_timeout_passes_through() {
        let (svc, mut handle, _) = layer_timed(0, None, "unavailable", None);
        let mut call = tokio_test::task::spawn(call_hop(&svc, request()));
        assert_pending!(call.poll());
        let (_req, send) = handle.next_request().await.expect("called");
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_pending!(call.poll());
        send.send_response(crate::testing::ok_response());
        assert!(assert_ready!(call.poll()).is_ok());
    }
}
