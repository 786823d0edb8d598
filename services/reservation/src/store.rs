//! The storage port of TicketReservation and its sea-orm adapter. Each write use case is
//! one unit of work holding the aggregate change and its event; ReserveTicket calls that
//! arrive together share one (group commit).

use crate::domain::{settle, Application, ReservationState, Settlement};
use chrono::NaiveDate;
use parking_common::calendar::{format_day, parse_day};
use parking_common::db;
use parking_common::events::envelope;
use parking_common::outbox::Outbox;
use parking_common::paging::Page;
use parking_common::pb::event_envelope::Payload;
use parking_common::pb::{TicketReservationCanceled, TicketReserved};
use parking_common::unit::{Call, GroupCommit, Grouped, UnitOfWork};
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::{OnConflict, Query};
use sea_orm::{QueryOrder, QuerySelect};

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
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    outbox: Outbox,
    /// ReserveTicket's group commit.
    reserving: GroupCommit<ReserveGroup>,
}

/// Most applications stored in one transaction.
const GROUP: usize = 256;

/// ReserveTicket as a group: every application of the group in one
/// `INSERT .. ON CONFLICT DO NOTHING RETURNING`, each TicketReserved staged with it. An
/// application the unique indexes refuse (a second ticket that day, a replayed request id)
/// is answered `None` and explained after the commit.
struct ReserveGroup;

#[async_trait::async_trait]
impl Grouped for ReserveGroup {
    type Request = Application;
    type Answer = Option<TicketReservation>;

    async fn apply(
        &self,
        work: &mut UnitOfWork,
        calls: &[Call<Application>],
    ) -> Result<Vec<Option<TicketReservation>>, DbErr> {
        let now = chrono::Utc::now();
        let mut insert = Query::insert();
        insert
            .into_table(Entity)
            .columns([
                Column::MemberId,
                Column::ReservationDate,
                Column::State,
                Column::RequestId,
                Column::CreatedAt,
                Column::UpdatedAt,
            ])
            .on_conflict(OnConflict::new().do_nothing().to_owned())
            .returning(Query::returning().columns([
                Column::Id,
                Column::MemberId,
                Column::ReservationDate,
                Column::RequestId,
            ]));
        for Call { request: app, .. } in calls {
            db::add_row(
                &mut insert,
                [
                    app.member_id.into(),
                    format_day(app.date).into(),
                    ReservationState::Requested.as_str().into(),
                    app.request_id.clone().into(),
                    now.into(),
                    now.into(),
                ],
            )?;
        }
        let rows = db::insert_returning(work.db(), &insert, |row| {
            Ok((
                row.try_get::<i64>("", "id")?,
                row.try_get::<i64>("", "member_id")?,
                row.try_get::<String>("", "reservation_date")?,
                row.try_get::<Option<String>>("", "request_id")?,
            ))
        })
        .await?;
        let mut answers: Vec<Option<TicketReservation>> = vec![None; calls.len()];
        for (id, member_id, date, request_id) in rows {
            // The first application of the group with these values is the one stored (a
            // member holds one active ticket a day, so no two stored rows share them).
            let Some(at) = calls
                .iter()
                .enumerate()
                .position(|(i, Call { request: app, .. })| {
                    answers[i].is_none()
                        && app.member_id == member_id
                        && format_day(app.date) == date
                        && app.request_id == request_id
                })
            else {
                return Err(DbErr::Custom(format!(
                    "stored reservation {id} matches no application of its group"
                )));
            };
            let app = &calls[at].request;
            work.stage(calls[at].envelope(
                id,
                Payload::TicketReserved(TicketReserved {
                    reservation_id: id,
                    member_id,
                    reservation_date: date,
                }),
            ));
            answers[at] = Some(TicketReservation {
                id,
                member_id,
                date: app.date,
                state: ReservationState::Requested,
                request_id,
            });
        }
        Ok(answers)
    }
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
use entity::{Column, Entity};

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
    /// The store, with ReserveTicket's group commit running (inside a Tokio runtime).
    pub fn new(db: DatabaseConnection, outbox: Outbox) -> Self {
        let reserving = GroupCommit::spawn(ReserveGroup, db.clone(), outbox.clone(), GROUP);
        Self {
            db,
            outbox,
            reserving,
        }
    }

    /// Stores a REQUESTED application and its TicketReserved, or tells why not. Calls
    /// arriving together share one insert and one commit (group commit).
    pub async fn reserve(&self, app: &Application) -> Result<Reserved, DbErr> {
        match self.reserving.call(app.clone()).await? {
            Some(reservation) => Ok(Reserved::New(reservation)),
            None => self.explain_conflict(app).await,
        }
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
            for ids in ids.chunks(db::ROWS_PER_STATEMENT) {
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
