//! The gateway, the single entry point of parking-mesh on port 8080: every `parking.v1`
//! gRPC call (or gRPC-Web call over HTTP/1.1, as browsers make them) is routed by its
//! service name to the backend that serves it, streaming included; the gateway answers
//! `grpc.health.v1` and reflection for all of them itself.
//!
//! Every API call passes the [`guard`] first: rate limits per client address and per
//! token subject and an access token from [`oauth`]'s endpoint. The token goes on with
//! the call: each backend checks it again and enforces each role's rights itself.
//!
//! - [`edge`]: the server loop and its limits: connections, header reads, HTTP/2
//!   streams and resets, calls in flight (shedding the excess), per-call deadlines.
//! - [`proxy`]: forwarding a call to its backend.
//! - [`guard`]: limits and the token check.
//! - [`limit`]: token-bucket rate limiters.
//! - [`tokens`]: signing and checking JWTs; the JWK set; key rotation.
//! - [`users`]: the accounts file (argon2id hashes).
//! - [`watch`]: reading the accounts and key files again when they change.
//! - [`oauth`]: `POST /oauth2/token` and `/.well-known/jwks.json`.
//! - [`rest`]: REST/JSON from the protos' google.api.http annotations.
//! - [`openapi`]: `GET /openapi.json`, the REST routes' OpenAPI document, written from
//!   the same route table.
//! - [`status`]: `GET /status`, the health of every backend and the event pipeline's
//!   backlog.
#![forbid(unsafe_code)]

pub mod edge;
pub mod guard;
pub mod limit;
pub mod oauth;
pub mod openapi;
pub mod proxy;
pub mod rest;
pub mod status;
pub mod tokens;
pub mod users;
pub mod watch;

