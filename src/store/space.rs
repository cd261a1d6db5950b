//! The database's size, and giving SQLite's freed pages back to the file system.
//!
//! SQLite keeps the pages of deleted rows for reuse: the file does not shrink unless
//! `auto_vacuum` is `INCREMENTAL` (then `PRAGMA incremental_vacuum` returns free pages)
//! or `FULL`. The mode can only change before the first table exists, so databases this
//! version creates are INCREMENTAL, while an older one stays as it was made (`NONE`: its
//! free pages are reused by new rows, and only an offline `VACUUM`, `infergate compact`,
//! converts it).

use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection, Statement};

use super::StoreError;

/// Pages returned per `incremental_vacuum` step: each holds the write lock briefly.
const VACUUM_STEP: i64 = 1000;

/// The database's size in bytes, and (SQLite) how much of it is free pages.
#[derive(Debug, Clone, Copy, serde::Serialize, utoipa::ToSchema)]
pub struct Size {
    pub bytes: u64,
    /// SQLite's free pages, reused by new rows or returned by the incremental vacuum.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_bytes: Option<u64>,
}

async fn number(db: &DatabaseConnection, sql: &str) -> Result<i64, StoreError> {
    let backend = db.get_database_backend();
    let row = db
        .query_one(Statement::from_string(backend, sql))
        .await?
        .ok_or_else(|| sea_orm::DbErr::Custom(format!("no answer to {sql}")))?;
    Ok(row.try_get_by_index::<i64>(0)?)
}

pub async fn size(db: &DatabaseConnection) -> Result<Size, StoreError> {
    if db.get_database_backend() == DatabaseBackend::Postgres {
        let bytes = number(db, "SELECT pg_database_size(current_database())").await?;
        return Ok(Size {
            bytes: bytes as u64,
            free_bytes: None,
        });
    }
    let page = number(db, "PRAGMA page_size").await?;
    let pages = number(db, "PRAGMA page_count").await?;
    let free = number(db, "PRAGMA freelist_count").await?;
    Ok(Size {
        bytes: (page * pages) as u64,
        free_bytes: Some((page * free) as u64),
    })
}

/// What `reclaim` could do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reclaimed {
    /// Free pages given back to the file system.
    Pages(u64),
    /// An SQLite file made without incremental auto-vacuum: nothing can be given back
    /// while it runs (its free pages are reused).
    NotIncremental,
    /// PostgreSQL's own autovacuum does this.
    NotSqlite,
}

/// Returns SQLite's free pages, a step at a time.
pub async fn reclaim(db: &DatabaseConnection) -> Result<Reclaimed, StoreError> {
    if db.get_database_backend() != DatabaseBackend::Sqlite {
        return Ok(Reclaimed::NotSqlite);
    }
    if !incremental(db).await? {
        return Ok(Reclaimed::NotIncremental);
    }
    let mut returned = 0;
    loop {
        let free = number(db, "PRAGMA freelist_count").await?;
        if free == 0 {
            return Ok(Reclaimed::Pages(returned));
        }
        let step = free.min(VACUUM_STEP);
        let sql = format!("PRAGMA incremental_vacuum({step})");
        db.execute(Statement::from_string(DatabaseBackend::Sqlite, sql))
            .await?;
        returned += step as u64;
        tokio::task::yield_now().await;
    }
}

/// Rewrites an SQLite file whole with `VACUUM`, giving every free page back, and turns
/// on incremental auto-vacuum on a file made without it. `VACUUM` can set that mode only
/// outside WAL, so one connection leaves WAL, sets it, rewrites and goes back. Offline
/// only: it holds the write lock while it copies the file. Answers the size before and
/// after.
pub async fn compact(db: &DatabaseConnection) -> Result<(Size, Size), StoreError> {
    let before = size(db).await?;
    let sqlx_error = |e| sea_orm::DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e));
    let mut conn = db
        .get_sqlite_connection_pool()
        .acquire()
        .await
        .map_err(sqlx_error)?;
    for sql in [
        "PRAGMA journal_mode = DELETE",
        "PRAGMA auto_vacuum = INCREMENTAL",
        "VACUUM",
        "PRAGMA journal_mode = WAL",
    ] {
        sqlx::query(sql)
            .execute(&mut *conn)
            .await
            .map_err(sqlx_error)?;
    }
    drop(conn);
    Ok((before, size(db).await?))
}

/// Whether an SQLite file gives freed pages back while the gateway runs.
pub async fn incremental(db: &DatabaseConnection) -> Result<bool, StoreError> {
    // 2 is INCREMENTAL.
    Ok(number(db, "PRAGMA auto_vacuum").await? == 2)
}
