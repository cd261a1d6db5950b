//! `tasks.user_id` references `users.id`, and a removed user's tasks go with them
//! (`ON DELETE CASCADE`), so no task can be stored for a user who does not exist.
//!
//! Rows of users that no longer exist (only possible when someone deleted user rows by
//! hand) cannot satisfy the reference: those tasks and images are deleted first. Every
//! other row is kept as it is.
//!
//! PostgreSQL adds the constraint in place. SQLite cannot add a constraint to a table,
//! so the table is rebuilt the way SQLite documents: the stored CREATE TABLE with the
//! constraint added, the rows copied, the old table dropped, the new one renamed, its
//! indexes recreated, all in one transaction. The table's own stored definition is
//! edited rather than a written-out one, so columns other migrations added stay.
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};

#[derive(DeriveMigrationName)]
pub struct Migration;

const FK_NAME: &str = "fk_tasks_user_id";
const FK_CLAUSE: &str = r#", CONSTRAINT "fk_tasks_user_id" FOREIGN KEY ("user_id") REFERENCES "users" ("id") ON DELETE CASCADE"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let txn = db.begin().await?;
        for table in ["images", "tasks"] {
            txn.execute_unprepared(&format!(
                "DELETE FROM {table} WHERE user_id NOT IN (SELECT id FROM users)"
            ))
            .await?;
        }
        if manager.get_database_backend() == DbBackend::Sqlite {
            rebuild_sqlite_tasks(&txn, |sql| {
                let end = sql.rfind(')').ok_or_else(|| bad_schema(sql))?;
                Ok(format!("{}{FK_CLAUSE})", &sql[..end]))
            })
            .await?;
        } else {
            let add = ForeignKey::create()
                .name(FK_NAME)
                .from(Tasks::Table, Tasks::UserId)
                .to(Users::Table, Users::Id)
                .on_delete(ForeignKeyAction::Cascade)
                .to_owned();
            txn.execute(txn.get_database_backend().build(&add)).await?;
        }
        txn.commit().await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let txn = db.begin().await?;
        if manager.get_database_backend() == DbBackend::Sqlite {
            rebuild_sqlite_tasks(&txn, |sql| Ok(sql.replace(FK_CLAUSE, ""))).await?;
        } else {
            let drop = ForeignKey::drop()
                .name(FK_NAME)
                .table(Tasks::Table)
                .to_owned();
            txn.execute(txn.get_database_backend().build(&drop)).await?;
        }
        txn.commit().await
    }
}

fn bad_schema(sql: &str) -> DbErr {
    DbErr::Migration(format!("unexpected definition of table tasks: {sql}"))
}

/// Rebuilds SQLite's `tasks` with its stored definition changed by `edit`, keeping its
/// rows, its indexes and its AUTOINCREMENT counter. Nothing references `tasks`, so
/// foreign keys may stay on throughout.
async fn rebuild_sqlite_tasks<C: ConnectionTrait>(
    db: &C,
    edit: impl Fn(&str) -> Result<String, DbErr>,
) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    let one = |sql: &str| Statement::from_string(backend, sql.to_string());
    let table = db
        .query_one(one(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'tasks'",
        ))
        .await?
        .ok_or_else(|| DbErr::Migration("table tasks does not exist".into()))?
        .try_get::<String>("", "sql")?;
    let indexes: Vec<String> = db
        .query_all(one(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'tasks' AND sql IS NOT NULL",
        ))
        .await?
        .into_iter()
        .map(|row| row.try_get::<String>("", "sql"))
        .collect::<Result<_, _>>()?;
    let sequence = db
        .query_one(one("SELECT seq FROM sqlite_sequence WHERE name = 'tasks'"))
        .await?
        .map(|row| row.try_get::<i64>("", "seq"))
        .transpose()?;

    let edited = edit(&table)?;
    let head = edited.find('(').ok_or_else(|| bad_schema(&table))?;
    let create = format!("CREATE TABLE \"tasks_rebuilt\" {}", &edited[head..]);
    db.execute_unprepared(&create).await?;
    db.execute_unprepared("INSERT INTO \"tasks_rebuilt\" SELECT * FROM \"tasks\"")
        .await?;
    db.execute_unprepared("DROP TABLE \"tasks\"").await?;
    db.execute_unprepared("ALTER TABLE \"tasks_rebuilt\" RENAME TO \"tasks\"")
        .await?;
    for index in indexes {
        db.execute_unprepared(&index).await?;
    }
    if let Some(seq) = sequence {
        db.execute_unprepared(&format!(
            "UPDATE sqlite_sequence SET seq = max(seq, {seq}) WHERE name = 'tasks'"
        ))
        .await?;
    }
    Ok(())
}

#[derive(DeriveIden)]
enum Tasks {
    Table,
    UserId,
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
}
