//! Where the mesh's time goes, layer by layer (run: `cargo bench -p mesh --bench layers`).
//!
//! The same unary call (health Check over loopback) through stacks that grow by one layer
//! at a time, from a plain tonic channel to the whole [`mesh::MeshClient`] (and, last, as
//! references, hyper-util's pooled client and a bare hyper HTTP/2 connection, neither
//! behind tonic's channel), interleaved call
//! by call so the machine's drift hits every stack alike. For each stack it prints the
//! latency percentiles as ratios to the plain channel, and the runtime's worker wake-ups
//! (thread unparks) and parks per call: a layer that adds a wake-up shows as +1 there.
//! Then the same stacks in closed loops, `LAYERS_IN_FLIGHT` (16) calls in flight, in
//! rotating rounds: throughput and the process's CPU time per call (client and server
//! together), which tells whether a stack is slower for its work or for its waits.
#![allow(clippy::unwrap_used)]

use mesh::endpoint::{Endpoint, EndpointAddr};
use mesh::error::BoxError;
use mesh::metrics::MeshMetrics;
use mesh::{HopService, MeshClient, MeshConfig};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::Layer;

mod support;
use support::{closed_loops, percentile, server, Caller, POLICY};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

static UNPARKS: AtomicU64 = AtomicU64::new(0);
static PARKS: AtomicU64 = AtomicU64::new(0);

/// A stack below the route, as a tonic transport (one box per call, as a MeshClient).
#[derive(Clone)]
struct Layered(tower::util::BoxCloneSyncService<mesh::Request, mesh::Response, BoxError>);

// Its own Service impl rather than BoxCloneSyncService's: with that one the compiler
// cannot prove a call's future `Send` for the spawned closed loops.
impl tower::Service<mesh::Request> for Layered {
    type Response = mesh::Response;
    type Error = BoxError;
    type Future = mesh::BoxFuture<Result<mesh::Response, BoxError>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: mesh::Request) -> Self::Future {
        self.0.call(request)
    }
}

/// hyper-util's pooled client over HTTP/2, without tonic's channel around it: a
/// reference for what tonic's `Channel` itself costs (its `Buffer` hands every call to a
/// worker task of its own, one more task woken per call).
fn hyper_client(origin: &str) -> Client {
    // No delay, as tonic sets it: with Nagle a call waits out the peer's delayed ACK.
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build::<_, tonic::body::Body>(connector);
    bare(origin, move |request| {
        let client = client.clone();
        async move { client.request(request).await }
    })
}

/// hyper's HTTP/2 connection handle called directly: no tonic `Buffer` task, no pool.
async fn hyper_conn(origin: &str) -> Client {
    let uri: http::Uri = origin.parse().unwrap();
    let stream = tokio::net::TcpStream::connect((uri.host().unwrap(), uri.port_u16().unwrap()))
        .await
        .unwrap();
    stream.set_nodelay(true).unwrap();
    let (send, connection) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    bare(origin, move |request| send.clone().send_request(request))
}

/// A tonic transport that hands each call to `send` with `origin` in its URI (tonic's
/// client sends the path only; its channel adds the origin).
fn bare<F, A, E>(origin: &str, send: F) -> Client
where
    F: Fn(mesh::Request) -> A + Clone + Send + Sync + 'static,
    A: std::future::Future<Output = Result<http::Response<hyper::body::Incoming>, E>>
        + Send
        + 'static,
    E: Into<BoxError>,
{
    let origin: http::Uri = origin.parse().unwrap();
    let service = tower::service_fn(move |mut request: mesh::Request| {
        let mut parts = origin.clone().into_parts();
        parts.path_and_query = request.uri().path_and_query().cloned();
        *request.uri_mut() = http::Uri::from_parts(parts).unwrap();
        let answer = send(request);
        async move {
            let response = answer.await.map_err(Into::into)?;
            Ok::<_, BoxError>(response.map(tonic::body::Body::new))
        }
    });
    Client::Layered(HealthClient::new(Layered(
        tower::util::BoxCloneSyncService::new(service),
    )))
}

