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

use parking_common::config::EventArgs;
use parking_common::pb::reservation_status_service_server::ReservationStatusServiceServer;
use parking_common::runtime::{Endpoints, Host, StartError};
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
    /// gRPC listen address (loopback unless told otherwise: the manifests set 0.0.0.0).
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:50054")]
    pub listen: SocketAddr,
    /// sea-orm database URL (sqlite://… or postgres://…).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://var/status.db?mode=rwc"
    )]
    pub database_url: String,
    /// Where Prometheus metrics are served (`/metrics`); "off" to serve none.
    #[arg(long, env = "METRICS_LISTEN", default_value = "127.0.0.1:9454")]
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
        name: "status",
        listen: config.listen,
        database_url: &config.database_url,
        events: &config.events,
        auth: &config.auth,
        tls: &config.tls,
        metrics_listen: config.metrics_listen.0,
    };
    let mut host = Host::start::<migration::Migrator>(endpoints, shutdown.clone()).await?;
    let store = store::Store::new(host.db.clone());
    let (changes, _) = tokio::sync::broadcast::channel(1024);
    let projection = Arc::new(policy::Project {
        changes: changes.clone(),
    });
    for subscription in policy::Project::subscriptions() {
        host.follow(subscription, projection.clone());
    }
    let api = api::Api {
        store,
        changes,
        shutdown,
    };
    host.serve(ReservationStatusServiceServer::new(api)).await
}
