//! The storage port of TicketReservation and its sea-orm adapter. Each write use case is
//! one unit of work holding the aggregate change and its event.

use crate::domain::{settle, Application, ReservationState, Settlement};
use chrono::NaiveDate;
use parking_common::calendar::{format_day, parse_day};
use parking_common::db::is_unique_violation;
use parking_common::events::envelope;
use parking_common::outbox::Outbox;
use parking_common::paging::Page;
use parking_common::pb::event_envelope::Payload;
use parking_common::pb::{TicketReservationCanceled, TicketReserved};
use parking_common::unit::UnitOfWork;
use sea_orm::entity::prelude::*;
use sea_orm::{ActiveValue::NotSet, ActiveValue::Set, QueryOrder, QuerySelect};

/// A stored reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketReservation {
    pub id: i64,
    pub member_id: i64,
    pub date: NaiveDate,
    pub state: ReservationState,
    pub request_id: Option<String>,
}

/// What `reserve` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    /// A new application was stored.
    New(TicketReservation),
    /// The request_id was seen before: the first result.
    Replayed(TicketReservation),
    /// The request_id was used before for another application.
    RequestIdReused(TicketReservation),
    /// The member already holds an active application for that day.
    MemberHoldsDay,
}

/// What `cancel` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancelled {
    Now(TicketReservation),
    AlreadyCanceled,
    NotFound,
}

/// The persistence port of the TicketReservation context.
#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
    outbox: Outbox,
}

mod entity {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "reservations")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub member_id: i64,
        /// "YYYY-MM-DD": sorts and compares as the day does.
        pub reservation_date: String,
        pub state: String,
        pub request_id: Option<String>,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
use entity::{ActiveModel, Column, Entity};

fn to_domain(m: entity::Model) -> Result<TicketReservation, DbErr> {
    let state = ReservationState::parse(&m.state).ok_or_else(|| {
        DbErr::Custom(format!(
            "reservation {} has unknown state {:?}",
            m.id, m.state
        ))
    })?;
    let date = parse_day("reservation_date", &m.reservation_date)
        .map_err(|e| DbErr::Custom(e.to_string()))?;
    Ok(TicketReservation {
        id: m.id,
        member_id: m.member_id,
        date,
        state,
        request_id: m.request_id,
    })
}

impl Store {
    pub fn new(db: DatabaseConnection, outbox: Outbox) -> Self {
        Self { db, outbox }
    }

    /// Stores a REQUESTED application and its TicketReserved, or tells why not.
    pub async fn reserve(&self, app: &Application) -> Result<Reserved, DbErr> {
        let now = chrono::Utc::now();
        let mut work = UnitOfWork::begin(&self.db, &self.outbox).await?;
        let inserted = Entity::insert(ActiveModel {
            id: NotSet,
            member_id: Set(app.member_id),
            reservation_date: Set(format_day(app.date)),
            state: Set(ReservationState::Requested.as_str().to_owned()),
            request_id: Set(app.request_id.clone()),
            created_at: Set(now),
            updated_at: Set(now),
        })
        .exec(work.db())
        .await;
        let id = match inserted {
            Ok(r) => r.last_insert_id,
            Err(err) if is_unique_violation(&err) => {
                work.rollback().await?;
                return self.explain_conflict(app).await;
            }
            Err(err) => return Err(err),
        };
        let reservation = TicketReservation {
            id,
            member_id: app.member_id,
            date: app.date,
            state: ReservationState::Requested,
            request_id: app.request_id.clone(),
        };
        work.stage(envelope(
            id,
            Payload::TicketReserved(TicketReserved {
                reservation_id: id,
                member_id: app.member_id,
                reservation_date: format_day(app.date),
            }),
        ));
        work.commit().await?;
        Ok(Reserved::New(reservation))
    }

