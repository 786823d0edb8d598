//! Serving one tonic service the way every parking-mesh server does: with
//! `grpc.health.v1` (Kubernetes gRPC probes), server reflection v1 and v1alpha (grpcurl
//! with no .proto at hand), and graceful shutdown on the service's cancellation token.

use http::{Request, Response};
use std::convert::Infallible;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::Status;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// Serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("reflection set-up failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Binds `addr` now, so a caller learns of a taken port before anything else starts.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// A generated tonic server (e.g. `TicketReservationServiceServer<Api>`), as a server's
/// routes take it.
pub trait GrpcService:
    tower::Service<
        Request<Body>,
        Response = Response<Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + NamedService
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> GrpcService for S where
    S: tower::Service<
            Request<Body>,
            Response = Response<Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// Health and reflection (v1 and v1alpha, every parking.v1 service): the routes every
/// server starts from. The reporter says SERVING for the whole server.
pub async fn base_routes() -> Result<(HealthReporter, Routes), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(parking_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let routes = Routes::new(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);
    Ok((health, routes))
}

/// Serves one service with health and reflection until `shutdown`, then drains in-flight
/// calls while probes see NOT_SERVING. Every call but the health checks and reflection
/// needs a token `verifier` accepts, and with `tls`, every connection a client certificate
/// of its CA. HTTP/1.1 is accepted too (gRPC-Web).
pub async fn serve<S: GrpcService>(
    listener: TcpListener,
    service: S,
    metrics: crate::observe::RpcMetrics,
    verifier: std::sync::Arc<crate::auth::Verifier>,
    tls: Option<&crate::tls::Tls>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let (health, routes) = base_routes().await?;
    let routes = routes.add_service(service);
    let auth = crate::auth::AuthLayer(verifier);
    let names = [S::NAME];
    for name in &names {
        health
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    tracing::info!(services = ?names, addr = ?listener.local_addr().ok(), "gRPC server listening");
    // tonic ignores its own tcp_nodelay for an incoming stream we hand it. Without it a
    // stream's next message (WatchReservationStatus) waits for the peer's delayed ACK of
    // the previous one: 40 ms on Linux (Nagle), measured as the view lag's floor.
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |accepted| {
            accepted.inspect(|stream| {
                // A peer gone already: its connection fails on its own.
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::debug!(%error, "TCP_NODELAY not set");
                }
            })
        },
    );
    let drained = {
        let names = names.to_vec();
        async move {
            shutdown.cancelled().await;
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
            for name in names {
                health
                    .set_service_status(name, ServingStatus::NotServing)
                    .await;
            }
        }
    };
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls.server())?;
    }
    server
        .accept_http1(true)
        .layer(crate::observe::ObserveLayer { metrics })
        .layer(auth)
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, drained)
        .await?;
    tracing::info!(services = ?names, "gRPC server stopped");
    Ok(())
}

/// An internal error for the caller, with the detail in the log only.
pub fn internal(context: &str, error: impl std::fmt::Display) -> Status {
    tracing::error!(%error, context, "internal error");
    Status::internal(format!("{context} failed; the incident was logged"))
}

/// A database error as a status: unavailable when the database is unreachable.
pub fn db_status(context: &str, error: sea_orm::DbErr) -> Status {
    match error {
        sea_orm::DbErr::ConnectionAcquire(_) | sea_orm::DbErr::Conn(_) => {
            tracing::warn!(%error, context, "database unavailable");
            Status::unavailable(format!(
                "{context}: the database is unavailable, retry shortly"
            ))
        }
        other => internal(context, other),
    }
}

/// Checks that an id sent by a caller is positive.
pub fn positive_id(field: &str, value: i64) -> Result<i64, Status> {
    if value > 0 {
        Ok(value)
    } else {
        Err(Status::invalid_argument(format!(
            "{field} must be a positive number (got {value})"
        )))
    }
}

/// A client interceptor that sends an access token with every call (`None`: no token).
#[derive(Clone, Default)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    /// `None` also for a token that cannot be a header value.
    pub fn new(token: Option<&str>) -> Self {
        Bearer(token.and_then(|t| format!("Bearer {t}").parse().ok()))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}
