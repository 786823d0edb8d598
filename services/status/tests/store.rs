//! The status projection in process, on SQLite in memory and on PostgreSQL: facts arriving
//! in any order converge to one view, the same event twice changes nothing visible, and
//! each event is in the history once.
#![allow(clippy::unwrap_used)]

use parking_common::consumer::Event;
use parking_common::outbox::Outbox;
use parking_common::pb::event_envelope::Payload;
use parking_common::pb::{DeliveryRequested, Occupied, Shipped, TicketReserved};
use parking_common::testing::{apply_batch, event, Backend, TestDb};
use parking_common::unit::UnitOfWork;
use status::domain::{fact_of, Stage, View};
use status::migration::Migrator;
use status::policy::Project;
use status::store::{Projected, Status, Store};

const DAY: &str = "2030-11-01";

/// The life of reservation `id` up to a shipped ticket, in publish order.
fn life(id: i64) -> Vec<Event> {
    vec![
        event(
            id,
            Payload::TicketReserved(TicketReserved {
                reservation_id: id,
                member_id: 7,
                reservation_date: DAY.into(),
            }),
        ),
        event(
            id,
            Payload::Occupied(Occupied {
                reservation_id: id,
                member_id: 7,
                reservation_date: DAY.into(),
                parking_lot_id: 40,
                space_number: 3,
            }),
        ),
        event(
            id,
            Payload::DeliveryRequested(DeliveryRequested {
                reservation_id: id,
                delivery_id: 50,
                member_id: 7,
                reservation_date: DAY.into(),
                space_number: 3,
            }),
        ),
        event(
            id,
            Payload::Shipped(Shipped {
                reservation_id: id,
                delivery_id: 50,
            }),
        ),
    ]
}

fn expected(id: i64) -> View {
    View {
        reservation_id: id,
        member_id: 7,
        reservation_date: DAY.into(),
        stage: Stage::Shipped,
        parking_lot_id: 40,
        ticket_delivery_id: 50,
        space_number: 3,
    }
}

fn project() -> Project {
    Project {
        changes: tokio::sync::broadcast::channel(16).0,
    }
}

async fn status(store: &Store, id: i64) -> Status {
    store.get(id).await.unwrap().expect("projected")
}

/// The same facts in publish order, in reverse, one per batch or all in one batch, and
/// spread over the three durables: the view is the same.
async fn out_of_order_facts_converge(backend: Backend) {
    let test = TestDb::open::<Migrator>(backend).await;
    let outbox = Outbox::new("t");
    let store = Store::new(test.db.clone());
    let policy = project();

    // 1: in order, one event per batch.
    for e in life(1) {
        apply_batch(&test.db, &outbox, "status-x", &policy, &[e])
            .await
            .unwrap();
    }
    // 2: reversed, one event per batch.
    for e in life(2).into_iter().rev() {
        apply_batch(&test.db, &outbox, "status-x", &policy, &[e])
            .await
            .unwrap();
    }
    // 3: reversed in one batch.
    let reversed: Vec<Event> = life(3).into_iter().rev().collect();
    apply_batch(&test.db, &outbox, "status-x", &policy, &reversed)
        .await
        .unwrap();
    // 4: shuffled over the durables, as the three streams deliver independently.
    let [reserved, occupied, requested, shipped] = <[Event; 4]>::try_from(life(4)).unwrap();
    apply_batch(
        &test.db,
        &outbox,
        "status-delivery",
        &policy,
        &[shipped, requested],
    )
    .await
    .unwrap();
    apply_batch(&test.db, &outbox, "status-parkinglot", &policy, &[occupied])
        .await
        .unwrap();
    apply_batch(
        &test.db,
        &outbox,
        "status-reservation",
        &policy,
        &[reserved],
    )
    .await
    .unwrap();

    for id in 1..=4 {
        let status = status(&store, id).await;
        assert_eq!(status.view, expected(id), "reservation {id}");
        let mut types: Vec<&str> = status
            .history
            .iter()
            .map(|h| h.event_type.as_str())
            .collect();
        types.sort_unstable();
        assert_eq!(
            types,
            ["DeliveryRequested", "Occupied", "Shipped", "TicketReserved"],
            "reservation {id}"
        );
    }
}

/// The same event twice, redelivered through the inbox or projected again directly, in
/// another batch or in the same one: the view and the history do not change.
async fn the_same_event_twice_changes_nothing(backend: Backend) {
    let test = TestDb::open::<Migrator>(backend).await;
    let outbox = Outbox::new("t");
    let store = Store::new(test.db.clone());
    let policy = project();
    let events = life(1);
    assert_eq!(
        apply_batch(&test.db, &outbox, "status-x", &policy, &events[..3])
            .await
            .unwrap(),
        3
    );
    let before = status(&store, 1).await;
    assert_eq!(before.view.stage, Stage::DeliveryRequested);
    assert_eq!(before.history.len(), 3);

    // Through the inbox: nothing new.
    assert_eq!(
        apply_batch(&test.db, &outbox, "status-x", &policy, &events[..3])
            .await
            .unwrap(),
        0
    );
    assert_eq!(status(&store, 1).await, before);

    // Projected again without the inbox (another durable saw it too), each one twice in
    // one batch: the view and the history are unchanged.
    let projected: Vec<Projected> = events[..3]
        .iter()
        .chain(&events[..3])
        .map(|e| Projected {
            event_id: &e.envelope.event_id,
            event_type: e.name(),
            occurred_at: parking_common::events::from_timestamp(e.envelope.occurred_at.as_ref()),
            fact: fact_of(&e.payload),
        })
        .collect();
    let work = UnitOfWork::begin(&test.db, &outbox).await.unwrap();
    assert_eq!(Store::project(&work, &projected).await.unwrap(), [1]);
    work.commit().await.unwrap();
    assert_eq!(status(&store, 1).await, before);

    // An older fact after a newer one (Occupied after DeliveryRequested) does not go back.
    let late = life(1).swap_remove(1);
    apply_batch(&test.db, &outbox, "status-x", &policy, &[late])
        .await
        .unwrap();
    let after = status(&store, 1).await;
    assert_eq!(after.view, before.view);
    assert_eq!(after.history.len(), 4);
}

/// The three durables (one per stream) project facts of the same new reservations at the
/// same moment, each in its own unit of work: no field any of them brought is lost.
async fn concurrent_durables_lose_no_field(backend: Backend) {
    let test = TestDb::open::<Migrator>(backend).await;
    let outbox = Outbox::new("t");
    for id in 1..=40 {
        let [reserved, occupied, requested, shipped] =
            <[Event; 4]>::try_from(life(id)).ok().unwrap();
        let runs = [
            ("status-reservation", vec![reserved]),
            ("status-parkinglot", vec![occupied]),
            ("status-delivery", vec![shipped, requested]),
        ]
        .map(|(durable, events)| {
            let (db, outbox) = (test.db.clone(), outbox.clone());
            tokio::spawn(async move {
                apply_batch(&db, &outbox, durable, &project(), &events)
                    .await
                    .unwrap()
            })
        });
        for run in runs {
            run.await.unwrap();
        }
        let store = Store::new(test.db.clone());
        assert_eq!(
            status(&store, id).await.view,
            expected(id),
            "reservation {id}"
        );
    }
}

parking_common::on_both_databases!(
    out_of_order_facts_converge,
    the_same_event_twice_changes_nothing,
    concurrent_durables_lose_no_field
);
