//! Benchmark of the gateway, printing its figures (run: `make bench`): ReserveTicket
//! through the gateway with an admin's JWT (token check, limits with room to spare,
//! forwarding; the service checks the token again) against the same call straight to the
//! reservation service with a token, in one run over the same SQLite-backed services.
//!
//! Calls run 16 in flight; rounds alternate direct / gateway so drift on a noisy 2-core
//! machine hits both alike. Every call is a new application (a member holds one ticket per
//! day), so each one is a real insert plus its outbox row.
#![allow(clippy::unwrap_used)]

use parking_e2e::bench::{direct, round, Figures, IN_FLIGHT, ROUND};
use parking_e2e::{day, gateway_as, Backend, Cluster};
use parking_proto::v1::ticket_reservation_service_client::TicketReservationServiceClient as Client;
use std::sync::atomic::AtomicI64;
use std::sync::Arc;

const ROUNDS: usize = 4;

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
    let direct = direct(&c).await;
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
    let (d, g) = (Figures::of(plain, ROUNDS), Figures::of(through, ROUNDS));
    println!("ReserveTicket, {IN_FLIGHT} in flight, {ROUNDS} x {ROUND:?} per side, SQLite, release build");
    println!("{}", d.line("direct to reservation:"));
    println!("{}", g.line("through gateway + JWT:"));
    println!("  gateway / direct: {}", d.ratio(&g));
}
