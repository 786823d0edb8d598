//! The gateway, the single entry point of parking-mesh on port 8080: every `parking.v1`
//! gRPC call (or gRPC-Web call over HTTP/1.1, as browsers make them) is routed by its
//! service name to the backend that serves it, streaming included; the gateway answers
//! `grpc.health.v1` and reflection for all of them itself.
//!
//! - [`proxy`]: forwarding a call to its backend.
//! - [`limit`]: rate limiting per client address.
//! - [`status`]: `GET /status`, the health of every backend.
#![forbid(unsafe_code)]

pub mod limit;
pub mod proxy;
pub mod status;

use parking_common::config::OptionalAddr;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tower::Layer;

/// Configuration of the gateway.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "gateway",
    version,
    about = "parking-mesh gateway: one entry point for every parking.v1 service"
)]
pub struct Config {
    /// Listen address (gRPC over HTTP/2).
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Where Prometheus metrics are served (`/metrics`); "off" to serve none.
    #[arg(long, env = "METRICS_LISTEN", default_value = "0.0.0.0:9450")]
    pub metrics_listen: OptionalAddr,
    /// TicketReservationService backend.
    #[arg(
        long,
        env = "RESERVATION_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub reservation_url: String,
    /// ParkingLotService backend.
    #[arg(
        long,
        env = "PARKING_LOT_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    pub parking_lot_url: String,
    /// TicketDeliveryService backend.
    #[arg(long, env = "DELIVERY_URL", default_value = "http://127.0.0.1:50053")]
    pub delivery_url: String,
    /// ReservationStatusService backend.
    #[arg(long, env = "STATUS_URL", default_value = "http://127.0.0.1:50054")]
    pub status_url: String,
    /// Calls per second allowed per client address (0: no limit).
    #[arg(long, env = "RATE_LIMIT_PER_ADDR", default_value_t = 200)]
    pub rate_limit_per_addr: u32,
    /// Burst allowed per client address above the steady rate.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 400)]
    pub rate_limit_burst: u32,
}

/// The gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("backend URL {url:?}: {source}")]
    Backend {
        url: String,
        source: tonic::transport::Error,
    },
    #[error(transparent)]
    Serve(#[from] parking_common::grpc::ServeError),
}

fn channel(url: &str) -> Result<tonic::transport::Channel, Error> {
    Ok(Endpoint::from_shared(url.to_owned())
        .map_err(|source| Error::Backend {
            url: url.to_owned(),
            source,
        })?
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy())
}

/// Runs the gateway until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    tracing::info!(?config, "starting gateway");
    let backends = [
        (
            "/parking.v1.TicketReservationService/{*method}",
            "reservation",
            &config.reservation_url,
        ),
        (
            "/parking.v1.ParkingLotService/{*method}",
            "parking-lot",
            &config.parking_lot_url,
        ),
        (
            "/parking.v1.TicketDeliveryService/{*method}",
            "delivery",
            &config.delivery_url,
        ),
        (
            "/parking.v1.ReservationStatusService/{*method}",
            "status",
            &config.status_url,
        ),
    ];
    let (health, routes) = parking_common::grpc::base_routes().await?;
    let mut router = routes.into_axum_router();
    let limit = std::num::NonZeroU32::new(config.rate_limit_per_addr).map(|per_second| {
        limit::RateLimitLayer::new(limit::Config {
            per_second,
            burst: std::num::NonZeroU32::new(config.rate_limit_burst).unwrap_or(per_second),
        })
    });
    let mut checked = Vec::new();
    for (path, backend, url) in backends {
        let forward = proxy::Forward {
            backend,
            channel: channel(url)?,
        };
        checked.push((backend, forward.channel.clone()));
        // gRPC-Web (browsers, HTTP/1.1) is translated per route, so plain HTTP routes such
        // as /status stay plain; one limiter for every backend: the limit is per client.
        let web = tonic_web::GrpcWebLayer::new();
        router = match &limit {
            Some(limit) => router.route_service(path, web.layer(limit.layer(forward))),
            None => router.route_service(path, web.layer(forward)),
        };
    }
    let backends = status::Backends(checked);
    router = router.route(
        "/status",
        axum::routing::get(move || status::report(backends.clone())),
    );
    let listener = parking_common::grpc::bind(config.listen).await?;
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(addr) = config.metrics_listen.0 {
        let metrics = parking_common::grpc::bind(addr).await?;
        // The gateway's own series come with the observability issue.
        let registry = std::sync::Arc::new(prometheus_client::registry::Registry::default());
        tasks.spawn(parking_common::metrics::serve(
            metrics,
            registry,
            shutdown.clone(),
        ));
    }
    let served = parking_common::grpc::serve_routes(
        listener,
        tonic::service::Routes::from(router),
        health,
        &[],
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    served.map_err(Into::into)
}
