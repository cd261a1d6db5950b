//! `GET /api/v1/tasks` (one task by id, or the user's newest tasks) and cancelling a task.

use actix::Addr;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use entity::task;
use sea_orm::DatabaseConnection;
use serde::{Deserialize, Serialize};

use crate::actors::messages::{CancelOutcome, CancelTask, QueuePositions, TaskCancelled};
use crate::actors::{Dispatcher, TaskStore};
use crate::domain::{ImageId, TaskId, TaskStatus, UserId};
use crate::error::{ApiError, ErrorBody};
use crate::http::ask;
use crate::http::caller::DeviceOrUser;
use crate::store::{self, tasks};

pub const DEFAULT_LIMIT: i64 = 20;
pub const MAX_LIMIT: i64 = 100;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/tasks", web::get().to(get_tasks))
        .route(
            "/api/v1/tasks/{task_id}/cancel",
            web::post().to(cancel_task),
        )
        .route("/api/v1/tasks/{task_id}", web::delete().to(delete_task));
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct TasksQuery {
    /// One task; without it, the list.
    pub task_id: Option<String>,
    /// How many of the newest tasks to list, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TaskView {
    pub task_id: String,
    pub user_id: i64,
    pub prompt: String,
    /// QUEUED, RUNNING, DONE, FAILED or CANCELLED.
    #[schema(example = "DONE")]
    pub status: TaskStatus,
    /// Where the image is, once DONE.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "/api/images/123")]
    pub result_url: Option<String>,
    /// Why it failed, once FAILED.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Backend attempts made so far (a failed attempt is retried on another instance).
    pub attempts: i32,
    /// While QUEUED: the place it will be served in (1 = next), for "3 ahead of you".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<usize>,
    /// For a task with a `webhook_url`: how the delivery of its latest event is going.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookView>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The delivery of a task's latest webhook event (none queued yet: not delivered, no
/// attempts).
#[derive(Serialize, utoipa::ToSchema, Default, Debug, Clone, Copy)]
pub struct WebhookView {
    /// The receiver answered a 2xx.
    pub delivered: bool,
    /// Attempts made so far.
    pub attempts: i32,
    /// The receiver's status on the last attempt (none: no answer, or none yet).
    pub last_status: Option<i32>,
}

impl From<task::Model> for TaskView {
    fn from(task: task::Model) -> Self {
        TaskView {
            result_url: task.image_id.map(|id| ImageId(id).result_url()),
            task_id: task.task_id,
            user_id: task.user_id,
            prompt: task.prompt,
            status: task.status,
            error: task.error,
            attempts: task.attempts,
            queue_position: None,
            webhook: task.webhook_url.map(|_| WebhookView::default()),
            created_at: task.created_at,
            updated_at: task.updated_at,
        }
    }
}

/// What `GET /api/v1/tasks` answers: one task, or a list (documentation only).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum TasksAnswer {
    One(TaskView),
    Many(Vec<TaskView>),
}

/// With `task_id`: that task (if it is yours). Without: your newest tasks first.
#[utoipa::path(get, path = "/api/v1/tasks", tag = "tasks", params(TasksQuery),
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "With task_id: that task. Without: a list of your tasks, newest first", body = TasksAnswer),
        (status = 400, description = "Invalid limit", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 404, description = "No such task of yours", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id, task_id = query.task_id))]