use parking_common::config::OptionalAddr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
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
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where Prometheus metrics are served (`/metrics`); "off" to serve none.
    #[arg(long, env = "METRICS_LISTEN", default_value = "127.0.0.1:9450")]
    pub metrics_listen: OptionalAddr,
    /// Istio DestinationRule / VirtualService YAML files for the backends' hosts
    /// (`reservation`, `parking-lot`, `delivery`, `status`), comma-separated; empty:
    /// Istio's defaults. Every call goes through these policies (a stream's
    /// timeouts bound the time to its first answer); re-read on change.
    #[arg(long, env = "MESH_CONFIG", default_value = "")]
    pub mesh_config: String,
    /// TicketReservationService backend (a comma list of endpoints may carry subset
    /// labels, as parking-lot's DELIVERY_URL).
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
    /// CommunityParkingService backend (the community team's Python service; when it is
    /// not running, its calls are UNAVAILABLE and nothing else changes).
    #[arg(long, env = "COMMUNITY_URL", default_value = "http://127.0.0.1:50055")]
    pub community_url: String,
    /// Calls per second allowed per client address (0: no limit).
    #[arg(long, env = "RATE_LIMIT_PER_ADDR", default_value_t = 200)]
    pub rate_limit_per_addr: u32,
    /// Burst allowed per client address above the steady rate.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 400)]
    pub rate_limit_burst: u32,
    /// Calls per second allowed per token subject (user or client; 0: no limit).
    #[arg(long, env = "RATE_LIMIT_PER_SUBJECT", default_value_t = 50)]
    pub rate_limit_per_subject: u32,
    /// Burst allowed per token subject above the steady rate.
    #[arg(long, env = "RATE_LIMIT_SUBJECT_BURST", default_value_t = 100)]
    pub rate_limit_subject_burst: u32,
    /// Proxies in front of the gateway that append to X-Forwarded-For (ingress, sidecar):
    /// the per-address limit then keys on the address the outermost one saw.
    #[arg(long, env = "TRUSTED_PROXY_HOPS", default_value_t = 0)]
    pub trusted_proxy_hops: usize,
    /// Users and clients who may get tokens (YAML, argon2id hashes; `parkingctl users add`
    /// writes it). Missing: nobody can log in. Re-read when it changes.
    #[arg(long, env = "ACCOUNTS_FILE", default_value = "var/accounts.yaml")]
    pub accounts_file: PathBuf,
    /// Ed25519 private keys (PKCS#8 PEM, one or more in the file): the first signs tokens,
    /// all are published and accepted (key rotation); re-read when it changes. Unset: a
    /// key made at start, so tokens end with the process and replicas do not share them.
    #[arg(long, env = "TOKEN_KEY_FILE")]
    pub token_key_file: Option<PathBuf>,
    /// The tokens' issuer (`iss`).
    #[arg(long, env = "TOKEN_ISSUER", default_value = "parking-mesh")]
    pub token_issuer: String,
    /// The tokens' audience (`aud`).
    #[arg(long, env = "TOKEN_AUDIENCE", default_value = "parking-mesh")]
    pub token_audience: String,
    /// How long a token lives, in seconds.
    #[arg(long, env = "TOKEN_LIFETIME_SECS", default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub token_lifetime_secs: u64,
    /// Largest REST/JSON request body, in bytes (larger: 413).
    #[arg(long, env = "REST_MAX_BODY", default_value_t = 64 * 1024)]
    pub rest_max_body: usize,
    /// Browser origins allowed to call (gRPC-Web, REST): a comma list, "*" for any, or
    /// empty for none. Tokens travel in headers, never cookies, so "*" is no CSRF risk.
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", default_value = "*")]
    pub cors_allowed_origins: String,
    /// NATS server with JetStream (read by `/status` for the event pipeline's backlog).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Prefix of the services' streams (`<NS>_RESERVATION`, ...), as they are given it.
    #[arg(long, env = "EVENT_NAMESPACE", default_value = "parking", value_parser = parking_common::config::parse_namespace)]
    pub event_namespace: String,
    /// `/status` is degraded while a durable consumer has more events than this pending.
    #[arg(long, env = "STATUS_BACKLOG_DEGRADED", default_value_t = 1000)]
    pub status_backlog_degraded: u64,
    /// `/status` is degraded while a durable consumer's oldest waiting event is older than
    /// this many seconds.
    #[arg(long, env = "STATUS_BACKLOG_MAX_AGE_SECS", default_value_t = 5.0, value_parser = parse_age)]
    pub status_backlog_max_age_secs: f64,
    /// Limits of the edge: connections, header reads, streams, calls in flight, deadlines.
    #[command(flatten)]
    pub edge: edge::Edge,
    /// Optional mTLS to the backends (their URLs then `https://`): the gateway's
    /// certificate and the CA it trusts. Its own port faces callers and stays as it is.
    #[command(flatten)]
    pub tls: parking_common::config::TlsArgs,
}

fn parse_age(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(secs) if secs.is_finite() && (0.0..=86_400.0).contains(&secs) => Ok(secs),
        _ => Err("seconds from 0 to 86400".to_owned()),
    }
}

