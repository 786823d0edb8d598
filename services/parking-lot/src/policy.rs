//! Policies of ParkingLot:
//! - allocate: TicketReserved -> Occupied (with a space) or FullyOccupied, a batch at a time;
//! - vacate: TicketReservationCanceled -> CancelDelivery (sync) -> Vacated. If delivery
//!   fails, the space stays taken and the event is redelivered with back-off.

use crate::delivery::DeliveryCanceller;
use crate::domain::{on_cancel, on_cancel_confirmed, Allocated, OnCancel, Vacating};
use crate::store::{Application, Store};
use parking_common::consumer::{
    backoff, event_day, CallingPolicy, Event, HandleError, Policy, Subscription,
};
use parking_common::events::EventContext;
use parking_common::pb::event_envelope::Payload;
use parking_common::pb::{FullyOccupied, Occupied, Vacated};
use parking_common::unit::UnitOfWork;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

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
impl Policy for Allocate {
    async fn apply(&self, work: &mut UnitOfWork, events: &[&Event]) -> Result<(), HandleError> {
        let mut causes: HashMap<i64, &Event> = HashMap::with_capacity(events.len());
        let mut applications = Vec::with_capacity(events.len());
        for event in events {
            let Payload::TicketReserved(e) = &event.payload else {
                continue;
            };
            applications.push(Application {
                reservation_id: e.reservation_id,
                member_id: e.member_id,
                date: event_day(&e.reservation_date)?,
            });
            causes.entry(e.reservation_id).or_insert(event);
        }
        for decision in self.store.allocate(work, &applications).await? {
            let app = &decision.application;
            let payload = match decision.answer {
                Allocated::Occupied { space } => Payload::Occupied(Occupied {
                    reservation_id: app.reservation_id,
                    member_id: app.member_id,
                    reservation_date: app.date.clone(),
                    parking_lot_id: decision.parking_lot_id,
                    space_number: space,
                }),
                Allocated::FullyOccupied => Payload::FullyOccupied(FullyOccupied {
                    reservation_id: app.reservation_id,
                    member_id: app.member_id,
                    reservation_date: app.date.clone(),
                    capacity: decision.capacity,
                }),
            };
            let Some(cause) = causes.get(&app.reservation_id) else {
                continue;
            };
            work.stage(cause.follow_up(app.reservation_id, payload));
        }
        Ok(())
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
impl CallingPolicy for Vacate {
    /// Whether delivery confirmed the cancellation of this reservation's delivery.
    type Checked = bool;

    async fn check(&self, event: &Event) -> Result<bool, HandleError> {
        let Payload::TicketReservationCanceled(e) = &event.payload else {
            return Ok(false);
        };
        let allocation = self.store.allocation(e.reservation_id).await?;
        if on_cancel(allocation.map(|a| a.state)) != OnCancel::CancelDeliveryThenVacate {
            return Ok(false);
        }
        // The space is freed only once delivery confirmed; until then it stays taken and
        // the cancellation comes back later ("not now"): with the circuit open, no sooner
        // than delivery's endpoint is due back.
        match self.delivery.cancel_delivery(e.reservation_id).await {
            Ok(()) => Ok(true),
            Err(error) => {
                let delay = backoff(event.delivered).max(error.retry_after.unwrap_or_default());
                if error.fail_fast {
                    tracing::info!(reservation_id = e.reservation_id, ?delay, %error, "delivery circuit open; cancellation deferred");
                }
                Err(HandleError::Later {
                    delay,
                    reason: error.to_string(),
                })
            }
        }
    }

    async fn apply(
        &self,
        work: &mut UnitOfWork,
        batch: &[(&Event, &bool)],
    ) -> Result<(), HandleError> {
        // Days in date order, the order allocation locks them in: a cycle between the two
        // policies' transactions (a PostgreSQL deadlock) cannot form. One cancellation per
        // reservation, so no reservation's events change order.
        let mut batch = batch.to_vec();
        batch.sort_by_key(|(event, _)| match &event.payload {
            Payload::TicketReservationCanceled(e) => e.reservation_date.clone(),
            _ => String::new(),
        });
        for (event, delivery_canceled) in batch {
            let Payload::TicketReservationCanceled(e) = &event.payload else {
                continue;
            };
            let allocation = Store::allocation_in(work.db(), e.reservation_id).await?;
            match on_cancel_confirmed(allocation.as_ref().map(|a| a.state), *delivery_canceled) {
                Vacating::Nothing => {}
                Vacating::RecordEarlyCancel => {
                    let date = event_day(&e.reservation_date)?;
                    if !Store::record_early_cancel(work, e.reservation_id, e.member_id, &date)
                        .await?
                    {
                        return Err(allocated_meanwhile(e.reservation_id));
                    }
                    tracing::info!(
                        reservation_id = e.reservation_id,
                        "cancellation recorded before allocation"
                    );
                }
                Vacating::AllocatedMeanwhile => return Err(allocated_meanwhile(e.reservation_id)),
                Vacating::Vacate => {
                    let Some(held) = allocation else { continue };
                    if Store::vacate(work, &held).await? {
                        tracing::info!(reservation_id = e.reservation_id, space = ?held.space_number, "space vacated");
                        work.stage(event.follow_up(
                            e.reservation_id,
                            Payload::Vacated(Vacated {
                                reservation_id: e.reservation_id,
                                member_id: held.member_id,
                                reservation_date: held.date.clone(),
                                parking_lot_id: held.id,
                                space_number: held.space_number.unwrap_or_default(),
                            }),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The application was decided between the check and the transaction: decide again.
fn allocated_meanwhile(reservation_id: i64) -> HandleError {
    HandleError::Later {
        delay: Duration::from_millis(100),
        reason: format!("reservation {reservation_id} was allocated meanwhile"),
    }
}
