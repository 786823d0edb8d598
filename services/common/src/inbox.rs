//! The idempotent inbox: a handler records the event id it processed in the same
//! transaction as its effect, so a redelivered event (JetStream is at-least-once) finds
//! its id and changes nothing.

use sea_orm::entity::prelude::*;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, ConnectionTrait};

/// A processed event id, per consumer (one event may feed several policies of one service).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "processed_events")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub consumer: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub event_id: String,
    pub processed_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// Records `event_id` as processed by `consumer`. Returns false when it was already
/// recorded: the caller must then roll back and acknowledge without any effect.
///
/// Call it first in the transaction: it is a write, so SQLite takes its write lock before
/// any read, and PostgreSQL serialises two replicas racing on the same event here.
pub async fn first_time<C: ConnectionTrait>(
    db: &C,
    consumer: &str,
    event_id: &str,
) -> Result<bool, DbErr> {
    let row = ActiveModel {
        consumer: Set(consumer.to_owned()),
        event_id: Set(event_id.to_owned()),
        processed_at: Set(chrono::Utc::now()),
    };
    let inserted = Entity::insert(row)
        .on_conflict(
            OnConflict::columns([Column::Consumer, Column::EventId])
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok(inserted == 1)
}
