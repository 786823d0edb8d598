//! The projection: follows every event of every context into the view. One durable per
//! stream; the view converges whatever order they arrive in.

use crate::domain::fact_of;
use crate::store::{Projected, Store};
use parking_common::consumer::{Event, HandleError, Policy, Subscription};
use parking_common::events::{from_timestamp, EventContext};
use parking_common::unit::UnitOfWork;
use std::sync::Arc;
use tokio::sync::broadcast;

/// Reservation ids whose status changed in one commit.
pub type Changed = Arc<[i64]>;

pub struct Project {
    /// Reservations whose status changed, a batch at a time, for WatchReservationStatus:
    /// a watcher wakes once per batch, not once per event.
    pub changes: broadcast::Sender<Changed>,
}

impl Project {
    /// One subscription per publishing context.
    pub fn subscriptions() -> Vec<Subscription> {
        EventContext::ALL
            .into_iter()
            .map(|context| Subscription {
                context,
                durable: format!("status-{}", context.token()),
                event_name: None,
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl Policy for Project {
    async fn apply(&self, work: &mut UnitOfWork, events: &[&Event]) -> Result<(), HandleError> {
        let projected: Vec<Projected> = events
            .iter()
            .map(|event| Projected {
                event_id: &event.envelope.event_id,
                event_type: event.name(),
                occurred_at: from_timestamp(event.envelope.occurred_at.as_ref()),
                fact: fact_of(&event.payload),
            })
            .collect();
        Store::project(work, &projected).await?;
        Ok(())
    }

    fn applied(&self, events: &[&Event]) {
        let mut ids: Vec<i64> = events
            .iter()
            .map(|event| fact_of(&event.payload).reservation_id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        // No receiver is fine: nobody is watching.
        let _ = self.changes.send(ids.into());
    }
}
