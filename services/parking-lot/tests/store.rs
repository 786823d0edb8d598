//! Allocation and vacating in process, through units of work and the policies, on SQLite
//! in memory and on PostgreSQL: the quota holds within one batch and across concurrent
//! batches, freed spaces are taken lowest first, a lowered capacity is respected, and
//! replayed events change nothing.
#![allow(clippy::unwrap_used)]

use parking_common::consumer::{Event, HandleError, Policy};
use parking_common::inbox;
use parking_common::outbox::{self, Outbox};
use parking_common::pb::event_envelope::Payload;
use parking_common::pb::{TicketReservationCanceled, TicketReserved};
use parking_common::testing::{apply_batch, event, Backend, TestDb};
use parking_common::unit::UnitOfWork;
use parking_lot::delivery::{CancelDeliveryError, DeliveryCanceller};
use parking_lot::domain::{Allocated, AllocationState};
use parking_lot::migration::Migrator;
use parking_lot::policy::{Allocate, Vacate, ALLOCATE, VACATE};
use parking_lot::store::{allocation, Application, CapacitySet, Day, Decision, Store};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const DAY: &str = "2030-06-01";

fn app(id: i64, date: &str) -> Application {
    Application {
        reservation_id: id,
        member_id: 1000 + id,
        date: date.into(),
    }
}

fn reserved(id: i64, date: &str) -> Event {
    event(
        id,
        Payload::TicketReserved(TicketReserved {
            reservation_id: id,
            member_id: 1000 + id,
            reservation_date: date.into(),
        }),
    )
}

fn canceled(id: i64, date: &str) -> Event {
    event(
        id,
        Payload::TicketReservationCanceled(TicketReservationCanceled {
            reservation_id: id,
            member_id: 1000 + id,
            reservation_date: date.into(),
        }),
    )
}

/// Allocates `apps` in one unit of work and commits.
async fn allocate(store: &Store, db: &DatabaseConnection, apps: &[Application]) -> Vec<Decision> {
    let work = UnitOfWork::begin(db, &Outbox::new("t")).await.unwrap();
    let decisions = store.allocate(&work, apps).await.unwrap();
    work.commit().await.unwrap();
    decisions
}

fn spaces(decisions: &[Decision]) -> Vec<Option<i32>> {
    decisions
        .iter()
        .map(|d| match d.answer {
            Allocated::Occupied { space } => Some(space),
            Allocated::FullyOccupied => None,
        })
        .collect()
}

/// The spaces held on `date`, ascending, read from the allocations themselves.
async fn held(db: &DatabaseConnection, date: &str) -> Vec<i32> {
    let mut spaces: Vec<i32> = allocation::Entity::find()
        .filter(allocation::Column::ReservationDate.eq(date))
        .filter(allocation::Column::State.eq(AllocationState::Occupied.as_str()))
        .all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|a| {
            a.space_number
                .expect("an occupied allocation holds a space")
        })
        .collect();
    spaces.sort_unstable();
    spaces
}

async fn rows_in(db: &DatabaseConnection, date: &str, state: AllocationState) -> usize {
    allocation::Entity::find()
        .filter(allocation::Column::ReservationDate.eq(date))
        .filter(allocation::Column::State.eq(state.as_str()))
        .all(db)
        .await
        .unwrap()
        .len()
}

async fn vacate(db: &DatabaseConnection, store: &Store, reservation_id: i64) -> bool {
    let held = store.allocation(reservation_id).await.unwrap().unwrap();
    let work = UnitOfWork::begin(db, &Outbox::new("t")).await.unwrap();
    let freed = Store::vacate(&work, &held).await.unwrap();
    work.commit().await.unwrap();
    freed
}

