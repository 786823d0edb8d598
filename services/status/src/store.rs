//! The view's storage: one row per reservation plus its event history, in sea-orm.
//! A batch of events is projected in the consumer's unit of work with their inbox records,
//! so a redelivered event changes nothing and a restart resumes exactly where the durable
//! stopped. Five statements per batch, whatever its size: create the missing rows, read
//! (and on PostgreSQL lock) them, fold the facts in memory, write them back in one upsert,
//! append the history.

use crate::domain::{apply, Fact, Stage, View};
use chrono::{DateTime, Utc};
use parking_common::db;
use parking_common::paging::Page;
use parking_common::unit::UnitOfWork;
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, QueryOrder, QuerySelect};
use std::collections::HashMap;

mod view {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "reservation_status")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub reservation_id: i64,
        pub member_id: i64,
        pub reservation_date: String,
        pub stage: String,
        pub parking_lot_id: i64,
        pub ticket_delivery_id: i64,
        pub space_number: i32,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

mod history {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "status_history")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub event_id: String,
        pub reservation_id: i64,
        pub event_type: String,
        pub stage: String,
        pub occurred_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// One event in a reservation's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub event_id: String,
    pub event_type: String,
    pub stage: Stage,
    pub occurred_at: DateTime<Utc>,
}

/// A reservation's status with its history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub view: View,
    pub history: Vec<HistoryEntry>,
}

fn to_view(m: view::Model) -> View {
    View {
        reservation_id: m.reservation_id,
        member_id: m.member_id,
        reservation_date: m.reservation_date,
        stage: Stage::parse(&m.stage).unwrap_or(Stage::Unspecified),
        parking_lot_id: m.parking_lot_id,
        ticket_delivery_id: m.ticket_delivery_id,
        space_number: m.space_number,
    }
}

/// An event the projection is applying.
pub struct Projected<'a> {
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub occurred_at: DateTime<Utc>,
    pub fact: Fact,
}

fn to_row(view: &View, now: DateTime<Utc>) -> view::ActiveModel {
    view::ActiveModel {
        reservation_id: Set(view.reservation_id),
        member_id: Set(view.member_id),
        reservation_date: Set(view.reservation_date.clone()),
        stage: Set(view.stage.as_str().to_owned()),
        parking_lot_id: Set(view.parking_lot_id),
        ticket_delivery_id: Set(view.ticket_delivery_id),
        space_number: Set(view.space_number),
        updated_at: Set(now),
    }
}

#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
}

impl Store {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Applies `events` (in stream order) to the view; returns the reservations changed.
    pub async fn project(work: &UnitOfWork, events: &[Projected<'_>]) -> Result<Vec<i64>, DbErr> {
        let mut ids: Vec<i64> = events.iter().map(|e| e.fact.reservation_id).collect();
        // Sorted: replicas and the three durables lock rows in one order, never in a cycle.
        ids.sort_unstable();
        ids.dedup();
        let now = Utc::now();
        // Make sure the rows exist, then lock them: events of one reservation arrive on
        // three durables at once, and the read-merge-write below must not lose a field.
        for chunk in ids.chunks(db::ROWS_PER_STATEMENT) {
            view::Entity::insert_many(chunk.iter().map(|id| to_row(&View::empty(*id), now)))
                .on_conflict(
                    OnConflict::column(view::Column::ReservationId)
                        .do_nothing()
                        .to_owned(),
                )
                .exec_without_returning(work.db())
                .await?;
        }
        let mut views: HashMap<i64, View> = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(db::ROWS_PER_STATEMENT) {
            let query = view::Entity::find()
                .filter(view::Column::ReservationId.is_in(chunk.to_vec()))
                .order_by_asc(view::Column::ReservationId);
            for row in work.locked(query).all(work.db()).await? {
                views.insert(row.reservation_id, to_view(row));
            }
        }
        for event in events {
            let id = event.fact.reservation_id;
            let current = views.remove(&id).unwrap_or_else(|| View::empty(id));
            views.insert(id, apply(current, &event.fact));
        }
        let rows: Vec<view::ActiveModel> = ids
            .iter()
            .filter_map(|id| views.get(id))
            .map(|view| to_row(view, now))
            .collect();
        for chunk in rows.chunks(db::ROWS_PER_STATEMENT) {
            view::Entity::insert_many(chunk.to_vec())
                .on_conflict(
                    OnConflict::column(view::Column::ReservationId)
                        .update_columns([
                            view::Column::MemberId,
                            view::Column::ReservationDate,
                            view::Column::Stage,
                            view::Column::ParkingLotId,
                            view::Column::TicketDeliveryId,
                            view::Column::SpaceNumber,
                            view::Column::UpdatedAt,
                        ])
                        .to_owned(),
                )
                .exec_without_returning(work.db())
                .await?;
        }
        let history: Vec<history::ActiveModel> = events
            .iter()
            .map(|event| history::ActiveModel {
                event_id: Set(event.event_id.to_owned()),
                reservation_id: Set(event.fact.reservation_id),
                event_type: Set(event.event_type.to_owned()),
                stage: Set(event
                    .fact
                    .stage
                    .unwrap_or(Stage::Unspecified)
                    .as_str()
                    .to_owned()),
                occurred_at: Set(event.occurred_at),
            })
            .collect();
        for chunk in history.chunks(db::ROWS_PER_STATEMENT) {
            history::Entity::insert_many(chunk.to_vec())
                .on_conflict(
                    OnConflict::column(history::Column::EventId)
                        .do_nothing()
                        .to_owned(),
                )
                .exec_without_returning(work.db())
                .await?;
        }
        Ok(ids)
    }

    /// A reservation's status with its history (oldest first), both as of one moment: a
    /// projection committing between the two reads would otherwise pair an older view with
    /// a newer history.
    pub async fn get(&self, reservation_id: i64) -> Result<Option<Status>, DbErr> {
        let snapshot = db::snapshot(&self.db).await?;
        let Some(row) = view::Entity::find_by_id(reservation_id)
            .one(&snapshot)
            .await?
        else {
            snapshot.commit().await?;
            return Ok(None);
        };
        let history = history::Entity::find()
            .filter(history::Column::ReservationId.eq(reservation_id))
            .order_by_asc(history::Column::OccurredAt)
            .order_by_asc(history::Column::EventId)
            .all(&snapshot)
            .await?
            .into_iter()
            .map(|h| HistoryEntry {
                stage: Stage::parse(&h.stage).unwrap_or(Stage::Unspecified),
                event_id: h.event_id,
                event_type: h.event_type,
                occurred_at: h.occurred_at,
            })
            .collect();
        snapshot.commit().await?;
        Ok(Some(Status {
            view: to_view(row),
            history,
        }))
    }

    /// Statuses filtered by member and/or day, by reservation id.
    pub async fn list(
        &self,
        member_id: Option<i64>,
        date: Option<&str>,
        page: Page,
    ) -> Result<Vec<View>, DbErr> {
        let mut query = view::Entity::find().filter(view::Column::ReservationId.gt(page.after_id));
        if let Some(m) = member_id {
            query = query.filter(view::Column::MemberId.eq(m));
        }
        if let Some(d) = date {
            query = query.filter(view::Column::ReservationDate.eq(d));
        }
        Ok(query
            .order_by_asc(view::Column::ReservationId)
            .limit(page.size)
            .all(&self.db)
            .await?
            .into_iter()
            .map(to_view)
            .collect())
    }
}
