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
//! - 16 and 64 calls in flight, closed loop, in many short rotating rounds: throughput and
//!   its ratio to plain (median of the per-round ratios), with the process's CPU time per
//!   call and the cores it kept busy (client, server and the mesh; Envoy's own process is
//!   not counted).
//! - Open loop: calls started at a smooth offered rate, in steps up past each way's knee;
//!   the rate achieved and the latency from when each call was due (a backlog shows in it).
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
use support::{closed_loops, percentile, server, Caller, POLICY};

#[derive(Clone)]
enum Client {
    Plain(HealthClient<Channel>),
    Mesh(HealthClient<MeshClient>),
}

impl Client {
    /// One call; whether it succeeded.
    async fn attempt(&mut self) -> bool {
        let request = HealthCheckRequest {
            service: String::new(),
        };
        match self {
            Client::Plain(c) => c.check(request).await.is_ok(),
            Client::Mesh(c) => c.check(request).await.is_ok(),
        }
    }
}

impl Caller for Client {
    async fn call(&mut self) {
        assert!(self.attempt().await, "a call failed");
    }
}

/// What one step of open-loop load measured.
struct Step {
    achieved: f64,
    p50: Duration,
    p99: Duration,
    failed: usize,
    /// Calls not started because `MAX_OUTSTANDING` were in flight.
    shed: usize,
    /// How late the pacer started calls (its sleep overshoots by the kernel's timer
    /// slack): part of every latency, for every client alike.
    pacer_late: Duration,
}

/// Calls in flight at most under open-loop load (the bench policy's pool admits 1,000
/// in flight); calls due beyond it are shed and counted, not queued without bound.
const MAX_OUTSTANDING: usize = 1_000;

/// Calls started at `rate` per second for `length`, evenly spaced, each on its own task.
/// The pacer is a thread of its own that sleeps until each call is due (tokio's timers
/// tick by the millisecond: a call would wait up to two for its tick). Latency counts from
/// when a call was due, not from when it got started, so a backlog shows in it. The rate
/// achieved is the calls answered over the time until the last answer.
async fn open_loop(client: &Client, rate: f64, length: Duration) -> Step {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let runtime = tokio::runtime::Handle::current();
    let client = client.clone();
    let total = (rate * length.as_secs_f64()) as usize;
    let start = Instant::now();
    let (tasks, shed, mut late) = tokio::task::spawn_blocking(move || {
        let outstanding = std::sync::Arc::new(AtomicUsize::new(0));
        let (mut tasks, mut shed) = (Vec::with_capacity(total), 0);
        let mut late = Vec::with_capacity(total);
        for i in 0..total {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            late.push(due.elapsed());
            if outstanding.load(Ordering::Relaxed) >= MAX_OUTSTANDING {
                shed += 1;
                continue;
            }
            outstanding.fetch_add(1, Ordering::Relaxed);
            let (mut client, outstanding) = (client.clone(), outstanding.clone());
            tasks.push(runtime.spawn(async move {
                let ok = client.attempt().await;
                outstanding.fetch_sub(1, Ordering::Relaxed);
                (ok, due.elapsed())
            }));
        }
        (tasks, shed, late)
    })
    .await
    .unwrap();
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut failed = 0;
    for task in tasks {
        let (ok, latency) = task.await.unwrap();
        if ok {
            latencies.push(latency);
        } else {
            failed += 1;
        }
    }
    let took = start.elapsed();
    latencies.sort();
    let at = |p| {
        if latencies.is_empty() {
            Duration::ZERO
        } else {
            percentile(&latencies, p)
        }
    };
    Step {
        achieved: latencies.len() as f64 / took.as_secs_f64(),
        p50: at(0.5),
        p99: at(0.99),
        failed,
        shed,
        pacer_late: if late.is_empty() {
            Duration::ZERO
        } else {
            late.sort();
            percentile(&late, 0.5)
        },
    }
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
    // On a worker, as a service's calls are made (from its tasks): from the runtime's
    // outside thread every call's wake-ups would cross threads, doubling its latency.
    tokio::spawn(bench()).await.unwrap();
}

async fn bench() {
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
        support::closed_loop(client, 4_000, 4).await;
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
    let all: Vec<Client> = clients.iter().map(|(_, c)| c.clone()).collect();
    for in_flight in [16, 64] {
        let (calls, rounds) = (100 * in_flight, 21);
        println!("{in_flight} in flight (closed loop, {rounds} rotating rounds of {calls} calls; throughput ratio to plain, median of rounds)");
        let measured = closed_loops(&all, in_flight, calls, rounds).await;
        for ((name, _), m) in clients.iter().zip(&measured) {
            println!(
                "  {name:<14} {:>8.0} calls/s ({:.3}x)  CPU {:>5.1} us/call, {:.2} cores (this process){}",
                m.calls_per_s,
                m.ratio,
                m.cpu_per_call.as_secs_f64() * 1e6,
                m.cores,
                if *name == "mesh" {
                    "  goal >= 0.95x"
                } else {
                    ""
                }
            );
        }
    }

    let length = Duration::from_secs(2);
    println!("open loop, calls started at an even offered rate for {length:?} per step (latency from when each call was due)");
    for rate in [2_000.0, 5_000.0, 10_000.0, 15_000.0, 20_000.0, 30_000.0] {
        for (name, client) in &clients {
            let step = open_loop(client, rate, length).await;
            let mut trouble = String::new();
            if step.failed > 0 {
                trouble += &format!("  failed {}", step.failed);
            }
            if step.shed > 0 {
                // The latencies are then those of the calls let in, bounded by the cap.
                trouble += &format!(
                    "  shed {} (over {MAX_OUTSTANDING} in flight; latency of the calls let in)",
                    step.shed
                );
            }
            println!(
                "  {rate:>6.0}/s {name:<14} achieved {:>7.0}/s  p50 {:>9.1?}  p99 {:>9.1?}  (pacer late {:.0?}){trouble}",
                step.achieved, step.p50, step.p99, step.pacer_late,
            );
        }
    }
    drop(envoy);
    let _ = std::fs::remove_dir_all(&dir);
}
