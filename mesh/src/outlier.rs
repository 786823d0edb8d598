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

use crate::classify::Outcome;
use crate::error::{self, BoxError, CircuitOpen};
use crate::metrics::MeshMetrics;
use crate::{Call, Hop, Request, Response};
use rand::Rng;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The endpoints one call's tries went to (kept in its [`Call`]): a retry picks an
/// endpoint not tried yet while one is up, as Envoy's `previous_hosts` retry predicate,
/// which Istio sets on every route. Without it a retry after a refused connection may
/// land on the same stopped replica again. Kept inline: a call rarely makes more than
/// four tries.
#[derive(Debug, Default)]
pub struct Tried(smallvec::SmallVec<[TriedEndpoint; 4]>);

/// A balancer (by the address of its state) and an endpoint's index in it.
type TriedEndpoint = (usize, usize);

impl Tried {
    fn contains(&self, balancer: usize, index: usize) -> bool {
        self.0.contains(&(balancer, index))
    }

    fn add(&mut self, balancer: usize, index: usize) {
        self.0.push((balancer, index));
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
    endpoints: Vec<S>,
    config: Option<Config>,
    pick: Pick,
    state: Arc<Mutex<State>>,
    metrics: MeshMetrics,
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
            endpoints,
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

    /// Who tried endpoints of this balancer are recorded as.
    fn id(&self) -> usize {
        Arc::as_ptr(&self.state) as usize
    }

    /// The next endpoint among those up, preferring those `tried` has not seen; counted
    /// in place rather than collected, as it runs on every try.
    fn choose(&self, state: &mut State, tried: &Tried) -> Option<usize> {
        let id = self.id();
        let up = |i: &usize| state.health[*i].ejected_until.is_none();
        let fresh = |i: &usize| up(i) && !tried.contains(id, *i);
        let all = 0..state.health.len();
        let fresh_count = all.clone().filter(fresh).count();
        // Every endpoint up was tried already: any of them, as Envoy after its
        // host_selection_retry_max_attempts.
        let (eligible, count): (&dyn Fn(&usize) -> bool, usize) = if fresh_count > 0 {
            (&fresh, fresh_count)
        } else {
            (&up, all.clone().filter(up).count())
        };
        if count == 0 {
            return None;
        }
        let nth = |n: usize| all.clone().filter(eligible).nth(n);
        match self.pick {
            Pick::RoundRobin => {
                let turn = state.cursor.wrapping_add(1);
                let chosen = nth(turn % count);
                state.cursor = turn;
                chosen
            }
            Pick::Random => nth(rand::thread_rng().gen_range(0..count)),
            Pick::LeastRequest => {
                let mut rng = rand::thread_rng();
                let a = nth(rng.gen_range(0..count))?;
                let b = nth(rng.gen_range(0..count))?;
                Some(if state.health[b].in_flight < state.health[a].in_flight {
                    b
                } else {
                    a
                })
            }
        }
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
struct InFlight<'a, S> {
    balancer: &'a Balancer<S>,
    index: usize,
    done: bool,
}

impl<S> Drop for InFlight<'_, S> {
    fn drop(&mut self) {
        if !self.done {
            self.balancer.record(self.index, Outcome::LocalOrigin);
        }
    }
}

impl<S: Hop> Hop for Balancer<S> {
    fn call<'a>(
        &'a self,
        request: Request,
        call: &'a mut Call,
    ) -> impl Future<Output = Result<Response, BoxError>> + Send + 'a {
        let now = Instant::now();
        let chosen = {
            let mut state = lock(&self.state);
            self.refresh(&mut state, now);
            state.report(&self.host, &self.metrics);
            match self.choose(&mut state, &call.tried) {
                Some(i) => {
                    state.health[i].in_flight += 1;
                    call.tried.add(self.id(), i);
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
        // The guard exists from the choice on: a try dropped even before its first poll
        // gives its in-flight count back and counts as a gateway error.
        let guard = chosen.map(|index| InFlight {
            balancer: self,
            index,
            done: false,
        });
        async move {
            let mut guard = match guard {
                Ok(guard) => guard,
                Err(retry_after) => {
                    self.metrics.fail_fast(&self.host, "circuit_open");
                    return Err(error::circuit_open(CircuitOpen {
                        host: self.host.to_string(),
                        retry_after,
                    }));
                }
            };
            let index = guard.index;
            call.judged = None;
            let result = self.endpoints[index].call(request, call).await;
            debug_assert!(
                result.is_err() || call.judged.is_some(),
                "an endpoint answered without judging the answer"
            );
            let outcome = match (&result, call.judged) {
                (Ok(_), Some(judged)) => judged.outcome,
                (Ok(_), None) => Outcome::Ok,
                (Err(_), _) => Outcome::LocalOrigin,
            };
            guard.done = true;
            self.record(index, outcome);
            result
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::status_response;
    use crate::testing::call_hop;
    use crate::testing::{ok_response, request};
    use crate::TowerHop;
    use tonic::Code;
    use tower_test::mock;

    /// A balancer over `n` mock endpoints, each answering with what the test sends.
    type Mocked = Balancer<TowerHop<mock::Mock<Request, Response>>>;
    type Handles = [mock::Handle<Request, Response>];

    fn balancer(n: usize, config: Config) -> (Mocked, Vec<mock::Handle<Request, Response>>) {
        let (services, handles): (Vec<_>, Vec<_>) = (0..n)
            .map(|_| {
                let (service, handle) = mock::pair::<Request, Response>();
                (TowerHop(service), handle)
            })
            .unzip();
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

    /// One try of `call`; the endpoint that got it answers `answer`.
    /// Returns the endpoint's index (usize::MAX if none got it).
    async fn try_once(
        b: &Mocked,
        handles: &mut Handles,
        call: &mut Call,
        answer: Option<Code>,
    ) -> Result<usize, BoxError> {
        let answering = async {
            for _ in 0..50 {
                for (i, h) in handles.iter_mut().enumerate() {
                    if let Some(Some((_, send))) =
                        futures::FutureExt::now_or_never(h.next_request())
                    {
                        send.send_response(match answer {
                            None => ok_response(),
                            Some(code) => status_response(code, "test"),
                        });
                        return i;
                    }
                }
                tokio::task::yield_now().await;
            }
            usize::MAX
        };
        let (result, answered) = tokio::join!(b.call(request(), call), answering);
        result.map(|_| answered)
    }

    /// Calls once; the endpoint that got it answers `answer`. Returns the endpoint index.
    async fn call(
        b: &Mocked,
        handles: &mut Handles,
        answer: Option<Code>,
    ) -> Result<usize, BoxError> {
        try_once(b, handles, &mut Call::default(), answer).await
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

    #[tokio::test(start_paused = true)]
    async fn a_retry_goes_to_an_endpoint_its_call_has_not_tried() {
        let (b, mut handles) = balancer(2, config(100, 100));
        for _ in 0..4 {
            // A call's first try, another call in between (round robin moves on), then
            // the first call's retry: it must not land where its first try did.
            let mut retried = Call::default();
            let down = Some(Code::Unavailable);
            let first = try_once(&b, &mut handles, &mut retried, down)
                .await
                .expect("answered");
            call(&b, &mut handles, down).await.expect("answered");
            let retry = try_once(&b, &mut handles, &mut retried, down)
                .await
                .expect("answered");
            assert_ne!(first, retry, "the retry went back to the endpoint it tried");
            // Both tried: a third try still goes somewhere.
            let third = try_once(&b, &mut handles, &mut retried, down)
                .await
                .expect("answered");
            assert!(third < 2);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_rebuild_over_the_same_endpoints_keeps_the_ejections() {
        let memory = Memory::default();
        let addresses = ["http://a:1".to_owned(), "http://b:1".to_owned()];
        let build = |memory: &Memory, addresses: &[String]| {
            let (services, handles): (Vec<_>, Vec<_>) = (0..addresses.len())
                .map(|_| {
                    let (service, handle) = mock::pair::<Request, Response>();
                    (TowerHop(service), handle)
                })
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
        let (b, mut handles) = build(&memory, &addresses);
        let failed = call(&b, &mut handles, Some(Code::Unavailable))
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
        let (b, mut handles) = balancer(1, config(3, 100));
        call(&b, &mut handles, Some(Code::Unavailable))
            .await
            .expect("answered");
        call(&b, &mut handles, Some(Code::Internal))
            .await
            .expect("answered");
        assert!(b.ejected().is_empty(), "two errors are not three");
        // A success resets the count.
        call(&b, &mut handles, None).await.expect("answered");
        for _ in 0..2 {
            call(&b, &mut handles, Some(Code::Unavailable))
                .await
                .expect("answered");
        }
        assert!(b.ejected().is_empty());
        call(&b, &mut handles, Some(Code::Unavailable))
            .await
            .expect("answered");
        assert_eq!(b.ejected(), vec![0], "ejected on the third in a row");
        // Circuit open: fails at once with the time until the endpoint returns.
        let err = call_hop(&b, request()).await.expect_err("fail fast");
        let open = crate::error::find::<CircuitOpen>(&*err).expect("circuit open");
        assert_eq!(open.retry_after, Duration::from_secs(30));
        // Non-5xx codes are not outliers.
        tokio::time::advance(Duration::from_secs(30)).await;
        for _ in 0..5 {
            call(&b, &mut handles, Some(Code::NotFound))
                .await
                .expect("answered");
        }
        assert!(b.ejected().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_time_grows_with_each_ejection_and_decays_while_healthy() {
        let (b, mut handles) = balancer(1, config(1, 100));
        call(&b, &mut handles, Some(Code::Unavailable))
            .await
            .expect("answered");
        assert_eq!(b.ejected(), vec![0]);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(b.ejected(), vec![0], "first ejection: 30 s");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.ejected().is_empty());
        // Second ejection right away: 2 x 30 s.
        call(&b, &mut handles, Some(Code::Unavailable))
            .await
            .expect("answered");
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(b.ejected(), vec![0], "second ejection: 60 s");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.ejected().is_empty());
        // Healthy for two intervals (20 s): the multiplier decays from 2 to 0.
        tokio::time::advance(Duration::from_secs(20)).await;
        call(&b, &mut handles, Some(Code::Unavailable))
            .await
            .expect("answered");
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(b.ejected().is_empty(), "back to 30 s after decay");
    }

    #[tokio::test(start_paused = true)]
    async fn max_ejection_percent_is_respected_with_several_endpoints() {
        // 3 endpoints, 50 %: one out is 33 %, two would be 66 %: one only.
        let (b, mut handles) = balancer(3, config(1, 50));
        for _ in 0..12 {
            let _ = call(&b, &mut handles, Some(Code::Unavailable)).await;
        }
        assert_eq!(b.ejected().len(), 1);
        // 4 endpoints, 50 %: at most two out; every endpoint fails.
        let (b, mut handles) = balancer(4, config(1, 50));
        for _ in 0..12 {
            let _ = call(&b, &mut handles, Some(Code::Unavailable)).await;
        }
        assert_eq!(b.ejected().len(), 2);
        // 10 % of 4 is less than one endpoint: none is ejected (as current Envoy).
        let (b, mut handles) = balancer(4, config(1, 10));
        for _ in 0..12 {
            let _ = call(&b, &mut handles, Some(Code::Unavailable)).await;
        }
        assert!(b.ejected().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn round_robin_skips_ejected_endpoints() {
        let (b, mut handles) = balancer(3, config(1, 100));
        let mut hits = vec![];
        for _ in 0..3 {
            hits.push(call(&b, &mut handles, None).await.expect("answered"));
        }
        hits.sort();
        assert_eq!(hits, vec![0, 1, 2]);
        let failed = call(&b, &mut handles, Some(Code::DeadlineExceeded))
            .await
            .expect("answered");
        for _ in 0..6 {
            let i = call(&b, &mut handles, None).await.expect("answered");
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
        let (b, mut handles) = balancer(1, cfg);
        // INTERNAL is 5xx but not a gateway error: no ejection, and it resets the streak.
        call(&b, &mut handles, Some(Code::Unavailable))
            .await
            .expect("answered");
        call(&b, &mut handles, Some(Code::Internal))
            .await
            .expect("answered");
        call(&b, &mut handles, Some(Code::DeadlineExceeded))
            .await
            .expect("answered");
        assert!(b.ejected().is_empty());
        call(&b, &mut handles, Some(Code::Unavailable))
            .await
            .expect("answered");
        assert_eq!(b.ejected(), vec![0]);
    }
}