/// More applications than spaces in one batch: exactly the capacity is Occupied, spaces
/// 1..=N in the applications' order, the rest FullyOccupied.
async fn one_batch_over_capacity(backend: Backend) {
    let test = TestDb::open::<Migrator>(backend).await;
    let store = Store::new(test.db.clone(), 3);
    let apps: Vec<Application> = (1..=5).map(|id| app(id, DAY)).collect();
    let decisions = allocate(&store, &test.db, &apps).await;
    let ids: Vec<i64> = decisions
        .iter()
        .map(|d| d.application.reservation_id)
        .collect();
    assert_eq!(ids, [1, 2, 3, 4, 5]);
    assert_eq!(spaces(&decisions), [Some(1), Some(2), Some(3), None, None]);
    assert!(decisions.iter().all(|d| d.capacity == 3));
    assert_eq!(
        store.day(DAY).await.unwrap(),
        Day {
            capacity: 3,
            occupied: 3
        }
    );
    assert_eq!(held(&test.db, DAY).await, [1, 2, 3]);
    assert_eq!(
        rows_in(&test.db, DAY, AllocationState::FullyOccupied).await,
        2
    );
    for d in &decisions {
        let stored = store
            .allocation(d.application.reservation_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.id, d.parking_lot_id);
        let expected = match d.answer {
            Allocated::Occupied { space } => (AllocationState::Occupied, Some(space)),
            Allocated::FullyOccupied => (AllocationState::FullyOccupied, None),
        };
        assert_eq!((stored.state, stored.space_number), expected);
    }
    // Another day has a quota of its own; a batch over two days decides each, day by day
    // in date order.
    let mixed = [app(6, "2030-06-02"), app(7, DAY), app(8, "2030-06-02")];
    let decisions = allocate(&store, &test.db, &mixed).await;
    let answers: Vec<(i64, Option<i32>)> = decisions
        .iter()
        .map(|d| d.application.reservation_id)
        .zip(spaces(&decisions))
        .collect();
    assert_eq!(answers, [(7, None), (6, Some(1)), (8, Some(2))]);
}

/// One unit of work as the runner makes it, for the race: begun, then (after every racer
/// began) the inbox rows, the Allocate policy, one commit.
async fn allocate_as_runner(
    db: DatabaseConnection,
    policy: Arc<Allocate>,
    events: Vec<Event>,
    started: Arc<tokio::sync::Barrier>,
) -> Result<(), HandleError> {
    let mut work = UnitOfWork::begin(&db, &Outbox::new("t")).await?;
    started.wait().await;
    let ids: Vec<&str> = events
        .iter()
        .map(|e| e.envelope.event_id.as_str())
        .collect();
    let fresh = inbox::record_new(work.db(), ALLOCATE, &ids).await?;
    assert_eq!(fresh.len(), events.len());
    let refs: Vec<&Event> = events.iter().collect();
    policy.apply(&mut work, &refs).await?;
    work.commit().await?;
    Ok(())
}

/// Two units of work allocating the same day at once (on PostgreSQL on two connections,
/// truly concurrent; on SQLite they queue on the write lock): never more Occupied than the
/// capacity, no space twice, the counter equal to the spaces held.
async fn concurrent_units_of_work_keep_the_quota(backend: Backend) {
    let test = TestDb::open::<Migrator>(backend).await;
    let store = Store::new(test.db.clone(), 5);
    let policy = Arc::new(Allocate {
        store: store.clone(),
    });
    for round in 0..6i64 {
        let date = format!("2030-07-{:02}", round + 1);
        // Half the days exist before the race, half are created by it.
        if round % 2 == 0 {
            assert!(matches!(
                store.set_capacity(&date, 5).await.unwrap(),
                CapacitySet::Done(_)
            ));
        }
        let started = Arc::new(tokio::sync::Barrier::new(2));
        let mut racers = Vec::new();
        for racer in 0..2i64 {
            let events: Vec<Event> = (0..4)
                .map(|i| reserved(round * 100 + racer * 10 + i + 1, &date))
                .collect();
            racers.push(tokio::spawn(allocate_as_runner(
                test.db.clone(),
                policy.clone(),
                events,
                started.clone(),
            )));
        }
        for racer in racers {
            racer.await.unwrap().unwrap();
        }
        assert_eq!(held(&test.db, &date).await, [1, 2, 3, 4, 5], "{date}");
        assert_eq!(
            rows_in(&test.db, &date, AllocationState::FullyOccupied).await,
            3,
            "{date}"
        );
        assert_eq!(
            store.day(&date).await.unwrap(),
            Day {
                capacity: 5,
                occupied: 5
            }
        );
    }
    // One Occupied or FullyOccupied staged per application, nothing more.
    assert_eq!(outbox::backlog(&test.db).await.unwrap(), 6 * 8);
}

