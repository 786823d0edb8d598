//! Benchmark of tracing's cost, printing its figures (run: `make bench`): ReserveTicket
//! straight to the reservation service of three identical clusters in one run: tracing
//! not exported, exported over OTLP at 10 % sampling (the production setting; goal: under
//! 10 % cost), and exported at 100 %. The spans go to an OTLP collector in this process.
//! Rounds rotate between the clusters so drift on a noisy 2-core machine hits all alike.
#![allow(clippy::unwrap_used)]

use parking_e2e::bench::{direct, round, Figures, IN_FLIGHT, ROUND};
use parking_e2e::otlp::Collector;
use parking_e2e::{day, Backend, Cluster};
use std::sync::atomic::AtomicI64;
use std::sync::Arc;

const ROUNDS: usize = 4;

async fn cluster(env: &[(&str, String)]) -> Cluster {
    let mut all = vec![("RUST_LOG", "warn")];
    all.extend(env.iter().map(|(k, v)| (*k, v.as_str())));
    Cluster::start_with_env(Backend::Sqlite, &all).await
}

#[tokio::main]
async fn main() {
    let (collector, endpoint) = Collector::start().await;
    let otlp = |ratio: &'static str| {
        [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".to_owned()),
            ("OTEL_TRACES_SAMPLER_ARG", ratio.to_owned()),
        ]
    };
    let sides = [
        ("tracing not exported:", cluster(&[]).await),
        ("OTLP, 10 % sampled:", cluster(&otlp("0.1")).await),
        ("OTLP, 100 % sampled:", cluster(&otlp("1.0")).await),
    ];
    let mut clients = Vec::new();
    for (_, c) in &sides {
        clients.push(direct(c).await);
    }
    let next_member = Arc::new(AtomicI64::new(1));
    let date = day(10);
    for client in &clients {
        round(client.clone(), next_member.clone(), date.clone()).await;
    }
    let mut latencies = vec![Vec::new(); clients.len()];
    for _ in 0..ROUNDS {
        for (i, client) in clients.iter().enumerate() {
            latencies[i].extend(round(client.clone(), next_member.clone(), date.clone()).await);
        }
    }
    let figures: Vec<Figures> = latencies
        .into_iter()
        .map(|l| Figures::of(l, ROUNDS))
        .collect();
    println!(
        "ReserveTicket, {IN_FLIGHT} in flight, {ROUNDS} x {ROUND:?} per side, SQLite, release build"
    );
    for ((label, _), f) in sides.iter().zip(&figures) {
        println!("{}", f.line(label));
    }
    println!("  10 % / off: {}", figures[0].ratio(&figures[1]));
    println!("  100 % / off: {}", figures[0].ratio(&figures[2]));
    println!(
        "  spans received by the collector: {}",
        collector.spans().len()
    );
}
