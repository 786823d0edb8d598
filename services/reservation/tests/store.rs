//! Settling applications in bulk, in process, on SQLite in memory and on PostgreSQL: only
//! REQUESTED reservations move, a cancelled one stays cancelled, a second answer changes
//! nothing.
#![allow(clippy::unwrap_used)]

use chrono::NaiveDate;
use parking_common::outbox::{self, Outbox};
use parking_common::pb::event_envelope::Payload;
use parking_common::pb::{FullyOccupied, Occupied, Vacated};
use parking_common::testing::{apply_batch, event, Backend, TestDb};
use parking_common::unit::UnitOfWork;
use reservation::domain::{Application, ReservationState, Settlement};
use reservation::migration::Migrator;
use reservation::policy::{Settle, SETTLE};
use reservation::store::{Cancelled, Reserved, Store};

const DAY: &str = "2030-09-01";

async fn reserve(store: &Store, member_id: i64) -> i64 {
    let app = Application {
        member_id,
        date: NaiveDate::parse_from_str(DAY, "%Y-%m-%d").unwrap(),
        request_id: None,
    };
    match store.reserve(&app).await.unwrap() {
        Reserved::New(r) => r.id,
        other => panic!("not stored: {other:?}"),
    }
}

async fn state(store: &Store, id: i64) -> ReservationState {
    store.get(id).await.unwrap().unwrap().state
}

fn occupied(id: i64) -> Payload {
    Payload::Occupied(Occupied {
        reservation_id: id,
        member_id: id,
        reservation_date: DAY.into(),
        parking_lot_id: id,
        space_number: 1,
    })
}

fn fully_occupied(id: i64) -> Payload {
    Payload::FullyOccupied(FullyOccupied {
        reservation_id: id,
        member_id: id,
        reservation_date: DAY.into(),
        capacity: 1,
    })
}

async fn settle_moves_only_requested_reservations(backend: Backend) {
    use ReservationState::*;
    let test = TestDb::open::<Migrator>(backend).await;
    let outbox = Outbox::new("t");
    let store = Store::new(test.db.clone(), outbox.clone());
    let mut ids = Vec::new();
    for member in 1..=5 {
        ids.push(reserve(&store, member).await);
    }
    let [r1, r2, r3, r4, r5] = ids[..] else {
        unreachable!()
    };
    assert!(matches!(store.cancel(r3).await.unwrap(), Cancelled::Now(_)));
    // Five TicketReserved and one TicketReservationCanceled.
    assert_eq!(outbox::backlog(&test.db).await.unwrap(), 6);

    // One batch as the settle policy gets it: answers for all but r5, a Vacated (not an
    // answer) for r5, and an answer for a reservation this service never stored.
    let batch = [
        event(r1, occupied(r1)),
        event(r2, fully_occupied(r2)),
        event(r3, occupied(r3)),
        event(r4, fully_occupied(r4)),
        event(
            r5,
            Payload::Vacated(Vacated {
                reservation_id: r5,
                ..Default::default()
            }),
        ),
        event(9999, occupied(9999)),
    ];
    assert_eq!(
        apply_batch(&test.db, &outbox, SETTLE, &Settle, &batch)
            .await
            .unwrap(),
        6
    );
    let after: Vec<ReservationState> = {
        let mut states = Vec::new();
        for id in &ids {
            states.push(state(&store, *id).await);
        }
        states
    };
    assert_eq!(after, [Confirmed, Rejected, Canceled, Rejected, Requested]);
    assert_eq!(store.get(9999).await.unwrap(), None);

    // The same batch again changes nothing (the inbox), nor do contrary answers under new
    // event ids (only REQUESTED ones are settled).
    assert_eq!(
        apply_batch(&test.db, &outbox, SETTLE, &Settle, &batch)
            .await
            .unwrap(),
        0
    );
    let contrary = [
        event(r1, fully_occupied(r1)),
        event(r2, occupied(r2)),
        event(r3, fully_occupied(r3)),
    ];
    apply_batch(&test.db, &outbox, SETTLE, &Settle, &contrary)
        .await
        .unwrap();
    for (id, expected) in ids.iter().zip(&after) {
        assert_eq!(state(&store, *id).await, *expected);
    }
    // Settling publishes nothing.
    assert_eq!(outbox::backlog(&test.db).await.unwrap(), 6);

    // Many answers at once (more than one statement's worth), most for unknown ids: r5,
    // the only REQUESTED one, is settled; nothing else moves.
    let mut answers: Vec<(i64, Settlement)> = (1..=2500)
        .map(|id| (id + 100_000, Settlement::FullyOccupied))
        .collect();
    answers.extend(ids.iter().map(|id| (*id, Settlement::Occupied)));
    let work = UnitOfWork::begin(&test.db, &outbox).await.unwrap();
    Store::settle(&work, &answers).await.unwrap();
    work.commit().await.unwrap();
    let mut states = Vec::new();
    for id in &ids {
        states.push(state(&store, *id).await);
    }
    assert_eq!(states, [Confirmed, Rejected, Canceled, Rejected, Confirmed]);

    // A settle rolled back leaves the reservation as it was.
    let r6 = reserve(&store, 6).await;
    let work = UnitOfWork::begin(&test.db, &outbox).await.unwrap();
    Store::settle(&work, &[(r6, Settlement::Occupied)])
        .await
        .unwrap();
    work.rollback().await.unwrap();
    assert_eq!(state(&store, r6).await, Requested);
}