/// Vacated spaces are taken again lowest first, before any space above the highest held.
async fn freed_spaces_are_reused_lowest_first(backend: Backend) {
    let test = TestDb::open::<Migrator>(backend).await;
    let store = Store::new(test.db.clone(), 5);
    let apps: Vec<Application> = (1..=5).map(|id| app(id, DAY)).collect();
    allocate(&store, &test.db, &apps).await;
    // Reservations 4 and 2 hold spaces 4 and 2.
    assert!(vacate(&test.db, &store, 4).await);
    assert!(vacate(&test.db, &store, 2).await);
    assert_eq!(held(&test.db, DAY).await, [1, 3, 5]);
    assert_eq!(store.day(DAY).await.unwrap().occupied, 3);

    let decisions = allocate(&store, &test.db, &[app(6, DAY), app(7, DAY), app(8, DAY)]).await;
    assert_eq!(spaces(&decisions), [Some(2), Some(4), None]);
    assert_eq!(held(&test.db, DAY).await, [1, 2, 3, 4, 5]);

    // The highest space freed: the next one takes it again.
    assert!(vacate(&test.db, &store, 5).await);
    assert!(vacate(&test.db, &store, 1).await);
    let decisions = allocate(&store, &test.db, &[app(9, DAY)]).await;
    assert_eq!(spaces(&decisions), [Some(1)]);
    let decisions = allocate(&store, &test.db, &[app(10, DAY), app(11, DAY)]).await;
    assert_eq!(spaces(&decisions), [Some(5), None]);
    assert_eq!(store.day(DAY).await.unwrap().occupied, 5);
}

/// A day's highest_space left behind (spaces handed out by a replica older than the column,
/// in a rolling deploy; here set back by hand) is raised from the spaces actually held: no
/// space is handed out twice, and the next ones go above the highest held.
async fn a_stale_highest_space_heals(backend: Backend) {
    use sea_orm::ConnectionTrait;
    let test = TestDb::open::<Migrator>(backend).await;
    let store = Store::new(test.db.clone(), 10);
    let apps: Vec<Application> = (1..=6).map(|id| app(id, DAY)).collect();
    allocate(&store, &test.db, &apps).await;
    assert!(vacate(&test.db, &store, 2).await);
    test.db
        .execute_unprepared(&format!(
            "UPDATE daily_quota SET highest_space = 3 WHERE date = '{DAY}'"
        ))
        .await
        .unwrap();
    let decisions = allocate(&store, &test.db, &[app(7, DAY), app(8, DAY), app(9, DAY)]).await;
    assert_eq!(spaces(&decisions), [Some(2), Some(7), Some(8)]);
    assert_eq!(held(&test.db, DAY).await, [1, 2, 3, 4, 5, 6, 7, 8]);
}

/// A capacity lowered below what is taken is refused; once spaces are freed it holds, and
/// allocation takes the lowest free space under it, never one above.
async fn a_lowered_capacity_is_respected(backend: Backend) {
    let test = TestDb::open::<Migrator>(backend).await;
    let store = Store::new(test.db.clone(), 5);
    let apps: Vec<Application> = (1..=4).map(|id| app(id, DAY)).collect();
    allocate(&store, &test.db, &apps).await;
    assert_eq!(
        store.set_capacity(DAY, 2).await.unwrap(),
        CapacitySet::BelowOccupied(Day {
            capacity: 5,
            occupied: 4
        })
    );
    for id in 1..=3 {
        assert!(vacate(&test.db, &store, id).await);
    }
    // Space 4 is still held, above the new capacity.
    assert_eq!(
        store.set_capacity(DAY, 2).await.unwrap(),
        CapacitySet::Done(Day {
            capacity: 2,
            occupied: 1
        })
    );
    let decisions = allocate(&store, &test.db, &[app(5, DAY), app(6, DAY), app(7, DAY)]).await;
    assert_eq!(spaces(&decisions), [Some(1), None, None]);
    assert!(decisions.iter().all(|d| d.capacity == 2));
    assert_eq!(held(&test.db, DAY).await, [1, 4]);
    assert_eq!(
        store.day(DAY).await.unwrap(),
        Day {
            capacity: 2,
            occupied: 2
        }
    );
    // Capacity zero: nobody gets a space, the counter stays.
    let other = "2030-06-03";
    assert!(matches!(
        store.set_capacity(other, 0).await.unwrap(),
        CapacitySet::Done(_)
    ));
    let decisions = allocate(&store, &test.db, &[app(8, other)]).await;
    assert_eq!(spaces(&decisions), [None]);
    assert_eq!(store.day(other).await.unwrap().occupied, 0);
}

