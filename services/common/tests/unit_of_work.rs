//! The unit of work and the inbox, in process, on SQLite in memory and on PostgreSQL.
#![allow(clippy::unwrap_used)]

use parking_common::events::envelope;
use parking_common::inbox;
use parking_common::outbox::{self, Outbox};
use parking_common::pb::event_envelope::Payload;
use parking_common::pb::{EventEnvelope, TicketReserved};
use parking_common::testing::{Backend, SharedMigrator, TestDb};
use parking_common::unit::UnitOfWork;

fn reserved(id: i64) -> EventEnvelope {
    envelope(
        id,
        Payload::TicketReserved(TicketReserved {
            reservation_id: id,
            member_id: 3000 + id,
            reservation_date: "2030-01-02".into(),
        }),
    )
}

/// Staged events reach the outbox with the commit and only then; a rollback, or a unit of
/// work dropped unfinished, leaves none.
async fn staged_events_land_only_on_commit(backend: Backend) {
    let test = TestDb::open::<SharedMigrator>(backend).await;
    let outbox = Outbox::new("t");
    assert_eq!(outbox::backlog(&test.db).await.unwrap(), 0);

    let mut work = UnitOfWork::begin(&test.db, &outbox).await.unwrap();
    work.stage(reserved(1));
    work.stage(reserved(2));
    assert_eq!(work.staged().len(), 2);
    // Staged is not written: nothing in the outbox even inside the transaction.
    assert_eq!(outbox::backlog(work.db()).await.unwrap(), 0);
    work.rollback().await.unwrap();
    assert_eq!(outbox::backlog(&test.db).await.unwrap(), 0);

    let mut work = UnitOfWork::begin(&test.db, &outbox).await.unwrap();
    work.stage(reserved(3));
    drop(work);
    assert_eq!(outbox::backlog(&test.db).await.unwrap(), 0);

    let mut work = UnitOfWork::begin(&test.db, &outbox).await.unwrap();
    let committed: Vec<EventEnvelope> = (10..13).map(reserved).collect();
    for e in &committed {
        work.stage(e.clone());
    }
    work.commit().await.unwrap();
    assert_eq!(outbox::backlog(&test.db).await.unwrap(), 3);

    // Nothing staged, nothing written.
    let work = UnitOfWork::begin(&test.db, &outbox).await.unwrap();
    work.commit().await.unwrap();
    assert_eq!(outbox::backlog(&test.db).await.unwrap(), 3);

    // The rows are the staged events, under the outbox's namespace.
    use sea_orm::{EntityTrait, QueryOrder};
    let rows = outbox::Entity::find()
        .order_by_asc(outbox::Column::Id)
        .all(&test.db)
        .await
        .unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
    let expected: Vec<&str> = committed.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, expected);
    assert!(rows
        .iter()
        .all(|r| r.subject == "t.reservation.TicketReserved" && r.sent_at.is_none()));
}

/// An event without a payload cannot be published: the commit fails and writes nothing.
async fn an_event_without_payload_fails_the_commit(backend: Backend) {
    let test = TestDb::open::<SharedMigrator>(backend).await;
    let outbox = Outbox::new("t");
    let mut work = UnitOfWork::begin(&test.db, &outbox).await.unwrap();
    work.stage(reserved(1));
    work.stage(EventEnvelope {
        event_id: "no-payload".into(),
        ..Default::default()
    });
    assert!(work.commit().await.is_err());
    assert_eq!(outbox::backlog(&test.db).await.unwrap(), 0);
}

/// The inbox answers only the ids it had not recorded for that consumer, once each.
async fn inbox_returns_only_fresh_ids(backend: Backend) {
    let test = TestDb::open::<SharedMigrator>(backend).await;
    let outbox = Outbox::new("t");

    let work = UnitOfWork::begin(&test.db, &outbox).await.unwrap();
    let fresh = inbox::record_new(work.db(), "a", &["e1", "e2", "e3"])
        .await
        .unwrap();
    assert_eq!(fresh.len(), 3);
    work.commit().await.unwrap();

    // A rolled-back record is no record.
    let work = UnitOfWork::begin(&test.db, &outbox).await.unwrap();
    let fresh = inbox::record_new(work.db(), "a", &["e4"]).await.unwrap();
    assert_eq!(fresh.len(), 1);
    work.rollback().await.unwrap();

    let work = UnitOfWork::begin(&test.db, &outbox).await.unwrap();
    let fresh = inbox::record_new(work.db(), "a", &["e2", "e4", "e3", "e5"])
        .await
        .unwrap();
    let mut fresh: Vec<String> = fresh.into_iter().collect();
    fresh.sort();
    assert_eq!(fresh, ["e4", "e5"]);
    // Another consumer has an inbox of its own.
    let fresh = inbox::record_new(work.db(), "b", &["e1"]).await.unwrap();
    assert_eq!(fresh.len(), 1);
    work.commit().await.unwrap();

    // More ids than one statement takes.
    let many: Vec<String> = (0..2500).map(|i| format!("m{i}")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let work = UnitOfWork::begin(&test.db, &outbox).await.unwrap();
    assert_eq!(
        inbox::record_new(work.db(), "a", &refs)
            .await
            .unwrap()
            .len(),
        2500
    );
    assert!(inbox::record_new(work.db(), "a", &refs)
        .await
        .unwrap()
        .is_empty());
    work.commit().await.unwrap();
}

parking_common::on_both_databases!(
    staged_events_land_only_on_commit,
    an_event_without_payload_fails_the_commit,
    inbox_returns_only_fresh_ids,
);
