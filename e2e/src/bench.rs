//! Load for the benchmarks under e2e/benches: ReserveTicket calls, each a new application
//! (a member holds one ticket per day, so each is a real insert plus its outbox row), a
//! fixed number in flight for a fixed time; latencies and throughput per side.

use crate::pb;
use crate::AuthChannel;
use pb::ticket_reservation_service_client::TicketReservationServiceClient as Client;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Calls in flight.
pub const IN_FLIGHT: usize = 16;
/// One round's length.
pub const ROUND: Duration = Duration::from_secs(3);

/// The client every benchmark drives.
pub type ReserveClient = Client<AuthChannel>;

/// One round of ReserveTicket calls; returns each call's latency.
pub async fn round(
    client: ReserveClient,
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
                let answer = client
                    .reserve_ticket(pb::ReserveTicketRequest {
                        member_id,
                        reservation_date: date.clone(),
                        request_id: String::new(),
                    })
                    .await;
                match answer {
                    Ok(_) => latencies.push(started.elapsed()),
                    // Counted and shown, not fatal: a benchmark reports what it saw.
                    Err(status) => eprintln!("ReserveTicket failed: {status:?}"),
                }
            }
            latencies
        })
    });
    let mut all = Vec::new();
    for worker in futures::future::join_all(workers).await {
        all.extend(worker.expect("worker"));
    }
    all
}

/// Throughput and latency of one side over `rounds` rounds.
pub struct Figures {
    pub rps: f64,
    pub p50: Duration,
    pub p99: Duration,
}

impl Figures {
    pub fn of(mut latencies: Vec<Duration>, rounds: usize) -> Figures {
        if latencies.is_empty() {
            // Every call failed (printed as they came): nothing to measure.
            latencies.push(Duration::ZERO);
        }
        latencies.sort();
        let at =
            |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
        Figures {
            rps: latencies.len() as f64 / (ROUND.as_secs_f64() * rounds as f64),
            p50: at(0.50),
            p99: at(0.99),
        }
    }

    /// One aligned line: `label: N calls/s p50 .. p99 ..`.
    pub fn line(&self, label: &str) -> String {
        format!(
            "  {label:<28} {:>7.0} calls/s  p50 {:>8.2?}  p99 {:>8.2?}",
            self.rps, self.p50, self.p99
        )
    }

    /// `other / self` for throughput and p99.
    pub fn ratio(&self, other: &Figures) -> String {
        format!(
            "throughput {:.2}, p99 {:.2}",
            other.rps / self.rps,
            other.p99.as_secs_f64() / self.p99.as_secs_f64()
        )
    }
}

/// A client straight to a cluster's reservation service, as an operator (every call
/// needs a token the service checks, as from the gateway).
pub async fn direct(c: &crate::Cluster) -> ReserveClient {
    let token = c.token("operator", parking_common::identity::Role::Admin);
    Client::new(crate::with_token(c.port(crate::Svc::Reservation), Some(&token)).await)
}
