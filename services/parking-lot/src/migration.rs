//! The schema of the ParkingLot context (plus the shared outbox and inbox).

use parking_common::db;
use sea_orm_migration::prelude::*;

/// The schema of this context.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        db::with_shared(vec![
            Box::new(CreateQuotaAndAllocations),
            Box::new(HighestSpace),
        ])
    }
}

#[derive(DeriveIden)]
enum DailyQuota {
    Table,
    Date,
    Capacity,
    Occupied,
    HighestSpace,
}

#[derive(DeriveIden)]
enum Allocations {
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

struct CreateQuotaAndAllocations;

impl MigrationName for CreateQuotaAndAllocations {
    fn name(&self) -> &str {
        "m0002_parking_lot_quota_and_allocations"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateQuotaAndAllocations {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(DailyQuota::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(DailyQuota::Date)
                            .string_len(10)
                            .not_null()
                            .primary_key(),
                    )
                    // Null: the configured default (MAX_PARKING) applies.
                    .col(ColumnDef::new(DailyQuota::Capacity).integer().null())
                    .col(
                        ColumnDef::new(DailyQuota::Occupied)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Allocations::Table)
                    .if_not_exists()
                    .col(db::id_column(Allocations::Id))
                    .col(
                        ColumnDef::new(Allocations::ReservationId)
                            .big_integer()
                            .not_null()
                            .unique_key(),
                    )
                    .col(
                        ColumnDef::new(Allocations::MemberId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Allocations::ReservationDate)
                            .string_len(10)
                            .not_null(),
                    )
                    .col(ColumnDef::new(Allocations::SpaceNumber).integer().null())
                    .col(ColumnDef::new(Allocations::State).string_len(32).not_null())
                    .col(db::time_column(Allocations::CreatedAt))
                    .col(db::time_column(Allocations::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        // Belt and braces under the quota counter: one occupant per space per day.
        db::execute_sql(
            manager,
            "CREATE UNIQUE INDEX IF NOT EXISTS allocations_one_per_space \
             ON allocations (reservation_date, space_number) WHERE state = 'OCCUPIED'",
        )
        .await
    }
}

/// The highest space number a day ever handed out, kept on the day's row: allocation reads
/// it with the day's lock instead of a MAX over the day's allocations at every batch.
struct HighestSpace;

impl MigrationName for HighestSpace {
    fn name(&self) -> &str {
        "m0003_parking_lot_highest_space"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for HighestSpace {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if !manager.has_column("daily_quota", "highest_space").await? {
            manager
                .alter_table(
                    Table::alter()
                        .table(DailyQuota::Table)
                        .add_column(
                            ColumnDef::new(DailyQuota::HighestSpace)
                                .integer()
                                .not_null()
                                .default(0),
                        )
                        .to_owned(),
                )
                .await?;
        }
        // Days allocated before this column: every space up to the highest was handed out.
        db::execute_sql(
            manager,
            "UPDATE daily_quota SET highest_space = COALESCE((SELECT MAX(a.space_number) \
             FROM allocations a WHERE a.reservation_date = daily_quota.date), 0)",
        )
        .await
    }
}
