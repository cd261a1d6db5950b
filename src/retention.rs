//! The retention job: finished tasks older than `retention.finished_days` are deleted
//! with their images, events and webhook deliveries, `retention.batch` at a time (one
//! short transaction each, so submissions and endings are never held up long), then
//! SQLite's freed pages are given back (see `store::space`).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;

use crate::settings::RetentionSettings;
use crate::store::space::{self, Reclaimed};
use crate::store::{admin_tasks, StoreError};

/// The time the job judges age by: the wall clock, plus a skew only tests move (with
/// the `fault-injection` feature), so they can age tasks by days without waiting.
#[derive(Clone, Default)]
pub struct Clock {
    skew_secs: Arc<AtomicI64>,
}

impl Clock {
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::seconds(self.skew_secs.load(Ordering::Relaxed))
    }

    /// Moves the clock forward.
    #[cfg(feature = "fault-injection")]
    pub fn advance(&self, by: Duration) {
        self.skew_secs
            .fetch_add(by.as_secs() as i64, Ordering::Relaxed);
    }
}

/// Runs the job every `retention.interval_secs` for good (unless retention is off).
pub async fn run(db: DatabaseConnection, settings: RetentionSettings, clock: Clock) {
    if settings.finished_days == 0 {
        return;
    }
    let mut warned = false;
    let mut tick = tokio::time::interval(Duration::from_secs(settings.interval_secs));
    loop {
        tick.tick().await;
        let before = clock.now() - chrono::Duration::days(settings.finished_days as i64);
        match sweep(&db, before, settings.batch).await {
            Ok(0) => {}
            Ok(deleted) => {
                tracing::info!(deleted, %before, "deleted finished tasks past their retention");
                match space::reclaim(&db).await {
                    Ok(Reclaimed::NotIncremental) if !warned => {
                        warned = true;
                        tracing::warn!("this SQLite file was made without incremental auto-vacuum: freed pages are reused but not given back (stop the gateway and run `infergate compact` once to convert it)");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot give freed pages back"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "retention stopped; trying again later"),
        }
    }
}

/// Deletes every task that finished before `before`, a batch per transaction; answers
/// how many went.
async fn sweep(
    db: &DatabaseConnection,
    before: DateTime<Utc>,
    batch: u64,
) -> Result<u64, StoreError> {
    let mut deleted = 0;
    loop {
        let ids = admin_tasks::finished_before(db, before, batch).await?;
        if ids.is_empty() {
            return Ok(deleted);
        }
        deleted += admin_tasks::delete_finished(db, &ids).await?;
        // Other writers get the lock between batches.
        tokio::task::yield_now().await;
    }
}
