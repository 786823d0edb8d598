//! Istio's `DestinationRule` and `VirtualService`, enforced in-process as layers around
//! HTTP/2 connections, so the YAML under `k8s/istio/` means the same with or without a
//! sidecar. One module per policy, each with its `Config`, a tower `Layer` that builds it,
//! and its layer of the stack (a [`Hop`]):
//!
//! - [`fault`]: delay and abort injection (VirtualService `fault`), applied at the endpoint;
//! - [`timeout`]: the route's overall timeout (enforced by the retry layer);
//! - [`retry`]: attempts, perTryTimeout, retryOn, Envoy's jittered back-off;
//! - [`split`]: weighted destinations;
//! - [`pool`]: connection-pool limits that fail fast (Envoy's circuit breakers);
//! - [`outlier`]: outlier detection and load balancing across the endpoints of a host;
//! - [`route`]: VirtualService `http[]` matching.
//!
//! [`istio`] reads the resources, [`policy`] compiles them for one host, [`classify`] reads
//! gRPC outcomes as Envoy does, [`replay`] lets retries resend a request body, [`error`] holds the typed failures (fail-fast markers a
//! caller can branch on), [`metrics`] the Prometheus series. [`MeshClient`] is the whole
//! stack, rebuilt when the YAML files change. Differences from Envoy are documented in the
//! module of the policy concerned and listed in mesh/README.md.
//!
//! Stack, outermost first: route -> fault -> retry (with the route's timeout) -> split -> pool -> outlier
//! balancer -> endpoint (one HTTP/2 connection; buffers and classifies the unary
//! response). Each layer is
//! a [`Hop`]: a concrete type called by reference, so a call runs down the whole stack as
//! one future, with no box, clone or readiness wait per layer.
#![forbid(unsafe_code)]

pub mod classify;
pub mod duration;
pub mod endpoint;
pub mod error;
pub mod fault;
pub mod istio;
pub mod metrics;
pub mod outlier;
pub mod policy;
pub mod pool;
pub mod replay;
pub mod retry;
pub mod route;
pub mod split;
pub mod timeout;

#[cfg(test)]
mod testing;

use endpoint::{Endpoint, EndpointAddr};
use error::BoxError;
use istio::{ConfigError, Resources};
use metrics::MeshMetrics;
use outlier::Tried;
use policy::HostPolicy;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tower::{Layer, Service, ServiceExt};

pub type Request = http::Request<tonic::body::Body>;
pub type Response = http::Response<tonic::body::Body>;
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
/// A boxed future borrowing its layer (a layer's rare path, kept out of the call's future).
pub type BoxFutureRef<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One layer of a mesh stack, called by reference with a future that borrows it, so a call
/// runs down the whole stack as one future: no box, no clone of the layer and no readiness
/// wait per layer (a limit fails the call fast instead of making it wait).
///
/// That future is boxed once per call and moved as it is built, so its size is the
/// mesh's memory traffic. Where it can, a layer hands the request on before its future
/// starts (the route, pool and retry layers do) rather than from inside an async block,
/// which would keep room for the request (240 bytes) for the whole call, and wraps the
/// inner future with a combinator rather than awaiting it in an async block that holds
/// it twice. The balancer and the endpoint still keep room for the request across an
/// await, though the endpoint hands it to its connection at its first poll (measured:
/// moving that out too changed nothing, see mesh/README.md).
pub trait Hop: Send + Sync {
    fn call<'a>(
        &'a self,
        request: Request,
        call: &'a mut Call,
    ) -> impl Future<Output = Result<Response, BoxError>> + Send + 'a;
}

impl<H: Hop> Hop for Arc<H> {
    fn call<'a>(
        &'a self,
        request: Request,
        call: &'a mut Call,
    ) -> impl Future<Output = Result<Response, BoxError>> + Send + 'a {
        (**self).call(request, call)
    }
}

