//! The storage port of TicketDelivery and its sea-orm adapter.

use crate::domain::{ship, DeliveryState, Ship, CANCELLABLE, SHIPPABLE};
use parking_common::db;
use parking_common::events::envelope;
use parking_common::outbox::Outbox;
use parking_common::paging::Page;
use parking_common::pb::event_envelope::Payload;
use parking_common::pb::{DeliveryCanceled, Shipped};
use parking_common::unit::UnitOfWork;
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::{OnConflict, Query};
use sea_orm::{
    ActiveValue::NotSet, ActiveValue::Set, DatabaseTransaction, QueryOrder, QuerySelect,
};
use std::collections::HashMap;

mod entity {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "deliveries")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        #[sea_orm(unique)]
        pub reservation_id: i64,
        /// 0 while only a cancellation is known.
        pub member_id: i64,
        /// Empty while only a cancellation is known.
        pub reservation_date: String,
        pub space_number: i32,
        pub state: String,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
use entity::{ActiveModel, Column, Entity};

/// A delivery order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketDelivery {
    pub id: i64,
    pub reservation_id: i64,
    pub member_id: i64,
    pub reservation_date: String,
    pub space_number: i32,
    pub state: DeliveryState,
}

fn to_domain(m: entity::Model) -> Result<TicketDelivery, DbErr> {
    let state = DeliveryState::parse(&m.state).ok_or_else(|| {
        DbErr::Custom(format!("delivery {} has unknown state {:?}", m.id, m.state))
    })?;
    Ok(TicketDelivery {
        id: m.id,
        reservation_id: m.reservation_id,
        member_id: m.member_id,
        reservation_date: m.reservation_date,
        space_number: m.space_number,
        state,
    })
}

/// What ShipTicket did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shipping {
    Done(TicketDelivery),
    Refused(TicketDelivery),
    NotFound,
}

/// A new order's details, from Occupied.
#[derive(Debug, Clone)]
pub struct Order {
    pub reservation_id: i64,
    pub member_id: i64,
    pub reservation_date: String,
    pub space_number: i32,
}

#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
    outbox: Outbox,
}

impl Store {
    pub fn new(db: DatabaseConnection, outbox: Outbox) -> Self {
        Self { db, outbox }
    }

