//! Benchmark of the mesh stack, printing its figures (run: `make bench` or
//! `cargo bench -p mesh`):
//!
//! 1. the overhead of the full stack (route, timeout, retry, pool, outlier balancer,
//!    classification) on a unary gRPC call, against a plain tonic client on the same
//!    server in the same run, sequential and 16 calls in flight (goal: <= 5 %);
//! 2. the latency of a fast failure with the circuit open (goal: p99 <= 1 ms).
//!
//! Rounds alternate plain / mesh so drift on a noisy machine hits both alike; the figure
//! is the median of the per-round ratios.
#![allow(clippy::unwrap_used)]

use mesh::endpoint::EndpointAddr;
use mesh::metrics::MeshMetrics;
use mesh::{MeshClient, MeshConfig};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

mod support;
use support::{median, percentile, server, POLICY};

fn mesh_client(port: u16, dir: &std::path::Path, policy: &str) -> MeshClient {
    let file = dir.join(format!("policy-{port}.yaml"));
    std::fs::write(&file, policy).unwrap();
    let config = MeshConfig {
        host: "bench".into(),
        files: vec![file],
        endpoints: vec![EndpointAddr::parse(&format!("http://127.0.0.1:{port}")).unwrap()],
        tls: None,
    };
    MeshClient::load(&config, &MeshMetrics::default()).unwrap()
}

/// Time for `calls` unary calls, `in_flight` at a time.
async fn run<T>(client: &HealthClient<T>, calls: usize, in_flight: usize) -> Duration
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let start = Instant::now();
    let per_task = calls / in_flight;
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_task {
                client
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // On a worker, as a service's calls are made (from its tasks): from the runtime's
    // outside thread every call's wake-ups would cross threads, doubling its latency.
    tokio::spawn(bench()).await.unwrap();
}

async fn bench() {
    let dir = std::env::temp_dir().join(format!("mesh-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = server().await;
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let plain = HealthClient::new(channel);
    let meshed = HealthClient::new(mesh_client(port, &dir, POLICY));
    // Warm up both connections.
    run(&plain, 2_000, 4).await;
    run(&meshed, 2_000, 4).await;

    println!("mesh overhead on a unary gRPC call (health Check over loopback), plain tonic = 1.00");
    // Sequential: calls interleaved one by one (plain, mesh, plain, ...), so the machine's
    // drift and stalls hit both alike; compare the latency distributions.
    let (mut p_lat, mut m_lat) = (Vec::with_capacity(20_000), Vec::with_capacity(20_000));
    let (mut p_client, mut m_client) = (plain.clone(), meshed.clone());
    for _ in 0..20_000 {
        let t = Instant::now();
        p_client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
        p_lat.push(t.elapsed());
        let t = Instant::now();
        m_client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
        m_lat.push(t.elapsed());
    }
    p_lat.sort();
    m_lat.sort();
    for (name, p) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
        let (a, b) = (percentile(&p_lat, p), percentile(&m_lat, p));
        println!(
            "  1 in flight, {name}: plain {a:>10.1?}  mesh {b:>10.1?}  ratio {:.3}{}",
            b.as_secs_f64() / a.as_secs_f64(),
            if name == "p50" { " (goal <= 1.05)" } else { "" }
        );
    }
    // Concurrent: throughput rounds, alternating; the median of per-round ratios.
    let in_flight = 16;
    let calls = 4_000;
    let mut ratios = Vec::new();
    let (mut plain_total, mut mesh_total) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..11 {
        let p = run(&plain, calls, in_flight).await;
        let m = run(&meshed, calls, in_flight).await;
        plain_total += p;
        mesh_total += m;
        ratios.push(m.as_secs_f64() / p.as_secs_f64());
    }
    let n = (calls * 11) as f64;
    println!(
        "  {in_flight} in flight: plain {:.0} calls/s, mesh {:.0} calls/s, time ratio mesh/plain {:.3} (median of 11 rounds; goal <= 1.05)",
        n / plain_total.as_secs_f64(),
        n / mesh_total.as_secs_f64(),
        median(ratios),
    );

    // Circuit open: one endpoint where nothing listens, ejected after its first failure.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let open_policy = POLICY.replace("consecutive5xxErrors: 5", "consecutive5xxErrors: 1");
    let mut failing = HealthClient::new(mesh_client(dead, &dir, &open_policy));
    let _ = failing
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    let mut samples = Vec::with_capacity(20_000);
    for _ in 0..20_000 {
        let start = Instant::now();
        let status = failing
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap_err();
        samples.push(start.elapsed());
        assert!(
            mesh::error::is_fail_fast(&status),
            "expected a fail-fast answer, got {status:?}"
        );
    }
    samples.sort();
    println!(
        "fast failure with the circuit open (20000 calls): p50 {:?}, p99 {:?}, max {:?} (goal p99 <= 1 ms)",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples[samples.len() - 1]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
