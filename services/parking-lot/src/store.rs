//! The storage port of ParkingLot and its sea-orm adapter.
//!
//! Applications are allocated a batch at a time: the batch's days are locked (PostgreSQL:
//! `SELECT .. FOR UPDATE` in date order, so replicas never wait on each other in a cycle;
//! SQLite: the unit of work holds the database's write lock), read (capacity, counter,
//! highest space handed out and the gaps up to it), decided by the domain, and written
//! back with one conditional update of every day's counter (`occupied = occupied + n WHERE
//! occupied + n <= capacity`, never count-then-insert) and one insert of every allocation:
//! a constant number of statements per batch, however many days and applications. The partial
//! unique index on (day, space) of OCCUPIED allocations is the second guard.

use crate::domain::{allocate, Allocated, AllocationState, LotDay};
use parking_common::db;
use parking_common::unit::UnitOfWork;
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::{Func, OnConflict, Query};
use sea_orm::{ActiveValue::Set, DbBackend, QueryOrder, QuerySelect, TransactionTrait};
use std::collections::{BTreeMap, HashMap, HashSet};

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
        /// The highest space number ever handed out that day.
        pub highest_space: i32,
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
    pub member_id: i64,
    pub date: String,
    pub space_number: Option<i32>,
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
    /// MAX_PARKING: capacity of a day without an override.
    default_capacity: i32,
}

