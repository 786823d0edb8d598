//! Policies of TicketReservation: settle the saga on ParkingLot's answer
//! (Occupied -> CONFIRMED, FullyOccupied -> REJECTED).

use crate::domain::Settlement;
use crate::store::Store;
use parking_common::consumer::{Event, EventHandler, HandleError, Subscription};
use parking_common::events::EventContext;
use parking_common::pb::event_envelope::Payload;

/// Durable name of the settle policy on the PARKINGLOT stream.
pub const SETTLE: &str = "reservation-settle";

/// Follows every ParkingLot event and settles on Occupied / FullyOccupied.
pub struct Settle {
    pub store: Store,
}

impl Settle {
    pub fn subscription() -> Subscription {
        Subscription {
            context: EventContext::ParkingLot,
            durable: SETTLE.to_owned(),
            // Occupied and FullyOccupied share the stream with Vacated; one durable keeps
            // them in publish order (nats-server 2.9 allows one filter subject).
            event_name: None,
        }
    }
}

#[async_trait::async_trait]
impl EventHandler for Settle {
    async fn handle(&self, event: &Event) -> Result<(), HandleError> {
        let (id, answer) = match &event.payload {
            Payload::Occupied(e) => (e.reservation_id, Settlement::Occupied),
            Payload::FullyOccupied(e) => (e.reservation_id, Settlement::FullyOccupied),
            _ => return Ok(()),
        };
        self.store
            .settle(SETTLE, &event.envelope.event_id, id, answer)
            .await
    }
}