/// What one call carries down the stack beside its request, passed by reference: what
/// the layers decided for it and what its tries came to. Kept here rather than in the
/// request's and response's extensions, which cost allocations on every call and would be
/// copied into every try.
#[derive(Debug, Default)]
pub struct Call {
    /// Its answer streams: the request carried [`classify::Streaming`].
    pub streaming: bool,
    /// The faults decided for it (by [`fault`]), applied by the endpoint on every try.
    pub faults: Option<fault::Injected>,
    /// The endpoints its tries went to, so retries are steered elsewhere.
    pub tried: Tried,
    /// What the last try's answer came to, set by the endpoint (None: no answer yet).
    pub judged: Option<classify::Judged>,
}

impl Call {
    /// A call for `request`, as it enters the stack.
    pub fn new(request: &Request) -> Self {
        Self {
            streaming: request.extensions().get::<classify::Streaming>().is_some(),
            ..Self::default()
        }
    }
}

/// A tower service as the endpoint of a stack (tests and benches put mocks below a layer):
/// cloned and called once per try; its answer is buffered and judged as an endpoint's.
#[derive(Clone)]
pub struct TowerHop<S>(pub S);

impl<S> Hop for TowerHop<S>
where
    S: Service<Request, Response = Response, Error = BoxError> + Clone + Send + Sync,
    S::Future: Send,
{
    fn call<'a>(
        &'a self,
        request: Request,
        call: &'a mut Call,
    ) -> impl Future<Output = Result<Response, BoxError>> + Send + 'a {
        let service = self.0.clone();
        async move {
            let response = service.oneshot(request).await?;
            let (response, judged) = endpoint::judge(response, call.streaming).await?;
            call.judged = Some(judged);
            Ok(response)
        }
    }
}

/// A stack of hops as a tower service (a tonic client's transport, and what a
/// [`MeshClient`] calls): one box per call; keeps the timer wheel warm while it lives.
pub struct HopService<H> {
    hop: Arc<H>,
    warming: Arc<std::sync::atomic::AtomicBool>,
}

impl<H> HopService<H> {
    pub fn new(hop: H) -> Self {
        Self {
            hop: Arc::new(hop),
            warming: Arc::default(),
        }
    }
}

impl<H> Clone for HopService<H> {
    fn clone(&self) -> Self {
        Self {
            hop: self.hop.clone(),
            warming: self.warming.clone(),
        }
    }
}

impl<H: Hop + 'static> Service<Request> for HopService<H> {
    type Response = Response;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        keep_timers_warm(&self.warming);
        // The one box of the call: the stack below runs inside it (see Hop).
        let hop = self.hop.clone();
        let mut call = Call::new(&request);
        Box::pin(async move { hop.call(request, &mut call).await })
    }
}

/// The endpoints of one destination (host or subset) behind its connection-pool limits.
pub type Destination = pool::Pool<outlier::Balancer<Endpoint>>;
/// The whole stack for one host.
pub type Stack = route::Router<fault::Fault<retry::Retry<split::WeightedSplit<Arc<Destination>>>>>;

/// Builds the stack of `policy` over `endpoints`.
pub fn build(
    policy: &HostPolicy,
    endpoints: &[EndpointAddr],
    tls: Option<&endpoint::ClientTls>,
    metrics: &MeshMetrics,
    memory: &outlier::Memory,
) -> Result<Stack, ConfigError> {
    if endpoints.is_empty() {
        return Err(ConfigError::Unsupported(format!(
            "no endpoint given for host {}",
            policy.host
        )));
    }
    metrics.touch(&policy.host);
    let mut destinations: BTreeMap<Option<String>, Arc<Destination>> = BTreeMap::new();
    let mut routes = Vec::new();
    for route in &policy.routes {
        let mut targets = Vec::new();
        for (subset, weight) in &route.destinations {
            if !destinations.contains_key(subset) {
                let destination = policy.destination(subset, endpoints);
                let traffic = destination.traffic;
                if destination.endpoints.is_empty() {
                    return Err(ConfigError::Unsupported(format!(
                        "no endpoint of {} carries the labels {:?} of subset {subset:?}",
                        policy.host, destination.labels
                    )));
                }
                let name = match subset {
                    Some(s) => format!("{}/{s}", policy.host),
                    None => policy.host.clone(),
                };
                let addresses: Vec<String> = destination
                    .endpoints
                    .iter()
                    .map(|e| e.uri.clone())
                    .collect();
                let chosen: Vec<Endpoint> = destination
                    .endpoints
                    .into_iter()
                    .map(|e| {
                        Endpoint::new(&name, e, traffic.connect_timeout, tls)
                            .map_err(ConfigError::Unsupported)
                    })
                    .collect::<Result<_, _>>()?;
                metrics.touch(&name);
                let balancer = outlier::Balancer::remembered(
                    &name,
                    chosen,
                    &addresses,
                    traffic.outlier,
                    traffic.pick,
                    metrics.clone(),
                    memory,
                );
                let pooled =
                    pool::PoolLayer::layer(&name, traffic.pool, metrics.clone()).layer(balancer);
                destinations.insert(subset.clone(), Arc::new(pooled));
            }
            targets.push((*weight, destinations[subset].clone()));
        }
        let split = split::WeightedSplit::new(targets);
        let timed = retry::RetryLayer::layer(&policy.host, route.retry.clone(), metrics.clone())
            .with_route_timeout(route.timeout)
            .layer(split);
        let stack = fault::FaultLayer::layer(route.fault).layer(timed);
        routes.push((route.matches.clone(), stack));
    }
    Ok(route::Router::new(&policy.host, routes))
}

