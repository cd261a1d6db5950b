//! The queue's depth over time: one row per sampling interval, counted from the tasks
//! table, so every gateway on the database sees (and records) the same shared queue.

use chrono::{DateTime, Utc};
use entity::prelude::{QueueSample, Task};
use entity::{queue_sample, task};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, Set,
};

use super::StoreError;

/// Counts the QUEUED and RUNNING tasks now (each on the status index) and keeps them as
/// the sample of the interval starting `at`. A second gateway sampling the same
/// interval changes nothing: the first row stands.
pub async fn record(db: &DatabaseConnection, at: DateTime<Utc>) -> Result<(), StoreError> {
    let count = |status: task::Status| {
        Task::find()
            .filter(task::Column::Status.eq(status))
            .count(db)
    };
    let queued = count(task::Status::Queued).await?;
    let running = count(task::Status::Running).await?;
    let row = queue_sample::ActiveModel {
        at: Set(at),
        queued: Set(queued as i64),
        running: Set(running as i64),
    };
    QueueSample::insert(row)
        .on_conflict(
            OnConflict::column(queue_sample::Column::At)
                .do_nothing()
                .to_owned(),
        )
        .do_nothing()
        .exec(db)
        .await?;
    Ok(())
}

/// The samples taken at or after `after`, oldest first.
pub async fn since(
    db: &DatabaseConnection,
    after: DateTime<Utc>,
) -> Result<Vec<queue_sample::Model>, StoreError> {
    Ok(QueueSample::find()
        .filter(queue_sample::Column::At.gte(after))
        .order_by_asc(queue_sample::Column::At)
        .all(db)
        .await?)
}

/// Deletes the samples older than `before`.
pub async fn prune(db: &DatabaseConnection, before: DateTime<Utc>) -> Result<u64, StoreError> {
    Ok(QueueSample::delete_many()
        .filter(queue_sample::Column::At.lt(before))
        .exec(db)
        .await?
        .rows_affected)
}
