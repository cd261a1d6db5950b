//! Several gateways on one PostgreSQL: who holds a task and until when (its lease), the
//! order tasks are claimed in across processes (`fair_key`), when a retried task may run
//! again, the live processes (`nodes`), the backends' call slots shared by every process
//! (`slots`), and small shared counters (`cluster_state`). One SQLite file has one
//! gateway, which uses none of these but `fair_key` and `run_after`.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [
            ColumnDef::new(Tasks::Holder).string_len(64).to_owned(),
            ColumnDef::new(Tasks::LeaseUntil)
                .timestamp_with_time_zone()
                .to_owned(),
            ColumnDef::new(Tasks::FairKey)
                .big_integer()
                .not_null()
                .default(0)
                .to_owned(),
            ColumnDef::new(Tasks::RunAfter)
                .timestamp_with_time_zone()
                .to_owned(),
        ] {
            let mut column = column;
            manager
                .alter_table(
                    Table::alter()
                        .table(Tasks::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        // The claim: QUEUED tasks in fair order.
        manager
            .create_index(
                Index::create()
                    .name("idx_tasks_status_fair")
                    .table(Tasks::Table)
                    .col(Tasks::Status)
                    .col(Tasks::FairKey)
                    .col(Tasks::Id)
                    .to_owned(),
            )
            .await?;
        // A user's unfinished tasks, for the quota and their fair place.
        manager
            .create_index(
                Index::create()
                    .name("idx_tasks_user_status")
                    .table(Tasks::Table)
                    .col(Tasks::UserId)
                    .col(Tasks::Status)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Nodes::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Nodes::Id)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Nodes::Host).string_len(255).not_null())
                    .col(ColumnDef::new(Nodes::Pid).integer().not_null())
                    .col(
                        ColumnDef::new(Nodes::StartedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Nodes::HeartbeatAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Nodes::Running)
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
                    .table(Slots::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Slots::InstanceKey)
                            .string_len(2100)
                            .not_null(),
                    )
                    .col(ColumnDef::new(Slots::Slot).integer().not_null())
                    .col(ColumnDef::new(Slots::Holder).string_len(64))
                    .col(ColumnDef::new(Slots::HeldUntil).timestamp_with_time_zone())
                    .primary_key(Index::create().col(Slots::InstanceKey).col(Slots::Slot))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ClusterState::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(ClusterState::Key)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(ClusterState::Value).big_integer().not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            ClusterState::Table.into_iden(),
            Slots::Table.into_iden(),
            Nodes::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        for index in ["idx_tasks_user_status", "idx_tasks_status_fair"] {
            manager
                .drop_index(Index::drop().name(index).table(Tasks::Table).to_owned())
                .await?;
        }
        for column in [
            Tasks::RunAfter,
            Tasks::FairKey,
            Tasks::LeaseUntil,
            Tasks::Holder,
        ] {
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

#[derive(DeriveIden, Clone, Copy)]
enum Tasks {
    Table,
    Id,
    UserId,
    Status,
    Holder,
    LeaseUntil,
    FairKey,
    RunAfter,
}

#[derive(DeriveIden)]
enum Nodes {
    Table,
    Id,
    Host,
    Pid,
    StartedAt,
    HeartbeatAt,
    Running,
}

#[derive(DeriveIden)]
enum Slots {
    Table,
    InstanceKey,
    Slot,
    Holder,
    HeldUntil,
}

#[derive(DeriveIden)]
enum ClusterState {
    Table,
    Key,
    Value,
}
