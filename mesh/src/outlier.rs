//! Outlier detection across the endpoints of a host (DestinationRule
//! `outlierDetection`), and the load balancing between the endpoints left.
//!
//! As Envoy: an endpoint is ejected at once on its Nth consecutive 5xx
//! (`consecutive5xxErrors`) or gateway error (`consecutiveGatewayErrors`); it stays out
//! `baseEjectionTime` x the number of times it was ejected (capped at 300 s or the base,
//! whichever is longer), and that multiplier decays by one for every `interval` it stays
//! healthy; an endpoint is ejected only while the share out, itself included, stays
//! within `maxEjectionPercent` (current Envoy; so with Istio's default 10 % a host with
//! fewer than ten endpoints never ejects one: set it higher). With every endpoint out the circuit is open: calls fail at once with
//! [`CircuitOpen`] (UNAVAILABLE, Envoy's "no healthy upstream" with minHealthPercent 0).
//!
//! Differences from Envoy: an ejected endpoint returns as soon as its time is up (Envoy
//! checks at the next `interval` tick); a call dropped before it finished (a per-try or
//! route timeout) counts as a gateway error of its endpoint, as Envoy counts an upstream
//! timeout; the `consecutiveLocalOriginFailures` split is not offered.

use crate::classify::{outcome_of, Outcome};
use crate::error::{self, BoxError, CircuitOpen};
use crate::metrics::MeshMetrics;
use crate::{BoxFuture, Request, Response};
use rand::Rng;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

/// The endpoints one call's tries went to (a request extension the retry layer adds and
/// every try shares): a retry picks an endpoint not tried yet while one is up, as Envoy's
/// `previous_hosts` retry predicate, which Istio sets on every route. Without it a retry
/// after a refused connection may land on the same stopped replica again.
#[derive(Debug, Clone, Default)]
pub struct Tried(Arc<Mutex<Vec<TriedEndpoint>>>);

/// A balancer's host (subset) name and an endpoint's index in it.
type TriedEndpoint = (Arc<str>, usize);

impl Tried {
    fn contains(&self, host: &Arc<str>, index: usize) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|(h, i)| *i == index && h == host)
    }

    fn add(&self, host: &Arc<str>, index: usize) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((host.clone(), index));
    }
}

/// Envoy's cap on one ejection (max_ejection_time default).
pub const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Eject after this many consecutive 5xx (None: off).
    pub consecutive_5xx: Option<u32>,
    /// Eject after this many consecutive gateway errors (None: off).
    pub consecutive_gateway: Option<u32>,
    /// How often the ejection multiplier of a healthy endpoint decays.
    pub interval: Duration,
    pub base_ejection_time: Duration,
    /// 0..=100.
    pub max_ejection_percent: u32,
}

impl Default for Config {
    /// Istio's defaults when outlierDetection is present: 5 x 5xx, 10 s, 30 s, 10 %.
    fn default() -> Self {
        Self {
            consecutive_5xx: Some(5),
            consecutive_gateway: None,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 10,
        }
    }
}

/// How the next endpoint is chosen among those not ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pick {
    #[default]
    RoundRobin,
    Random,
    /// Power of two choices on requests in flight (Envoy's LEAST_REQUEST).
    LeastRequest,
}

#[derive(Debug)]
struct Health {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejected_until: Option<Instant>,
    /// Ejections not yet decayed: the next ejection lasts base x (this + 1).
    multiplier: u32,
    /// Start of the healthy stretch that decays the multiplier.
    healthy_since: Instant,
    in_flight: usize,
}

#[derive(Debug)]
struct State {
    health: Vec<Health>,
    cursor: usize,
    /// Ejected endpoints last written to the gauges: they are written on change only,
    /// not on every call.
    reported: usize,
}

