//! The door every API call goes through, gRPC, gRPC-Web and REST alike: the client
//! address's rate limit, the access token, the token subject's rate limit; then the
//! caller's own identity headers are dropped and the verified identity is set for the
//! backend (see `parking_common::identity`).

use crate::limit::{Limiter, OverLimit};
use crate::tokens::Tokens;
use axum::body::Body as AxumBody;
use parking_common::identity::{self, Caller};
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::transport::server::TcpConnectInfo;
use tower::{Layer, Service};

/// A refused call, answered as gRPC or as JSON depending on how it came.
#[derive(Debug)]
pub struct Rejection {
    pub status: tonic::Status,
    /// Seconds to wait, for rate limits.
    pub retry_after: Option<u64>,
}

impl From<tonic::Status> for Rejection {
    fn from(status: tonic::Status) -> Self {
        Rejection {
            status,
            retry_after: None,
        }
    }
}

impl Rejection {
    fn over_limit(over: OverLimit, what: &str, config: crate::limit::Config) -> Rejection {
        let secs = over.retry_after_secs;
        Rejection {
            status: tonic::Status::resource_exhausted(format!(
                "rate limit: {} calls per second per {what} (burst {}); retry after {secs} s",
                config.per_second, config.burst
            )),
            retry_after: Some(secs),
        }
    }

    /// As a gRPC answer (trailers-only response).
    pub fn grpc(self) -> http::Response<AxumBody> {
        let retry_after = self.retry_after;
        let mut response: http::Response<AxumBody> = self.status.into_http();
        Rejection::add_retry_after(retry_after, &mut response);
        response
    }

    /// As a REST answer: JSON with the HTTP status matching the gRPC code.
    pub fn json(self) -> http::Response<AxumBody> {
        let mut response = crate::rest::error_response(&self.status);
        Rejection::add_retry_after(self.retry_after, &mut response);
        response
    }

    fn add_retry_after(retry_after: Option<u64>, response: &mut http::Response<AxumBody>) {
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        }
    }
}

/// The checks, shared by every route.
pub struct Guard {
    pub tokens: Arc<Tokens>,
    pub by_addr: Option<Limiter<IpAddr>>,
    pub by_subject: Option<Limiter<String>>,
}

/// The client's address as the connection gives it.
pub fn client_ip(extensions: &http::Extensions) -> Option<IpAddr> {
    extensions
        .get::<TcpConnectInfo>()
        .and_then(|c| c.remote_addr())
        .map(|a| a.ip())
}

impl Guard {
    /// The client address's limit alone (for the token endpoint, before any token).
    pub fn limit_addr(&self, extensions: &http::Extensions) -> Result<(), Rejection> {
        if let (Some(limiter), Some(ip)) = (&self.by_addr, client_ip(extensions)) {
            limiter
                .check(&ip)
                .map_err(|over| Rejection::over_limit(over, "client address", limiter.config))?;
        }
        Ok(())
    }

    /// Admits one call or says why not. On success the headers carry the verified
    /// identity and nothing the caller claimed about itself; the token stays here.
    pub fn admit(
        &self,
        headers: &mut http::HeaderMap,
        extensions: &http::Extensions,
    ) -> Result<Caller, Rejection> {
        self.limit_addr(extensions)?;
        let caller = self
            .tokens
            .check_header(headers.get(http::header::AUTHORIZATION))
            .map_err(|refused| tonic::Status::unauthenticated(refused.to_string()))?;
        if let (Some(limiter), Caller::User { subject, .. }) = (&self.by_subject, &caller) {
            limiter
                .check(subject)
                .map_err(|over| Rejection::over_limit(over, "user", limiter.config))?;
        }
        let forged: Vec<http::HeaderName> = headers
            .keys()
            .filter(|name| name.as_str().starts_with(identity::PREFIX))
            .cloned()
            .collect();
        for name in forged {
            headers.remove(name);
        }
        headers.remove(http::header::AUTHORIZATION);
        caller.insert_into(headers);
        Ok(caller)
    }

    /// Drops idle buckets now and then.
    pub async fn shrink_limiters(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => {
                    if let Some(l) = &self.by_addr { l.shrink(); }
                    if let Some(l) = &self.by_subject { l.shrink(); }
                }
            }
        }
    }
}

/// [`Guard`] in front of a gRPC route.
#[derive(Clone)]
pub struct GuardLayer(pub Arc<Guard>);

impl<S> Layer<S> for GuardLayer {
    type Service = Guarded<S>;
    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded {
            inner,
            guard: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    guard: Arc<Guard>,
}

impl<S, B> Service<http::Request<B>> for Guarded<S>
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
        let (mut parts, body) = request.into_parts();
        match self.guard.admit(&mut parts.headers, &parts.extensions) {
            Ok(_) => futures_util::future::Either::Left(
                self.inner.call(http::Request::from_parts(parts, body)),
            ),
            Err(rejection) => {
                futures_util::future::Either::Right(std::future::ready(Ok(rejection.grpc())))
            }
        }
    }
}
