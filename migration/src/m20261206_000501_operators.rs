//! Operators: when a task's latest attempt started, indexes for the admin task filters
//! (so their counts stay on indexes), and the audit log of admin actions.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Each index and its columns. Finished tasks are found by status and `updated_at` (a
/// terminal task is never updated again), which retention uses too.
const INDEXES: [(&str, &[Tasks]); 4] = [
    ("idx_tasks_created_at", &[Tasks::CreatedAt]),
    ("idx_tasks_started_at", &[Tasks::StartedAt]),
    (
        "idx_tasks_status_updated",
        &[Tasks::Status, Tasks::UpdatedAt],
    ),
    ("idx_tasks_instance", &[Tasks::Instance]),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Tasks::Table)
                    .add_column(ColumnDef::new(Tasks::StartedAt).timestamp_with_time_zone())
                    .to_owned(),
            )
            .await?;
        for (name, columns) in INDEXES {
            let mut index = Index::create();
            index.name(name).table(Tasks::Table);
            for column in columns {
                index.col(*column);
            }
            manager.create_index(index.to_owned()).await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(AuditLog::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(AuditLog::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(AuditLog::At)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    // No foreign key: the log outlives the admin who acted.
                    .col(ColumnDef::new(AuditLog::ActorId).big_integer().not_null())
                    .col(
                        ColumnDef::new(AuditLog::ActorName)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(ColumnDef::new(AuditLog::Action).string_len(64).not_null())
                    .col(ColumnDef::new(AuditLog::Target).string_len(2048))
                    .col(ColumnDef::new(AuditLog::Filter).text())
                    .col(ColumnDef::new(AuditLog::Count).big_integer())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_audit_log_at")
                    .table(AuditLog::Table)
                    .col(AuditLog::At)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(AuditLog::Table).to_owned())
            .await?;
        for (name, _) in INDEXES {
            manager
                .drop_index(Index::drop().name(name).table(Tasks::Table).to_owned())
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Tasks::Table)
                    .drop_column(Tasks::StartedAt)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum Tasks {
    Table,
    StartedAt,
    CreatedAt,
    UpdatedAt,
    Status,
    Instance,
}

#[derive(DeriveIden)]
enum AuditLog {
    Table,
    Id,
    At,
    ActorId,
    ActorName,
    Action,
    Target,
    Filter,
    Count,
}
