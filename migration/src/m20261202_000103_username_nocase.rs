//! Usernames are unique whatever their case (`EVE` and `eve` are one account), kept as
//! they were spelt: a unique index on `lower(username)`, which lookups use.
//!
//! Accounts that already differ only in case keep the oldest as it is; each later one
//! is renamed to its name with `_<id>` appended (shortened to fit 20 characters), so
//! the index can be created and no account is lost.
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, Statement, TransactionTrait};

#[derive(DeriveMigrationName)]
pub struct Migration;

const INDEX: &str = "idx_users_username_lower";
const MAX_USERNAME_CHARS: usize = 20;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let txn = db.begin().await?;
        let backend = txn.get_database_backend();
        let later_twins = txn
            .query_all(Statement::from_string(
                backend,
                "SELECT u.id, u.username FROM users u WHERE EXISTS \
                 (SELECT 1 FROM users o WHERE lower(o.username) = lower(u.username) AND o.id < u.id) \
                 ORDER BY u.id",
            ))
            .await?;
        for row in later_twins {
            let id: i64 = row.try_get("", "id")?;
            let name: String = row.try_get("", "username")?;
            let suffix = format!("_{id}");
            let keep = MAX_USERNAME_CHARS
                .saturating_sub(suffix.len())
                .min(name.len());
            let renamed = format!("{}{suffix}", &name[..keep]);
            let update = Query::update()
                .table(Users::Table)
                .value(Users::Username, renamed)
                .and_where(Expr::col(Users::Id).eq(id))
                .to_owned();
            txn.execute(backend.build(&update)).await?;
        }
        txn.execute_unprepared(&format!(
            "CREATE UNIQUE INDEX {INDEX} ON users (lower(username))"
        ))
        .await?;
        txn.commit().await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().name(INDEX).table(Users::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Username,
}
