//! The door every API call goes through, gRPC, gRPC-Web and REST alike: the client
//! address's rate limit, the access token, the token subject's rate limit. The token goes
//! on to the backend, which checks it again (zero trust: see `parking_common::auth`).

use crate::limit::{Limiter, OverLimit};
use crate::tokens::Tokens;
use axum::body::Body as AxumBody;
use parking_common::identity::Caller;
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
    /// Proxies in front of the gateway that append to `X-Forwarded-For` (an ingress, a
    /// sidecar); 0: the TCP peer is the client.
    pub trusted_hops: usize,
}

/// The client's address: the TCP peer, or with `trusted_hops` proxies in front, the
/// address the outermost of them saw (`X-Forwarded-For`, counted from the right, so a
/// client cannot choose its own by sending the header).
pub fn client_ip(
    headers: &http::HeaderMap,
    extensions: &http::Extensions,
    trusted_hops: usize,
) -> Option<IpAddr> {
    let peer = extensions
        .get::<TcpConnectInfo>()
        .and_then(|c| c.remote_addr())
        .map(|a| a.ip());
    if trusted_hops == 0 {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    forwarded
        .len()
        .checked_sub(trusted_hops)
        .and_then(|i| forwarded.get(i).copied())
        .or(peer)
}

impl Guard {
    /// The client address's limit alone (for the token endpoint, before any token).
    pub fn limit_addr(
        &self,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
    ) -> Result<(), Rejection> {
        let ip = client_ip(headers, extensions, self.trusted_hops);
        if let (Some(limiter), Some(ip)) = (&self.by_addr, ip) {
            limiter
                .check(&ip)
                .map_err(|over| Rejection::over_limit(over, "client address", limiter.config))?;
        }
        Ok(())
    }

    /// Admits one call or says why not. On success the call carries its token (for the
    /// backend to check again) and a fresh request id.
    pub fn admit(
        &self,
        headers: &mut http::HeaderMap,
        extensions: &http::Extensions,
    ) -> Result<Caller, Rejection> {
        self.limit_addr(headers, extensions)?;
        let caller = self
            .tokens
            .check_header(headers.get(http::header::AUTHORIZATION))
            .map_err(|refused| tonic::Status::unauthenticated(refused.to_string()))?;
        if let Some(limiter) = &self.by_subject {
            limiter
                .check(&caller.subject)
                .map_err(|over| Rejection::over_limit(over, "token subject", limiter.config))?;
        }
        // One id per call, kept by the mesh's retries of it (see propagation::REQUEST_ID).
        let id = uuid::Uuid::new_v4().to_string();
        if let Ok(value) = http::HeaderValue::from_str(&id) {
            headers.insert(parking_common::propagation::REQUEST_ID, value);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use parking_common::identity::Role;

    fn guard() -> Guard {
        let tokens = Tokens::ephemeral("i", "a", std::time::Duration::from_secs(60)).expect("key");
        Guard {
            tokens: Arc::new(tokens),
            by_addr: None,
            by_subject: None,
            trusted_hops: 0,
        }
    }

    fn bearer(guard: &Guard, subject: &str, role: Role) -> http::HeaderValue {
        let token = guard.tokens.issue(subject, role).expect("sign");
        http::HeaderValue::from_str(&format!("Bearer {token}")).expect("ascii")
    }

    #[test]
    fn the_token_goes_on_with_a_fresh_request_id() {
        let guard = guard();
        let mut headers = http::HeaderMap::new();
        let token = bearer(&guard, "3117", Role::Employee);
        headers.insert(http::header::AUTHORIZATION, token.clone());
        headers.insert("x-request-id", http::HeaderValue::from_static("mine"));
        let caller = guard
            .admit(&mut headers, &http::Extensions::new())
            .expect("a good token");
        assert_eq!(
            caller,
            Caller {
                subject: "3117".into(),
                role: Role::Employee
            }
        );
        assert_eq!(headers.get(http::header::AUTHORIZATION), Some(&token));
        let ids: Vec<_> = headers.get_all("x-request-id").iter().collect();
        assert_eq!(ids.len(), 1);
        assert_ne!(ids[0], "mine", "the gateway's own id, not the caller's");
    }

    #[test]
    fn the_client_address_comes_from_trusted_proxies_only() {
        let mut headers = http::HeaderMap::new();
        // The client forged the first entry; the ingress appended the real address.
        headers.insert(
            "x-forwarded-for",
            http::HeaderValue::from_static("6.6.6.6, 203.0.113.7"),
        );
        let none = http::Extensions::new();
        let ip = |hops| client_ip(&headers, &none, hops);
        assert_eq!(ip(1), "203.0.113.7".parse().ok());
        assert_eq!(ip(2), "6.6.6.6".parse().ok());
        assert_eq!(ip(3), None, "fewer entries than hops: the peer (none here)");
        assert_eq!(ip(0), None, "no proxies trusted: the header is ignored");
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let guard = guard();
        let mut lower = http::HeaderMap::new();
        let token = guard.tokens.issue("6", Role::Employee).expect("sign");
        lower.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&format!("BEARER {token}")).expect("ascii"),
        );
        assert!(guard.admit(&mut lower, &http::Extensions::new()).is_ok());
    }
}
