//! `GET /api/v1/tasks`: one task by id, or the user's newest tasks.

use actix::Addr;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use entity::task;
use serde::{Deserialize, Serialize};

use crate::actors::messages::{GetTask, ListTasks};
use crate::actors::TaskStore;
use crate::auth::AuthUser;
use crate::error::{ApiError, ErrorBody};
use crate::http::ACTOR_REPLY_TIMEOUT;

pub const DEFAULT_LIMIT: i64 = 20;
pub const MAX_LIMIT: i64 = 100;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/tasks", web::get().to(get_tasks));
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct TasksQuery {
    /// One task; without it, the list.
    pub task_id: Option<String>,
    /// How many of the newest tasks to list, 1 to 100 (default 20).
    pub limit: Option<i64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TaskView {
    pub task_id: String,
    pub user_id: i64,
    pub prompt: String,
    /// QUEUED, RUNNING, DONE, FAILED or CANCELLED.
    #[schema(value_type = String, example = "DONE")]
    pub status: task::Status,
    /// Where the image is, once DONE.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "/api/images/123")]
    pub result_url: Option<String>,
    /// Why it failed, once FAILED.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<task::Model> for TaskView {
    fn from(task: task::Model) -> Self {
        TaskView {
            result_url: task.image_id.map(|id| format!("/api/images/{id}")),
            task_id: task.task_id,
            user_id: task.user_id,
            prompt: task.prompt,
            status: task.status,
            error: task.error,
            created_at: task.created_at,
            updated_at: task.updated_at,
        }
    }
}

/// With `task_id`: that task (if it is yours). Without: your newest tasks first.
#[utoipa::path(get, path = "/api/v1/tasks", tag = "tasks", params(TasksQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The task, or a list of tasks newest first", body = TaskView),
        (status = 400, description = "Invalid limit", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 404, description = "No such task of yours", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = user.id, task_id = query.task_id))]
pub async fn get_tasks(
    user: AuthUser,
    store: web::Data<Addr<TaskStore>>,
    query: web::Query<TasksQuery>,
) -> Result<HttpResponse, ApiError> {
    let TasksQuery { task_id, limit } = query.into_inner();
    if let Some(task_id) = task_id {
        let task = store
            .send(GetTask {
                task_id,
                user_id: user.id,
            })
            .timeout(ACTOR_REPLY_TIMEOUT)
            .await??
            .ok_or(ApiError::NotFound("task"))?;
        return Ok(HttpResponse::Ok().json(TaskView::from(task)));
    }
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::Validation(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let tasks = store
        .send(ListTasks {
            user_id: user.id,
            limit: limit as u64,
        })
        .timeout(ACTOR_REPLY_TIMEOUT)
        .await??;
    Ok(HttpResponse::Ok().json(tasks.into_iter().map(TaskView::from).collect::<Vec<_>>()))
}
