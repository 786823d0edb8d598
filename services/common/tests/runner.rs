//! The consumer runner on a real JetStream (a namespace of its own), in process, on SQLite
//! in memory and on PostgreSQL, with a tiny policy: every TicketReserved is answered with
//! a FullyOccupied staged in the unit of work; an impossible day is poison.
#![allow(clippy::unwrap_used)]

use parking_common::consumer::{event_day, Event, HandleError, Policy, Subscription};
use parking_common::events::{envelope, EventContext};
use parking_common::outbox::{self, Outbox};
use parking_common::pb::event_envelope::Payload;
use parking_common::pb::{EventEnvelope, FullyOccupied, TicketReserved};
use parking_common::testing::{Backend, SharedMigrator, TestDb, TestNats};
use parking_common::unit::UnitOfWork;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const DURABLE: &str = "test-answer";

#[derive(Default)]
struct Answer {
    /// Events the runner reported applied (after their commit).
    applied: AtomicUsize,
}

#[async_trait::async_trait]
impl Policy for Answer {
    async fn apply(&self, work: &mut UnitOfWork, events: &[&Event]) -> Result<(), HandleError> {
        for event in events {
            let Payload::TicketReserved(e) = &event.payload else {
                continue;
            };
            let day = event_day(&e.reservation_date)?;
            work.stage(event.follow_up(
                e.reservation_id,
                Payload::FullyOccupied(FullyOccupied {
                    reservation_id: e.reservation_id,
                    member_id: e.member_id,
                    reservation_date: day,
                    capacity: 0,
                }),
            ));
        }
        Ok(())
    }

    fn applied(&self, events: &[&Event]) {
        self.applied.fetch_add(events.len(), Ordering::SeqCst);
    }
}

fn reserved(id: i64, day: &str) -> EventEnvelope {
    envelope(
        id,
        Payload::TicketReserved(TicketReserved {
            reservation_id: id,
            member_id: 5000 + id,
            reservation_date: day.into(),
        }),
    )
}

/// A batch with a poison event and an undecodable message in the middle: the rest are
/// applied, those two are terminated (never redelivered); everything published again
/// changes nothing.
async fn a_poison_event_does_not_hold_up_the_batch(backend: Backend) {
    let test = TestDb::open::<SharedMigrator>(backend).await;
    let nats = TestNats::connect().await;
    parking_common::nats::ensure_stream(&nats.js, &nats.namespace, EventContext::Reservation, 1)
        .await
        .unwrap();
    let outbox = Outbox::new(&nats.namespace);

    let mut published = Vec::new();
    for id in 1..=9 {
        let day = if id == 5 { "2030-02-30" } else { "2030-03-01" };
        published.push(reserved(id, day));
    }
    let subject = EventContext::Reservation.subject(&nats.namespace, "TicketReserved");
    for (i, e) in published.iter().enumerate() {
        nats.publish(e, Some(&e.event_id)).await;
        if i == 2 {
            nats.publish_raw(&subject, b"\xff\xff not protobuf".to_vec(), None)
                .await;
        }
    }

    let policy = Arc::new(Answer::default());
    let running = nats.run(
        Subscription {
            context: EventContext::Reservation,
            durable: DURABLE.into(),
            event_name: Some("TicketReserved"),
        },
        policy.clone(),
        &test.db,
        outbox.clone(),
    );

    nats.drained(EventContext::Reservation, DURABLE, Duration::from_secs(20))
        .await;
    assert_eq!(running.events("done"), 8);
    assert_eq!(running.events("poison"), 2);
    assert_eq!(running.events("failed"), 0);
    assert_eq!(policy.applied.load(Ordering::SeqCst), 8);
    // Eight answers staged and committed, none for the poison one.
    assert_eq!(outbox::backlog(&test.db).await.unwrap(), 8);

    // Everything again, as new messages: the inbox knows the applied ones; the poison one
    // is refused again.
    for e in &published {
        nats.publish(e, None).await;
    }
    nats.drained(EventContext::Reservation, DURABLE, Duration::from_secs(20))
        .await;
    assert_eq!(running.events("done"), 16);
    assert_eq!(running.events("poison"), 3);
    assert_eq!(policy.applied.load(Ordering::SeqCst), 8);
    assert_eq!(outbox::backlog(&test.db).await.unwrap(), 8);

    running.stop().await;
}

parking_common::on_both_databases!(a_poison_event_does_not_hold_up_the_batch);
