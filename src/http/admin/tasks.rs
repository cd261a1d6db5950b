//! `/api/v1/admin/tasks`: every user's tasks, filtered, and the bulk actions on a filter
//! (cancel, retry, delete). A bulk action needs at least one filter, so nobody acts on
//! every task by mistake; it walks the matching tasks a batch at a time, each batch one
//! short transaction through the same path as a single task's change.

use actix::Addr;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use entity::task;
use sea_orm::DatabaseConnection;
use serde::{Deserialize, Serialize};

use super::audit::record;
use crate::actors::messages::{CancelTasks, RetryTasks, TaskCancelled};
use crate::actors::{Dispatcher, TaskStore};
use crate::domain::{
    ImageId, Priority, TaskEvent, TaskFilter, TaskFilterQuery, TaskId, TaskStatus,
};
use crate::error::{ApiError, ErrorBody};
use crate::http::ask;
use crate::http::caller::AdminUser;
use crate::store::admin_tasks::{self, FINISHED};
use crate::store::events;

pub const DEFAULT_LIMIT: u64 = 20;
/// Tasks per step of a bulk action.
const BATCH: u64 = 500;
/// Events a task detail shows at most.
const MAX_EVENTS: u64 = 500;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/tasks", web::get().to(list_tasks))
        .route("/tasks", web::delete().to(delete_tasks))
        .route("/tasks/cancel", web::post().to(cancel_tasks))
        .route("/tasks/retry", web::post().to(retry_tasks))
        .route("/tasks/{task_id}", web::get().to(get_task))
        .route("/images/{id}", web::get().to(get_image));
}

/// The listing's page, beside the filter.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Tasks per page, 1 to 1000 (default 20).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
    /// The id of the first task of the page (a `next` from the page before); newest
    /// first.
    #[param(minimum = 0)]
    pub from: Option<i64>,
}

/// A task as operators see it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AdminTaskView {
    /// Its place in submission order: what `from` and `next` count in.
    pub id: i64,
    pub task_id: String,
    pub user_id: i64,
    pub prompt: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    #[schema(example = "FAILED")]
    pub status: TaskStatus,
    pub priority: Priority,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub attempts: i32,
    /// The instance of the latest attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl From<task::Model> for AdminTaskView {
    fn from(task: task::Model) -> Self {
        AdminTaskView {
            id: task.id,
            result_url: task.image_id.map(|id| ImageId(id).result_url()),
            image_id: task.image_id,
            finished_at: task.status.is_terminal().then_some(task.updated_at),
            task_id: task.task_id,
            user_id: task.user_id,
            prompt: task.prompt,
            negative_prompt: task.negative_prompt,
            status: task.status,
            priority: task.priority,
            error: task.error,
            attempts: task.attempts,
            instance: task.instance,
            created_at: task.created_at,
            started_at: task.started_at,
            updated_at: task.updated_at,
        }
    }
}

/// One page, newest first (Meilisearch's shape).
#[derive(Serialize, utoipa::ToSchema)]
pub struct TaskPage {
    pub results: Vec<AdminTaskView>,
    /// Every task the filter matches (counted exactly, on indexes).
    pub total: u64,
    pub limit: u64,
    /// The `from` this page started at, if one was given.
    pub from: Option<i64>,
    /// The `from` of the next page; null on the last.
    pub next: Option<i64>,
}

/// A task with its events and error, for its detail page.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AdminTaskDetail {
    pub task: AdminTaskView,
    /// Its logged changes, oldest first (kept for `events.retention_hours`).
    pub events: Vec<TaskEvent>,
}

/// What a bulk action did.
#[derive(Serialize, utoipa::ToSchema)]
pub struct BulkResult {
    /// Tasks cancelled, retried or deleted.
    pub count: u64,
    /// Retry only: matching tasks left FAILED or CANCELLED, the queue being full or
    /// their users at their quota.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<u64>,
}

/// Every user's tasks, newest first, filtered; `total` counts every match.
#[utoipa::path(get, path = "/api/v1/admin/tasks", tag = "admin",
    params(TaskFilterQuery, PageParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "One page of the matching tasks", body = TaskPage),
        (status = 400, description = "An invalid filter, limit or from, or an unknown parameter", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(admin_id = %admin.0.id))]
