//! Rate limiting per client address: a token bucket per IP (governor's keyed limiter).
//! A call over the limit is answered at once with RESOURCE_EXHAUSTED and a `retry-after`
//! header (seconds), never queued; calls within it pass untouched. (Per token subject
//! comes with the gateway's tokens.)

use axum::body::Body as AxumBody;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::convert::Infallible;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::transport::server::TcpConnectInfo;
use tower::{Layer, Service};

/// Calls per second and burst per client address.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

#[derive(Clone)]
pub struct RateLimitLayer {
    limiter: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    config: Config,
}

impl RateLimitLayer {
    pub fn new(config: Config) -> Self {
        let quota = Quota::per_second(config.per_second).allow_burst(config.burst);
        Self {
            limiter: Arc::new(RateLimiter::keyed(quota)),
            config,
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    layer: RateLimitLayer,
}

impl<S, B> Service<http::Request<B>> for RateLimit<S>
where
    S: Service<http::Request<B>, Response = http::Response<AxumBody>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<AxumBody>;
    type Error = Infallible;
    type Future = futures_util::future::Either<
        S::Future,
        std::future::Ready<Result<Self::Response, Infallible>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let client = request
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(|c| c.remote_addr())
            .map(|a| a.ip());
        if let Some(ip) = client {
            if let Err(not_until) = self.layer.limiter.check_key(&ip) {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                let status = tonic::Status::resource_exhausted(format!(
                    "rate limit: {} calls per second per client address (burst {}); retry after {secs} s",
                    self.layer.config.per_second, self.layer.config.burst
                ));
                let mut response: http::Response<AxumBody> = status.into_http();
                if let Ok(value) = http::HeaderValue::from_str(&secs.to_string()) {
                    response.headers_mut().insert("retry-after", value);
                }
                return futures_util::future::Either::Right(std::future::ready(Ok(response)));
            }
        }
        futures_util::future::Either::Left(self.inner.call(request))
    }
}
