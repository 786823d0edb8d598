//! The view's storage: one row per reservation plus its event history, in sea-orm.
//! Each event is projected in one transaction with its inbox record, so a redelivered
//! event changes nothing and a restart resumes exactly where the durable stopped.

use crate::domain::{apply, Fact, Stage, View};
use chrono::{DateTime, Utc};
use parking_common::consumer::HandleError;
use parking_common::inbox;
use parking_common::paging::Page;
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, QueryOrder, QuerySelect, TransactionTrait};

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

/// The event the projection is applying.
pub struct Projected<'a> {
    pub consumer: &'a str,
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub occurred_at: DateTime<Utc>,
    pub fact: Fact,
}

#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
}

impl Store {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Applies one event to the view; false when it had been applied before.
    pub async fn project(&self, event: Projected<'_>) -> Result<bool, HandleError> {
        let id = event.fact.reservation_id;
        let txn = self.db.begin().await?;
        if !inbox::first_time(&txn, event.consumer, event.event_id).await? {
            txn.rollback().await?;
            return Ok(false);
        }
        let now = Utc::now();
        // Make sure the row exists, then lock it: events of one reservation arrive on three
        // durables at once, and the read-merge-write below must not lose a field.
        view::Entity::insert(view::ActiveModel {
            reservation_id: Set(id),
            member_id: Set(0),
            reservation_date: Set(String::new()),
            stage: Set(Stage::Unspecified.as_str().to_owned()),
            parking_lot_id: Set(0),
            ticket_delivery_id: Set(0),
            space_number: Set(0),
            updated_at: Set(now),
        })
        .on_conflict(
            OnConflict::column(view::Column::ReservationId)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
        view::Entity::update_many()
            .col_expr(view::Column::UpdatedAt, Expr::value(now))
            .filter(view::Column::ReservationId.eq(id))
            .exec(&txn)
            .await?;
        let current = view::Entity::find_by_id(id)
            .one(&txn)
            .await?
            .map(to_view)
            .ok_or_else(|| DbErr::RecordNotFound(format!("status of reservation {id}")))?;
        let next = apply(current, &event.fact);
        view::Entity::update(view::ActiveModel {
            reservation_id: Set(id),
            member_id: Set(next.member_id),
            reservation_date: Set(next.reservation_date.clone()),
            stage: Set(next.stage.as_str().to_owned()),
            parking_lot_id: Set(next.parking_lot_id),
            ticket_delivery_id: Set(next.ticket_delivery_id),
            space_number: Set(next.space_number),
            updated_at: Set(now),
        })
        .exec(&txn)
        .await?;
        history::Entity::insert(history::ActiveModel {
            event_id: Set(event.event_id.to_owned()),
            reservation_id: Set(id),
            event_type: Set(event.event_type.to_owned()),
            stage: Set(event
                .fact
                .stage
                .unwrap_or(Stage::Unspecified)
                .as_str()
                .to_owned()),
            occurred_at: Set(event.occurred_at),
        })
        .on_conflict(
            OnConflict::column(history::Column::EventId)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
        txn.commit().await?;
        Ok(true)
    }

    /// A reservation's status with its history (oldest first).
    pub async fn get(&self, reservation_id: i64) -> Result<Option<Status>, DbErr> {
        let Some(row) = view::Entity::find_by_id(reservation_id)
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let history = history::Entity::find()
            .filter(history::Column::ReservationId.eq(reservation_id))
            .order_by_asc(history::Column::OccurredAt)
            .order_by_asc(history::Column::EventId)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|h| HistoryEntry {
                stage: Stage::parse(&h.stage).unwrap_or(Stage::Unspecified),
                event_id: h.event_id,
                event_type: h.event_type,
                occurred_at: h.occurred_at,
            })
            .collect();
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
