//! Policy of TicketDelivery: on Occupied, put a delivery order on the manager's list.

use crate::store::{Order, Store};
use parking_common::consumer::{event_day, Event, EventHandler, HandleError, Subscription};
use parking_common::events::EventContext;
use parking_common::pb::event_envelope::Payload;

pub const REQUEST: &str = "delivery-request";

pub struct RequestDelivery {
    pub store: Store,
}

impl RequestDelivery {
    pub fn subscription() -> Subscription {
        Subscription {
            context: EventContext::ParkingLot,
            durable: REQUEST.to_owned(),
            event_name: Some("Occupied"),
        }
    }
}

#[async_trait::async_trait]
impl EventHandler for RequestDelivery {
    async fn handle(&self, event: &Event) -> Result<(), HandleError> {
        let Payload::Occupied(e) = &event.payload else {
            return Ok(());
        };
        let order = Order {
            reservation_id: e.reservation_id,
            member_id: e.member_id,
            reservation_date: event_day(&e.reservation_date)?,
            space_number: e.space_number,
        };
        self.store
            .request(REQUEST, &event.envelope.event_id, &order)
            .await
    }
}