impl State {
    fn report(&mut self, host: &str, metrics: &MeshMetrics) {
        let ejected = self
            .health
            .iter()
            .filter(|h| h.ejected_until.is_some())
            .count();
        if ejected != self.reported {
            self.reported = ejected;
            metrics.set_ejected(host, ejected, self.health.len());
        }
    }
}

impl State {
    fn fresh(endpoints: usize) -> State {
        let now = Instant::now();
        State {
            health: (0..endpoints)
                .map(|_| Health {
                    consecutive_5xx: 0,
                    consecutive_gateway: 0,
                    ejected_until: None,
                    multiplier: 0,
                    healthy_since: now,
                    in_flight: 0,
                })
                .collect(),
            cursor: 0,
            reported: 0,
        }
    }
}

/// The outlier state of every balancer a client built, by balancer name and endpoint list:
/// a configuration reload that keeps a balancer's endpoints keeps what it knows about
/// them (who is ejected, for how long, how often), as Envoy keeps a host's outlier state
/// while the host stays in its cluster.
#[derive(Debug, Default)]
pub struct Memory {
    by_name: Mutex<std::collections::HashMap<String, Remembered>>,
}

/// A balancer's endpoint addresses and the state kept for them.
type Remembered = (Vec<String>, Arc<Mutex<State>>);

impl Memory {
    /// The state of balancer `name` over `endpoints`: the remembered one if the endpoints
    /// are the same, else a fresh one (remembered from now on).
    fn state(&self, name: &str, endpoints: &[String]) -> Arc<Mutex<State>> {
        let mut by_name = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((known, state)) = by_name.get(name) {
            if known == endpoints {
                return state.clone();
            }
        }
        let state = Arc::new(Mutex::new(State::fresh(endpoints.len())));
        by_name.insert(name.to_owned(), (endpoints.to_vec(), state.clone()));
        state
    }
}

/// Balances calls over endpoints, ejecting outliers when `config` is set.
pub struct Balancer<S> {
    host: Arc<str>,
    endpoints: Arc<Vec<S>>,
    config: Option<Config>,
    pick: Pick,
    state: Arc<Mutex<State>>,
    metrics: MeshMetrics,
}

