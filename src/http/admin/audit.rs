//! `GET /api/v1/admin/audit`, and the one way admin handlers log what they did.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorBody};
use crate::http::caller::AdminUser;
use crate::store::audit::{self, Entry};

const DEFAULT_LIMIT: u64 = 20;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/audit", web::get().to(list_audit));
}

/// Logs an admin's action. The action is done by then, so a failure to log it is an
/// error in the log, not the answer.
pub async fn record(
    db: &DatabaseConnection,
    admin: &AdminUser,
    action: &'static str,
    target: Option<String>,
    filter: Option<String>,
    count: Option<u64>,
) {
    let entry = Entry {
        actor_id: admin.0.id.0,
        actor_name: admin.0.username.clone(),
        action,
        target,
        filter,
        count,
    };
    if let Err(e) = audit::append(db, entry.clone()).await {
        tracing::error!(error = %e, ?entry, "cannot write the audit log");
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Entries per page, 1 to 1000 (default 20).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
    /// The id of the first entry of the page (a `next`); newest first.
    #[param(minimum = 0)]
    pub from: Option<i64>,
}

/// One admin action.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AuditView {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// The admin's user id and name.
    pub actor_id: i64,
    pub actor: String,
    /// `tasks.cancel`, `tasks.retry`, `tasks.delete`, `instance.add`, `instance.update`,
    /// `instance.remove`, `user.update`, `queue.pause`, `queue.resume`.
    #[schema(example = "tasks.cancel")]
    pub action: String,
    /// The instance or user acted on.
    pub target: Option<String>,
    /// The bulk action's filter, or the change, as JSON.
    pub filter: Option<serde_json::Value>,
    /// Tasks a bulk action affected.
    pub count: Option<i64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub results: Vec<AuditView>,
    pub total: u64,
    pub limit: u64,
    pub from: Option<i64>,
    pub next: Option<i64>,
}

/// The audit log, newest first.
#[utoipa::path(get, path = "/api/v1/admin/audit", tag = "admin",
    params(AuditQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "One page of the log", body = AuditPage),
        (status = 400, description = "Invalid limit or from, or an unknown parameter", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(admin_id = %admin.0.id))]
pub async fn list_audit(
    admin: AdminUser,
    db: web::Data<DatabaseConnection>,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse, ApiError> {
    let AuditQuery { limit, from } = query.into_inner();
    let limit = super::page_limit(limit, from, DEFAULT_LIMIT)?;
    let (rows, total, next) = audit::list(&db, limit, from).await?;
    let results = rows
        .into_iter()
        .map(|row| AuditView {
            id: row.id,
            at: row.at,
            actor_id: row.actor_id,
            actor: row.actor_name,
            action: row.action,
            target: row.target,
            filter: row.filter.and_then(|f| serde_json::from_str(&f).ok()),
            count: row.count,
        })
        .collect();
    Ok(HttpResponse::Ok().json(AuditPage {
        results,
        total,
        limit,
        from,
        next,
    }))
}
