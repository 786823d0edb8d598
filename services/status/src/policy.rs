//! The projection: follows every event of every context into the view. One durable per
//! stream; the view converges whatever order they arrive in.

use crate::domain::fact_of;
use crate::store::{Projected, Store};
use parking_common::consumer::{Event, EventHandler, HandleError, Subscription};
use parking_common::events::{from_timestamp, EventContext};
use tokio::sync::broadcast;

/// Inbox name of the projection (one for the three durables: event ids are unique).
pub const PROJECTION: &str = "status-projection";

pub struct Project {
    pub store: Store,
    /// Reservation ids whose status changed, for WatchReservationStatus.
    pub changes: broadcast::Sender<i64>,
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
impl EventHandler for Project {
    async fn handle(&self, event: &Event) -> Result<(), HandleError> {
        let fact = fact_of(&event.payload);
        let id = fact.reservation_id;
        let applied = self
            .store
            .project(Projected {
                consumer: PROJECTION,
                event_id: &event.envelope.event_id,
                event_type: event.name(),
                occurred_at: from_timestamp(event.envelope.occurred_at.as_ref()),
                fact,
            })
            .await?;
        if applied {
            // No receiver is fine: nobody is watching.
            let _ = self.changes.send(id);
        }
        Ok(())
    }
}
