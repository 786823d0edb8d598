//! ParkingLot, a supporting context: the daily quota (the seed's maxparking) and the
//! allocation of numbered spaces; the cancel saga's compensation with TicketDelivery.
//!
//! - [`domain`]: allocation rules (pure).
//! - [`migration`]: the schema.
//! - [`store`]: quota and allocations in sea-orm; events through the outbox.
//! - [`delivery`]: the outbound port to TicketDelivery.CancelDelivery.
//! - [`policy`]: allocate on TicketReserved, vacate on TicketReservationCanceled.
//! - [`api`]: the gRPC adapter.
#![forbid(unsafe_code)]

pub mod api;
pub mod delivery;
pub mod domain;
pub mod migration;
pub mod policy;
pub mod store;

use parking_common::config::{CalendarArgs, EventArgs};
use parking_common::events::EventContext;
use parking_common::pb::parking_lot_service_server::ParkingLotServiceServer;
use parking_common::runtime::{Endpoints, Host, StartError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Configuration of the parking-lot service.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "parking-lot",
    version,
    about = "ParkingLot service (parking.v1.ParkingLotService)"
)]
pub struct Config {
    /// gRPC listen address (loopback unless told otherwise: the manifests set 0.0.0.0).
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:50052")]
    pub listen: SocketAddr,
    /// sea-orm database URL (sqlite://… or postgres://…).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://var/parking-lot.db?mode=rwc"
    )]
    pub database_url: String,
    /// Spaces per day unless SetDailyCapacity says otherwise (the seed's maxparking).
    #[arg(long, env = "MAX_PARKING", default_value_t = 5, value_parser = clap::value_parser!(i32).range(0..))]
    pub max_parking: i32,
    /// TicketDelivery's endpoints, comma-separated; each `http://host:port` (`https://`
    /// with TLS_*), optionally with labels for DestinationRule subsets:
    /// `version=v2@http://host:port`.
    #[arg(long, env = "DELIVERY_URL", default_value = "http://127.0.0.1:50053")]
    pub delivery_url: String,
    /// Outer deadline of one CancelDelivery call, retries included, in milliseconds (the
    /// VirtualService's timeout is normally the shorter one).
    #[arg(long, env = "DELIVERY_TIMEOUT_MS", default_value_t = 5000)]
    pub delivery_timeout_ms: u64,
    /// Istio DestinationRule / VirtualService YAML files for the delivery host,
    /// comma-separated (empty: Istio's defaults); re-read when they change.
    #[arg(long, env = "MESH_CONFIG", default_value = "")]
    pub mesh_config: String,
    /// The destination host name the Istio resources use for TicketDelivery.
    #[arg(long, env = "MESH_HOST", default_value = "delivery")]
    pub mesh_host: String,
    /// Where Prometheus metrics are served (`/metrics`); "off" to serve none.
    #[arg(long, env = "METRICS_LISTEN", default_value = "127.0.0.1:9452")]
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
    /// parking-lot's own identity for CancelDelivery.
    #[command(flatten)]
    pub client: parking_common::config::ClientArgs,
}

/// Parking-lot could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("DELIVERY_URL {url:?}: {message}")]
    DeliveryUrl { url: String, message: String },
    #[error("MESH_CONFIG: {0}")]
    Mesh(#[from] mesh::istio::ConfigError),
    #[error(transparent)]
    Credentials(#[from] parking_common::auth::FetchError),
}

/// Runs the service until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    tracing::info!(
        max_parking = config.max_parking,
        delivery = %config.delivery_url,
        delivery_timeout_ms = config.delivery_timeout_ms,
        mesh_config = %config.mesh_config,
        "parking-lot settings"
    );
    let mesh_config =
        mesh::MeshConfig::from_lists(&config.mesh_host, &config.mesh_config, &config.delivery_url)
            .map_err(|message| Error::DeliveryUrl {
                url: config.delivery_url.clone(),
                message,
            })?;
    let credentials = parking_common::auth::ServiceCredentials::new(&config.client)?;
    let endpoints = Endpoints {
        name: "parking-lot",
        listen: config.listen,
        database_url: &config.database_url,
        events: &config.events,
        auth: &config.auth,
        tls: &config.tls,
        metrics_listen: config.metrics_listen.0,
    };
    let mut host = Host::start::<migration::Migrator>(endpoints, shutdown).await?;
    // Calls to delivery with the service's own certificate when mTLS is on.
    let mesh_config = mesh_config.with_tls(host.tls().map(|t| t.mesh_client()));
    let mesh_metrics = mesh::metrics::MeshMetrics::default();
    let mesh = mesh::MeshClient::load(&mesh_config, &mesh_metrics)?;
    mesh.reload_on_change(mesh_config, mesh_metrics.clone(), Duration::from_secs(1));
    let delivery = delivery::GrpcDelivery::new(
        mesh,
        credentials,
        Duration::from_millis(config.delivery_timeout_ms),
    );
    mesh_metrics.register(&mut host.registry);
    let store = store::Store::new(host.db.clone(), config.max_parking);
    host.relay(EventContext::ParkingLot);
    host.follow(
        policy::Allocate::subscription(),
        Arc::new(policy::Allocate {
            store: store.clone(),
        }),
    );
    host.follow(
        policy::Vacate::subscription(),
        Arc::new(policy::Vacate {
            store: store.clone(),
            delivery: Arc::new(delivery),
        }),
    );
    let quota = QuotaMetrics::default();
    quota.register(&mut host.registry);
    let (sampled, calendar) = (store.clone(), config.calendar.calendar());
    host.spawn(move |shutdown| quota.sample(sampled, calendar, shutdown));
    let api = api::Api {
        store,
        calendar: config.calendar.calendar(),
    };
    Ok(host.serve(ParkingLotServiceServer::new(api)).await?)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct DateLabels {
    date: String,
}

/// The quota of every day from today on, as Prometheus sees it.
#[derive(Clone, Debug, Default)]
struct QuotaMetrics {
    capacity: prometheus_client::metrics::family::Family<
        DateLabels,
        prometheus_client::metrics::gauge::Gauge,
    >,
    occupied: prometheus_client::metrics::family::Family<
        DateLabels,
        prometheus_client::metrics::gauge::Gauge,
    >,
}

impl QuotaMetrics {
    fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "parking_quota_capacity",
            "Spaces a day offers (today and later days with applications or a set capacity)",
            self.capacity.clone(),
        );
        registry.register(
            "parking_quota_occupied",
            "Spaces taken on a day",
            self.occupied.clone(),
        );
    }

    /// Reads the days from the database every 5 s; past days drop out.
    async fn sample(
        self,
        store: store::Store,
        calendar: parking_common::calendar::Calendar,
        shutdown: CancellationToken,
    ) {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            let today = parking_common::calendar::format_day(calendar.today());
            match store.days_from(&today).await {
                Ok(days) => {
                    self.capacity.clear();
                    self.occupied.clear();
                    for (date, day) in days {
                        let labels = DateLabels { date };
                        self.capacity
                            .get_or_create(&labels)
                            .set(i64::from(day.capacity));
                        self.occupied
                            .get_or_create(&labels)
                            .set(i64::from(day.occupied));
                    }
                }
                Err(error) => tracing::debug!(%error, "quota not sampled"),
            }
        }
    }
}