impl Store {
    pub fn new(db: DatabaseConnection, default_capacity: i32) -> Self {
        Self {
            db,
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

    /// Creates the quota rows of `dates` that do not exist yet (default capacity, none taken).
    async fn ensure_days<C: ConnectionTrait>(db: &C, dates: &[String]) -> Result<(), DbErr> {
        quota::Entity::insert_many(dates.iter().map(|date| quota::ActiveModel {
            date: Set(date.clone()),
            capacity: Set(None),
            occupied: Set(0),
            highest_space: Set(0),
        }))
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
        Self::ensure_days(&txn, &[date.to_owned()]).await?;
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

    /// On TicketReserved, for a batch: each application not decided before takes the
    /// lowest free space of its day while the day is under capacity, else is FullyOccupied.
    /// A reservation cancelled first (or decided by an earlier delivery) takes nothing.
    /// Returns the decisions day by day (in date order, the lock order), in the
    /// applications' order within a day.
    pub async fn allocate(
        &self,
        work: &UnitOfWork,
        applications: &[Application],
    ) -> Result<Vec<Decision>, DbErr> {
        let db = work.db();
        let ids: Vec<i64> = applications.iter().map(|a| a.reservation_id).collect();
        let mut decided: HashSet<i64> = HashSet::new();
        for chunk in ids.chunks(db::ROWS_PER_STATEMENT) {
            let rows: Vec<i64> = allocation::Entity::find()
                .select_only()
                .column(allocation::Column::ReservationId)
                .filter(allocation::Column::ReservationId.is_in(chunk.to_vec()))
                .into_tuple()
                .all(db)
                .await?;
            decided.extend(rows);
        }
        // Per day, in date order (the lock order), the applications still to decide.
        let mut by_day: BTreeMap<&str, Vec<&Application>> = BTreeMap::new();
        for application in applications {
            if decided.insert(application.reservation_id) {
                by_day
                    .entry(application.date.as_str())
                    .or_default()
                    .push(application);
            } else {
                tracing::info!(
                    reservation_id = application.reservation_id,
                    "already decided; nothing to allocate"
                );
            }
        }
        if by_day.is_empty() {
            return Ok(Vec::new());
        }
        let dates: Vec<String> = by_day.keys().map(|d| (*d).to_owned()).collect();
        let days = self.lock_days(work, &dates).await?;
        let now = chrono::Utc::now();
        let mut decisions = Vec::with_capacity(applications.len());
        // (day, spaces taken, highest space handed out after) of every day that took some.
        let mut counted: Vec<(String, i32, i32)> = Vec::new();
        for (date, waiting) in &by_day {
            let day = days
                .get(*date)
                .ok_or_else(|| DbErr::RecordNotFound(format!("quota row of {date}")))?;
            let answers = allocate(day, waiting.len());
            let taken = answers
                .iter()
                .filter(|a| matches!(a, Allocated::Occupied { .. }))
                .count() as i32;
            if taken > 0 {
                counted.push(((*date).to_owned(), taken, day.highest_after(&answers)));
            }
            for (application, answer) in waiting.iter().zip(answers) {
                decisions.push(Decision {
                    application: (*application).clone(),
                    parking_lot_id: 0,
                    capacity: day.capacity,
                    answer,
                });
            }
        }
        self.count_taken(work, &counted).await?;
        let ids = self.insert_allocations(work, &decisions, now).await?;
        for decision in &mut decisions {
            decision.parking_lot_id = ids
                .get(&decision.application.reservation_id)
                .copied()
                .ok_or_else(|| {
                    DbErr::RecordNotFound(format!(
                        "allocation of reservation {}",
                        decision.application.reservation_id
                    ))
                })?;
        }
        Ok(decisions)
    }

    /// Creates the days' quota rows if needed and reads them under lock, with, where there
    /// are any, the gaps up to the highest space handed out.
    async fn lock_days(
        &self,
        work: &UnitOfWork,
        dates: &[String],
    ) -> Result<HashMap<String, LotDay>, DbErr> {
        let db = work.db();
        Self::ensure_days(db, dates).await?;
        let rows = work
            .locked(
                quota::Entity::find()
                    .filter(quota::Column::Date.is_in(dates.to_vec()))
                    .order_by_asc(quota::Column::Date),
            )
            .all(db)
            .await?;
        let held_above = self.held_above(work, &rows).await?;
        let mut days = HashMap::with_capacity(rows.len());
        for row in rows {
            let capacity = row.capacity.unwrap_or(self.default_capacity);
            let highest = held_above
                .get(&row.date)
                .copied()
                .flatten()
                .unwrap_or(0)
                .max(row.highest_space);
            let gaps = if LotDay::has_gaps(row.occupied, highest) && row.occupied < capacity {
                self.gaps(work, &row.date, highest.min(capacity)).await?
            } else {
                Vec::new()
            };
            days.insert(
                row.date,
                LotDay {
                    capacity,
                    occupied: row.occupied,
                    highest_handed_out: highest,
                    gaps,
                },
            );
        }
        Ok(days)
    }

    /// The highest space held above each day's highest_space, where one is: a replica older
    /// than that column (a rolling deploy) hands out spaces without raising it. One probe of
    /// the partial index per day, in one statement; empty as a rule. (An OR of ranges over
    /// the allocations table instead was planned as a scan of it and grew with every day.)
    async fn held_above(
        &self,
        work: &UnitOfWork,
        days: &[quota::Model],
    ) -> Result<HashMap<String, Option<i32>>, DbErr> {
        if days.is_empty() {
            return Ok(HashMap::new());
        }
        let backend = work.backend();
        let placeholder = |i: usize| match backend {
            DbBackend::Postgres => format!("${i}"),
            _ => format!("?{i}"),
        };
        let dates: Vec<String> = (2..days.len() + 2).map(placeholder).collect();
        let sql = format!(
            "SELECT q.date, (SELECT MAX(a.space_number) FROM allocations a \
             WHERE a.reservation_date = q.date AND a.state = {} \
             AND a.space_number > q.highest_space) FROM daily_quota q WHERE q.date IN ({})",
            placeholder(1),
            dates.join(", ")
        );
        let mut values: Vec<sea_orm::Value> = vec![AllocationState::Occupied.as_str().into()];
        values.extend(days.iter().map(|d| d.date.clone().into()));
        let statement = sea_orm::Statement::from_sql_and_values(backend, sql, values);
        work.db()
            .query_all(statement)
            .await?
            .into_iter()
            .map(|row| Ok((row.try_get_by_index(0)?, row.try_get_by_index(1)?)))
            .collect()
    }

    /// Free spaces of a day up to `up_to`: vacated and not taken again (the partial unique
    /// index on held spaces answers the NOT EXISTS).
    async fn gaps(&self, work: &UnitOfWork, date: &str, up_to: i32) -> Result<Vec<i32>, DbErr> {
        let held = AllocationState::Occupied.as_str();
        let vacated = AllocationState::Vacated.as_str();
        let backend = work.backend();
        let sql = match backend {
            DbBackend::Postgres => {
                "SELECT DISTINCT v.space_number FROM allocations v \
                 WHERE v.reservation_date = $1 AND v.state = $2 AND v.space_number <= $3 \
                 AND NOT EXISTS (SELECT 1 FROM allocations o WHERE o.reservation_date = $1 \
                 AND o.state = $4 AND o.space_number = v.space_number) ORDER BY 1"
            }
            _ => {
                "SELECT DISTINCT v.space_number FROM allocations v \
                 WHERE v.reservation_date = ?1 AND v.state = ?2 AND v.space_number <= ?3 \
                 AND NOT EXISTS (SELECT 1 FROM allocations o WHERE o.reservation_date = ?1 \
                 AND o.state = ?4 AND o.space_number = v.space_number) ORDER BY 1"
            }
        };
        let statement = sea_orm::Statement::from_sql_and_values(
            backend,
            sql,
            [date.into(), vacated.into(), up_to.into(), held.into()],
        );
        work.db()
            .query_all(statement)
            .await?
            .into_iter()
            .map(|row| row.try_get_by_index::<i32>(0))
            .collect()
    }

    /// Adds the spaces each day took to its counter, in one statement: `occupied + n`
    /// only where it fits the capacity in force (the counter's own guard on the domain's
    /// answer), and the highest space handed out.
    async fn count_taken(
        &self,
        work: &UnitOfWork,
        counted: &[(String, i32, i32)],
    ) -> Result<(), DbErr> {
        if counted.is_empty() {
            return Ok(());
        }
        let by_day = |value: fn(&(String, i32, i32)) -> i32| {
            let mut case = sea_orm::sea_query::CaseStatement::new();
            for day in counted {
                case = case.case(quota::Column::Date.eq(day.0.as_str()), value(day));
            }
            case.finally(0)
        };
        let taken = Expr::expr(by_day(|d| d.1));
        let updated = quota::Entity::update_many()
            .col_expr(
                quota::Column::Occupied,
                Expr::col(quota::Column::Occupied).add(taken.clone()),
            )
            .col_expr(quota::Column::HighestSpace, by_day(|d| d.2).into())
            .filter(quota::Column::Date.is_in(counted.iter().map(|d| d.0.clone())))
            .filter(
                Expr::expr(Expr::col(quota::Column::Occupied).add(taken)).lte(self.capacity_expr()),
            )
            .exec(work.db())
            .await?;
        if updated.rows_affected != counted.len() as u64 {
            return Err(DbErr::Custom(format!(
                "the spaces taken do not fit the capacity of {} of {} days any more",
                counted.len() as u64 - updated.rows_affected,
                counted.len()
            )));
        }
        Ok(())
    }

    /// Inserts the batch's allocations in one statement per chunk; their ids by reservation.
    async fn insert_allocations(
        &self,
        work: &UnitOfWork,
        decisions: &[Decision],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<HashMap<i64, i64>, DbErr> {
        let mut ids = HashMap::with_capacity(decisions.len());
        for chunk in decisions.chunks(db::ROWS_PER_STATEMENT) {
            let mut insert = Query::insert();
            insert
                .into_table(allocation::Entity)
                .columns([
                    allocation::Column::ReservationId,
                    allocation::Column::MemberId,
                    allocation::Column::ReservationDate,
                    allocation::Column::SpaceNumber,
                    allocation::Column::State,
                    allocation::Column::CreatedAt,
                    allocation::Column::UpdatedAt,
                ])
                .returning(
                    Query::returning()
                        .columns([allocation::Column::Id, allocation::Column::ReservationId]),
                );
            for d in chunk {
                let (space, state) = match d.answer {
                    Allocated::Occupied { space } => (Some(space), AllocationState::Occupied),
                    Allocated::FullyOccupied => (None, AllocationState::FullyOccupied),
                };
                db::add_row(
                    &mut insert,
                    [
                        d.application.reservation_id.into(),
                        d.application.member_id.into(),
                        d.application.date.clone().into(),
                        space.into(),
                        state.as_str().into(),
                        now.into(),
                        now.into(),
                    ],
                )?;
            }
            ids.extend(
                db::insert_returning(work.db(), &insert, |row| {
                    Ok((
                        row.try_get::<i64>("", "reservation_id")?,
                        row.try_get::<i64>("", "id")?,
                    ))
                })
                .await?,
            );
        }
        Ok(ids)
    }

    /// The allocation of a reservation, if any.
    pub async fn allocation(&self, reservation_id: i64) -> Result<Option<Allocation>, DbErr> {
        Self::allocation_in(&self.db, reservation_id).await
    }

    /// The allocation of a reservation as `db` (a transaction, say) sees it.
    pub async fn allocation_in<C: ConnectionTrait>(
        db: &C,
        reservation_id: i64,
    ) -> Result<Option<Allocation>, DbErr> {
        let row = allocation::Entity::find()
            .filter(allocation::Column::ReservationId.eq(reservation_id))
            .one(db)
            .await?;
        row.map(|r| {
            let state = AllocationState::parse(&r.state).ok_or_else(|| {
                DbErr::Custom(format!(
                    "allocation {} has unknown state {:?}",
                    r.id, r.state
                ))
            })?;
            Ok(Allocation {
                id: r.id,
                state,
                member_id: r.member_id,
                date: r.reservation_date,
                space_number: r.space_number,
            })
        })
        .transpose()
    }

    /// Remembers a cancellation that came before its application; false when the
    /// application was decided meanwhile.
    pub async fn record_early_cancel(
        work: &UnitOfWork,
        reservation_id: i64,
        member_id: i64,
        date: &str,
    ) -> Result<bool, DbErr> {
        let now = chrono::Utc::now();
        let inserted = allocation::Entity::insert(allocation::ActiveModel {
            id: sea_orm::ActiveValue::NotSet,
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
        .on_conflict(
            OnConflict::column(allocation::Column::ReservationId)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(work.db())
        .await?;
        Ok(inserted == 1)
    }

    /// Frees the space held by `allocation` and gives it back to its day; false when it
    /// was no longer held.
    pub async fn vacate(work: &UnitOfWork, allocation: &Allocation) -> Result<bool, DbErr> {
        let db = work.db();
        let freed = allocation::Entity::update_many()
            .col_expr(
                allocation::Column::State,
                Expr::value(AllocationState::Vacated.as_str()),
            )
            .col_expr(
                allocation::Column::UpdatedAt,
                Expr::value(chrono::Utc::now()),
            )
            .filter(allocation::Column::Id.eq(allocation.id))
            .filter(allocation::Column::State.eq(AllocationState::Occupied.as_str()))
            .exec(db)
            .await?
            .rows_affected
            == 1;
        if freed {
            quota::Entity::update_many()
                .col_expr(
                    quota::Column::Occupied,
                    Expr::col(quota::Column::Occupied).sub(1),
                )
                .filter(quota::Column::Date.eq(allocation.date.as_str()))
                .filter(quota::Column::Occupied.gt(0))
                .exec(db)
                .await?;
        }
        Ok(freed)
    }
}

/// An application to decide (from TicketReserved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Application {
    pub reservation_id: i64,
    pub member_id: i64,
    /// "YYYY-MM-DD", checked.
    pub date: String,
}

/// What allocation decided for one application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub application: Application,
    /// The allocation's id (the seed's ParkingLot id).
    pub parking_lot_id: i64,
    /// The day's capacity when it was decided.
    pub capacity: i32,
    pub answer: Allocated,
}
