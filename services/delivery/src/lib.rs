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

use parking_common::config::{redact_url, EventArgs};
use parking_common::events::EventContext;
use parking_common::outbox::Outbox;
use parking_common::pb::ticket_delivery_service_server::TicketDeliveryServiceServer;
use parking_common::runtime::{Background, StartError};
use parking_common::{consumer, db, grpc, nats};
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
    /// gRPC listen address.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:50053")]
    pub listen: SocketAddr,
    /// sea-orm database URL (sqlite://… or postgres://…).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://var/delivery.db?mode=rwc"
    )]
    pub database_url: String,
    #[command(flatten)]
    pub events: EventArgs,
}

/// Runs the service until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    tracing::info!(
        listen = %config.listen,
        database = %redact_url(&config.database_url),
        nats = %redact_url(&config.events.nats_url),
        namespace = %config.events.event_namespace,
        "starting delivery"
    );
    let db = db::connect_and_migrate::<migration::Migrator>(&config.database_url).await?;
    let listener = grpc::bind(config.listen).await?;
    let js = nats::connect(&config.events.nats_url, "delivery").await?;
    let outbox = Outbox::new(&config.events.event_namespace);
    let store = store::Store::new(db.clone(), outbox.clone());

    let mut background = Background::new(shutdown.clone());
    background.spawn(
        outbox
            .relay(db, js.clone(), EventContext::Delivery)
            .run(shutdown.clone()),
    );
    background.spawn(consumer::run(
        js,
        config.events.event_namespace.clone(),
        policy::RequestDelivery::subscription(),
        Arc::new(policy::RequestDelivery {
            store: store.clone(),
        }),
        config.events.consumer_concurrency,
        shutdown.clone(),
    ));
    let served = grpc::serve(
        listener,
        TicketDeliveryServiceServer::new(api::Api { store }),
        shutdown,
    )
    .await;
    background.stop().await;
    served.map_err(Into::into)
}
