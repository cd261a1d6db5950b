//! Push: every change of a task's state is logged in `task_events`, numbered per user
//! (`users.event_seq` is the counter, updated in the changing transaction, so one user's
//! events commit in the order of their numbers); webhook deliveries wait in a durable
//! outbox (`webhook_deliveries`), signed with the user's `users.webhook_secret`; and a
//! browser's stream is opened with a single-use ticket (`event_tickets`).
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let columns = [
            (
                Users::Table.into_iden(),
                ColumnDef::new(Users::EventSeq)
                    .big_integer()
                    .not_null()
                    .default(0)
                    .to_owned(),
            ),
            (
                Users::Table.into_iden(),
                ColumnDef::new(Users::WebhookSecret)
                    .string_len(128)
                    .to_owned(),
            ),
            (
                Tasks::Table.into_iden(),
                ColumnDef::new(Tasks::WebhookUrl)
                    .string_len(2048)
                    .to_owned(),
            ),
            (
                Tasks::Table.into_iden(),
                ColumnDef::new(Tasks::WebhookEvents)
                    .string_len(64)
                    .to_owned(),
            ),
        ];
        for (table, mut column) in columns {
            manager
                .alter_table(
                    Table::alter()
                        .table(table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(TaskEvents::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(TaskEvents::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(TaskEvents::UserId).big_integer().not_null())
                    .col(ColumnDef::new(TaskEvents::Seq).big_integer().not_null())
                    .col(ColumnDef::new(TaskEvents::TaskId).string_len(64).not_null())
                    .col(ColumnDef::new(TaskEvents::Kind).string_len(16).not_null())
                    .col(ColumnDef::new(TaskEvents::Status).string_len(16).not_null())
                    .col(ColumnDef::new(TaskEvents::Attempt).integer())
                    .col(ColumnDef::new(TaskEvents::InstanceId).big_integer())
                    .col(ColumnDef::new(TaskEvents::ImageId).big_integer())
                    .col(ColumnDef::new(TaskEvents::Error).text())
                    .col(ColumnDef::new(TaskEvents::RetryAt).timestamp_with_time_zone())
                    .col(
                        ColumnDef::new(TaskEvents::At)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_task_events_user_id")
                            .from(TaskEvents::Table, TaskEvents::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, columns) in [
            // Replay: a user's events after a number; it also keeps numbers unique.
            (
                "idx_task_events_user_seq",
                vec![TaskEvents::UserId, TaskEvents::Seq],
            ),
            // One task's events, for its stream.
            (
                "idx_task_events_task_seq",
                vec![TaskEvents::TaskId, TaskEvents::Seq],
            ),
            // Retention.
            ("idx_task_events_at", vec![TaskEvents::At]),
        ] {
            let mut index = Index::create();
            index.name(name).table(TaskEvents::Table);
            if name == "idx_task_events_user_seq" {
                index.unique();
            }
            for column in columns {
                index.col(column);
            }
            manager.create_index(index.to_owned()).await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(WebhookDeliveries::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(WebhookDeliveries::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(WebhookDeliveries::UserId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(WebhookDeliveries::TaskId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(WebhookDeliveries::WebhookId)
                            .string_len(64)
                            .not_null()
                            .unique_key(),
                    )
                    .col(
                        ColumnDef::new(WebhookDeliveries::Url)
                            .string_len(2048)
                            .not_null(),
                    )
                    .col(ColumnDef::new(WebhookDeliveries::Body).text().not_null())
                    .col(
                        ColumnDef::new(WebhookDeliveries::State)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(WebhookDeliveries::Attempts)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .col(
                        ColumnDef::new(WebhookDeliveries::NextAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(ColumnDef::new(WebhookDeliveries::LastStatus).integer())
                    .col(ColumnDef::new(WebhookDeliveries::LastError).text())
                    .col(ColumnDef::new(WebhookDeliveries::Holder).string_len(64))
                    .col(
                        ColumnDef::new(WebhookDeliveries::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(WebhookDeliveries::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_webhook_deliveries_user_id")
                            .from(WebhookDeliveries::Table, WebhookDeliveries::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, columns) in [
            // The deliverer: what is due.
            (
                "idx_webhook_deliveries_state_next",
                [WebhookDeliveries::State, WebhookDeliveries::NextAt],
            ),
            // A task's webhook status.
            (
                "idx_webhook_deliveries_task",
                [WebhookDeliveries::TaskId, WebhookDeliveries::Id],
            ),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(WebhookDeliveries::Table)
                        .col(columns[0])
                        .col(columns[1])
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(EventTickets::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(EventTickets::TicketHash)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(EventTickets::UserId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(EventTickets::ExpiresAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_event_tickets_user_id")
                            .from(EventTickets::Table, EventTickets::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            EventTickets::Table.into_iden(),
            WebhookDeliveries::Table.into_iden(),
            TaskEvents::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        for (table, column) in [
            (Tasks::Table.into_iden(), Tasks::WebhookEvents.into_iden()),
            (Tasks::Table.into_iden(), Tasks::WebhookUrl.into_iden()),
            (Users::Table.into_iden(), Users::WebhookSecret.into_iden()),
            (Users::Table.into_iden(), Users::EventSeq.into_iden()),
        ] {
            manager
                .alter_table(Table::alter().table(table).drop_column(column).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    EventSeq,
    WebhookSecret,
}

#[derive(DeriveIden)]
enum Tasks {
    Table,
    WebhookUrl,
    WebhookEvents,
}

#[derive(DeriveIden, Clone, Copy)]
enum TaskEvents {
    Table,
    Id,
    UserId,
    Seq,
    TaskId,
    Kind,
    Status,
    Attempt,
    InstanceId,
    ImageId,
    Error,
    RetryAt,
    At,
}

#[derive(DeriveIden, Clone, Copy)]
enum WebhookDeliveries {
    Table,
    Id,
    UserId,
    TaskId,
    WebhookId,
    Url,
    Body,
    State,
    Attempts,
    NextAt,
    LastStatus,
    LastError,
    Holder,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum EventTickets {
    Table,
    TicketHash,
    UserId,
    ExpiresAt,
}
