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
use tonic::Status;

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

/// Serves `service` with health and reflection until `shutdown`, then drains in-flight calls.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    shutdown: CancellationToken,
) -> Result<(), ServeError>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    health
        .set_service_status(S::NAME, tonic_health::ServingStatus::Serving)
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(parking_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(parking_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let local = listener.local_addr().ok();
    tracing::info!(service = S::NAME, addr = ?local, "gRPC server listening");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let drained = {
        let health = health.clone();
        async move {
            shutdown.cancelled().await;
            // Probes see NOT_SERVING while in-flight calls drain.
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            health
                .set_service_status(S::NAME, tonic_health::ServingStatus::NotServing)
                .await;
        }
    };
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, drained)
        .await?;
    tracing::info!(service = S::NAME, "gRPC server stopped");
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
