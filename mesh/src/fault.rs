//! Fault injection (VirtualService `http[].fault`): delay a share of calls by a fixed
//! time, and/or abort a share with a gRPC status (or an HTTP status mapped as gRPC maps
//! it). As Envoy: decided once per call, the delay first, then the abort.
//!
//! Difference from Envoy, on purpose: the route's [`FaultLayer`] only decides; the fault
//! is applied at the endpoint, inside each try ([`apply`], called by
//! [`crate::endpoint::Endpoint`]). So an injected delay counts toward perTryTimeout and the
//! route timeout, and an abort toward outlier detection, exactly as a slow or failing
//! upstream would. Envoy applies faults before routing, where neither sees them; here they
//! exist to exercise those policies.

use crate::classify::status_response;
use crate::error::BoxError;
use crate::{Call, Hop, Request, Response};
use rand::Rng;
use std::future::Future;
use std::time::Duration;
use tonic::Code;
use tower::Layer;

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Config {
    /// (fixedDelay, percentage 0..=100)
    pub delay: Option<(Duration, f64)>,
    /// (status, percentage 0..=100)
    pub abort: Option<(Code, f64)>,
}

impl Config {
    pub fn is_empty(&self) -> bool {
        self.delay.is_none() && self.abort.is_none()
    }
}

fn roll(percentage: f64) -> bool {
    percentage >= 100.0
        || (percentage > 0.0 && rand::thread_rng().gen::<f64>() * 100.0 < percentage)
}

#[derive(Debug, Clone)]
pub struct FaultLayer(Config);

impl FaultLayer {
    pub fn layer(config: Config) -> Self {
        Self(config)
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = Fault<S>;
    fn layer(&self, inner: S) -> Fault<S> {
        Fault {
            inner,
            config: self.0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Fault<S> {
    inner: S,
    config: Config,
}

impl<S: Hop> Hop for Fault<S> {
    fn call<'a>(
        &'a self,
        request: Request,
        call: &'a mut Call,
    ) -> impl Future<Output = Result<Response, BoxError>> + Send + 'a {
        if !self.config.is_empty() {
            let injected = Injected {
                delay: self.config.delay.filter(|(_, p)| roll(*p)).map(|(d, _)| d),
                abort: self.config.abort.filter(|(_, p)| roll(*p)).map(|(c, _)| c),
            };
            if injected.delay.is_some() || injected.abort.is_some() {
                call.faults = Some(injected);
            }
        }
        self.inner.call(request, call)
    }
}

/// The faults decided for one call, carried to the endpoint in its [`Call`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injected {
    pub delay: Option<Duration>,
    pub abort: Option<Code>,
}

/// Applies decided faults: waits the delay, then answers the abort (if any) instead of
/// the upstream.
pub async fn apply(injected: Option<Injected>) -> Option<Response> {
    let injected = injected?;
    if let Some(delay) = injected.delay {
        tokio::time::sleep(delay).await;
    }
    injected
        .abort
        .map(|code| status_response(code, "fault filter abort"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Outcome;
    use crate::testing::{call_hop, call_judged, ok_response, request};

    /// Answers OK unless a fault was injected, which it applies as the endpoint does.
    struct Upstream;

    impl Hop for Upstream {
        async fn call(&self, _: Request, call: &mut Call) -> Result<Response, BoxError> {
            let response = apply(call.faults).await.unwrap_or_else(ok_response);
            call.judged = Some(crate::classify::head(&response));
            Ok(response)
        }
    }

    #[tokio::test]
    async fn abort_percentage_within_tolerance() {
        let svc = FaultLayer::layer(Config {
            delay: None,
            abort: Some((Code::Unavailable, 30.0)),
        })
        .layer(Upstream);
        let n = 20_000;
        let mut aborted = 0;
        for _ in 0..n {
            if call_judged(&svc, request()).await == Some(Outcome::Grpc(Code::Unavailable)) {
                aborted += 1;
            }
        }
        let share = aborted as f64 * 100.0 / n as f64;
        // 20 000 draws at 30 %: the standard deviation is 0.32 points; 2 points is > 6 sigma.
        assert!((share - 30.0).abs() < 2.0, "aborted {share:.2} %");
    }

    #[tokio::test(start_paused = true)]
    async fn delay_percentage_within_tolerance_and_exact_delay() {
        let svc = FaultLayer::layer(Config {
            delay: Some((Duration::from_secs(5), 10.0)),
            abort: None,
        })
        .layer(Upstream);
        let n = 20_000;
        let mut delayed = 0;
        for _ in 0..n {
            let start = tokio::time::Instant::now();
            call_hop(&svc, request()).await.expect("answer");
            let took = start.elapsed();
            if took >= Duration::from_secs(5) {
                assert_eq!(took, Duration::from_secs(5));
                delayed += 1;
            }
        }
        let share = delayed as f64 * 100.0 / n as f64;
        assert!((share - 10.0).abs() < 1.5, "delayed {share:.2} %");
    }

    #[tokio::test]
    async fn zero_and_hundred_percent_are_exact() {
        let never = FaultLayer::layer(Config {
            delay: None,
            abort: Some((Code::Internal, 0.0)),
        })
        .layer(Upstream);
        let always = FaultLayer::layer(Config {
            delay: None,
            abort: Some((Code::Internal, 100.0)),
        })
        .layer(Upstream);
        for _ in 0..1000 {
            assert_eq!(call_judged(&never, request()).await, Some(Outcome::Ok));
            assert_eq!(
                call_judged(&always, request()).await,
                Some(Outcome::Grpc(Code::Internal))
            );
        }
    }
}
