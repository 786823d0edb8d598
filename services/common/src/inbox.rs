//! The idempotent inbox: a handler records the event id it processed in the same
//! transaction as its effect, so a redelivered event (JetStream is at-least-once) finds
//! its id and changes nothing.

use crate::db;
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::{OnConflict, Query};
use sea_orm::ConnectionTrait;
use std::collections::HashSet;

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

/// Records `event_ids` as processed by `consumer`, in one statement, and returns those
/// that were not recorded before: only their effects may be applied. The rest were
/// applied by an earlier delivery (JetStream is at least once) and change nothing.
///
/// The runner calls it first in the unit of work: it is a write, so SQLite takes its write
/// lock before any read, and PostgreSQL serialises two replicas racing on one event here
/// (the second waits for the first's commit, then finds the id taken).
pub async fn record_new<C: ConnectionTrait>(
    db: &C,
    consumer: &str,
    event_ids: &[&str],
) -> Result<HashSet<String>, DbErr> {
    let mut fresh = HashSet::with_capacity(event_ids.len());
    let now = chrono::Utc::now();
    for chunk in event_ids.chunks(db::ROWS_PER_STATEMENT) {
        let mut insert = Query::insert();
        insert
            .into_table(Entity)
            .columns([Column::Consumer, Column::EventId, Column::ProcessedAt])
            .on_conflict(
                OnConflict::columns([Column::Consumer, Column::EventId])
                    .do_nothing()
                    .to_owned(),
            )
            .returning_col(Column::EventId);
        for id in chunk {
            db::add_row(&mut insert, [consumer.into(), (*id).into(), now.into()])?;
        }
        fresh.extend(db::insert_returning(db, &insert, |row| row.try_get("", "event_id")).await?);
    }
    Ok(fresh)
}
