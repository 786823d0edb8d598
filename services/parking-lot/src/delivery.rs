//! The outbound port to TicketDelivery: the cancel saga's synchronous call, made through
//! the in-process mesh (Istio's DestinationRule / VirtualService for host `delivery`:
//! timeout, retries, pool limits, outlier detection) with a deadline of its own on top.

use mesh::error::{find, is_fail_fast, CircuitOpen};
use mesh::MeshClient;
use parking_common::auth::ServiceCredentials;
use parking_common::pb::ticket_delivery_service_client::TicketDeliveryServiceClient;
use parking_common::pb::{CancelDeliveryRequest, DeliveryState};
use parking_common::propagation::Inject;
use std::sync::Arc;
use std::time::Duration;

/// TicketDelivery did not confirm the cancellation.
#[derive(Debug, thiserror::Error)]
#[error("CancelDelivery failed: {code:?}: {message}")]
pub struct CancelDeliveryError {
    pub code: tonic::Code,
    pub message: String,
    /// The mesh answered without calling delivery (circuit open or pool overflow).
    pub fail_fast: bool,
    /// With the circuit open: when the first delivery endpoint comes back.
    pub retry_after: Option<Duration>,
}

impl CancelDeliveryError {
    fn from_status(status: &tonic::Status) -> Self {
        Self {
            code: status.code(),
            message: status.message().to_owned(),
            fail_fast: is_fail_fast(status),
            retry_after: find::<CircuitOpen>(status).map(|c| c.retry_after),
        }
    }
}

/// Cancels the delivery of a reservation's ticket (idempotent on the other side).
#[async_trait::async_trait]
pub trait DeliveryCanceller: Send + Sync + 'static {
    async fn cancel_delivery(&self, reservation_id: i64) -> Result<(), CancelDeliveryError>;
}

/// TicketDelivery over gRPC through the mesh, as parking-lot's own service identity.
#[derive(Clone)]
pub struct GrpcDelivery {
    client: TicketDeliveryServiceClient<Inject<MeshClient>>,
    /// parking-lot's token, sent with every call (delivery verifies it).
    credentials: Arc<ServiceCredentials>,
    /// Deadline of one call, retries included (sent as grpc-timeout, enforced here too).
    timeout: Duration,
}

impl GrpcDelivery {
    pub fn new(mesh: MeshClient, credentials: Arc<ServiceCredentials>, timeout: Duration) -> Self {
        Self {
            client: TicketDeliveryServiceClient::new(Inject(mesh)),
            credentials,
            timeout,
        }
    }
}

#[async_trait::async_trait]
impl DeliveryCanceller for GrpcDelivery {
    async fn cancel_delivery(&self, reservation_id: i64) -> Result<(), CancelDeliveryError> {
        let authorization = match self.credentials.authorization().await {
            Ok(value) => value,
            // No token, no call: the cancellation waits (redelivered with back-off).
            Err(error) => {
                return Err(CancelDeliveryError {
                    code: tonic::Code::Unauthenticated,
                    message: format!("no service token for CancelDelivery: {error}"),
                    fail_fast: true,
                    retry_after: None,
                })
            }
        };
        let mut request = tonic::Request::new(CancelDeliveryRequest { reservation_id });
        request.set_timeout(self.timeout);
        if let Ok(value) = tonic::metadata::MetadataValue::try_from(authorization.as_bytes()) {
            request.metadata_mut().insert("authorization", value);
        }
        let mut client = self.client.clone();
        match tokio::time::timeout(self.timeout, client.cancel_delivery(request)).await {
            // Only a delivery reported CANCELED lets the space go.
            Ok(Ok(response)) if response.get_ref().state() == DeliveryState::DeliveryCanceled => {
                Ok(())
            }
            Ok(Ok(response)) => Err(CancelDeliveryError {
                code: tonic::Code::FailedPrecondition,
                message: format!(
                    "delivery answered {:?}, not cancelled",
                    response.get_ref().state()
                ),
                fail_fast: false,
                retry_after: None,
            }),
            Ok(Err(status)) => Err(CancelDeliveryError::from_status(&status)),
            Err(_) => Err(CancelDeliveryError {
                code: tonic::Code::DeadlineExceeded,
                message: format!("no answer within {:?}", self.timeout),
                fail_fast: false,
                retry_after: None,
            }),
        }
    }
}
