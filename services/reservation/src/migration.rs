//! The schema of the TicketReservation context (plus the shared outbox and inbox).

use parking_common::db;
use sea_orm_migration::prelude::*;

/// The schema of this context.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        db::with_shared(vec![Box::new(CreateReservations)])
    }
}

#[derive(DeriveIden)]
enum Reservations {
    Table,
    Id,
    MemberId,
    ReservationDate,
    State,
    RequestId,
    CreatedAt,
    UpdatedAt,
}

struct CreateReservations;

impl MigrationName for CreateReservations {
    fn name(&self) -> &str {
        "m0002_reservation_reservations"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateReservations {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Reservations::Table)
                    .if_not_exists()
                    .col(db::id_column(Reservations::Id))
                    .col(
                        ColumnDef::new(Reservations::MemberId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Reservations::ReservationDate)
                            .string_len(10)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Reservations::State)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Reservations::RequestId)
                            .string_len(128)
                            .null(),
                    )
                    .col(db::time_column(Reservations::CreatedAt))
                    .col(db::time_column(Reservations::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        // A member holds one ticket per day: enforced by the database, not by a read first.
        db::execute_sql(
            manager,
            "CREATE UNIQUE INDEX IF NOT EXISTS reservations_one_active_per_day \
             ON reservations (member_id, reservation_date) WHERE state IN ('REQUESTED', 'CONFIRMED')",
        )
        .await?;
        db::execute_sql(
            manager,
            "CREATE UNIQUE INDEX IF NOT EXISTS reservations_request_id ON reservations (member_id, request_id)",
        )
        .await
    }
}