/// The same events again through the inbox change nothing; the same reservations under
/// new event ids take nothing twice; a poison event fails its batch and leaves no trace.
async fn replayed_events_change_nothing(backend: Backend) {
    let test = TestDb::open::<Migrator>(backend).await;
    let store = Store::new(test.db.clone(), 3);
    let policy = Allocate {
        store: store.clone(),
    };
    let outbox = Outbox::new("t");
    let batch: Vec<Event> = (1..=4).map(|id| reserved(id, DAY)).collect();
    assert_eq!(
        apply_batch(&test.db, &outbox, ALLOCATE, &policy, &batch)
            .await
            .unwrap(),
        4
    );
    // Three Occupied and one FullyOccupied staged.
    assert_eq!(outbox::backlog(&test.db).await.unwrap(), 4);
    assert_eq!(held(&test.db, DAY).await, [1, 2, 3]);

    // Redelivered: not new to the inbox.
    assert_eq!(
        apply_batch(&test.db, &outbox, ALLOCATE, &policy, &batch)
            .await
            .unwrap(),
        0
    );
    // Republished under new event ids: new to the inbox, but already decided.
    let again: Vec<Event> = (1..=4).map(|id| reserved(id, DAY)).collect();
    assert_eq!(
        apply_batch(&test.db, &outbox, ALLOCATE, &policy, &again)
            .await
            .unwrap(),
        4
    );
    // Both in one batch.
    let mixed = [batch[0].clone(), again[1].clone(), batch[2].clone()];
    apply_batch(&test.db, &outbox, ALLOCATE, &policy, &mixed)
        .await
        .unwrap();
    assert_eq!(outbox::backlog(&test.db).await.unwrap(), 4);
    assert_eq!(held(&test.db, DAY).await, [1, 2, 3]);
    assert_eq!(
        rows_in(&test.db, DAY, AllocationState::FullyOccupied).await,
        1
    );
    assert_eq!(store.day(DAY).await.unwrap().occupied, 3);

    // A poison event fails its batch as a whole: nothing of it is kept, not even the
    // inbox rows, so its good events are applied when retried alone.
    let good = reserved(5, "2030-06-02");
    let poison = reserved(6, "2030-02-30");
    let failed = apply_batch(
        &test.db,
        &outbox,
        ALLOCATE,
        &policy,
        &[good.clone(), poison.clone()],
    )
    .await;
    assert!(matches!(failed, Err(HandleError::Poison(_))), "{failed:?}");
    assert_eq!(outbox::backlog(&test.db).await.unwrap(), 4);
    assert_eq!(store.allocation(5).await.unwrap(), None);
    assert_eq!(
        apply_batch(&test.db, &outbox, ALLOCATE, &policy, &[good])
            .await
            .unwrap(),
        1
    );
    assert_eq!(held(&test.db, "2030-06-02").await, [1]);
    assert_eq!(outbox::backlog(&test.db).await.unwrap(), 5);
}

/// Confirms every cancellation and counts the calls.
#[derive(Default)]
struct Confirming {
    calls: AtomicUsize,
}

