//! The Allocate policy under the real consumer runner and a real JetStream (a namespace of
//! its own), in process, on SQLite in memory and on PostgreSQL.
#![allow(clippy::unwrap_used)]

use parking_common::events::{envelope, EventContext};
use parking_common::outbox::{self, Outbox};
use parking_common::pb::event_envelope::Payload;
use parking_common::pb::{EventEnvelope, TicketReserved};
use parking_common::testing::{Backend, TestDb, TestNats};
use parking_lot::domain::AllocationState;
use parking_lot::migration::Migrator;
use parking_lot::policy::{Allocate, ALLOCATE};
use parking_lot::store::{allocation, Day, Store};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use std::sync::Arc;
use std::time::Duration;

const DAY: &str = "2030-08-01";

fn reserved(id: i64, day: &str) -> EventEnvelope {
    envelope(
        id,
        Payload::TicketReserved(TicketReserved {
            reservation_id: id,
            member_id: 2000 + id,
            reservation_date: day.into(),
        }),
    )
}

/// What the allocations say: (reservation id, state, space), by reservation.
async fn allocations(db: &sea_orm::DatabaseConnection) -> Vec<(i64, String, Option<i32>)> {
    let mut rows: Vec<_> = allocation::Entity::find()
        .filter(allocation::Column::ReservationDate.eq(DAY))
        .all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.reservation_id, a.state, a.space_number))
        .collect();
    rows.sort();
    rows
}

/// TicketReserved events with a poison one (an impossible day) and an undecodable message
/// in the middle: the others are allocated (capacity 5: five spaces, the rest FullyOccupied),
/// the two bad ones are terminated; the same envelopes published again change nothing.
async fn allocation_goes_past_a_poison_event(backend: Backend) {
    let test = TestDb::open::<Migrator>(backend).await;
    let nats = TestNats::connect().await;
    parking_common::nats::ensure_stream(&nats.js, &nats.namespace, EventContext::Reservation, 1)
        .await
        .unwrap();
    let published: Vec<EventEnvelope> = (1..=8)
        .map(|id| reserved(id, if id == 4 { "2030-13-01" } else { DAY }))
        .collect();
    let subject = EventContext::Reservation.subject(&nats.namespace, "TicketReserved");
    for (i, e) in published.iter().enumerate() {
        nats.publish(e, Some(&e.event_id)).await;
        if i == 5 {
            nats.publish_raw(&subject, vec![0x0a, 0xff], None).await;
        }
    }

    let store = Store::new(test.db.clone(), 5);
    let running = nats.run(
        Allocate::subscription(),
        Arc::new(Allocate {
            store: store.clone(),
        }),
        &test.db,
        Outbox::new(&nats.namespace),
    );

    nats.drained(EventContext::Reservation, ALLOCATE, Duration::from_secs(20))
        .await;
    assert_eq!(running.events("done"), 7);
    assert_eq!(running.events("poison"), 2);
    assert_eq!(running.events("failed"), 0);
    let first = allocations(&test.db).await;
    assert_eq!(first.len(), 7);
    assert!(first.iter().all(|(id, _, _)| *id != 4));
    let mut spaces: Vec<i32> = first.iter().filter_map(|(_, _, s)| *s).collect();
    spaces.sort_unstable();
    assert_eq!(spaces, [1, 2, 3, 4, 5]);
    let full = first
        .iter()
        .filter(|(_, state, _)| state == AllocationState::FullyOccupied.as_str())
        .count();
    assert_eq!(full, 2);
    assert_eq!(
        store.day(DAY).await.unwrap(),
        Day {
            capacity: 5,
            occupied: 5
        }
    );
    // One answer staged per allocated application.
    assert_eq!(outbox::backlog(&test.db).await.unwrap(), 7);

    // Redelivery of everything, as new messages: nothing changes.
    for e in &published {
        nats.publish(e, None).await;
    }
    nats.drained(EventContext::Reservation, ALLOCATE, Duration::from_secs(20))
        .await;
    assert_eq!(running.events("done"), 14);
    assert_eq!(running.events("poison"), 3);
    assert_eq!(allocations(&test.db).await, first);
    assert_eq!(store.day(DAY).await.unwrap().occupied, 5);
    assert_eq!(outbox::backlog(&test.db).await.unwrap(), 7);

    running.stop().await;
}

parking_common::on_both_databases!(allocation_goes_past_a_poison_event);
