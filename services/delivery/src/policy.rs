//! Policy of TicketDelivery: on Occupied, put a delivery order on the manager's list
//! (DeliveryRequested), once per reservation; a cancellation recorded first keeps it off.

use crate::store::{Order, Store};
use parking_common::consumer::{event_day, Event, HandleError, Policy, Subscription};
use parking_common::events::EventContext;
use parking_common::pb::event_envelope::Payload;
use parking_common::pb::DeliveryRequested;
use parking_common::unit::UnitOfWork;
use std::collections::HashMap;

pub const REQUEST: &str = "delivery-request";

pub struct RequestDelivery;

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
impl Policy for RequestDelivery {
    async fn apply(&self, work: &mut UnitOfWork, events: &[&Event]) -> Result<(), HandleError> {
        let mut orders = Vec::with_capacity(events.len());
        let mut causes: HashMap<i64, &Event> = HashMap::with_capacity(events.len());
        for event in events {
            let Payload::Occupied(e) = &event.payload else {
                continue;
            };
            orders.push(Order {
                reservation_id: e.reservation_id,
                member_id: e.member_id,
                reservation_date: event_day(&e.reservation_date)?,
                space_number: e.space_number,
            });
            causes.entry(e.reservation_id).or_insert(event);
        }
        let refs: Vec<&Order> = orders.iter().collect();
        let placed = Store::request_all(work, &refs).await?;
        if placed.len() < refs.len() {
            tracing::info!(
                occupied = refs.len(),
                placed = placed.len(),
                "some orders existed or were cancelled first; nothing to request there"
            );
        }
        for (order, delivery_id) in placed {
            // The order's own Occupied event: the follow-up joins its trace.
            let Some(cause) = causes.get(&order.reservation_id) else {
                continue;
            };
            work.stage(cause.follow_up(
                order.reservation_id,
                Payload::DeliveryRequested(DeliveryRequested {
                    reservation_id: order.reservation_id,
                    delivery_id,
                    member_id: order.member_id,
                    reservation_date: order.reservation_date.clone(),
                    space_number: order.space_number,
                }),
            ));
        }
        Ok(())
    }
}
