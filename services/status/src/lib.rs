//! reservationStatus, the CQRS read side: one row per reservation plus its event history,
//! fed by every event of every context; answers from its own view only.
//!
//! - [`domain`]: stages, their ranks, and how a fact changes a view (pure).
//! - [`migration`]: the schema.
//! - [`store`]: the view and history in sea-orm.
//! - [`policy`]: the projection, one durable per stream.
//! - [`api`]: the gRPC adapter, with a server-streaming watch.
#![forbid(unsafe_code)]

pub mod api;
pub mod domain;
pub mod migration;
pub mod policy;
pub mod store;

use parking_common::config::{redact_url, EventArgs};
use parking_common::pb::reservation_status_service_server::ReservationStatusServiceServer;
use parking_common::runtime::{Background, StartError};
use parking_common::{consumer, db, grpc, nats};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Configuration of the status service.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "status",
    version,
    about = "reservationStatus service (parking.v1.ReservationStatusService)"
)]
pub struct Config {
    /// gRPC listen address.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:50054")]
    pub listen: SocketAddr,
    /// sea-orm database URL (sqlite://… or postgres://…).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://var/status.db?mode=rwc"
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
        "starting status"
    );
    let db = db::connect_and_migrate::<migration::Migrator>(&config.database_url).await?;
    let listener = grpc::bind(config.listen).await?;
    let js = nats::connect(&config.events.nats_url, "status").await?;
    let store = store::Store::new(db);
    let (changes, _) = tokio::sync::broadcast::channel(1024);
    let projection = Arc::new(policy::Project {
        store: store.clone(),
        changes: changes.clone(),
    });

    let mut background = Background::new(shutdown.clone());
    for subscription in policy::Project::subscriptions() {
        background.spawn(consumer::run(
            js.clone(),
            config.events.event_namespace.clone(),
            subscription,
            projection.clone(),
            config.events.consumer_concurrency,
            shutdown.clone(),
        ));
    }
    let api = api::Api {
        store,
        changes,
        shutdown: shutdown.clone(),
    };
    let served = grpc::serve(listener, ReservationStatusServiceServer::new(api), shutdown).await;
    background.stop().await;
    served.map_err(Into::into)
}
