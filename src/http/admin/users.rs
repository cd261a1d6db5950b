//! `/api/v1/admin/users`: every user with their task counts, and changing a user's role
//! or disabling them. A disabled user's tokens and device keys are refused from the next
//! request on, and their open event streams end, at once in this gateway (and as soon
//! as the store's notice arrives in the others on PostgreSQL).

use std::collections::HashMap;

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use serde::{Deserialize, Serialize};

use super::audit::record;
use crate::auth::UserStanding;
use crate::domain::{Role, TaskStatus, UserId};
use crate::error::{ApiError, ErrorBody};
use crate::events::EventHub;
use crate::http::caller::AdminUser;
use crate::store::users;

const DEFAULT_LIMIT: u64 = 50;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/users", web::get().to(list_users))
        .route("/users/{id}", web::patch().to(update_user));
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsersQuery {
    /// Users per page, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
    /// The id of the first user of the page (a `next`); in id order.
    #[param(minimum = 0)]
    pub from: Option<i64>,
}

/// A user's tasks by status.
#[derive(Serialize, utoipa::ToSchema, Default)]
pub struct TaskCounts {
    pub queued: u64,
    pub running: u64,
    pub done: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl From<&HashMap<TaskStatus, u64>> for TaskCounts {
    fn from(counts: &HashMap<TaskStatus, u64>) -> Self {
        let of = |status| counts.get(&status).copied().unwrap_or(0);
        TaskCounts {
            queued: of(TaskStatus::Queued),
            running: of(TaskStatus::Running),
            done: of(TaskStatus::Done),
            failed: of(TaskStatus::Failed),
            cancelled: of(TaskStatus::Cancelled),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AdminUserView {
    pub id: i64,
    pub username: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
    pub tasks: TaskCounts,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UserPage {
    pub results: Vec<AdminUserView>,
    pub total: u64,
    pub limit: u64,
    pub from: Option<i64>,
    pub next: Option<i64>,
}

/// The change: a role, disabled, or both.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserChangeRequest {
    pub role: Option<Role>,
    pub disabled: Option<bool>,
}

fn view(user: entity::user::Model, counts: Option<&HashMap<TaskStatus, u64>>) -> AdminUserView {
    AdminUserView {
        id: user.id,
        username: user.username,
        role: user.role,
        disabled: user.disabled,
        created_at: user.created_at,
        tasks: counts.map(TaskCounts::from).unwrap_or_default(),
    }
}

/// Every user in id order, with their tasks by status.
#[utoipa::path(get, path = "/api/v1/admin/users", tag = "admin",
    params(UsersQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "One page of users", body = UserPage),
        (status = 400, description = "Invalid limit or from, or an unknown parameter", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(admin_id = %admin.0.id))]
pub async fn list_users(
    admin: AdminUser,
    db: web::Data<DatabaseConnection>,
    query: web::Query<UsersQuery>,
) -> Result<HttpResponse, ApiError> {
    let UsersQuery { limit, from } = query.into_inner();
    let limit = super::page_limit(limit, from, DEFAULT_LIMIT)?;
    let (rows, total, next) = users::page(&db, limit, from).await?;
    let ids: Vec<i64> = rows.iter().map(|u| u.id).collect();
    let counts = users::task_counts(&db, &ids).await?;
    let results = rows
        .into_iter()
        .map(|user| {
            let id = user.id;
            view(user, counts.get(&id))
        })
        .collect();
    Ok(HttpResponse::Ok().json(UserPage {
        results,
        total,
        limit,
        from,
        next,
    }))
}

/// Change a user's role or disable them (not one's own account: an admin cannot lock
/// themselves out).
#[utoipa::path(patch, path = "/api/v1/admin/users/{id}", tag = "admin",
    request_body = UserChangeRequest,
    params(("id" = i64, Path, description = "User id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Changed", body = AdminUserView),
        (status = 400, description = "Nothing to change, one's own account, or an unknown field", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(admin_id = %admin.0.id, user_id = *id))]
pub async fn update_user(
    admin: AdminUser,
    db: web::Data<DatabaseConnection>,
    standing: web::Data<UserStanding>,
    hub: web::Data<EventHub>,
    id: web::Path<i64>,
    body: web::Json<UserChangeRequest>,
) -> Result<HttpResponse, ApiError> {
    let (id, change) = (id.into_inner(), body.into_inner());
    if change.role.is_none() && change.disabled.is_none() {
        return Err(ApiError::Validation(
            "nothing to change: give role or disabled".into(),
        ));
    }
    if id == admin.0.id.0 {
        return Err(ApiError::Validation(
            "an admin cannot change their own account".into(),
        ));
    }
    let user = users::update(&db, id, change.role, change.disabled)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    standing.forget(UserId(id));
    if change.disabled == Some(true) {
        // Here at once; the other gateways on the notice the store sent.
        hub.revoke(UserId(id));
    }
    tracing::info!(?change, "user changed by an admin");
    let filter = serde_json::to_string(&change).ok();
    record(
        &db,
        &admin,
        "user.update",
        Some(user.username.clone()),
        filter,
        None,
    )
    .await;
    let counts = users::task_counts(&db, &[id]).await?;
    Ok(HttpResponse::Ok().json(view(user, counts.get(&id))))
}
