//! The storage port of ParkingLot and its sea-orm adapter.
//!
//! The daily quota is enforced by one conditional update of the day's counter
//! (`occupied = occupied + 1 WHERE occupied < capacity`), never by count-then-insert. In
//! PostgreSQL the update row-locks the day, so every allocation of that day is serialised
//! for the rest of its transaction (which is also what makes picking the lowest free space
//! number safe); in SQLite the transaction holds the database's write lock.

use crate::domain::{lowest_free_space, AllocationState};
use parking_common::consumer::HandleError;
use parking_common::db::is_unique_violation;
use parking_common::events::envelope;
use parking_common::inbox;
use parking_common::outbox::Outbox;
use parking_common::pb::event_envelope::Payload;
use parking_common::pb::{FullyOccupied, Occupied, Vacated};
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::{Func, OnConflict};
use sea_orm::{ActiveValue::NotSet, ActiveValue::Set, QuerySelect, TransactionTrait};

pub mod quota {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "daily_quota")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub date: String,
        /// Admin override; `None` means the configured default.
        pub capacity: Option<i32>,
        pub occupied: i32,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod allocation {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "allocations")]
    pub struct Model {
        /// The seed's ParkingLot id.
        #[sea_orm(primary_key)]
        pub id: i64,
        #[sea_orm(unique)]
        pub reservation_id: i64,
        pub member_id: i64,
        pub reservation_date: String,
        pub space_number: Option<i32>,
        pub state: String,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A day's availability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Day {
    pub capacity: i32,
    pub occupied: i32,
}

/// An allocation as the cancel policy needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub id: i64,
    pub state: AllocationState,
}

/// Result of setting a day's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapacitySet {
    Done(Day),
    /// More spaces are taken than the new capacity allows.
    BelowOccupied(Day),
}

#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
    outbox: Outbox,
    /// MAX_PARKING: capacity of a day without an override.
    default_capacity: i32,
}

impl Store {
    pub fn new(db: DatabaseConnection, outbox: Outbox, default_capacity: i32) -> Self {
        Self {
            db,
            outbox,
            default_capacity,
        }
    }

    /// The capacity in force: the override or the default.
    fn capacity_expr(&self) -> sea_orm::sea_query::SimpleExpr {
        Func::coalesce([
            Expr::col(quota::Column::Capacity).into(),
            Expr::val(self.default_capacity).into(),
        ])
        .into()
    }