/// ReserveTicket's group commit: many calls at once, some of them a second ticket for the
/// same member and day or a replay of the same request id, each answered as if alone;
/// exactly one TicketReserved per stored application.
async fn concurrent_reserves_share_commits_and_keep_their_answers(backend: Backend) {
    let test = TestDb::open::<Migrator>(backend).await;
    let outbox = Outbox::new("t");
    let store = Store::new(test.db.clone(), outbox.clone());
    let day = NaiveDate::parse_from_str(DAY, "%Y-%m-%d").unwrap();
    let app = |member_id: i64, request_id: Option<&str>| Application {
        member_id,
        date: day,
        request_id: request_id.map(str::to_owned),
    };
    // Members 1..=300 once each; member 1 twice more without a request id (a second and a
    // third ticket); member 1002 sends its request id "r" twice (a replay); all at once.
    let mut apps: Vec<Application> = (1..=300).map(|m| app(m, None)).collect();
    apps.extend([app(1, None), app(1, None)]);
    apps.extend([app(1_002, Some("r")), app(1_002, Some("r"))]);
    let calls = apps.iter().map(|a| {
        let store = store.clone();
        let a = a.clone();
        tokio::spawn(async move { store.reserve(&a).await })
    });
    let mut answers: Vec<Reserved> = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        answers.push(call.await.unwrap().unwrap());
    }
    let new = answers
        .iter()
        .filter(|a| matches!(a, Reserved::New(_)))
        .count();
    let holds = answers
        .iter()
        .filter(|a| matches!(a, Reserved::MemberHoldsDay))
        .count();
    let replayed: Vec<i64> = answers
        .iter()
        .filter_map(|a| match a {
            Reserved::Replayed(r) => Some(r.id),
            _ => None,
        })
        .collect();
    assert_eq!(new, 301, "300 members and one request of member 1002");
    assert_eq!(holds, 2, "member 1's second and third ticket");
    assert_eq!(replayed.len(), 1, "the replayed request id: {answers:?}");
    let first = answers.iter().find_map(|a| match a {
        Reserved::New(r) if r.member_id == 1_002 => Some(r.id),
        _ => None,
    });
    assert_eq!(
        first,
        Some(replayed[0]),
        "a replay answers the first result"
    );
    // Every stored application has its event, and only those.
    assert_eq!(outbox::backlog(&test.db).await.unwrap(), 301);
    let mut ids: Vec<i64> = answers
        .iter()
        .filter_map(|a| match a {
            Reserved::New(r) => Some(r.id),
            _ => None,
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 301, "no id given twice");
}

parking_common::on_both_databases!(
    settle_moves_only_requested_reservations,
    concurrent_reserves_share_commits_and_keep_their_answers
);
