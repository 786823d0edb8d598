//! TicketReservation, the core context: members apply for a day's ticket 24/7, whether
//! or not ParkingLot (or NATS) is up; ParkingLot's answer settles the application later.
//!
//! - [`domain`]: the aggregate and its rules (pure).
//! - [`store`]: storage port and sea-orm adapter; writes go out through the outbox.
//! - [`migration`]: the schema.
//! - [`api`]: the gRPC adapter.
//! - [`policy`]: the event policy that settles applications.
#![forbid(unsafe_code)]

pub mod api;
pub mod domain;
pub mod migration;
pub mod policy;
pub mod store;

use parking_common::config::{CalendarArgs, EventArgs};
use parking_common::events::EventContext;
use parking_common::pb::ticket_reservation_service_server::TicketReservationServiceServer;
use parking_common::runtime::{Endpoints, Host, StartError};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Configuration of the reservation service.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "reservation",
    version,
    about = "TicketReservation service (parking.v1.TicketReservationService)"
)]
pub struct Config {
    /// gRPC listen address (loopback unless told otherwise: the manifests set 0.0.0.0).
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// sea-orm database URL (sqlite://… or postgres://…).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://var/reservation.db?mode=rwc"
    )]
    pub database_url: String,
    /// Where Prometheus metrics are served (`/metrics`); "off" to serve none.
    #[arg(long, env = "METRICS_LISTEN", default_value = "127.0.0.1:9451")]
    pub metrics_listen: parking_common::config::OptionalAddr,
    #[command(flatten)]
    pub events: EventArgs,
    #[command(flatten)]
    pub auth: parking_common::config::AuthArgs,
    /// Optional mTLS: the server requires client certificates of the CA.
    #[command(flatten)]
    pub tls: parking_common::config::TlsArgs,
    #[command(flatten)]
    pub calendar: CalendarArgs,
}

/// Runs the service until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    tracing::info!(
        time_zone = %config.calendar.time_zone,
        booking_window_days = config.calendar.booking_window_days,
        "calendar"
    );
    let endpoints = Endpoints {
        name: "reservation",
        listen: config.listen,
        database_url: &config.database_url,
        events: &config.events,
        auth: &config.auth,
        tls: &config.tls,
        metrics_listen: config.metrics_listen.0,
    };
    let mut host = Host::start::<migration::Migrator>(endpoints, shutdown).await?;
    let store = store::Store::new(host.db.clone(), host.outbox.clone());
    host.relay(EventContext::Reservation);
    host.follow(policy::Settle::subscription(), Arc::new(policy::Settle));
    let api = api::Api {
        store,
        calendar: config.calendar.calendar(),
    };
    host.serve(TicketReservationServiceServer::new(api)).await
}