#[async_trait::async_trait]
impl DeliveryCanceller for Confirming {
    async fn cancel_delivery(&self, _reservation_id: i64) -> Result<(), CancelDeliveryError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A cancellation before the application is remembered (no call to delivery); the late
/// application then takes nothing and the day's counter does not move.
async fn a_cancel_before_allocation_takes_nothing(backend: Backend) {
    let test = TestDb::open::<Migrator>(backend).await;
    let store = Store::new(test.db.clone(), 2);
    let outbox = Outbox::new("t");
    let delivery = Arc::new(Confirming::default());
    let vacate = Vacate {
        store: store.clone(),
        delivery: delivery.clone(),
    };
    let allocate = Allocate {
        store: store.clone(),
    };
    apply_batch(&test.db, &outbox, VACATE, &vacate, &[canceled(1, DAY)])
        .await
        .unwrap();
    assert_eq!(delivery.calls.load(Ordering::SeqCst), 0);
    let early = store.allocation(1).await.unwrap().unwrap();
    assert_eq!(early.state, AllocationState::CanceledBeforeAllocation);
    assert_eq!(early.space_number, None);
    assert_eq!(outbox::backlog(&test.db).await.unwrap(), 0);

    let late = [reserved(1, DAY), reserved(2, DAY), reserved(3, DAY)];
    assert_eq!(
        apply_batch(&test.db, &outbox, ALLOCATE, &allocate, &late)
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        store.allocation(1).await.unwrap().unwrap().state,
        AllocationState::CanceledBeforeAllocation
    );
    // The cancelled one took no space: the two others fit the capacity of 2.
    assert_eq!(held(&test.db, DAY).await, [1, 2]);
    assert_eq!(store.day(DAY).await.unwrap().occupied, 2);
    // Occupied for 2 and 3, nothing for 1.
    assert_eq!(outbox::backlog(&test.db).await.unwrap(), 2);

    // The same cancellation again (redelivered, or republished) changes nothing.
    apply_batch(&test.db, &outbox, VACATE, &vacate, &[canceled(1, DAY)])
        .await
        .unwrap();
    assert_eq!(delivery.calls.load(Ordering::SeqCst), 0);
    assert_eq!(outbox::backlog(&test.db).await.unwrap(), 2);
}

/// Vacating frees a space once: the second time finds nothing held and the counter goes
/// down once; through the policy, delivery is called once and Vacated staged once.
async fn a_space_is_vacated_once(backend: Backend) {
    let test = TestDb::open::<Migrator>(backend).await;
    let store = Store::new(test.db.clone(), 5);
    let apps: Vec<Application> = (1..=3).map(|id| app(id, DAY)).collect();
    allocate(&store, &test.db, &apps).await;
    assert_eq!(store.day(DAY).await.unwrap().occupied, 3);

    let held_2 = store.allocation(2).await.unwrap().unwrap();
    assert_eq!(held_2.space_number, Some(2));
    for expected in [true, false] {
        let work = UnitOfWork::begin(&test.db, &Outbox::new("t"))
            .await
            .unwrap();
        assert_eq!(Store::vacate(&work, &held_2).await.unwrap(), expected);
        work.commit().await.unwrap();
    }
    assert_eq!(store.day(DAY).await.unwrap().occupied, 2);
    assert_eq!(
        store.allocation(2).await.unwrap().unwrap().state,
        AllocationState::Vacated
    );
    assert_eq!(held(&test.db, DAY).await, [1, 3]);

    // Through the policy.
    let outbox = Outbox::new("t");
    let delivery = Arc::new(Confirming::default());
    let vacate = Vacate {
        store: store.clone(),
        delivery: delivery.clone(),
    };
    let cancel = canceled(3, DAY);
    assert_eq!(
        apply_batch(
            &test.db,
            &outbox,
            VACATE,
            &vacate,
            std::slice::from_ref(&cancel)
        )
        .await
        .unwrap(),
        1
    );
    assert_eq!(delivery.calls.load(Ordering::SeqCst), 1);
    assert_eq!(outbox::backlog(&test.db).await.unwrap(), 1);
    assert_eq!(store.day(DAY).await.unwrap().occupied, 1);
    // Redelivered, and republished under a new id: nothing held any more, delivery is not
    // called again, no second Vacated.
    apply_batch(&test.db, &outbox, VACATE, &vacate, &[cancel])
        .await
        .unwrap();
    apply_batch(&test.db, &outbox, VACATE, &vacate, &[canceled(3, DAY)])
        .await
        .unwrap();
    assert_eq!(delivery.calls.load(Ordering::SeqCst), 1);
    assert_eq!(outbox::backlog(&test.db).await.unwrap(), 1);
    assert_eq!(store.day(DAY).await.unwrap().occupied, 1);
    assert_eq!(held(&test.db, DAY).await, [1]);
}

parking_common::on_both_databases!(
    one_batch_over_capacity,
    concurrent_units_of_work_keep_the_quota,
    freed_spaces_are_reused_lowest_first,
    a_stale_highest_space_heals,
    a_lowered_capacity_is_respected,
    replayed_events_change_nothing,
    a_cancel_before_allocation_takes_nothing,
    a_space_is_vacated_once,
);