    async fn ensure_day<C: ConnectionTrait>(&self, db: &C, date: &str) -> Result<(), DbErr> {
        quota::Entity::insert(quota::ActiveModel {
            date: Set(date.to_owned()),
            capacity: Set(None),
            occupied: Set(0),
        })
        .on_conflict(
            OnConflict::column(quota::Column::Date)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
        Ok(())
    }

    /// A day's capacity and occupancy.
    pub async fn day(&self, date: &str) -> Result<Day, DbErr> {
        let row = quota::Entity::find_by_id(date.to_owned())
            .one(&self.db)
            .await?;
        Ok(match row {
            Some(r) => Day {
                capacity: r.capacity.unwrap_or(self.default_capacity),
                occupied: r.occupied,
            },
            None => Day {
                capacity: self.default_capacity,
                occupied: 0,
            },
        })
    }

    /// Every day with a quota row from `from` on (YYYY-MM-DD sorts as dates do).
    pub async fn days_from(&self, from: &str) -> Result<Vec<(String, Day)>, DbErr> {
        let rows = quota::Entity::find()
            .filter(quota::Column::Date.gte(from))
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let day = Day {
                    capacity: r.capacity.unwrap_or(self.default_capacity),
                    occupied: r.occupied,
                };
                (r.date, day)
            })
            .collect())
    }

    /// Sets a day's capacity unless more spaces are already taken.
    pub async fn set_capacity(&self, date: &str, capacity: i32) -> Result<CapacitySet, DbErr> {
        let txn = self.db.begin().await?;
        self.ensure_day(&txn, date).await?;
        let updated = quota::Entity::update_many()
            .col_expr(quota::Column::Capacity, Expr::value(capacity))
            .filter(quota::Column::Date.eq(date))
            .filter(quota::Column::Occupied.lte(capacity))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        let day = self.day(date).await?;
        Ok(if updated.rows_affected == 1 {
            CapacitySet::Done(day)
        } else {
            CapacitySet::BelowOccupied(day)
        })
    }

    /// On TicketReserved: takes a space if the day is under capacity (Occupied), else
    /// FullyOccupied. Once per event; a reservation cancelled first takes nothing.
    pub async fn allocate(
        &self,
        consumer: &str,
        event_id: &str,
        reservation_id: i64,
        member_id: i64,
        date: &str,
    ) -> Result<(), HandleError> {
        let txn = self.db.begin().await?;
        if !inbox::first_time(&txn, consumer, event_id).await? {
            txn.rollback().await?;
            return Ok(());
        }
        let existing = allocation::Entity::find()
            .filter(allocation::Column::ReservationId.eq(reservation_id))
            .one(&txn)
            .await?;
        if let Some(existing) = existing {
            tracing::info!(reservation_id, state = %existing.state, "already decided; nothing to allocate");
            txn.commit().await?;
            return Ok(());
        }
        self.ensure_day(&txn, date).await?;
        let took = quota::Entity::update_many()
            .col_expr(
                quota::Column::Occupied,
                Expr::col(quota::Column::Occupied).add(1),
            )
            .filter(quota::Column::Date.eq(date))
            .filter(Expr::col(quota::Column::Occupied).lt(self.capacity_expr()))
            .exec(&txn)
            .await?
            .rows_affected
            == 1;
        let now = chrono::Utc::now();
        let day = quota::Entity::find_by_id(date.to_owned())
            .one(&txn)
            .await?
            .ok_or_else(|| DbErr::RecordNotFound(format!("quota row of {date}")))?;
        let capacity = day.capacity.unwrap_or(self.default_capacity);
        let (state, space) = if took {
            let taken: Vec<Option<i32>> = allocation::Entity::find()
                .select_only()
                .column(allocation::Column::SpaceNumber)
                .filter(allocation::Column::ReservationDate.eq(date))
                .filter(allocation::Column::State.eq(AllocationState::Occupied.as_str()))
                .into_tuple()
                .all(&txn)
                .await?;
            let taken: Vec<i32> = taken.into_iter().flatten().collect();
            let space = lowest_free_space(&taken, capacity).ok_or_else(|| {
                DbErr::Custom(format!(
                    "counter says a space is free on {date} but none is"
                ))
            })?;
            (AllocationState::Occupied, Some(space))
        } else {
            (AllocationState::FullyOccupied, None)
        };
        let inserted = allocation::Entity::insert(allocation::ActiveModel {
            id: NotSet,
            reservation_id: Set(reservation_id),
            member_id: Set(member_id),
            reservation_date: Set(date.to_owned()),
            space_number: Set(space),
            state: Set(state.as_str().to_owned()),
            created_at: Set(now),
            updated_at: Set(now),
        })
        .exec(&txn)
        .await?;
        let parking_lot_id = inserted.last_insert_id;
        let payload = match space {
            Some(space_number) => Payload::Occupied(Occupied {
                reservation_id,
                member_id,
                reservation_date: date.to_owned(),
                parking_lot_id,
                space_number,
            }),
            None => Payload::FullyOccupied(FullyOccupied {
                reservation_id,
                member_id,
                reservation_date: date.to_owned(),
                capacity,
            }),
        };
        self.outbox
            .stage(&txn, &envelope(reservation_id, payload))
            .await?;
        txn.commit().await?;
        self.outbox.committed();
        tracing::info!(reservation_id, date, ?space, "application decided");
        Ok(())
    }

    /// The allocation of a reservation, if any.
    pub async fn allocation(&self, reservation_id: i64) -> Result<Option<Allocation>, DbErr> {
        let row = allocation::Entity::find()
            .filter(allocation::Column::ReservationId.eq(reservation_id))
            .one(&self.db)
            .await?;
        row.map(|r| {
            AllocationState::parse(&r.state)
                .map(|state| Allocation { id: r.id, state })
                .ok_or_else(|| {
                    DbErr::Custom(format!(
                        "allocation {} has unknown state {:?}",
                        r.id, r.state
                    ))
                })
        })
        .transpose()
    }

    /// Remembers a cancellation that came before its application.
    pub async fn record_early_cancel(
        &self,
        consumer: &str,
        event_id: &str,
        reservation_id: i64,
        member_id: i64,
        date: &str,
    ) -> Result<(), HandleError> {
        let txn = self.db.begin().await?;
        if !inbox::first_time(&txn, consumer, event_id).await? {
            txn.rollback().await?;
            return Ok(());
        }
        let now = chrono::Utc::now();
        let inserted = allocation::Entity::insert(allocation::ActiveModel {
            id: NotSet,
            reservation_id: Set(reservation_id),
            member_id: Set(member_id),
            reservation_date: Set(date.to_owned()),
            space_number: Set(None),
            state: Set(AllocationState::CanceledBeforeAllocation
                .as_str()
                .to_owned()),
            created_at: Set(now),
            updated_at: Set(now),
        })
        .exec_without_returning(&txn)
        .await;
        match inserted {
            Ok(_) => {
                txn.commit().await?;
                tracing::info!(reservation_id, "cancellation recorded before allocation");
                Ok(())
            }
            // The application was decided meanwhile: redeliver and decide again.
            Err(err) if is_unique_violation(&err) => Err(HandleError::Later {
                delay: std::time::Duration::from_millis(100),
                reason: format!("reservation {reservation_id} was allocated meanwhile"),
            }),
            Err(err) => Err(err.into()),
        }
    }

    /// Frees the space of a reservation whose delivery was cancelled, once.
    pub async fn vacate(
        &self,
        consumer: &str,
        event_id: &str,
        reservation_id: i64,
    ) -> Result<(), HandleError> {
        let txn = self.db.begin().await?;
        if !inbox::first_time(&txn, consumer, event_id).await? {
            txn.rollback().await?;
            return Ok(());
        }
        let now = chrono::Utc::now();
        let freed = allocation::Entity::update_many()
            .col_expr(
                allocation::Column::State,
                Expr::value(AllocationState::Vacated.as_str()),
            )
            .col_expr(allocation::Column::UpdatedAt, Expr::value(now))
            .filter(allocation::Column::ReservationId.eq(reservation_id))
            .filter(allocation::Column::State.eq(AllocationState::Occupied.as_str()))
            .exec(&txn)
            .await?
            .rows_affected
            == 1;
        if freed {
            let row = allocation::Entity::find()
                .filter(allocation::Column::ReservationId.eq(reservation_id))
                .one(&txn)
                .await?
                .ok_or_else(|| {
                    DbErr::RecordNotFound(format!("allocation of reservation {reservation_id}"))
                })?;
            quota::Entity::update_many()
                .col_expr(
                    quota::Column::Occupied,
                    Expr::col(quota::Column::Occupied).sub(1),
                )
                .filter(quota::Column::Date.eq(row.reservation_date.as_str()))
                .filter(quota::Column::Occupied.gt(0))
                .exec(&txn)
                .await?;
            let event = envelope(
                reservation_id,
                Payload::Vacated(Vacated {
                    reservation_id,
                    member_id: row.member_id,
                    reservation_date: row.reservation_date.clone(),
                    parking_lot_id: row.id,
                    space_number: row.space_number.unwrap_or_default(),
                }),
            );
            self.outbox.stage(&txn, &event).await?;
            tracing::info!(reservation_id, space = ?row.space_number, "space vacated");
        }
        txn.commit().await?;
        if freed {
            self.outbox.committed();
        }
        Ok(())
    }
}