impl<S> Clone for Balancer<S> {
    fn clone(&self) -> Self {
        Self {
            host: self.host.clone(),
            endpoints: self.endpoints.clone(),
            config: self.config,
            pick: self.pick,
            state: self.state.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

impl<S> Balancer<S> {
    pub fn new(
        host: &str,
        endpoints: Vec<S>,
        config: Option<Config>,
        pick: Pick,
        metrics: MeshMetrics,
    ) -> Self {
        let state = Arc::new(Mutex::new(State::fresh(endpoints.len())));
        Self::with_state(host, endpoints, config, pick, metrics, state)
    }

    /// A balancer whose outlier state `memory` keeps across rebuilds while `addresses`
    /// (one per endpoint, in order) stay the same.
    pub fn remembered(
        host: &str,
        endpoints: Vec<S>,
        addresses: &[String],
        config: Option<Config>,
        pick: Pick,
        metrics: MeshMetrics,
        memory: &Memory,
    ) -> Self {
        let state = memory.state(host, addresses);
        Self::with_state(host, endpoints, config, pick, metrics, state)
    }

    fn with_state(
        host: &str,
        endpoints: Vec<S>,
        config: Option<Config>,
        pick: Pick,
        metrics: MeshMetrics,
        state: Arc<Mutex<State>>,
    ) -> Self {
        Self {
            host: host.into(),
            endpoints: Arc::new(endpoints),
            config,
            pick,
            state,
            metrics,
        }
    }

    /// Indexes of the endpoints ejected now (for tests and metrics).
    pub fn ejected(&self) -> Vec<usize> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        self.refresh(&mut state, now);
        state
            .health
            .iter()
            .enumerate()
            .filter(|(_, h)| h.ejected_until.is_some())
            .map(|(i, _)| i)
            .collect()
    }

    /// Returns endpoints whose time is up and decays multipliers of healthy ones.
    fn refresh(&self, state: &mut State, now: Instant) {
        let Some(config) = self.config else { return };
        for h in &mut state.health {
            if let Some(until) = h.ejected_until {
                if now >= until {
                    h.ejected_until = None;
                    h.healthy_since = until;
                }
            }
            if h.ejected_until.is_none() && h.multiplier > 0 && !config.interval.is_zero() {
                let healthy_for = now.saturating_duration_since(h.healthy_since);
                let steps = (healthy_for.as_nanos() / config.interval.as_nanos()) as u32;
                if steps > 0 {
                    h.multiplier = h.multiplier.saturating_sub(steps);
                    h.healthy_since += config.interval * steps;
                }
            }
        }
    }

    fn choose(&self, state: &mut State, tried: Option<&Tried>) -> Option<usize> {
        let mut up: Vec<usize> = (0..state.health.len())
            .filter(|i| state.health[*i].ejected_until.is_none())
            .collect();
        if up.is_empty() {
            return None;
        }
        if let Some(tried) = tried {
            let fresh: Vec<usize> = up
                .iter()
                .copied()
                .filter(|i| !tried.contains(&self.host, *i))
                .collect();
            // Every endpoint up was tried already: any of them, as Envoy after its
            // host_selection_retry_max_attempts.
            if !fresh.is_empty() {
                up = fresh;
            }
        }
        let index = match self.pick {
            Pick::RoundRobin => {
                state.cursor = state.cursor.wrapping_add(1);
                up[state.cursor % up.len()]
            }
            Pick::Random => up[rand::thread_rng().gen_range(0..up.len())],
            Pick::LeastRequest => {
                let mut rng = rand::thread_rng();
                let a = up[rng.gen_range(0..up.len())];
                let b = up[rng.gen_range(0..up.len())];
                if state.health[b].in_flight < state.health[a].in_flight {
                    b
                } else {
                    a
                }
            }
        };
        Some(index)
    }

    fn record(&self, index: usize, outcome: Outcome) {
        let now = Instant::now();
        let mut state = lock(&self.state);
        state.health[index].in_flight = state.health[index].in_flight.saturating_sub(1);
        let Some(config) = self.config else { return };
        self.refresh(&mut state, now);
        let h = &mut state.health[index];
        if h.ejected_until.is_some() {
            return;
        }
        if outcome.is_5xx() {
            h.consecutive_5xx += 1;
        } else {
            h.consecutive_5xx = 0;
        }
        if outcome.is_gateway() {
            h.consecutive_gateway += 1;
        } else {
            h.consecutive_gateway = 0;
        }
        let tripped = config
            .consecutive_5xx
            .is_some_and(|n| n > 0 && h.consecutive_5xx >= n)
            || config
                .consecutive_gateway
                .is_some_and(|n| n > 0 && h.consecutive_gateway >= n);
        if !tripped {
            return;
        }
        let total = state.health.len();
        let ejected = state
            .health
            .iter()
            .filter(|h| h.ejected_until.is_some())
            .count();
        // Envoy (1.31 on; Istio does not set always_eject_one_host): eject only while the
        // share out, this one included, stays within maxEjectionPercent.
        let allowed = (ejected + 1) * 100 <= total * config.max_ejection_percent as usize;
        let h = &mut state.health[index];
        h.consecutive_5xx = 0;
        h.consecutive_gateway = 0;
        if !allowed {
            return;
        }
        h.multiplier += 1;
        let cap = MAX_EJECTION_TIME.max(config.base_ejection_time);
        let time = config
            .base_ejection_time
            .checked_mul(h.multiplier)
            .unwrap_or(cap)
            .min(cap);
        // A configured time beyond the clock's range means "for good" (a year will do).
        h.ejected_until = Some(
            now.checked_add(time)
                .unwrap_or(now + Duration::from_secs(365 * 86_400)),
        );
        self.metrics.ejection(&self.host);
        tracing::warn!(host = %self.host, endpoint = index, ejection = ?time, "endpoint ejected by outlier detection");
        state.report(&self.host, &self.metrics);
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A panic while holding the lock leaves counters only; keep balancing.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Records a dropped call as a gateway error (a timeout cut it short).
struct InFlight<S> {
    balancer: Balancer<S>,
    index: usize,
    done: bool,
}

impl<S> Drop for InFlight<S> {
    fn drop(&mut self) {
        if !self.done {
            self.balancer.record(self.index, Outcome::LocalOrigin);
        }
    }
}

impl<S> Service<Request> for Balancer<S>
where
    S: Service<Request, Response = Response, Error = BoxError> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let now = Instant::now();
        let tried = request.extensions().get::<Tried>().cloned();
        let chosen = {
            let mut state = lock(&self.state);
            self.refresh(&mut state, now);
            state.report(&self.host, &self.metrics);
            match self.choose(&mut state, tried.as_ref()) {
                Some(i) => {
                    state.health[i].in_flight += 1;
                    if let Some(tried) = &tried {
                        tried.add(&self.host, i);
                    }
                    Ok(i)
                }
                None => Err(state
                    .health
                    .iter()
                    .filter_map(|h| h.ejected_until)
                    .min()
                    .map(|t| t.saturating_duration_since(now))
                    .unwrap_or_default()),
            }
        };
        let index = match chosen {
            Ok(i) => i,
            Err(retry_after) => {
                self.metrics.fail_fast(&self.host, "circuit_open");
                let err = error::circuit_open(CircuitOpen {
                    host: self.host.to_string(),
                    retry_after,
                });
                return Box::pin(async move { Err(err) });
            }
        };
        let endpoint = self.endpoints[index].clone();
        let mut guard = InFlight {
            balancer: self.clone(),
            index,
            done: false,
        };
        Box::pin(async move {
            let result = endpoint.oneshot(request).await;
            let outcome = match &result {
                Ok(response) => outcome_of(response),
                Err(_) => Outcome::LocalOrigin,
            };
            guard.done = true;
            guard.balancer.record(guard.index, outcome);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::status_response;
    use crate::testing::{ok_response, request};
    use tonic::Code;
    use tower_test::mock;

    /// A balancer over `n` mock endpoints, each answering with what the test sends.
    type Mocked = Balancer<mock::Mock<Request, Response>>;

    fn balancer(n: usize, config: Config) -> (Mocked, Vec<mock::Handle<Request, Response>>) {
        let (services, handles): (Vec<_>, Vec<_>) =
            (0..n).map(|_| mock::pair::<Request, Response>()).unzip();
        (
            Balancer::new(
                "h",
                services,
                Some(config),
                Pick::RoundRobin,
                MeshMetrics::default(),
            ),
            handles,
        )
    }

    /// Calls once; the endpoint that got it answers `answer`. Returns the endpoint index.
    async fn call(
        b: &mut Mocked,
        handles: &mut [mock::Handle<Request, Response>],
        answer: Option<Code>,
    ) -> Result<usize, BoxError> {
        let fut = b.call(request());
        // Find which endpoint received it.
        let task = tokio::spawn(fut);
        tokio::task::yield_now().await;
        for _ in 0..50 {
            for (i, h) in handles.iter_mut().enumerate() {
                if let Some(Some((_, send))) = futures::FutureExt::now_or_never(h.next_request()) {
                    send.send_response(match answer {
                        None => ok_response(),
                        Some(code) => status_response(code, "test"),
                    });
                    task.await.expect("joins")?;
                    return Ok(i);
                }
            }
            tokio::task::yield_now().await;
        }
        task.await.expect("joins").map(|_| usize::MAX)
    }

    fn config(consecutive_5xx: u32, max_pct: u32) -> Config {
        Config {
            consecutive_5xx: Some(consecutive_5xx),
            consecutive_gateway: None,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: max_pct,
        }
    }

    /// Sends `request` and answers it `UNAVAILABLE` from whichever endpoint got it.
    async fn answer_one(
        b: &mut Mocked,
        handles: &mut [mock::Handle<Request, Response>],
        request: Request,
    ) -> usize {
        let task = tokio::spawn(b.call(request));
        tokio::task::yield_now().await;
        let mut answered = None;
        for (i, h) in handles.iter_mut().enumerate() {
            if let Some(Some((_, send))) = futures::FutureExt::now_or_never(h.next_request()) {
                send.send_response(status_response(Code::Unavailable, "down"));
                answered = Some(i);
            }
        }
        task.await.expect("joins").expect("answered");
        answered.expect("an endpoint got it")
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_goes_to_an_endpoint_its_call_has_not_tried() {
        let (mut b, mut handles) = balancer(2, config(100, 100));
        for _ in 0..4 {
            // A call's first try, another call in between (round robin moves on), then
            // the first call's retry: it must not land where its first try did.
            let tried = Tried::default();
            let mut first = request();
            first.extensions_mut().insert(tried.clone());
            let first = answer_one(&mut b, &mut handles, first).await;
            answer_one(&mut b, &mut handles, request()).await;
            let mut retry = request();
            retry.extensions_mut().insert(tried.clone());
            let retry = answer_one(&mut b, &mut handles, retry).await;
            assert_ne!(first, retry, "the retry went back to the endpoint it tried");
            // Both tried: a third try still goes somewhere.
            let mut third = request();
            third.extensions_mut().insert(tried);
            answer_one(&mut b, &mut handles, third).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_rebuild_over_the_same_endpoints_keeps_the_ejections() {
        let memory = Memory::default();
        let addresses = ["http://a:1".to_owned(), "http://b:1".to_owned()];
        let build = |memory: &Memory, addresses: &[String]| {
            let (services, handles): (Vec<_>, Vec<_>) = (0..addresses.len())
                .map(|_| mock::pair::<Request, Response>())
                .unzip();
            let b = Balancer::remembered(
                "h",
                services,
                addresses,
                Some(config(1, 100)),
                Pick::RoundRobin,
                MeshMetrics::default(),
                memory,
            );
            (b, handles)
        };
        let (mut b, mut handles) = build(&memory, &addresses);
        let failed = call(&mut b, &mut handles, Some(Code::Unavailable))
            .await
            .expect("answered");
        assert_eq!(b.ejected(), [failed]);
        // The policy file changed, the endpoints did not: the ejection stays.
        let (rebuilt, _handles) = build(&memory, &addresses);
        assert_eq!(rebuilt.ejected(), [failed]);
        // Another endpoint list: a fresh start.
        let (other, _handles) = build(&memory, &addresses[..1]);
        assert!(other.ejected().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_after_n_consecutive_errors_and_opens_the_circuit() {
        let (mut b, mut handles) = balancer(1, config(3, 100));
        call(&mut b, &mut handles, Some(Code::Unavailable))
            .await
            .expect("answered");
        call(&mut b, &mut handles, Some(Code::Internal))
            .await
            .expect("answered");
        assert!(b.ejected().is_empty(), "two errors are not three");
        // A success resets the count.
        call(&mut b, &mut handles, None).await.expect("answered");
        for _ in 0..2 {
            call(&mut b, &mut handles, Some(Code::Unavailable))
                .await
                .expect("answered");
        }
        assert!(b.ejected().is_empty());
        call(&mut b, &mut handles, Some(Code::Unavailable))
            .await
            .expect("answered");
        assert_eq!(b.ejected(), vec![0], "ejected on the third in a row");
        // Circuit open: fails at once with the time until the endpoint returns.
        let err = b.call(request()).await.expect_err("fail fast");
        let open = crate::error::find::<CircuitOpen>(&*err).expect("circuit open");
        assert_eq!(open.retry_after, Duration::from_secs(30));
        // Non-5xx codes are not outliers.
        tokio::time::advance(Duration::from_secs(30)).await;
        for _ in 0..5 {
            call(&mut b, &mut handles, Some(Code::NotFound))
                .await
                .expect("answered");
        }
        assert!(b.ejected().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_time_grows_with_each_ejection_and_decays_while_healthy() {
        let (mut b, mut handles) = balancer(1, config(1, 100));
        call(&mut b, &mut handles, Some(Code::Unavailable))
            .await
            .expect("answered");
        assert_eq!(b.ejected(), vec![0]);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(b.ejected(), vec![0], "first ejection: 30 s");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.ejected().is_empty());
        // Second ejection right away: 2 x 30 s.
        call(&mut b, &mut handles, Some(Code::Unavailable))
            .await
            .expect("answered");
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(b.ejected(), vec![0], "second ejection: 60 s");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.ejected().is_empty());
        // Healthy for two intervals (20 s): the multiplier decays from 2 to 0.
        tokio::time::advance(Duration::from_secs(20)).await;
        call(&mut b, &mut handles, Some(Code::Unavailable))
            .await
            .expect("answered");
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(b.ejected().is_empty(), "back to 30 s after decay");
    }

    #[tokio::test(start_paused = true)]
    async fn max_ejection_percent_is_respected_with_several_endpoints() {
        // 3 endpoints, 50 %: one out is 33 %, two would be 66 %: one only.
        let (mut b, mut handles) = balancer(3, config(1, 50));
        for _ in 0..12 {
            let _ = call(&mut b, &mut handles, Some(Code::Unavailable)).await;
        }
        assert_eq!(b.ejected().len(), 1);
        // 4 endpoints, 50 %: at most two out; every endpoint fails.
        let (mut b, mut handles) = balancer(4, config(1, 50));
        for _ in 0..12 {
            let _ = call(&mut b, &mut handles, Some(Code::Unavailable)).await;
        }
        assert_eq!(b.ejected().len(), 2);
        // 10 % of 4 is less than one endpoint: none is ejected (as current Envoy).
        let (mut b, mut handles) = balancer(4, config(1, 10));
        for _ in 0..12 {
            let _ = call(&mut b, &mut handles, Some(Code::Unavailable)).await;
        }
        assert!(b.ejected().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn round_robin_skips_ejected_endpoints() {
        let (mut b, mut handles) = balancer(3, config(1, 100));
        let mut hits = vec![];
        for _ in 0..3 {
            hits.push(call(&mut b, &mut handles, None).await.expect("answered"));
        }
        hits.sort();
        assert_eq!(hits, vec![0, 1, 2]);
        let failed = call(&mut b, &mut handles, Some(Code::DeadlineExceeded))
            .await
            .expect("answered");
        for _ in 0..6 {
            let i = call(&mut b, &mut handles, None).await.expect("answered");
            assert_ne!(i, failed);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn gateway_errors_counted_separately() {
        let cfg = Config {
            consecutive_5xx: None,
            consecutive_gateway: Some(2),
            ..config(0, 100)
        };
        let (mut b, mut handles) = balancer(1, cfg);
        // INTERNAL is 5xx but not a gateway error: no ejection, and it resets the streak.
        call(&mut b, &mut handles, Some(Code::Unavailable))
            .await
            .expect("answered");
        call(&mut b, &mut handles, Some(Code::Internal))
            .await
            .expect("answered");
        call(&mut b, &mut handles, Some(Code::DeadlineExceeded))
            .await
            .expect("answered");
        assert!(b.ejected().is_empty());
        call(&mut b, &mut handles, Some(Code::Unavailable))
            .await
            .expect("answered");
        assert_eq!(b.ejected(), vec![0]);
    }
}
