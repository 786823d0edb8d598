//! The schema of the TicketDelivery context (plus the shared outbox and inbox).

use parking_common::db;
use sea_orm_migration::prelude::*;

/// The schema of this context.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        db::with_shared(vec![Box::new(CreateDeliveries)])
    }
}

#[derive(DeriveIden)]
enum Deliveries {
    Table,
    Id,
    ReservationId,
    MemberId,
    ReservationDate,
    SpaceNumber,
    State,
    CreatedAt,
    UpdatedAt,
}

struct CreateDeliveries;

impl MigrationName for CreateDeliveries {
    fn name(&self) -> &str {
        "m0002_delivery_deliveries"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateDeliveries {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Deliveries::Table)
                    .if_not_exists()
                    .col(db::id_column(Deliveries::Id))
                    // One order per reservation; a cancellation recorded first holds the place.
                    .col(
                        ColumnDef::new(Deliveries::ReservationId)
                            .big_integer()
                            .not_null()
                            .unique_key(),
                    )
                    .col(
                        ColumnDef::new(Deliveries::MemberId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Deliveries::ReservationDate)
                            .string_len(10)
                            .not_null(),
                    )
                    .col(ColumnDef::new(Deliveries::SpaceNumber).integer().not_null())
                    .col(ColumnDef::new(Deliveries::State).string_len(16).not_null())
                    .col(db::time_column(Deliveries::CreatedAt))
                    .col(db::time_column(Deliveries::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        db::execute_sql(
            manager,
            "CREATE INDEX IF NOT EXISTS deliveries_work_list ON deliveries (reservation_date, state, id)",
        )
        .await
    }
}
