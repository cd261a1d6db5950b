//! Persistence: connecting to the database, bringing its schema up to date, and the
//! repositories, plain functions over the connection pool for every read and for the
//! writes no actor batches (users, keys, instances). Task writes are the TaskStore
//! actor's own (`actors/task_store`), because they share its group commit.

pub mod api_keys;
mod error;
pub mod instances;
mod lock;
pub mod meta;
pub mod tasks;
pub mod users;

pub use error::StoreError;
pub use lock::{lock, DatabaseLock, LockError};

use std::str::FromStr;
use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr, SqlxSqliteConnector};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::settings::DatabaseSettings;

/// SQLite in WAL mode with FULL sync (a commit survives power loss) and a busy timeout;
/// anything else (PostgreSQL) through sea-orm's own pool.
pub async fn connect(settings: &DatabaseSettings) -> Result<DatabaseConnection, DbErr> {
    if settings.url.starts_with("sqlite:") {
        let options = SqliteConnectOptions::from_str(&settings.url)
            .map_err(|e| DbErr::Custom(format!("invalid database.url: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(settings.max_connections)
            .connect_with(options)
            .await
            .map_err(|e| DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e)))?;
        return Ok(SqlxSqliteConnector::from_sqlx_sqlite_pool(pool));
    }
    let mut options = ConnectOptions::new(settings.url.clone());
    options
        .max_connections(settings.max_connections)
        .sqlx_logging(false);
    Database::connect(options).await
}

/// Applies every pending migration.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    Migrator::up(db, None).await
}
