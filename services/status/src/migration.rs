//! The schema of the status view (plus the shared outbox and inbox; the outbox stays
//! empty: the view publishes nothing).

use parking_common::db;
use sea_orm_migration::prelude::*;

/// The schema of this context.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        db::with_shared(vec![Box::new(CreateView)])
    }
}

#[derive(DeriveIden)]
enum ReservationStatus {
    Table,
    ReservationId,
    MemberId,
    ReservationDate,
    Stage,
    ParkingLotId,
    TicketDeliveryId,
    SpaceNumber,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum StatusHistory {
    Table,
    EventId,
    ReservationId,
    EventType,
    Stage,
    OccurredAt,
}

struct CreateView;

impl MigrationName for CreateView {
    fn name(&self) -> &str {
        "m0002_status_view_and_history"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateView {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ReservationStatus::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(ReservationStatus::ReservationId)
                            .big_integer()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(ReservationStatus::MemberId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ReservationStatus::ReservationDate)
                            .string_len(10)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ReservationStatus::Stage)
                            .string_len(32)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ReservationStatus::ParkingLotId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ReservationStatus::TicketDeliveryId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ReservationStatus::SpaceNumber)
                            .integer()
                            .not_null(),
                    )
                    .col(db::time_column(ReservationStatus::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        db::execute_sql(
            manager,
            "CREATE INDEX IF NOT EXISTS reservation_status_member ON reservation_status (member_id, reservation_id)",
        )
        .await?;
        manager
            .create_table(
                Table::create()
                    .table(StatusHistory::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(StatusHistory::EventId)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(StatusHistory::ReservationId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(StatusHistory::EventType)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(StatusHistory::Stage)
                            .string_len(32)
                            .not_null(),
                    )
                    .col(db::time_column(StatusHistory::OccurredAt))
                    .to_owned(),
            )
            .await?;
        db::execute_sql(
            manager,
            "CREATE INDEX IF NOT EXISTS status_history_reservation ON status_history (reservation_id, occurred_at)",
        )
        .await
    }
}
