//! The mesh against the sidecar it replaces (run: `make bench`, or `cargo bench -p
//! parking-e2e --bench sidecar`; the pinned Envoy comes from scripts/tools.sh).
//!
//! One tonic server answering health Check at once, three ways to call it in the same run:
//! a plain tonic channel (the baseline, 1.00), the in-process mesh with the bench policy,
//! and a real Envoy (one worker, as an Istio sidecar runs) configured from the same policy
//! by the conformance harness's translator. Istio puts two such hops on every call (the
//! client's and the server's sidecar); this measures one.
//!
//! - One call at a time, interleaved call by call with plain (each round starting with the
//!   next client, so drift and stalls hit both alike and none always follows the same one):
//!   the mesh beside plain, Envoy beside plain, then all three together; p50 and p99 and
//!   their ratios to plain.
//! - 16 and 64 calls in flight, closed loop, in rotating rounds: throughput and its ratio
//!   to plain (median of the per-round ratios).
//!
//! Goals (issue 11): mesh p50 and p99 <= 1.05x plain at one in flight, throughput >= 0.95x at
//! 16 and 64 in flight.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mesh::endpoint::EndpointAddr;
use mesh::metrics::MeshMetrics;
use mesh::{MeshClient, MeshConfig};
use parking_e2e::envoy::Envoy;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

// The policy, server and statistics of the mesh crate's benches.
#[path = "../../mesh/benches/support/mod.rs"]
mod support;
use support::{median, percentile, server, POLICY};

#[derive(Clone)]
enum Client {
    Plain(HealthClient<Channel>),
    Mesh(HealthClient<MeshClient>),
}

impl Client {
    async fn call(&mut self) {
        let request = HealthCheckRequest {
            service: String::new(),
        };
        match self {
            Client::Plain(c) => drop(c.check(request).await.unwrap()),
            Client::Mesh(c) => drop(c.check(request).await.unwrap()),
        }
    }
}

/// Time for `calls` calls, `in_flight` at a time.
async fn closed_loop(client: &Client, calls: usize, in_flight: usize) -> Duration {
    let start = Instant::now();
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
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

/// `calls` calls through each client of `chosen`, one at a time and interleaved call by
/// call; each round starts with the next client, so none always follows the same one.
/// Prints p50 and p99 and their ratios to the first client's.
async fn one_at_a_time(clients: &mut [(&str, Client)], chosen: &[usize], calls: usize) {
    let n = chosen.len();
    let mut latencies: Vec<Vec<Duration>> = vec![Vec::with_capacity(calls); n];
    for round in 0..calls {
        for k in (0..n).map(|k| (round + k) % n) {
            let t = Instant::now();
            clients[chosen[k]].1.call().await;
            latencies[k].push(t.elapsed());
        }
    }
    for l in &mut latencies {
        l.sort();
    }
    let base = (
        percentile(&latencies[0], 0.5),
        percentile(&latencies[0], 0.99),
    );
    for (k, l) in latencies.iter().enumerate() {
        let name = clients[chosen[k]].0;
        let (p50, p99) = (percentile(l, 0.5), percentile(l, 0.99));
        println!(
            "  {name:<14} p50 {p50:>9.1?} ({:.3}x)  p99 {p99:>9.1?} ({:.3}x){}",
            p50.as_secs_f64() / base.0.as_secs_f64(),
            p99.as_secs_f64() / base.1.as_secs_f64(),
            if name == "mesh" && n == 2 {
                "  goal <= 1.05x"
            } else {
                ""
            }
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = parking_e2e::envoy::temp_dir("sidecar-bench");
    let port = server().await;
    let file = dir.join("policy.yaml");
    std::fs::write(&file, POLICY).unwrap();
    let endpoints = vec![EndpointAddr::parse(&format!("http://127.0.0.1:{port}")).unwrap()];
    let config = MeshConfig {
        host: "bench".into(),
        files: vec![file],
        endpoints: endpoints.clone(),
        tls: None,
    };
    let policy = config.policy().unwrap();
    let envoy = Envoy::start(&policy, &endpoints).await;
    let plain = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut clients = [
        ("plain tonic", Client::Plain(HealthClient::new(plain))),
        (
            "mesh",
            Client::Mesh(HealthClient::new(
                MeshClient::load(&config, &MeshMetrics::default()).unwrap(),
            )),
        ),
        (
            "Envoy sidecar",
            Client::Plain(HealthClient::new(envoy.channel().await)),
        ),
    ];
    for (_, client) in &clients {
        closed_loop(client, 4_000, 4).await;
    }

    // Each way beside plain alone (what it adds to a call), then all three interleaved:
    // with Envoy's process in the rotation the mesh reads slower too (see mesh/README.md).
    let calls = 20_000;
    for (title, chosen) in [
        ("the mesh beside plain", &[0, 1][..]),
        ("Envoy beside plain", &[0, 2][..]),
        ("all three interleaved", &[0, 1, 2][..]),
    ] {
        println!("one call at a time, {title} ({calls} calls each; ratio to plain tonic)");
        one_at_a_time(&mut clients, chosen, calls).await;
    }
    let n = clients.len();

    for in_flight in [16, 64] {
        let calls = 6_400;
        let rounds = 9;
        let mut totals = vec![Duration::ZERO; clients.len()];
        let mut ratios = vec![Vec::new(); clients.len()];
        for round in 0..rounds {
            // Each round starts with the next client, as above.
            let mut times = vec![Duration::ZERO; n];
            for i in (0..n).map(|k| (round + k) % n) {
                times[i] = closed_loop(&clients[i].1, calls, in_flight).await;
            }
            for (i, time) in times.iter().enumerate() {
                totals[i] += *time;
                ratios[i].push(times[0].as_secs_f64() / time.as_secs_f64());
            }
        }
        println!("{in_flight} in flight (closed loop, {rounds} rotating rounds of {calls} calls; throughput ratio to plain, median of rounds)");
        for (i, (name, _)) in clients.iter().enumerate() {
            println!(
                "  {name:<14} {:>8.0} calls/s ({:.3}x){}",
                (calls * rounds) as f64 / totals[i].as_secs_f64(),
                median(ratios[i].clone()),
                if *name == "mesh" {
                    "  goal >= 0.95x"
                } else {
                    ""
                }
            );
        }
    }
    drop(envoy);
    let _ = std::fs::remove_dir_all(&dir);
}