fn layered<H: mesh::Hop + 'static>(hop: H) -> Client {
    Client::Layered(HealthClient::new(Layered(
        tower::util::BoxCloneSyncService::new(HopService::new(hop)),
    )))
}

#[derive(Clone)]
enum Client {
    Plain(HealthClient<Channel>),
    Layered(HealthClient<Layered>),
    Mesh(HealthClient<MeshClient>),
}

impl Caller for Client {
    async fn call(&mut self) {
        let request = HealthCheckRequest {
            service: String::new(),
        };
        match self {
            Client::Plain(c) => drop(c.check(request).await.unwrap()),
            Client::Layered(c) => drop(c.check(request).await.unwrap()),
            Client::Mesh(c) => drop(c.check(request).await.unwrap()),
        }
    }
}

async fn bench() {
    let dir = std::env::temp_dir().join(format!("mesh-layers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = server().await;
    let file = dir.join("policy.yaml");
    std::fs::write(&file, POLICY).unwrap();
    let addr = EndpointAddr::parse(&format!("http://127.0.0.1:{port}")).unwrap();
    let config = MeshConfig {
        host: "bench".into(),
        files: vec![file],
        endpoints: vec![addr.clone()],
        tls: None,
    };
    let policy = config.policy().unwrap();
    let route = &policy.routes[0];
    let traffic = policy.destination(&None, &config.endpoints).traffic;
    let metrics = MeshMetrics::default();

    let plain = Channel::from_shared(addr.uri.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    // Each stack over its own connection, as each mesh client has.
    let endpoint = || Endpoint::new("bench", &addr, None, None).unwrap();
    let balanced = || {
        mesh::outlier::Balancer::new(
            "bench",
            vec![endpoint()],
            traffic.outlier,
            traffic.pick,
            metrics.clone(),
        )
    };
    let pooled =
        || mesh::pool::PoolLayer::layer("bench", traffic.pool, metrics.clone()).layer(balanced());
    let retried = || {
        mesh::retry::RetryLayer::layer("bench", route.retry.clone(), metrics.clone())
            .layer(pooled())
    };
    let retried_with = |config: mesh::retry::Config| {
        mesh::retry::RetryLayer::layer("bench", config, metrics.clone()).layer(pooled())
    };
    let timed = || {
        mesh::retry::RetryLayer::layer("bench", route.retry.clone(), metrics.clone())
            .with_route_timeout(route.timeout)
            .layer(pooled())
    };
    let mut stacks: Vec<(&str, Client)> = vec![
        (
            "plain tonic channel",
            Client::Plain(HealthClient::new(plain)),
        ),
        ("endpoint (buffer + classify)", layered(endpoint())),
        ("+ outlier balancer", layered(balanced())),
        ("+ pool", layered(pooled())),
        (
            "+ retry, attempts 0",
            layered(retried_with(mesh::retry::Config {
                attempts: 0,
                per_try_timeout: None,
                ..route.retry.clone()
            })),
        ),
        (
            "+ retry, no perTryTimeout",
            layered(retried_with(mesh::retry::Config {
                per_try_timeout: None,
                ..route.retry.clone()
            })),
        ),
        ("+ retry", layered(retried())),
        ("+ route timeout", layered(timed())),
        (
            "whole MeshClient (+ route)",
            Client::Mesh(HealthClient::new(
                MeshClient::load(&config, &metrics).unwrap(),
            )),
        ),
        ("hyper client, no tonic channel", hyper_client(&addr.uri)),
        ("hyper h2 connection, direct", hyper_conn(&addr.uri).await),
    ];
    // LAYERS_ONLY=<row>[,<row>...]: those stacks alone (one, for a profiler such as
    // callgrind), LAYERS_CALLS calls each.
    if let Ok(only) = std::env::var("LAYERS_ONLY") {
        let rows: Vec<usize> = only.split(',').map(|r| r.trim().parse().unwrap()).collect();
        stacks = stacks
            .into_iter()
            .enumerate()
            .filter(|(i, _)| rows.contains(i))
            .map(|(_, s)| s)
            .collect();
    }
    let rounds: usize = std::env::var("LAYERS_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    for (_, client) in &mut stacks {
        for _ in 0..2_000.min(rounds) {
            client.call().await;
        }
    }
    let mut latencies: Vec<Vec<Duration>> = vec![Vec::with_capacity(rounds); stacks.len()];
    let mut wakes = vec![(0u64, 0u64); stacks.len()];
    let n = stacks.len();
    for round in 0..rounds {
        // Each round starts with the next stack: none always follows the same one.
        for i in (0..n).map(|k| (round + k) % n) {
            let client = &mut stacks[i].1;
            let (u, p) = (
                UNPARKS.load(Ordering::Relaxed),
                PARKS.load(Ordering::Relaxed),
            );
            let t = Instant::now();
            client.call().await;
            latencies[i].push(t.elapsed());
            wakes[i].0 += UNPARKS.load(Ordering::Relaxed) - u;
            wakes[i].1 += PARKS.load(Ordering::Relaxed) - p;
        }
    }
    for l in &mut latencies {
        l.sort();
    }
    println!(
        "one call at a time through stacks growing by a layer ({rounds} calls each, interleaved)"
    );
    println!(
        "  {:<30} {:>9} {:>9} {:>7} {:>7} {:>9} {:>7}",
        "stack", "p50", "p99", "p50 x", "p99 x", "unparks", "parks"
    );
    let (base50, base99) = (
        percentile(&latencies[0], 0.5),
        percentile(&latencies[0], 0.99),
    );
    for (i, (name, _)) in stacks.iter().enumerate() {
        let (p50, p99) = (
            percentile(&latencies[i], 0.5),
            percentile(&latencies[i], 0.99),
        );
        println!(
            "  {name:<30} {p50:>9.1?} {p99:>9.1?} {:>7.3} {:>7.3} {:>9.2} {:>7.2}",
            p50.as_secs_f64() / base50.as_secs_f64(),
            p99.as_secs_f64() / base99.as_secs_f64(),
            wakes[i].0 as f64 / rounds as f64,
            wakes[i].1 as f64 / rounds as f64,
        );
    }
    in_flight(&stacks).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Each stack in closed loops of `LAYERS_IN_FLIGHT` calls in flight, rotating rounds.
async fn in_flight(stacks: &[(&str, Client)]) {
    let in_flight: usize = std::env::var("LAYERS_IN_FLIGHT")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(16);
    if in_flight == 0 {
        return;
    }
    let (calls, rounds) = (100 * in_flight, 15);
    let clients: Vec<Client> = stacks.iter().map(|(_, c)| c.clone()).collect();
    let measured = closed_loops(&clients, in_flight, calls, rounds).await;
    println!("{in_flight} in flight, closed loops ({rounds} rotating rounds of {calls} calls; ratio: median of rounds)");
    println!(
        "  {:<30} {:>9} {:>7} {:>12} {:>7}",
        "stack", "calls/s", "x", "CPU us/call", "cores"
    );
    for ((name, _), m) in stacks.iter().zip(&measured) {
        println!(
            "  {name:<30} {:>9.0} {:>7.3} {:>12.1} {:>7.2}",
            m.calls_per_s,
            m.ratio,
            m.cpu_per_call.as_secs_f64() * 1e6,
            m.cores,
        );
    }
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_unpark(|| {
            UNPARKS.fetch_add(1, Ordering::Relaxed);
        })
        .on_thread_park(|| {
            PARKS.fetch_add(1, Ordering::Relaxed);
        })
        .build()
        .unwrap()
        // On a worker, as a service's calls are made (from its tasks): from the runtime's
        // outside thread every call's wake-ups would cross threads, doubling its latency.
        .block_on(async { tokio::spawn(bench()).await.unwrap() });
}