pub async fn list_tasks(
    admin: AdminUser,
    db: web::Data<DatabaseConnection>,
    query: web::Query<TaskFilterQuery>,
) -> Result<HttpResponse, ApiError> {
    let mut query = query.into_inner();
    let (limit, from) = (query.limit.take(), query.from.take());
    let limit = super::page_limit(limit, from, DEFAULT_LIMIT)?;
    let filter = TaskFilter::try_from(query)?;
    let page = admin_tasks::list(&db, &filter, limit, from).await?;
    Ok(HttpResponse::Ok().json(TaskPage {
        results: page.results.into_iter().map(AdminTaskView::from).collect(),
        total: page.total,
        limit,
        from,
        next: page.next,
    }))
}

/// Any user's task, with its events.
#[utoipa::path(get, path = "/api/v1/admin/tasks/{task_id}", tag = "admin",
    params(("task_id" = String, Path, description = "The task")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The task and its events", body = AdminTaskDetail),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(admin_id = %admin.0.id, task_id = %task_id))]
pub async fn get_task(
    admin: AdminUser,
    db: web::Data<DatabaseConnection>,
    task_id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let task_id = TaskId::from(task_id.into_inner());
    let task = admin_tasks::get(&db, &task_id)
        .await?
        .ok_or(ApiError::NotFound("task"))?;
    let owner = crate::domain::UserId(task.user_id);
    let events = events::after(db.get_ref(), owner, 0, Some(&task_id), MAX_EVENTS).await?;
    Ok(HttpResponse::Ok().json(AdminTaskDetail {
        task: AdminTaskView::from(task),
        events,
    }))
}

/// The filter of a bulk action: at least one part, or 400.
fn bulk_filter(query: TaskFilterQuery) -> Result<TaskFilter, ApiError> {
    let filter = TaskFilter::try_from(query)?;
    if filter.is_empty() {
        return Err(ApiError::Validation(
            "a bulk action needs at least one filter (statuses, users, kinds, instances, a time or q)".into(),
        ));
    }
    Ok(filter)
}

/// Cancel the matching QUEUED and RUNNING tasks, each as its owner's cancel would: a
/// queued task leaves the queue, a running one's backend call is dropped.
#[utoipa::path(post, path = "/api/v1/admin/tasks/cancel", tag = "admin",
    params(TaskFilterQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "How many were cancelled", body = BulkResult),
        (status = 400, description = "No filter, an invalid one, limit or from, or an unknown parameter", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 503, description = "The database or the task store is unavailable (a part may be done; the audit log says how many)", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(admin_id = %admin.0.id, count))]
pub async fn cancel_tasks(
    admin: AdminUser,
    db: web::Data<DatabaseConnection>,
    store: web::Data<Addr<TaskStore>>,
    dispatcher: web::Data<Addr<Dispatcher>>,
    query: web::Query<TaskFilterQuery>,
) -> Result<HttpResponse, ApiError> {
    let filter = bulk_filter(query.into_inner())?;
    let unfinished = [TaskStatus::Queued, TaskStatus::Running];
    let (mut count, mut after) = (0, 0);
    let walked = async {
        loop {
            let batch = admin_tasks::batch(&db, &filter, &unfinished, after, BATCH).await?;
            let Some((last, _, _)) = batch.last() else {
                return Ok::<_, ApiError>(());
            };
            after = *last;
            let ids = batch.into_iter().map(|(_, task_id, _)| task_id).collect();
            for (task_id, user_id) in ask(&store, CancelTasks(ids)).await?? {
                count += 1;
                dispatcher.do_send(TaskCancelled {
                    task_id,
                    user_id: Some(user_id),
                });
            }
        }
    }
    .await;
    finish(&db, &admin, "tasks.cancel", &filter, count, walked, None).await
}

/// Put the matching FAILED and CANCELLED tasks back in the queue with their attempts
/// reset, as far as the queue's capacity and each user's quota allow.
#[utoipa::path(post, path = "/api/v1/admin/tasks/retry", tag = "admin",
    params(TaskFilterQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "How many were queued again, and how many the queue had no room for", body = BulkResult),
        (status = 400, description = "No filter, an invalid one, limit or from, or an unknown parameter", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 503, description = "The database or the queue is unavailable (a part may be done; the audit log says how many)", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(admin_id = %admin.0.id, count))]