/// What a mesh client is built from.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// The destination host as Istio names it (`delivery`).
    pub host: String,
    /// YAML files holding DestinationRule / VirtualService resources (may be empty).
    pub files: Vec<PathBuf>,
    pub endpoints: Vec<EndpointAddr>,
    /// TLS for `https://` endpoints (the caller's certificate and the CA it trusts).
    pub tls: Option<endpoint::ClientTls>,
}

impl MeshConfig {
    /// From settings as services take them: comma-separated YAML files (empty: Istio's
    /// defaults) and comma-separated endpoints (see [`EndpointAddr::parse_list`]).
    pub fn from_lists(host: &str, files: &str, endpoints: &str) -> Result<Self, String> {
        Ok(Self {
            host: host.to_owned(),
            files: files
                .split(',')
                .map(str::trim)
                .filter(|f| !f.is_empty())
                .map(Into::into)
                .collect(),
            endpoints: EndpointAddr::parse_list(endpoints)?,
            tls: None,
        })
    }

    /// The same with TLS for its `https://` endpoints.
    pub fn with_tls(self, tls: Option<endpoint::ClientTls>) -> Self {
        Self { tls, ..self }
    }

    /// Reads the files and compiles the policy.
    pub fn policy(&self) -> Result<HostPolicy, ConfigError> {
        policy::compile(&Resources::load(&self.files)?, &self.host)
    }
}

/// The mesh stack for one host, usable as a tonic client's transport; clones share it.
#[derive(Clone)]
pub struct MeshClient {
    current: Arc<RwLock<HopService<Stack>>>,
    /// Bumped by every reload, so each clone knows when its own copy is out of date.
    generation: Arc<std::sync::atomic::AtomicU64>,
    /// This clone's copy of the stack and the generation it was taken at: a call uses it
    /// as it is, without taking the lock or cloning the stack.
    local: HopService<Stack>,
    seen: u64,
    /// Outlier state kept across reloads that leave a balancer's endpoints as they were.
    memory: Arc<outlier::Memory>,
}

/// How often the warming task's timer fires: timeouts at least this long register
/// without waking a thread.
pub const WARM_TIMER_PERIOD: Duration = Duration::from_millis(500);

/// Keeps a timer due within [`WARM_TIMER_PERIOD`] in the runtime's timer wheel while
/// `alive` has owners. Every try registers a timer (its per-try or route timeout); when
/// the wheel holds none that is due sooner, tokio wakes a sleeping worker thread to
/// re-arm its poll for the new deadline. With no other timer, that is one thread woken on
/// every call for a deadline seconds away, which the layers bench measured as the mesh's
/// largest cost at one call in flight (+0.6 to +0.9 wake-ups per call, about 10 % of its
/// latency). This task costs two wake-ups a second instead. Under paused tokio time
/// (tests), an idle runtime with a live client skips ahead by this period at a time.
fn keep_timers_warm(alive: &Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::Ordering;
    if alive.load(Ordering::Relaxed) || alive.swap(true, Ordering::AcqRel) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        alive.store(false, Ordering::Release);
        return;
    };
    let alive = Arc::downgrade(alive);
    runtime.spawn(async move {
        // However the task ends (its runtime shut down included), a later call starts
        // another.
        struct Ended(std::sync::Weak<std::sync::atomic::AtomicBool>);
        impl Drop for Ended {
            fn drop(&mut self) {
                if let Some(flag) = self.0.upgrade() {
                    flag.store(false, Ordering::Release);
                }
            }
        }
        let ended = Ended(alive);
        let mut tick = tokio::time::interval(WARM_TIMER_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while ended.0.strong_count() > 0 {
            tick.tick().await;
        }
    });
}

