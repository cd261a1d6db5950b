//! Idempotent submission: a task remembers the client's `Idempotency-Key` (unique per
//! user) and a hash of the request it came with.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one thing at a time.
        manager
            .alter_table(
                Table::alter()
                    .table(Tasks::Table)
                    .add_column(ColumnDef::new(Tasks::IdempotencyKey).string_len(255))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Tasks::Table)
                    .add_column(ColumnDef::new(Tasks::RequestHash).string_len(64))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_tasks_user_id_idempotency_key")
                    .table(Tasks::Table)
                    .col(Tasks::UserId)
                    .col(Tasks::IdempotencyKey)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_tasks_user_id_idempotency_key")
                    .table(Tasks::Table)
                    .to_owned(),
            )
            .await?;
        for column in [Tasks::RequestHash, Tasks::IdempotencyKey] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Tasks::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Tasks {
    Table,
    UserId,
    IdempotencyKey,
    RequestHash,
}
