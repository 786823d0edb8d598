//! Policies of TicketReservation: settle the saga on ParkingLot's answer
//! (Occupied -> CONFIRMED, FullyOccupied -> REJECTED).

use crate::domain::Settlement;
use crate::store::Store;
use parking_common::consumer::{Event, HandleError, Policy, Subscription};
use parking_common::events::EventContext;
use parking_common::pb::event_envelope::Payload;
use parking_common::unit::UnitOfWork;

/// Durable name of the settle policy on the PARKINGLOT stream.
pub const SETTLE: &str = "reservation-settle";

/// Follows every ParkingLot event and settles on Occupied / FullyOccupied.
pub struct Settle;

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
impl Policy for Settle {
    async fn apply(&self, work: &mut UnitOfWork, events: &[&Event]) -> Result<(), HandleError> {
        let answers: Vec<(i64, Settlement)> = events
            .iter()
            .filter_map(|event| match &event.payload {
                Payload::Occupied(e) => Some((e.reservation_id, Settlement::Occupied)),
                Payload::FullyOccupied(e) => Some((e.reservation_id, Settlement::FullyOccupied)),
                _ => None,
            })
            .collect();
        Ok(Store::settle(work, &answers).await?)
    }
}