    /// After a unique violation: a replay of the same request, or a second ticket.
    async fn explain_conflict(&self, app: &Application) -> Result<Reserved, DbErr> {
        if let Some(request_id) = &app.request_id {
            let first = Entity::find()
                .filter(Column::MemberId.eq(app.member_id))
                .filter(Column::RequestId.eq(request_id.as_str()))
                .one(&self.db)
                .await?;
            if let Some(first) = first {
                let first = to_domain(first)?;
                return Ok(if first.date == app.date {
                    Reserved::Replayed(first)
                } else {
                    Reserved::RequestIdReused(first)
                });
            }
        }
        Ok(Reserved::MemberHoldsDay)
    }

    /// Cancels and stages TicketReservationCanceled, atomically.
    pub async fn cancel(&self, id: i64) -> Result<Cancelled, DbErr> {
        let mut work = UnitOfWork::begin(&self.db, &self.outbox).await?;
        // The conditional update is the guard: two concurrent cancels, one wins.
        let updated = Entity::update_many()
            .col_expr(
                Column::State,
                Expr::value(ReservationState::Canceled.as_str()),
            )
            .col_expr(Column::UpdatedAt, Expr::value(chrono::Utc::now()))
            .filter(Column::Id.eq(id))
            .filter(Column::State.is_in(ReservationState::CANCELLABLE.map(|s| s.as_str())))
            .exec(work.db())
            .await?;
        if updated.rows_affected == 0 {
            work.rollback().await?;
            return Ok(match self.get(id).await? {
                Some(_) => Cancelled::AlreadyCanceled,
                None => Cancelled::NotFound,
            });
        }
        let Some(row) = Entity::find_by_id(id).one(work.db()).await? else {
            return Err(DbErr::RecordNotFound(format!(
                "reservation {id} vanished in its transaction"
            )));
        };
        let reservation = to_domain(row)?;
        work.stage(envelope(
            id,
            Payload::TicketReservationCanceled(TicketReservationCanceled {
                reservation_id: id,
                member_id: reservation.member_id,
                reservation_date: format_day(reservation.date),
            }),
        ));
        work.commit().await?;
        Ok(Cancelled::Now(reservation))
    }

    pub async fn get(&self, id: i64) -> Result<Option<TicketReservation>, DbErr> {
        Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .map(to_domain)
            .transpose()
    }

    /// One member's reservations (every member's for `None`), oldest first.
    pub async fn list(
        &self,
        member_id: Option<i64>,
        page: Page,
    ) -> Result<Vec<TicketReservation>, DbErr> {
        let mut query = Entity::find().filter(Column::Id.gt(page.after_id));
        if let Some(member_id) = member_id {
            query = query.filter(Column::MemberId.eq(member_id));
        }
        query
            .order_by_asc(Column::Id)
            .limit(page.size)
            .all(&self.db)
            .await?
            .into_iter()
            .map(to_domain)
            .collect()
    }

    /// Applies ParkingLot's answers in bulk: one conditional update per kind of answer.
    /// Only REQUESTED reservations are settled, as the domain says (a member who cancelled
    /// before the answer stays cancelled); the filter makes it atomic.
    pub async fn settle(work: &UnitOfWork, answers: &[(i64, Settlement)]) -> Result<(), DbErr> {
        let from = ReservationState::Requested;
        let now = chrono::Utc::now();
        for answer in [Settlement::Occupied, Settlement::FullyOccupied] {
            let Some(to) = settle(from, answer) else {
                continue;
            };
            let ids: Vec<i64> = answers
                .iter()
                .filter(|(_, a)| *a == answer)
                .map(|(id, _)| *id)
                .collect();
            for ids in ids.chunks(1000) {
                let updated = Entity::update_many()
                    .col_expr(Column::State, Expr::value(to.as_str()))
                    .col_expr(Column::UpdatedAt, Expr::value(now))
                    .filter(Column::Id.is_in(ids.to_vec()))
                    .filter(Column::State.eq(from.as_str()))
                    .exec(work.db())
                    .await?;
                if updated.rows_affected < ids.len() as u64 {
                    tracing::info!(
                        answers = ids.len(),
                        settled = updated.rows_affected,
                        ?answer,
                        "some answers were for reservations no longer REQUESTED; nothing to settle there"
                    );
                }
            }
        }
        Ok(())
    }
}