    /// Inserts an order unless one (or a recorded cancellation) exists; true if inserted.
    async fn insert_once(
        txn: &DatabaseTransaction,
        order: &Order,
        state: DeliveryState,
    ) -> Result<bool, DbErr> {
        let now = chrono::Utc::now();
        let inserted = Entity::insert(ActiveModel {
            id: NotSet,
            reservation_id: Set(order.reservation_id),
            member_id: Set(order.member_id),
            reservation_date: Set(order.reservation_date.clone()),
            space_number: Set(order.space_number),
            state: Set(state.as_str().to_owned()),
            created_at: Set(now),
            updated_at: Set(now),
        })
        .on_conflict(
            OnConflict::column(Column::ReservationId)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;
        Ok(inserted == 1)
    }

    async fn by_reservation<C: ConnectionTrait>(
        db: &C,
        reservation_id: i64,
    ) -> Result<Option<TicketDelivery>, DbErr> {
        Entity::find()
            .filter(Column::ReservationId.eq(reservation_id))
            .one(db)
            .await?
            .map(to_domain)
            .transpose()
    }

    /// On Occupied: puts orders on the manager's list in one statement, each once; an
    /// order (or a cancellation recorded earlier) already there keeps its place. Returns the
    /// orders inserted with their delivery ids.
    pub async fn request_all<'a>(
        work: &UnitOfWork,
        orders: &[&'a Order],
    ) -> Result<Vec<(&'a Order, i64)>, DbErr> {
        let now = chrono::Utc::now();
        let mut placed = Vec::with_capacity(orders.len());
        for chunk in orders.chunks(db::ROWS_PER_STATEMENT) {
            let mut insert = Query::insert();
            insert
                .into_table(Entity)
                .columns([
                    Column::ReservationId,
                    Column::MemberId,
                    Column::ReservationDate,
                    Column::SpaceNumber,
                    Column::State,
                    Column::CreatedAt,
                    Column::UpdatedAt,
                ])
                .on_conflict(
                    OnConflict::column(Column::ReservationId)
                        .do_nothing()
                        .to_owned(),
                )
                .returning(Query::returning().columns([Column::ReservationId, Column::Id]));
            for order in chunk {
                db::add_row(
                    &mut insert,
                    [
                        order.reservation_id.into(),
                        order.member_id.into(),
                        order.reservation_date.clone().into(),
                        order.space_number.into(),
                        DeliveryState::Requested.as_str().into(),
                        now.into(),
                        now.into(),
                    ],
                )?;
            }
            let ids: HashMap<i64, i64> = db::insert_returning(work.db(), &insert, |row| {
                Ok((row.try_get("", "reservation_id")?, row.try_get("", "id")?))
            })
            .await?
            .into_iter()
            .collect();
            placed.extend(
                chunk
                    .iter()
                    .filter_map(|order| ids.get(&order.reservation_id).map(|id| (*order, *id))),
            );
        }
        Ok(placed)
    }

    /// Cancels a reservation's delivery; idempotent. Without an order yet, records the
    /// cancellation so a late Occupied creates none.
    pub async fn cancel(&self, reservation_id: i64) -> Result<TicketDelivery, DbErr> {
        let mut work = UnitOfWork::begin(&self.db, &self.outbox).await?;
        let txn = work.db();
        let mut changed = Self::mark_canceled(txn, reservation_id).await?;
        let mut recorded = false;
        if !changed {
            recorded = Self::insert_once(
                txn,
                &Order {
                    reservation_id,
                    member_id: 0,
                    reservation_date: String::new(),
                    space_number: 0,
                },
                DeliveryState::Canceled,
            )
            .await?;
            if !recorded {
                // The insert met an order committed after our first UPDATE looked (PostgreSQL
                // READ COMMITTED: it waited for that insert); cancel it now that it is visible.
                changed = Self::mark_canceled(txn, reservation_id).await?;
            }
        }
        let row = Self::by_reservation(txn, reservation_id)
            .await?
            .ok_or_else(|| {
                DbErr::RecordNotFound(format!("delivery of reservation {reservation_id}"))
            })?;
        if row.state != DeliveryState::Canceled {
            return Err(DbErr::Custom(format!(
                "delivery of reservation {reservation_id} is {:?} after cancelling",
                row.state
            )));
        }
        if changed || recorded {
            work.stage(envelope(
                reservation_id,
                Payload::DeliveryCanceled(DeliveryCanceled {
                    reservation_id,
                    delivery_id: row.id,
                }),
            ));
        }
        work.commit().await?;
        if changed || recorded {
            tracing::info!(
                reservation_id,
                delivery_id = row.id,
                recorded_first = recorded,
                "delivery canceled"
            );
        }
        Ok(row)
    }

    /// REQUESTED or SHIPPED -> CANCELED; true if a row changed.
    async fn mark_canceled(txn: &DatabaseTransaction, reservation_id: i64) -> Result<bool, DbErr> {
        Ok(Entity::update_many()
            .col_expr(Column::State, Expr::value(DeliveryState::Canceled.as_str()))
            .col_expr(Column::UpdatedAt, Expr::value(chrono::Utc::now()))
            .filter(Column::ReservationId.eq(reservation_id))
            .filter(Column::State.is_in(CANCELLABLE.map(|s| s.as_str())))
            .exec(txn)
            .await?
            .rows_affected
            == 1)
    }

    /// The manager hands the ticket over.
    pub async fn ship(&self, delivery_id: i64) -> Result<Shipping, DbErr> {
        let mut work = UnitOfWork::begin(&self.db, &self.outbox).await?;
        // The conditional update is the guard: two managers shipping at once, one wins.
        let shipped = Entity::update_many()
            .col_expr(Column::State, Expr::value(DeliveryState::Shipped.as_str()))
            .col_expr(Column::UpdatedAt, Expr::value(chrono::Utc::now()))
            .filter(Column::Id.eq(delivery_id))
            .filter(Column::State.is_in(SHIPPABLE.map(|s| s.as_str())))
            .exec(work.db())
            .await?
            .rows_affected
            == 1;
        let Some(row) = Entity::find_by_id(delivery_id).one(work.db()).await? else {
            work.rollback().await?;
            return Ok(Shipping::NotFound);
        };
        let row = to_domain(row)?;
        if shipped {
            work.stage(envelope(
                row.reservation_id,
                Payload::Shipped(Shipped {
                    reservation_id: row.reservation_id,
                    delivery_id,
                }),
            ));
            work.commit().await?;
            tracing::info!(
                delivery_id,
                reservation_id = row.reservation_id,
                "ticket shipped"
            );
            return Ok(Shipping::Done(row));
        }
        work.rollback().await?;
        Ok(match ship(row.state) {
            Ship::Refused => Shipping::Refused(row),
            Ship::Now | Ship::Already => Shipping::Done(row),
        })
    }

    /// The manager's list, oldest first.
    pub async fn list(
        &self,
        date: Option<&str>,
        state: Option<DeliveryState>,
        page: Page,
    ) -> Result<Vec<TicketDelivery>, DbErr> {
        let mut query = Entity::find().filter(Column::Id.gt(page.after_id));
        if let Some(date) = date {
            query = query.filter(Column::ReservationDate.eq(date));
        }
        if let Some(state) = state {
            query = query.filter(Column::State.eq(state.as_str()));
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
}
