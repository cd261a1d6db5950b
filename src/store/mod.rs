//! Persistence: connecting to the database, bringing its schema up to date, and the
//! repositories, plain functions over the connection pool for every read and for the
//! writes no actor batches (users, keys, instances). Task writes are the TaskStore
//! actor's own (`actors/task_store`), because they share its group commit.

pub mod admin_tasks;
pub mod api_keys;
pub mod audit;
pub mod cluster;
mod error;
pub mod events;
pub mod instances;
mod lock;
pub mod meta;
pub mod queue_samples;
pub mod space;
pub mod tasks;
pub mod tickets;
pub mod users;
pub mod webhooks;

pub use error::StoreError;
pub use lock::{lock, DatabaseLock, LockError};

use std::str::FromStr;
use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr,
    SqlxSqliteConnector, Statement,
};
use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Connection;

use crate::settings::DatabaseSettings;

/// The channel every gateway listens on. Payloads: `q` (work queued), `c:<task_id>` (a
/// task cancelled), `i` (instances changed), `s` (a call slot freed), `u:<user_id>` (a
/// user disabled or removed), `w` (webhook deliveries queued).
pub const CHANNEL: &str = "infergate";

/// `NOTIFY` on the gateways' channel; delivered when the transaction commits.
pub async fn notify(db: &impl ConnectionTrait, payload: &str) -> Result<(), DbErr> {
    db.execute(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_notify($1, $2)",
        [CHANNEL.into(), payload.into()],
    ))
    .await?;
    Ok(())
}

/// SQLite in WAL mode with FULL sync (a commit survives power loss), a busy timeout and
/// incremental auto-vacuum (which takes only on a new file, see `space`); anything else
/// (PostgreSQL) through sea-orm's own pool.
pub async fn connect(settings: &DatabaseSettings) -> Result<DatabaseConnection, DbErr> {
    if settings.url.starts_with("sqlite:") {
        let options = SqliteConnectOptions::from_str(&settings.url)
            .map_err(|e| DbErr::Custom(format!("invalid database.url: {e}")))?
            .create_if_missing(true)
            .auto_vacuum(SqliteAutoVacuum::Incremental)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(settings.max_connections)
            .after_release(|conn, _| {
                Box::pin(async move {
                    // Flush the rollback a dropped transaction queued, then judge. A
                    // connection sqlx still counts in a transaction is out of step with
                    // SQLite, which ended it itself (a COMMIT that fails on a full disk
                    // rolls back): its next BEGIN would be a SAVEPOINT whose rollback
                    // leaves a write transaction open, holding the write lock for good,
                    // and whose "commit" commits nothing. It is closed instead.
                    conn.ping().await?;
                    Ok(!conn.is_in_transaction())
                })
            })
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

/// PostgreSQL connections for call slots alone, whose commits do not wait for the disk:
/// slots are leases on a GPU, not data, and each take and release sits between two
/// backend calls, where a flush (milliseconds) would leave the GPU idle. So each slot
/// change is one statement, not a transaction of four. What a crash of PostgreSQL
/// itself may lose is its last fraction of a second of slot changes (see README).
pub async fn connect_leases(settings: &DatabaseSettings) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(settings.url.clone());
    options
        .max_connections(LEASE_CONNECTIONS)
        .sqlx_logging(false)
        .map_sqlx_postgres_opts(|pg| pg.options([("synchronous_commit", "off")]));
    Database::connect(options).await
}

/// Lease connections: a slot change is one short statement.
const LEASE_CONNECTIONS: u32 = 4;

/// Applies every pending migration.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    Migrator::up(db, None).await
}
