//! Reads of tasks and images, straight from the pool: none of them needs the TaskStore's
//! state, so none waits behind its write batch or its mailbox.

use entity::prelude::{Image, Task};
use entity::{image, task};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Statement,
};

use super::StoreError;
use crate::domain::{
    ImageId, ImageJob, NewTask, QueuedTask, TaskId, TaskStatus, TraceContext, UserId,
};

/// One of the user's tasks.
pub async fn get(
    db: &DatabaseConnection,
    user_id: UserId,
    task_id: &TaskId,
) -> Result<Option<task::Model>, StoreError> {
    Ok(Task::find()
        .filter(task::Column::TaskId.eq(task_id.as_str()))
        .filter(task::Column::UserId.eq(user_id.0))
        .one(db)
        .await?)
}

/// The user's newest tasks first.
pub async fn newest(
    db: &DatabaseConnection,
    user_id: UserId,
    limit: u64,
) -> Result<Vec<task::Model>, StoreError> {
    Ok(Task::find()
        .filter(task::Column::UserId.eq(user_id.0))
        .order_by_desc(task::Column::Id)
        .limit(limit)
        .all(db)
        .await?)
}

/// The user's task submitted under this idempotency key.
pub async fn by_idempotency_key(
    db: &DatabaseConnection,
    user_id: UserId,
    key: &str,
) -> Result<Option<task::Model>, StoreError> {
    Ok(Task::find()
        .filter(task::Column::UserId.eq(user_id.0))
        .filter(task::Column::IdempotencyKey.eq(key))
        .one(db)
        .await?)
}

/// One of the user's images.
pub async fn image(
    db: &DatabaseConnection,
    user_id: UserId,
    image_id: ImageId,
) -> Result<Option<image::Model>, StoreError> {
    Ok(Image::find_by_id(image_id.0)
        .filter(image::Column::UserId.eq(user_id.0))
        .one(db)
        .await?)
}

/// Every QUEUED task in submission order, ready for the Dispatcher's queue.
pub async fn queued(db: &DatabaseConnection) -> Result<Vec<QueuedTask>, StoreError> {
    let rows = Task::find()
        .filter(task::Column::Status.eq(TaskStatus::Queued))
        .order_by_asc(task::Column::Id)
        .all(db)
        .await?;
    Ok(rows.into_iter().map(queued_task).collect())
}

/// The ids of every QUEUED task.
pub async fn queued_ids(db: &DatabaseConnection) -> Result<Vec<TaskId>, StoreError> {
    let ids: Vec<String> = Task::find()
        .select_only()
        .column(task::Column::TaskId)
        .filter(task::Column::Status.eq(TaskStatus::Queued))
        .into_tuple()
        .all(db)
        .await?;
    Ok(ids.into_iter().map(TaskId::from).collect())
}

/// Each of these users' oldest QUEUED tasks, at most `limit` a user, in one statement
/// per 500 users (on the user and status index).
pub async fn queued_ids_of(
    db: &DatabaseConnection,
    users: &[UserId],
    limit: u64,
) -> Result<Vec<(UserId, TaskId)>, StoreError> {
    let backend = db.get_database_backend();
    let mut found = Vec::new();
    for chunk in users.chunks(500) {
        let placeholders: Vec<String> = (1..=chunk.len())
            .map(|i| match backend {
                DbBackend::Postgres => format!("${i}"),
                _ => "?".to_string(),
            })
            .collect();
        let limit_at = match backend {
            DbBackend::Postgres => format!("${}", chunk.len() + 1),
            _ => "?".to_string(),
        };
        let sql = format!(
            "SELECT user_id, task_id FROM (\
               SELECT user_id, task_id, id, \
                 ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY id) AS place \
               FROM tasks WHERE status = 'QUEUED' AND user_id IN ({})) AS oldest \
             WHERE place <= {limit_at} ORDER BY user_id, id",
            placeholders.join(", ")
        );
        let mut values: Vec<sea_orm::Value> = chunk.iter().map(|u| u.0.into()).collect();
        values.push((limit as i64).into());
        let rows = db
            .query_all(Statement::from_sql_and_values(backend, sql, values))
            .await?;
        for row in rows {
            let user_id: i64 = row.try_get("", "user_id")?;
            let task_id: String = row.try_get("", "task_id")?;
            found.push((UserId(user_id), TaskId::from(task_id)));
        }
    }
    Ok(found)
}

/// Those of these tasks still QUEUED, in submission order.
pub async fn queued_among(
    db: &DatabaseConnection,
    ids: &[TaskId],
) -> Result<Vec<QueuedTask>, StoreError> {
    let mut found = Vec::with_capacity(ids.len());
    // Bounded statements: a long IN list is split.
    for chunk in ids.chunks(500) {
        let rows = Task::find()
            .filter(task::Column::Status.eq(TaskStatus::Queued))
            .filter(task::Column::TaskId.is_in(chunk.iter().map(TaskId::as_str)))
            .order_by_asc(task::Column::Id)
            .all(db)
            .await?;
        found.extend(rows.into_iter().map(queued_task));
    }
    Ok(found)
}

pub(super) fn queued_task(row: task::Model) -> QueuedTask {
    let job = ImageJob {
        prompt: row.prompt,
        negative_prompt: row.negative_prompt,
        width: row.width.map(|v| v as u32),
        height: row.height.map(|v| v as u32),
        steps: row.steps as u32,
        seed: row.seed.map(|v| v as u64),
    };
    let trace = row.traceparent.map(|traceparent| TraceContext {
        traceparent,
        tracestate: row.tracestate,
    });
    QueuedTask {
        attempts: row.attempts,
        created_at: row.created_at,
        ..QueuedTask::fresh(NewTask {
            task_id: TaskId::from(row.task_id),
            user_id: UserId(row.user_id),
            priority: row.priority,
            job,
            idempotency: None,
            trace,
            // The event log reads a task's webhook from its row; the queue never needs it.
            webhook: None,
        })
    }
}
