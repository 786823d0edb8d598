//! The outbound port to TicketDelivery: the cancel saga's synchronous call. The tonic
//! adapter puts a deadline on every call; the mesh issue wraps it in Istio-shaped policy.

use parking_common::pb::ticket_delivery_service_client::TicketDeliveryServiceClient;
use parking_common::pb::{CancelDeliveryRequest, DeliveryState};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// TicketDelivery did not confirm the cancellation.
#[derive(Debug, thiserror::Error)]
#[error("CancelDelivery failed: {code:?}: {message}")]
pub struct CancelDeliveryError {
    pub code: tonic::Code,
    pub message: String,
}

/// Cancels the delivery of a reservation's ticket (idempotent on the other side).
#[async_trait::async_trait]
pub trait DeliveryCanceller: Send + Sync + 'static {
    async fn cancel_delivery(&self, reservation_id: i64) -> Result<(), CancelDeliveryError>;
}

/// TicketDelivery over gRPC.
#[derive(Clone)]
pub struct GrpcDelivery {
    client: TicketDeliveryServiceClient<Channel>,
    /// Deadline of one call (sent as grpc-timeout, enforced here too).
    timeout: Duration,
}

impl GrpcDelivery {
    /// A lazily connecting client: parking-lot starts while delivery is down.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, tonic::transport::Error> {
        let channel = Endpoint::from_shared(url.to_owned())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(timeout)
            .connect_lazy();
        Ok(Self {
            client: TicketDeliveryServiceClient::new(channel),
            timeout,
        })
    }
}

#[async_trait::async_trait]
impl DeliveryCanceller for GrpcDelivery {
    async fn cancel_delivery(&self, reservation_id: i64) -> Result<(), CancelDeliveryError> {
        let mut request = tonic::Request::new(CancelDeliveryRequest { reservation_id });
        request.set_timeout(self.timeout);
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
            }),
            Ok(Err(status)) => Err(CancelDeliveryError {
                code: status.code(),
                message: status.message().to_owned(),
            }),
            Err(_) => Err(CancelDeliveryError {
                code: tonic::Code::DeadlineExceeded,
                message: format!("no answer within {:?}", self.timeout),
            }),
        }
    }
}
