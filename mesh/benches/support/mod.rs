//! What the mesh's benches share (also included by e2e/benches/sidecar.rs): the policy
//! every overhead figure is measured with, the server they call, and the statistics.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

/// A full policy: route timeout, retries with a per-try timeout, pool limits and outlier
/// detection (host `bench`).
pub const POLICY: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bench}
spec:
  host: bench
  trafficPolicy:
    connectionPool:
      http: {http2MaxRequests: 1000, http1MaxPendingRequests: 1000}
    outlierDetection: {consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 100}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bench}
spec:
  hosts: [bench]
  http:
  - timeout: 5s
    retries: {attempts: 2, perTryTimeout: 2s, retryOn: "unavailable,connect-failure"}
    route:
    - destination: {host: bench}
"#;

/// A tonic server answering health Check at once, on a free loopback port.
pub async fn server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(health)
            // TCP_NODELAY, as the services' servers set it (tonic's `tcp_nodelay` covers
            // only servers it binds itself): without it an answer written while another is
            // unacknowledged waits for the client's delayed ACK.
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            )
            .await
            .unwrap();
    });
    port
}

/// The `p` quantile of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// CPU time (user + system) this process has used so far (clock_gettime's
/// CLOCK_PROCESS_CPUTIME_ID: nanoseconds, every thread counted).
pub fn cpu_time() -> Duration {
    cpu_time::ProcessTime::try_now().map_or(Duration::ZERO, |t| t.as_duration())
}

/// A client the benches call: one unary call per `call` (panics on a failed call).
pub trait Caller: Clone + Send + 'static {
    fn call(&mut self) -> impl std::future::Future<Output = ()> + Send;
}

/// Time for `calls` calls through `client`, `in_flight` at a time, each its own task.
pub async fn closed_loop<C: Caller>(client: &C, calls: usize, in_flight: usize) -> Duration {
    let start = std::time::Instant::now();
    let tasks: Vec<_> = (0..in_flight)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                for _ in 0..calls / in_flight {
                    client.call().await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    start.elapsed()
}

/// What closed loops measured for one client.
pub struct Throughput {
    pub calls_per_s: f64,
    /// Throughput as a ratio to the first client's, the median of the rounds' ratios.
    pub ratio: f64,
    /// CPU time of the whole process (client and server) per call.
    pub cpu_per_call: Duration,
    /// Cores busy on average: under 2 on this 2-core machine means the loop waits on
    /// wake-ups, not on work.
    pub cores: f64,
}

/// Closed loops of `in_flight` calls through every client in `rounds` short rounds, each
/// round starting with the next client. One round decides nothing: at a few hundred ms
/// a round's throughput moves by 10-15 % with where the runtime happens to put its tasks,
/// so the ratio is the median over many rounds.
pub async fn closed_loops<C: Caller>(
    clients: &[C],
    in_flight: usize,
    calls: usize,
    rounds: usize,
) -> Vec<Throughput> {
    let n = clients.len();
    let mut ratios = vec![Vec::new(); n];
    let (mut wall, mut cpu) = (vec![Duration::ZERO; n], vec![Duration::ZERO; n]);
    for round in 0..rounds {
        let mut times = vec![Duration::ZERO; n];
        for i in (0..n).map(|k| (round + k) % n) {
            let before = cpu_time();
            times[i] = closed_loop(&clients[i], calls, in_flight).await;
            cpu[i] += cpu_time() - before;
            wall[i] += times[i];
        }
        for (i, time) in times.iter().enumerate() {
            ratios[i].push(times[0].as_secs_f64() / time.as_secs_f64());
        }
    }
    let total = (calls / in_flight * in_flight * rounds) as f64;
    (0..n)
        .map(|i| Throughput {
            calls_per_s: total / wall[i].as_secs_f64(),
            ratio: median(ratios[i].clone()),
            cpu_per_call: cpu[i].div_f64(total),
            cores: cpu[i].as_secs_f64() / wall[i].as_secs_f64(),
        })
        .collect()
}
