//! Users, tasks, images and the gateway's own key/value facts.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Users::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Users::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(Users::Username)
                            .string_len(32)
                            .not_null()
                            .unique_key(),
                    )
                    .col(ColumnDef::new(Users::PasswordHash).string().not_null())
                    .col(ColumnDef::new(Users::Email).string())
                    .col(ColumnDef::new(Users::Phone).string())
                    .col(
                        ColumnDef::new(Users::Role)
                            .string_len(16)
                            .not_null()
                            .default("user"),
                    )
                    .col(
                        ColumnDef::new(Users::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Tasks::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Tasks::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(Tasks::TaskId)
                            .string_len(36)
                            .not_null()
                            .unique_key(),
                    )
                    .col(ColumnDef::new(Tasks::UserId).big_integer().not_null())
                    .col(ColumnDef::new(Tasks::Prompt).text().not_null())
                    .col(ColumnDef::new(Tasks::NegativePrompt).text())
                    .col(ColumnDef::new(Tasks::Width).integer())
                    .col(ColumnDef::new(Tasks::Height).integer())
                    .col(ColumnDef::new(Tasks::Steps).integer().not_null())
                    .col(ColumnDef::new(Tasks::Seed).big_integer())
                    .col(ColumnDef::new(Tasks::Status).string_len(16).not_null())
                    .col(ColumnDef::new(Tasks::ImageId).big_integer())
                    .col(ColumnDef::new(Tasks::Error).text())
                    .col(ColumnDef::new(Tasks::Instance).string())
                    .col(
                        ColumnDef::new(Tasks::Attempts)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .col(
                        ColumnDef::new(Tasks::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Tasks::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        // A user's newest tasks first, and the unfinished tasks a restart reloads.
        manager
            .create_index(
                Index::create()
                    .name("idx_tasks_user_id_id")
                    .table(Tasks::Table)
                    .col(Tasks::UserId)
                    .col(Tasks::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_tasks_status_id")
                    .table(Tasks::Table)
                    .col(Tasks::Status)
                    .col(Tasks::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Images::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Images::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Images::UserId).big_integer().not_null())
                    .col(ColumnDef::new(Images::TaskId).string_len(36).not_null())
                    .col(
                        ColumnDef::new(Images::ContentType)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(ColumnDef::new(Images::Data).blob().not_null())
                    .col(
                        ColumnDef::new(Images::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Meta::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Meta::Key)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Meta::Value).text().not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Meta::Table.into_iden(),
            Images::Table.into_iden(),
            Tasks::Table.into_iden(),
            Users::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Username,
    PasswordHash,
    Email,
    Phone,
    Role,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Tasks {
    Table,
    Id,
    TaskId,
    UserId,
    Prompt,
    NegativePrompt,
    Width,
    Height,
    Steps,
    Seed,
    Status,
    ImageId,
    Error,
    Instance,
    Attempts,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Images {
    Table,
    Id,
    UserId,
    TaskId,
    ContentType,
    Data,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Meta {
    Table,
    Key,
    Value,
}
