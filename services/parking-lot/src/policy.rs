//! Policies of ParkingLot:
//! - allocate: TicketReserved -> Occupied (with a space) or FullyOccupied;
//! - vacate: TicketReservationCanceled -> CancelDelivery (sync) -> Vacated. If delivery
//!   fails, the space stays taken and the event is redelivered with back-off.

use crate::delivery::DeliveryCanceller;
use crate::domain::{on_cancel, OnCancel};
use crate::store::Store;
use parking_common::consumer::{
    backoff, event_day, Event, EventHandler, HandleError, Subscription,
};
use parking_common::events::EventContext;
use parking_common::pb::event_envelope::Payload;
use std::sync::Arc;

pub const ALLOCATE: &str = "parking-lot-allocate";
pub const VACATE: &str = "parking-lot-vacate";

pub struct Allocate {
    pub store: Store,
}

impl Allocate {
    pub fn subscription() -> Subscription {
        Subscription {
            context: EventContext::Reservation,
            durable: ALLOCATE.to_owned(),
            event_name: Some("TicketReserved"),
        }
    }
}

#[async_trait::async_trait]
impl EventHandler for Allocate {
    async fn handle(&self, event: &Event) -> Result<(), HandleError> {
        let Payload::TicketReserved(e) = &event.payload else {
            return Ok(());
        };
        self.store
            .allocate(
                ALLOCATE,
                &event.envelope.event_id,
                e.reservation_id,
                e.member_id,
                &e.reservation_date,
            )
            .await
    }
}

pub struct Vacate {
    pub store: Store,
    pub delivery: Arc<dyn DeliveryCanceller>,
}

impl Vacate {
    pub fn subscription() -> Subscription {
        Subscription {
            context: EventContext::Reservation,
            durable: VACATE.to_owned(),
            event_name: Some("TicketReservationCanceled"),
        }
    }
}

#[async_trait::async_trait]
impl EventHandler for Vacate {
    async fn handle(&self, event: &Event) -> Result<(), HandleError> {
        let Payload::TicketReservationCanceled(e) = &event.payload else {
            return Ok(());
        };
        let allocation = self.store.allocation(e.reservation_id).await?;
        match on_cancel(allocation.map(|a| a.state)) {
            OnCancel::Nothing => Ok(()),
            OnCancel::RecordEarlyCancel => {
                let date = event_day(&e.reservation_date)?;
                self.store
                    .record_early_cancel(
                        VACATE,
                        &event.envelope.event_id,
                        e.reservation_id,
                        e.member_id,
                        &date,
                    )
                    .await
            }
            OnCancel::CancelDeliveryThenVacate => {
                // The space is freed only once delivery confirmed; until then it stays
                // taken and the cancellation comes back later ("not now"): with the circuit
                // open, no sooner than delivery's endpoint is due back.
                if let Err(error) = self.delivery.cancel_delivery(e.reservation_id).await {
                    let delay = backoff(event.delivered).max(error.retry_after.unwrap_or_default());
                    if error.fail_fast {
                        tracing::info!(reservation_id = e.reservation_id, ?delay, %error, "delivery circuit open; cancellation deferred");
                    }
                    return Err(HandleError::Later {
                        delay,
                        reason: error.to_string(),
                    });
                }
                self.store
                    .vacate(VACATE, &event.envelope.event_id, e.reservation_id)
                    .await
            }
        }
    }
}
