//! `POST /api/v1/admin/queue/pause` and `/resume`: while paused nothing new is
//! dispatched, running tasks finish and submissions are still admitted up to the queue's
//! capacity. The pause is kept in the database, so it survives a restart.

use actix::Addr;
use actix_web::{web, HttpResponse};
use sea_orm::DatabaseConnection;
use serde::Serialize;

use super::audit::record;
use crate::actors::messages::SetPaused;
use crate::actors::Dispatcher;
use crate::error::{ApiError, ErrorBody};
use crate::http::ask;
use crate::http::caller::AdminUser;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/queue/pause", web::post().to(pause))
        .route("/queue/resume", web::post().to(resume));
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PauseState {
    pub paused: bool,
}

/// Stop dispatching: queued tasks wait, running ones finish, submissions are admitted.
#[utoipa::path(post, path = "/api/v1/admin/queue/pause", tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Paused (again: still paused)", body = PauseState),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 503, description = "The database is unavailable (nothing changed)", body = ErrorBody),
    ))]
pub async fn pause(
    admin: AdminUser,
    db: web::Data<DatabaseConnection>,
    dispatcher: web::Data<Addr<Dispatcher>>,
) -> Result<HttpResponse, ApiError> {
    set(admin, db, dispatcher, true).await
}

/// Dispatch again.
#[utoipa::path(post, path = "/api/v1/admin/queue/resume", tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Dispatching", body = PauseState),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 503, description = "The database is unavailable (nothing changed)", body = ErrorBody),
    ))]
pub async fn resume(
    admin: AdminUser,
    db: web::Data<DatabaseConnection>,
    dispatcher: web::Data<Addr<Dispatcher>>,
) -> Result<HttpResponse, ApiError> {
    set(admin, db, dispatcher, false).await
}

#[tracing::instrument(skip_all, fields(admin_id = %admin.0.id, paused))]
async fn set(
    admin: AdminUser,
    db: web::Data<DatabaseConnection>,
    dispatcher: web::Data<Addr<Dispatcher>>,
    paused: bool,
) -> Result<HttpResponse, ApiError> {
    ask(&dispatcher, SetPaused(paused)).await??;
    let action = if paused {
        "queue.pause"
    } else {
        "queue.resume"
    };
    record(&db, &admin, action, None, None, None).await;
    Ok(HttpResponse::Ok().json(PauseState { paused }))
}