pub async fn get_tasks(
    user: DeviceOrUser,
    db: web::Data<DatabaseConnection>,
    dispatcher: web::Data<Addr<Dispatcher>>,
    query: web::Query<TasksQuery>,
) -> Result<HttpResponse, ApiError> {
    let TasksQuery { task_id, limit } = query.into_inner();
    // Checked whether or not it is used: a request the document refuses is refused.
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::Validation(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    if let Some(task_id) = task_id {
        let task = tasks::get(&db, user.user_id, &TaskId::from(task_id))
            .await?
            .ok_or(ApiError::NotFound("task"))?;
        let views = views(&db, &dispatcher, user.user_id, vec![task]).await?;
        return Ok(HttpResponse::Ok().json(&views[0]));
    }
    let newest = tasks::newest(&db, user.user_id, limit as u64).await?;
    Ok(HttpResponse::Ok().json(views(&db, &dispatcher, user.user_id, newest).await?))
}

/// Task views, with the queue position of those still QUEUED and the webhook delivery
/// of those with a webhook.
pub(crate) async fn views(
    db: &DatabaseConnection,
    dispatcher: &Addr<Dispatcher>,
    user_id: UserId,
    tasks: Vec<task::Model>,
) -> Result<Vec<TaskView>, ApiError> {
    let mut views: Vec<TaskView> = tasks.into_iter().map(TaskView::from).collect();
    let queued: Vec<usize> = (0..views.len())
        .filter(|&i| views[i].status == TaskStatus::Queued)
        .collect();
    if !queued.is_empty() {
        let asked = queued
            .iter()
            .map(|&i| (user_id, TaskId::from(views[i].task_id.clone())))
            .collect();
        let positions = ask(dispatcher, QueuePositions(asked)).await??;
        for (i, position) in queued.into_iter().zip(positions) {
            views[i].queue_position = position;
        }
    }
    let hooked = views
        .iter()
        .filter(|v| v.webhook.is_some())
        .map(|v| v.task_id.clone())
        .collect();
    let delivering = store::webhooks::status_of(db, hooked).await?;
    for view in &mut views {
        if let (Some(hook), Some(status)) = (&mut view.webhook, delivering.get(&view.task_id)) {
            *hook = WebhookView {
                delivered: status.delivered,
                attempts: status.attempts,
                last_status: status.last_status,
            };
        }
    }
    Ok(views)
}

/// Cancel one of your tasks: a QUEUED task leaves the queue, a RUNNING task's backend
/// call is dropped. Repeating it is harmless; a task that already ended answers 409.
#[utoipa::path(post, path = "/api/v1/tasks/{task_id}/cancel", tag = "tasks",
    params(("task_id" = String, Path, description = "The task to cancel")),
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "The task, now CANCELLED", body = TaskView),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 404, description = "No such task of yours", body = ErrorBody),
        (status = 409, description = "The task already ended DONE or FAILED", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id, task_id = %task_id))]
pub async fn cancel_task(
    user: DeviceOrUser,
    store: web::Data<Addr<TaskStore>>,
    dispatcher: web::Data<Addr<Dispatcher>>,
    task_id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let task_id = TaskId::from(task_id.into_inner());
    let cancel = CancelTask {
        task_id: task_id.clone(),
        user_id: user.user_id,
    };
    let outcome = ask(&store, cancel).await??;
    match outcome {
        CancelOutcome::NotFound => Err(ApiError::NotFound("task")),
        CancelOutcome::Finished(task) => Err(ApiError::TaskFinished(task.status)),
        CancelOutcome::Cancelled { task, changed } => {
            if changed {
                tracing::debug!("task cancelled");
                dispatcher.do_send(TaskCancelled {
                    task_id,
                    user_id: Some(user.user_id),
                });
            }
            Ok(HttpResponse::Ok().json(TaskView::from(task)))
        }
    }
}

/// Cancel one of your tasks, as `POST /api/v1/tasks/{task_id}/cancel` does (the task and
/// its image stay readable).
#[utoipa::path(delete, path = "/api/v1/tasks/{task_id}", tag = "tasks",
    params(("task_id" = String, Path, description = "The task to cancel")),
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "The task, now CANCELLED", body = TaskView),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 404, description = "No such task of yours", body = ErrorBody),
        (status = 409, description = "The task already ended DONE or FAILED", body = ErrorBody),
    ))]
pub async fn delete_task(
    user: DeviceOrUser,
    store: web::Data<Addr<TaskStore>>,
    dispatcher: web::Data<Addr<Dispatcher>>,
    task_id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    cancel_task(user, store, dispatcher, task_id).await
}
