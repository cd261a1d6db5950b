//! The queue's depth, sampled every `stats.depth_sample_secs`, so that the console can
//! chart the last hour even just after it opened or the gateway restarted.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(QueueSamples::Table)
                    .if_not_exists()
                    // One row per interval: the gateways that sample the same interval
                    // count the same shared queue, and the first one's row is kept.
                    .col(
                        ColumnDef::new(QueueSamples::At)
                            .timestamp_with_time_zone()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(QueueSamples::Queued)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(QueueSamples::Running)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(QueueSamples::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum QueueSamples {
    Table,
    At,
    Queued,
    Running,
}