impl MeshClient {
    /// Builds the stack from the files now; an invalid file is an error.
    pub fn load(config: &MeshConfig, metrics: &MeshMetrics) -> Result<Self, ConfigError> {
        let policy = config.policy()?;
        tracing::info!(host = %config.host, ?policy, "mesh policy loaded");
        let memory = Arc::new(outlier::Memory::default());
        let stack = HopService::new(build(
            &policy,
            &config.endpoints,
            config.tls.as_ref(),
            metrics,
            &memory,
        )?);
        Ok(Self {
            current: Arc::new(RwLock::new(stack.clone())),
            generation: Arc::default(),
            local: stack,
            seen: 0,
            memory,
        })
    }

    /// Rebuilds the stack whenever a file changes (checked every `every`); an invalid
    /// change is logged and the last good policy stays. Stops when every clone is dropped.
    /// A rebuilt stack keeps the outlier state of every balancer whose endpoints stayed.
    pub fn reload_on_change(&self, config: MeshConfig, metrics: MeshMetrics, every: Duration) {
        let weak = Arc::downgrade(&self.current);
        let generation = self.generation.clone();
        let memory = self.memory.clone();
        tokio::spawn(async move {
            let stamp = |files: &[PathBuf]| -> Vec<Option<(SystemTime, u64)>> {
                files
                    .iter()
                    .map(|f| {
                        std::fs::metadata(f)
                            .ok()
                            .and_then(|m| Some((m.modified().ok()?, m.len())))
                    })
                    .collect()
            };
            let mut seen = stamp(&config.files);
            loop {
                tokio::time::sleep(every).await;
                let Some(current) = weak.upgrade() else {
                    return;
                };
                let now = stamp(&config.files);
                if now == seen {
                    continue;
                }
                seen = now;
                match config.policy().and_then(|p| {
                    tracing::info!(host = %config.host, policy = ?p, "mesh policy reloaded");
                    build(
                        &p,
                        &config.endpoints,
                        config.tls.as_ref(),
                        &metrics,
                        &memory,
                    )
                }) {
                    Ok(stack) => {
                        *current.write().unwrap_or_else(|p| p.into_inner()) =
                            HopService::new(stack);
                        generation.fetch_add(1, std::sync::atomic::Ordering::Release);
                    }
                    Err(error) => {
                        tracing::error!(%error, "mesh policy change refused; keeping the last good one")
                    }
                }
            }
        });
    }
}

impl Service<Request> for MeshClient {
    type Response = Response;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let now = self.generation.load(std::sync::atomic::Ordering::Acquire);
        if now != self.seen {
            self.local = self
                .current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            self.seen = now;
        }
        self.local.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_client_keeps_one_warming_timer_while_it_lives() {
        let tasks = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        let config = MeshConfig::from_lists("delivery", "", "http://127.0.0.1:1").expect("valid");
        let client = MeshClient::load(&config, &MeshMetrics::default()).expect("loads");
        let before = tasks();
        // Calls from every clone share one warming task.
        let mut clones = [client.clone(), client];
        for clone in &mut clones {
            drop(clone.call(testing::request()));
        }
        assert_eq!(tasks(), before + 1);
        drop(clones);
        tokio::time::sleep(WARM_TIMER_PERIOD * 2).await;
        // Nothing of the client is left running: neither its warming task nor its
        // connections' tasks.
        assert_eq!(tasks(), 0, "the warming task ends with its client");
    }
}
