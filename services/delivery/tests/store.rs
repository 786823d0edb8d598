//! Delivery orders in bulk, in process, on SQLite in memory and on PostgreSQL: an order is
//! placed once per reservation, a cancellation recorded first keeps it off the list, and
//! DeliveryRequested is staged only for the orders placed.
#![allow(clippy::unwrap_used)]

use delivery::domain::DeliveryState;
use delivery::migration::Migrator;
use delivery::policy::{RequestDelivery, REQUEST};
use delivery::store::{Order, Shipping, Store, TicketDelivery};
use parking_common::events;
use parking_common::outbox::{self, Outbox};
use parking_common::paging::Page;
use parking_common::pb::event_envelope::Payload;
use parking_common::pb::Occupied;
use parking_common::testing::{apply_batch, event, Backend, TestDb};
use parking_common::unit::UnitOfWork;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};

const DAY: &str = "2030-10-01";

fn occupied(id: i64) -> parking_common::consumer::Event {
    event(
        id,
        Payload::Occupied(Occupied {
            reservation_id: id,
            member_id: 100 + id,
            reservation_date: DAY.into(),
            parking_lot_id: 10 + id,
            space_number: id as i32,
        }),
    )
}

async fn deliveries(store: &Store) -> Vec<TicketDelivery> {
    store
        .list(
            None,
            None,
            Page {
                size: 200,
                after_id: 0,
            },
        )
        .await
        .unwrap()
}

/// The DeliveryRequested events in the outbox: (reservation, delivery id).
async fn requested(db: &DatabaseConnection) -> Vec<(i64, i64)> {
    outbox::Entity::find()
        .filter(outbox::Column::Subject.ends_with(".DeliveryRequested"))
        .order_by_asc(outbox::Column::Id)
        .all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|row| match events::decode(&row.payload).unwrap().1 {
            Payload::DeliveryRequested(e) => (e.reservation_id, e.delivery_id),
            other => panic!("not a DeliveryRequested: {other:?}"),
        })
        .collect()
}

async fn request_all_places_each_order_once(backend: Backend) {
    let test = TestDb::open::<Migrator>(backend).await;
    let outbox = Outbox::new("t");
    let store = Store::new(test.db.clone(), outbox.clone());

    // Reservation 3 is cancelled before its Occupied arrives: recorded, DeliveryCanceled.
    let early = store.cancel(3).await.unwrap();
    assert_eq!(early.state, DeliveryState::Canceled);
    assert_eq!(outbox::backlog(&test.db).await.unwrap(), 1);

    let batch = [occupied(1), occupied(2), occupied(3)];
    assert_eq!(
        apply_batch(&test.db, &outbox, REQUEST, &RequestDelivery, &batch)
            .await
            .unwrap(),
        3
    );
    let list = deliveries(&store).await;
    let summary: Vec<(i64, DeliveryState)> =
        list.iter().map(|d| (d.reservation_id, d.state)).collect();
    assert_eq!(
        summary,
        [
            (3, DeliveryState::Canceled),
            (1, DeliveryState::Requested),
            (2, DeliveryState::Requested),
        ]
    );
    let order_1 = &list[1];
    assert_eq!(
        (
            order_1.member_id,
            order_1.reservation_date.as_str(),
            order_1.space_number
        ),
        (101, DAY, 1)
    );
    // DeliveryRequested for the two placed, with their delivery ids; none for 3.
    assert_eq!(
        requested(&test.db).await,
        [(1, list[1].id), (2, list[2].id)]
    );
    assert_eq!(outbox::backlog(&test.db).await.unwrap(), 3);

    // Redelivered: nothing new. Republished under new event ids with one new order: only
    // the new one is placed and requested.
    assert_eq!(
        apply_batch(&test.db, &outbox, REQUEST, &RequestDelivery, &batch)
            .await
            .unwrap(),
        0
    );
    let again = [occupied(1), occupied(4), occupied(3)];
    apply_batch(&test.db, &outbox, REQUEST, &RequestDelivery, &again)
        .await
        .unwrap();
    let list = deliveries(&store).await;
    assert_eq!(list.len(), 4);
    assert_eq!(list[3].reservation_id, 4);
    assert_eq!(
        requested(&test.db).await,
        [(1, list[1].id), (2, list[2].id), (4, list[3].id)]
    );
    assert_eq!(outbox::backlog(&test.db).await.unwrap(), 4);

    // A shipped order keeps its state when its Occupied comes again.
    assert!(matches!(
        store.ship(list[1].id).await.unwrap(),
        Shipping::Done(_)
    ));
    apply_batch(&test.db, &outbox, REQUEST, &RequestDelivery, &[occupied(1)])
        .await
        .unwrap();
    assert_eq!(deliveries(&store).await[1].state, DeliveryState::Shipped);

    // The store's own answer: the orders it inserted, with their ids, nothing else.
    let orders: Vec<Order> = [2, 5, 3, 6]
        .into_iter()
        .map(|id| Order {
            reservation_id: id,
            member_id: 100 + id,
            reservation_date: DAY.into(),
            space_number: id as i32,
        })
        .collect();
    let refs: Vec<&Order> = orders.iter().collect();
    let work = UnitOfWork::begin(&test.db, &outbox).await.unwrap();
    let placed = Store::request_all(&work, &refs).await.unwrap();
    work.commit().await.unwrap();
    let placed: Vec<i64> = placed.iter().map(|(o, _)| o.reservation_id).collect();
    assert_eq!(placed, [5, 6]);
    assert_eq!(deliveries(&store).await.len(), 6);
}

parking_common::on_both_databases!(request_all_places_each_order_once);
