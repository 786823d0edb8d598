//! Benchmark of the gateway, printing its figures (run: `make bench`): ReserveTicket
//! through the gateway with an admin's JWT (token check, limits with room to spare,
//! identity headers, forwarding) against the same call straight to the reservation
//! service, in one run over the same SQLite-backed services.
//!
//! Calls run 16 in flight; rounds alternate direct / gateway so drift on a noisy 2-core
//! machine hits both alike. Every call is a new application (a member holds one ticket per
//! day), so each one is a real insert plus its outbox row.
#![allow(clippy::unwrap_used)]

use parking_e2e::{channel, day, gateway_as, AuthChannel, Backend, Bearer, Cluster, Svc};
use parking_proto::v1 as pb;
use pb::ticket_reservation_service_client::TicketReservationServiceClient as Client;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const IN_FLIGHT: usize = 16;
const ROUND: Duration = Duration::from_secs(3);
const ROUNDS: usize = 4;

/// Calls for one round; returns each call's latency.
async fn round(
    client: Client<AuthChannel>,
    next_member: Arc<AtomicI64>,
    date: String,
) -> Vec<Duration> {
    let end = Instant::now() + ROUND;
    let workers = (0..IN_FLIGHT).map(|_| {
        let (mut client, next_member, date) = (client.clone(), next_member.clone(), date.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < end {
                let member_id = next_member.fetch_add(1, Ordering::Relaxed);
                let started = Instant::now();
                client
                    .reserve_ticket(pb::ReserveTicketRequest {
                        member_id,
                        reservation_date: date.clone(),
                        request_id: String::new(),
                    })
                    .await
                    .unwrap();
                latencies.push(started.elapsed());
            }
            latencies
        })
    });
    let mut all = Vec::new();
    for worker in futures::future::join_all(workers).await {
        all.extend(worker.unwrap());
    }
    all
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

struct Figures {
    rps: f64,
    p50: Duration,
    p99: Duration,
}

fn figures(mut latencies: Vec<Duration>) -> Figures {
    latencies.sort();
    Figures {
        rps: latencies.len() as f64 / (ROUND.as_secs_f64() * ROUNDS as f64),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
    }
}

#[tokio::main]
async fn main() {
    let mut c = Cluster::start(Backend::Sqlite).await;
    let port = c
        .start_gateway_with(&[
            ("RUST_LOG", "warn"),
            ("RATE_LIMIT_PER_ADDR", "1000000"),
            ("RATE_LIMIT_PER_SUBJECT", "1000000"),
        ])
        .await;
    // The same client type both ways; straight to the service, no token.
    let direct = Client::new(tonic::service::interceptor::InterceptedService::new(
        channel(c.port(Svc::Reservation)).await,
        Bearer::new(None),
    ));
    let gateway = Client::new(gateway_as(port, "admin").await);
    let next_member = Arc::new(AtomicI64::new(1));
    let date = day(9);
    // Warm-up: connections, SQLite pages, the JIT-free but cache-cold paths.
    round(direct.clone(), next_member.clone(), date.clone()).await;
    round(gateway.clone(), next_member.clone(), date.clone()).await;
    let (mut plain, mut through) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        plain.extend(round(direct.clone(), next_member.clone(), date.clone()).await);
        through.extend(round(gateway.clone(), next_member.clone(), date.clone()).await);
    }
    let (d, g) = (figures(plain), figures(through));
    println!("ReserveTicket, {IN_FLIGHT} in flight, {ROUNDS} x {ROUND:?} per side, SQLite, release build");
    println!(
        "  direct to reservation: {:>7.0} calls/s  p50 {:>8.2?}  p99 {:>8.2?}",
        d.rps, d.p50, d.p99
    );
    println!(
        "  through gateway + JWT: {:>7.0} calls/s  p50 {:>8.2?}  p99 {:>8.2?}",
        g.rps, g.p50, g.p99
    );
    println!(
        "  gateway / direct: throughput {:.2}, p50 {:.2}, p99 {:.2}",
        g.rps / d.rps,
        g.p50.as_secs_f64() / d.p50.as_secs_f64(),
        g.p99.as_secs_f64() / d.p99.as_secs_f64()
    );
}
