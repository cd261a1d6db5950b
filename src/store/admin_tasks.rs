//! The operators' view of every task: a filtered listing with its total, the matching
//! tasks a bulk action works through a batch at a time, and deleting finished tasks
//! (with their images and events), which retention shares.

use chrono::{DateTime, Utc};
use entity::prelude::{Image, Task, TaskEvent, WebhookDelivery};
use entity::{image, task, task_event, webhook_delivery};
use sea_orm::sea_query::{Expr, Func, LikeExpr};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};

use super::StoreError;
use crate::domain::{TaskFilter, TaskId, TaskStatus, UserId, Window};

pub const FINISHED: [TaskStatus; 3] = [TaskStatus::Done, TaskStatus::Failed, TaskStatus::Cancelled];

/// One page of the listing, newest first.
pub struct Page {
    pub results: Vec<task::Model>,
    /// Every task the filter matches, not only this page's.
    pub total: u64,
    /// The `from` of the next page, when there is one.
    pub next: Option<i64>,
}

/// The filter as a SQL condition. Each part is on an indexed column except `q`, a
/// substring search of the prompt that reads every row the other parts leave.
fn condition(filter: &TaskFilter) -> Condition {
    let mut all = Condition::all();
    if !filter.matches_images() {
        return all.add(Expr::val(1).eq(0));
    }
    if !filter.statuses.is_empty() {
        all = all.add(task::Column::Status.is_in(filter.statuses.iter().copied()));
    }
    if !filter.users.is_empty() {
        all = all.add(task::Column::UserId.is_in(filter.users.iter().copied()));
    }
    if !filter.instances.is_empty() {
        all = all.add(task::Column::Instance.is_in(filter.instances.iter().cloned()));
    }
    all = window(all, task::Column::CreatedAt, &filter.created);
    all = window(all, task::Column::StartedAt, &filter.started);
    if filter.finished != Window::default() {
        // A finished task is never updated again: its `updated_at` is when it ended.
        all = all.add(task::Column::Status.is_in(FINISHED));
        all = window(all, task::Column::UpdatedAt, &filter.finished);
    }
    if let Some(q) = &filter.q {
        let escaped = q
            .to_lowercase()
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        let prompt = Expr::expr(Func::lower(Expr::col(task::Column::Prompt)));
        all = all.add(prompt.like(LikeExpr::new(format!("%{escaped}%")).escape('\\')));
    }
    all
}

fn window(all: Condition, column: task::Column, window: &Window) -> Condition {
    let mut all = all;
    if let Some(after) = window.after {
        all = all.add(column.gt(after));
    }
    if let Some(before) = window.before {
        all = all.add(column.lt(before));
    }
    all
}

/// The matching tasks from id `from` down, at most `limit`, with the total.
pub async fn list(
    db: &DatabaseConnection,
    filter: &TaskFilter,
    limit: u64,
    from: Option<i64>,
) -> Result<Page, StoreError> {
    let matching = Task::find().filter(condition(filter));
    let total = matching.clone().count(db).await?;
    let mut page = matching;
    if let Some(from) = from {
        page = page.filter(task::Column::Id.lte(from));
    }
    let mut results = page
        .order_by_desc(task::Column::Id)
        .limit(limit + 1)
        .all(db)
        .await?;
    let next = if results.len() as u64 > limit {
        results.pop().map(|t| t.id)
    } else {
        None
    };
    Ok(Page {
        results,
        total,
        next,
    })
}

/// Any task, by its public id.
pub async fn get(
    db: &DatabaseConnection,
    task_id: &TaskId,
) -> Result<Option<task::Model>, StoreError> {
    Ok(Task::find()
        .filter(task::Column::TaskId.eq(task_id.as_str()))
        .one(db)
        .await?)
}

/// Any image, by its id.
pub async fn image(db: &DatabaseConnection, id: i64) -> Result<Option<image::Model>, StoreError> {
    Ok(Image::find_by_id(id).one(db).await?)
}

/// A batch of matching tasks in one of `statuses`, oldest first, after row `after`: a
/// bulk action walks them this way, so each of its steps is short.
pub async fn batch(
    db: &DatabaseConnection,
    filter: &TaskFilter,
    statuses: &[TaskStatus],
    after: i64,
    limit: u64,
) -> Result<Vec<(i64, TaskId, UserId)>, StoreError> {
    let rows: Vec<(i64, String, i64)> = Task::find()
        .select_only()
        .columns([task::Column::Id, task::Column::TaskId, task::Column::UserId])
        .filter(condition(filter))
        .filter(task::Column::Status.is_in(statuses.iter().copied()))
        .filter(task::Column::Id.gt(after))
        .order_by_asc(task::Column::Id)
        .limit(limit)
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(id, task_id, user_id)| (id, TaskId::from(task_id), UserId(user_id)))
        .collect())
}

/// Deletes these tasks if they are still finished, with their images, events and
/// webhook deliveries, in one short transaction; answers how many tasks went.
pub async fn delete_finished(db: &DatabaseConnection, ids: &[TaskId]) -> Result<u64, StoreError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let names: Vec<&str> = ids.iter().map(TaskId::as_str).collect();
    let txn = db.begin().await?;
    // The tasks first: a write first takes SQLite's write lock, and a task that moved
    // on since it was chosen (retried meanwhile) stays with its image.
    let gone: Vec<String> = delete_returning(&txn, &names).await?;
    if !gone.is_empty() {
        Image::delete_many()
            .filter(image::Column::TaskId.is_in(gone.iter().cloned()))
            .exec(&txn)
            .await?;
        TaskEvent::delete_many()
            .filter(task_event::Column::TaskId.is_in(gone.iter().cloned()))
            .exec(&txn)
            .await?;
        WebhookDelivery::delete_many()
            .filter(webhook_delivery::Column::TaskId.is_in(gone.iter().cloned()))
            .exec(&txn)
            .await?;
    }
    txn.commit().await?;
    Ok(gone.len() as u64)
}

async fn delete_returning(
    db: &impl ConnectionTrait,
    names: &[&str],
) -> Result<Vec<String>, StoreError> {
    use sea_orm::sea_query::Query;
    use sea_orm::QueryTrait;
    let mut statement = Task::delete_many()
        .filter(task::Column::TaskId.is_in(names.iter().copied()))
        .filter(task::Column::Status.is_in(FINISHED))
        .into_query();
    statement.returning(Query::returning().column(task::Column::TaskId));
    let rows = db
        .query_all(db.get_database_backend().build(&statement))
        .await?;
    Ok(rows
        .iter()
        .map(|row| row.try_get::<String>("", "task_id"))
        .collect::<Result<_, _>>()?)
}

/// Up to `limit` tasks that finished before `before`, oldest first, for retention.
pub async fn finished_before(
    db: &DatabaseConnection,
    before: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<TaskId>, StoreError> {
    let ids: Vec<String> = Task::find()
        .select_only()
        .column(task::Column::TaskId)
        .filter(task::Column::Status.is_in(FINISHED))
        .filter(task::Column::UpdatedAt.lt(before))
        .order_by_asc(task::Column::UpdatedAt)
        .limit(limit)
        .into_tuple()
        .all(db)
        .await?;
    Ok(ids.into_iter().map(TaskId::from).collect())
}
