//! TicketDelivery, a generic context: the parking manager's work list. Occupied puts an
//! order on it, ShipTicket hands the ticket over, CancelDelivery (called synchronously by
//! ParkingLot) cancels it.
//!
//! - [`domain`]: the order's rules (pure).
//! - [`migration`]: the schema.
//! - [`store`]: orders in sea-orm; events through the outbox.
//! - [`policy`]: request a delivery on Occupied.
//! - [`api`]: the gRPC adapter.
#![forbid(unsafe_code)]

pub mod api;
pub mod domain;
pub mod migration;
pub mod policy;
pub mod store;

use parking_common::config::EventArgs;
use parking_common::events::EventContext;
use parking_common::pb::ticket_delivery_service_server::TicketDeliveryServiceServer;
use parking_common::runtime::{Endpoints, Host, StartError};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Configuration of the delivery service.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "delivery",
    version,
    about = "TicketDelivery service (parking.v1.TicketDeliveryService)"
)]
pub struct Config {
    /// gRPC listen address (loopback unless told otherwise: the manifests set 0.0.0.0).
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:50053")]
    pub listen: SocketAddr,
    /// sea-orm database URL (sqlite://… or postgres://…).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://var/delivery.db?mode=rwc"
    )]
    pub database_url: String,
    /// Where Prometheus metrics are served (`/metrics`); "off" to serve none.
    #[arg(long, env = "METRICS_LISTEN", default_value = "127.0.0.1:9453")]
    pub metrics_listen: parking_common::config::OptionalAddr,
    #[command(flatten)]
    pub events: EventArgs,
    #[command(flatten)]
    pub auth: parking_common::config::AuthArgs,
    /// Optional mTLS: the server requires client certificates of the CA.
    #[command(flatten)]
    pub tls: parking_common::config::TlsArgs,
}

/// Runs the service until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    let endpoints = Endpoints {
        name: "delivery",
        listen: config.listen,
        database_url: &config.database_url,
        events: &config.events,
        auth: &config.auth,
        tls: &config.tls,
        metrics_listen: config.metrics_listen.0,
    };
    let mut host = Host::start::<migration::Migrator>(endpoints, shutdown).await?;
    let store = store::Store::new(host.db.clone(), host.outbox.clone());
    host.relay(EventContext::Delivery);
    host.follow(
        policy::RequestDelivery::subscription(),
        Arc::new(policy::RequestDelivery),
    );
    host.serve(TicketDeliveryServiceServer::new(api::Api { store }))
        .await
}