/// The gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("backend URL {url:?}: {message}")]
    Backend { url: String, message: String },
    #[error(transparent)]
    Mesh(#[from] mesh::istio::ConfigError),
    #[error(transparent)]
    Serve(#[from] parking_common::grpc::ServeError),
    #[error(transparent)]
    Accounts(#[from] users::Error),
    #[error(transparent)]
    Tokens(#[from] tokens::Error),
    #[error("REST routes: {0}")]
    Rest(#[from] rest::Error),
    #[error("CORS_ALLOWED_ORIGINS: {0:?} is not an origin")]
    Origin(String),
    #[error("NATS_URL: {0}")]
    Nats(String),
    #[error(transparent)]
    Tls(#[from] parking_common::tls::TlsError),
}

/// A channel without the mesh's policies to a backend's first endpoint (the health checks
/// of `/status`), with the same TLS as the mesh.
fn channel(
    config: &mesh::MeshConfig,
    url: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Result<tonic::transport::Channel, Error> {
    let first = config
        .endpoints
        .first()
        .map(|e| e.uri.clone())
        .unwrap_or_default();
    let backend = |e: tonic::transport::Error| Error::Backend {
        url: url.to_owned(),
        message: e.to_string(),
    };
    let mut endpoint = Endpoint::from_shared(first)
        .map_err(backend)?
        .connect_timeout(Duration::from_secs(2));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(backend)?;
    }
    Ok(endpoint.connect_lazy())
}

/// CORS for browsers on other origins: gRPC-Web's and the bearer token's headers in,
/// the gRPC status headers out.
fn cors(origins: &str) -> Result<tower_http::cors::CorsLayer, Error> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origins = origins.trim();
    let allow = if origins == "*" {
        AllowOrigin::any()
    } else {
        let list = origins
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(|o| http::HeaderValue::from_str(o).map_err(|_| Error::Origin(o.to_owned())))
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(list)
    };
    let header = http::HeaderName::from_static;
    Ok(CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([
            http::Method::GET,
            http::Method::POST,
            http::Method::PUT,
            http::Method::PATCH,
            http::Method::DELETE,
            http::Method::OPTIONS,
        ])
        .allow_headers([
            http::header::AUTHORIZATION,
            http::header::CONTENT_TYPE,
            header("x-grpc-web"),
            header("x-user-agent"),
            header("grpc-timeout"),
        ])
        .expose_headers([
            header("grpc-status"),
            header("grpc-message"),
            header("grpc-status-details-bin"),
            http::header::RETRY_AFTER,
        ])
        .max_age(Duration::from_secs(600)))
}

/// Runs the gateway until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let shown = Config {
        nats_url: parking_common::config::redact_url(&config.nats_url),
        ..config.clone()
    };
    tracing::info!(config = ?shown, "starting gateway");
    // (route, backend, URL, part of the core: see status::Backends).
    let backends = [
        (
            "/parking.v1.TicketReservationService/{*method}",
            "reservation",
            &config.reservation_url,
            true,
        ),
        (
            "/parking.v1.ParkingLotService/{*method}",
            "parking-lot",
            &config.parking_lot_url,
            true,
        ),
        (
            "/parking.v1.TicketDeliveryService/{*method}",
            "delivery",
            &config.delivery_url,
            true,
        ),
        (
            "/parking.v1.ReservationStatusService/{*method}",
            "status",
            &config.status_url,
            true,
        ),
        (
            "/parking.v1.CommunityParkingService/{*method}",
            "community",
            &config.community_url,
            false,
        ),
    ];
    let lifetime = Duration::from_secs(config.token_lifetime_secs);
    let tokens = Arc::new(match &config.token_key_file {
        Some(path) => tokens::Tokens::from_pem_file(
            path,
            &config.token_issuer,
            &config.token_audience,
            lifetime,
        )?,
        None => {
            tracing::warn!(
                "TOKEN_KEY_FILE unset: signing with a key made now; tokens end with this process"
            );
            tokens::Tokens::ephemeral(&config.token_issuer, &config.token_audience, lifetime)?
        }
    });
    let rotated = tokens.clone();
    let accounts = users::AccountsFile::open(&config.accounts_file)?;
    let guard = Arc::new(guard::Guard {
        tokens: tokens.clone(),
        by_addr: limit::Config::new(config.rate_limit_per_addr, config.rate_limit_burst)
            .map(limit::Limiter::new),
        by_subject: limit::Config::new(
            config.rate_limit_per_subject,
            config.rate_limit_subject_burst,
        )
        .map(limit::Limiter::new),
        trusted_hops: config.trusted_proxy_hops,
    });
    let tls = parking_common::tls::Tls::load(&config.tls)?;
    let (health, routes) = parking_common::grpc::base_routes().await?;
    let mut router = routes.into_axum_router();
    let mut checked = Vec::new();
    let mut optional = Vec::new();
    let mut by_service = std::collections::HashMap::new();
    let streams = rest::streaming_paths(parking_proto::FILE_DESCRIPTOR_SET)?;
    let mesh_metrics = mesh::metrics::MeshMetrics::default();
    let rpc_metrics = parking_common::observe::RpcMetrics::default();
    let edge_metrics = edge::Metrics::default();
    let admission = edge::Admission::new(&config.edge, streams.clone(), edge_metrics.clone());
    // gRPC-Web (browsers, HTTP/1.1) is translated per route, so plain HTTP routes such as
    // /status stay plain.
    let guarded = |forward: proxy::Forward| {
        tonic_web::GrpcWebLayer::new().layer(guard::GuardLayer(guard.clone()).layer(forward))
    };
    for (path, backend, url, core) in backends {
        let mesh_config = mesh::MeshConfig::from_lists(backend, &config.mesh_config, url)
            .map_err(|message| Error::Backend {
                url: url.clone(),
                message,
            })?
            .with_tls(tls.as_ref().map(|t| t.mesh_client()));
        let probe = channel(&mesh_config, url, tls.as_ref().map(|t| t.client()))?;
        let client = mesh::MeshClient::load(&mesh_config, &mesh_metrics)?;
        client.reload_on_change(mesh_config, mesh_metrics.clone(), Duration::from_secs(1));
        if core {
            checked.push((backend, probe));
        } else {
            optional.push((backend, probe));
        }
        let service = path
            .trim_start_matches('/')
            .trim_end_matches("/{*method}")
            .to_owned();
        for stream in streams
            .iter()
            .filter(|s| s.starts_with(&format!("/{service}/")))
        {
            let forward = proxy::Forward {
                backend,
                mesh: client.clone(),
                streaming: true,
            };
            router = router.route_service(stream, guarded(forward));
        }
        by_service.insert(service, client.clone());
        let forward = proxy::Forward {
            backend,
            mesh: client,
            streaming: false,
        };
        router = router.route_service(path, guarded(forward));
    }
    let backends = status::Backends {
        core: checked,
        optional,
    };
    // The client connects (and reconnects) in the background: /status says degraded
    // while NATS is away, the gateway itself never waits for it.
    let js = parking_common::nats::connect(&config.nats_url, "gateway")
        .await
        .map_err(|e| Error::Nats(e.to_string()))?;
    let pipeline = Arc::new(status::PipelineWatch::new(
        js,
        &config.event_namespace,
        status::Thresholds {
            pending: config.status_backlog_degraded,
            oldest_age: Duration::from_secs_f64(config.status_backlog_max_age_secs),
        },
    ));
    let rest = Arc::new(rest::Rest::new(
        parking_proto::FILE_DESCRIPTOR_SET,
        &by_service,
        guard.clone(),
        config.rest_max_body,
    )?);
    tracing::info!(routes = ?rest.describe(), "REST/JSON routes");
    // Open, like reflection and the JWK set: it is the public contract.
    let openapi = bytes::Bytes::from(openapi::document(&rest).to_string());
    let endpoint = Arc::new(oauth::TokenEndpoint::new(
        tokens.clone(),
        accounts.clone(),
        guard.clone(),
    ));
    router = router
        .route(
            "/status",
            axum::routing::get(move || pipeline.clone().report(backends.clone())),
        )
        .route(
            "/oauth2/token",
            axum::routing::any(move |request| endpoint.clone().token(request)),
        )
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                std::future::ready(rest::json_body(http::StatusCode::OK, openapi.clone()))
            }),
        )
        .route(
            "/.well-known/jwks.json",
            axum::routing::get(move || std::future::ready(oauth::jwks(&tokens))),
        )
        // Everything else: a REST route, or a JSON 404 (gRPC callers get UNIMPLEMENTED).
        .fallback(move |request| rest.clone().handle(request))
        .layer(cors(&config.cors_allowed_origins)?);
    let listener = parking_common::grpc::bind(config.listen).await?;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(guard.shrink_limiters(shutdown.clone()));
    tasks.spawn(accounts.watch(Duration::from_secs(2), shutdown.clone()));
    tasks.spawn(rotated.watch(Duration::from_secs(2), shutdown.clone()));
    if let Some(addr) = config.metrics_listen.0 {
        let metrics = parking_common::grpc::bind(addr).await?;
        let mut registry = prometheus_client::registry::Registry::default();
        mesh_metrics.register(&mut registry);
        rpc_metrics.register(&mut registry);
        edge_metrics.register(&mut registry);
        let registry = Arc::new(registry);
        tasks.spawn(parking_common::metrics::serve(
            metrics,
            registry,
            shutdown.clone(),
        ));
    }
    let service = tower::ServiceBuilder::new()
        .layer(parking_common::observe::ObserveLayer {
            metrics: rpc_metrics,
        })
        .layer(admission)
        .service(tonic::service::Routes::from(router).prepare());
    edge::serve(
        listener,
        service,
        health,
        &config.edge,
        edge_metrics,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}
