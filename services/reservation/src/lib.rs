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

use parking_common::config::{redact_url, CalendarArgs, EventArgs};
use parking_common::events::EventContext;
use parking_common::outbox::Outbox;
use parking_common::pb::ticket_reservation_service_server::TicketReservationServiceServer;
use parking_common::runtime::{Background, StartError};
use parking_common::{consumer, db, grpc, nats};
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
    /// gRPC listen address.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,
    /// sea-orm database URL (sqlite://… or postgres://…).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://var/reservation.db?mode=rwc"
    )]
    pub database_url: String,
    #[command(flatten)]
    pub events: EventArgs,
    #[command(flatten)]
    pub calendar: CalendarArgs,
}

/// Runs the service until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    tracing::info!(
        listen = %config.listen,
        database = %redact_url(&config.database_url),
        nats = %redact_url(&config.events.nats_url),
        namespace = %config.events.event_namespace,
        time_zone = %config.calendar.time_zone,
        booking_window_days = config.calendar.booking_window_days,
        "starting reservation"
    );
    let db = db::connect_and_migrate::<migration::Migrator>(&config.database_url).await?;
    let listener = grpc::bind(config.listen).await?;
    let js = nats::connect(&config.events.nats_url, "reservation").await?;
    let outbox = Outbox::new(&config.events.event_namespace);
    let store = store::Store::new(db.clone(), outbox.clone());

    let mut background = Background::new(shutdown.clone());
    background.spawn(
        outbox
            .relay(db, js.clone(), EventContext::Reservation)
            .run(shutdown.clone()),
    );
    background.spawn(consumer::run(
        js,
        config.events.event_namespace.clone(),
        policy::Settle::subscription(),
        Arc::new(policy::Settle {
            store: store.clone(),
        }),
        config.events.consumer_concurrency,
        shutdown.clone(),
    ));
    let api = api::Api {
        store,
        calendar: config.calendar.calendar(),
    };
    let served = grpc::serve(listener, TicketReservationServiceServer::new(api), shutdown).await;
    background.stop().await;
    served.map_err(Into::into)
}
