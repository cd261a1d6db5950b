//! Backend instances added by admins at run time, so they survive restarts.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Instances::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Instances::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Instances::Kind).string_len(16).not_null())
                    .col(ColumnDef::new(Instances::Url).string_len(2048).not_null())
                    .col(
                        ColumnDef::new(Instances::Protocol)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(ColumnDef::new(Instances::Capacity).integer().not_null())
                    .col(ColumnDef::new(Instances::Weight).integer().not_null())
                    .col(ColumnDef::new(Instances::Enabled).boolean().not_null())
                    .col(
                        ColumnDef::new(Instances::Revision)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .col(
                        ColumnDef::new(Instances::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Instances::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        // One backend is added once: concurrent adds of the same kind and url race here.
        manager
            .create_index(
                Index::create()
                    .name("idx_instances_kind_url")
                    .table(Instances::Table)
                    .col(Instances::Kind)
                    .col(Instances::Url)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Instances::Table).if_exists().to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Instances {
    Table,
    Id,
    Kind,
    Url,
    Protocol,
    Capacity,
    Weight,
    Enabled,
    Revision,
    CreatedAt,
    UpdatedAt,
}