pub async fn retry_tasks(
    admin: AdminUser,
    db: web::Data<DatabaseConnection>,
    dispatcher: web::Data<Addr<Dispatcher>>,
    query: web::Query<TaskFilterQuery>,
) -> Result<HttpResponse, ApiError> {
    let filter = bulk_filter(query.into_inner())?;
    let ended = [TaskStatus::Failed, TaskStatus::Cancelled];
    let (mut count, mut skipped, mut after) = (0, 0, 0);
    let walked = async {
        loop {
            let batch = admin_tasks::batch(&db, &filter, &ended, after, BATCH).await?;
            let Some((last, _, _)) = batch.last() else {
                return Ok::<_, ApiError>(());
            };
            after = *last;
            let offered = batch.len() as u64;
            let tasks = batch.into_iter().map(|(_, t, u)| (t, u)).collect();
            let retried = ask(&dispatcher, RetryTasks(tasks)).await??;
            count += retried;
            skipped += offered - retried;
        }
    }
    .await;
    finish(
        &db,
        &admin,
        "tasks.retry",
        &filter,
        count,
        walked,
        Some(skipped),
    )
    .await
}

/// Delete the matching finished (DONE, FAILED, CANCELLED) tasks with their images and
/// events.
#[utoipa::path(delete, path = "/api/v1/admin/tasks", tag = "admin",
    params(TaskFilterQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "How many were deleted", body = BulkResult),
        (status = 400, description = "No filter, an invalid one, limit or from, or an unknown parameter", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 503, description = "The database is unavailable (a part may be done; the audit log says how many)", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(admin_id = %admin.0.id, count))]
pub async fn delete_tasks(
    admin: AdminUser,
    db: web::Data<DatabaseConnection>,
    query: web::Query<TaskFilterQuery>,
) -> Result<HttpResponse, ApiError> {
    let filter = bulk_filter(query.into_inner())?;
    let (mut count, mut after) = (0, 0);
    let walked = async {
        loop {
            let batch = admin_tasks::batch(&db, &filter, &FINISHED, after, BATCH).await?;
            let Some((last, _, _)) = batch.last() else {
                return Ok::<_, ApiError>(());
            };
            after = *last;
            let ids: Vec<TaskId> = batch.into_iter().map(|(_, task_id, _)| task_id).collect();
            count += admin_tasks::delete_finished(&db, &ids).await?;
        }
    }
    .await;
    finish(&db, &admin, "tasks.delete", &filter, count, walked, None).await
}

/// Logs what a bulk action did, even when it stopped partway, then answers.
async fn finish(
    db: &DatabaseConnection,
    admin: &AdminUser,
    action: &'static str,
    filter: &TaskFilter,
    count: u64,
    walked: Result<(), ApiError>,
    skipped: Option<u64>,
) -> Result<HttpResponse, ApiError> {
    tracing::Span::current().record("count", count);
    tracing::info!(action, count, filter = %filter.to_json(), "bulk task action by an admin");
    record(db, admin, action, None, Some(filter.to_json()), Some(count)).await;
    walked?;
    Ok(HttpResponse::Ok().json(BulkResult { count, skipped }))
}

/// Any user's image, for a task's detail.
#[utoipa::path(get, path = "/api/v1/admin/images/{id}", tag = "admin",
    params(("id" = i64, Path, description = "Image id from a task's image_id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Image bytes", content_type = "image/png"),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such image", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(admin_id = %admin.0.id, image_id = *id))]
pub async fn get_image(
    admin: AdminUser,
    db: web::Data<DatabaseConnection>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let image = admin_tasks::image(&db, id.into_inner())
        .await?
        .ok_or(ApiError::NotFound("image"))?;
    Ok(HttpResponse::Ok()
        .insert_header((actix_web::http::header::CONTENT_TYPE, image.content_type))
        .insert_header((
            actix_web::http::header::CACHE_CONTROL,
            "private, max-age=86400, immutable",
        ))
        .body(image.data))
}
