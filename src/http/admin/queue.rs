//! `POST /api/v1/admin/queue/pause` and `/resume`: while paused nothing new is
//! dispatched, running tasks finish and submissions are still admitted up to the queue's
//! capacity. The pause is kept in the database, so it survives a restart.
//! `GET /api/v1/admin/queue/history`: the queue's depth as sampled over the last minutes.

use actix::Addr;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use serde::{Deserialize, Serialize};

use super::audit::record;
use crate::actors::messages::SetPaused;
use crate::actors::Dispatcher;
use crate::error::{ApiError, ErrorBody};
use crate::http::ask;
use crate::http::caller::AdminUser;
use crate::settings::Settings;
use crate::store::queue_samples;
use crate::telemetry::depth_history;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/queue/pause", web::post().to(pause))
        .route("/queue/resume", web::post().to(resume))
        .route("/queue/history", web::get().to(history));
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

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// How far back, in minutes: 1 to 1440 (the samples kept), 60 by default.
    #[param(minimum = 1, maximum = 1440)]
    pub minutes: Option<i64>,
}

/// The queue's depth at one sampling instant, across every gateway on the database.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DepthSample {
    /// The start of the sampling interval.
    pub at: DateTime<Utc>,
    pub queued: i64,
    pub running: i64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DepthHistory {
    /// `stats.depth_sample_secs`: the time between two samples.
    pub sample_secs: u64,
    /// Oldest first. An interval no gateway ran through has no sample.
    pub samples: Vec<DepthSample>,
}

/// The queue's depth (QUEUED and RUNNING tasks) over the last minutes, as sampled every
/// `stats.depth_sample_secs` and kept for a day, restarts included.
#[utoipa::path(get, path = "/api/v1/admin/queue/history", tag = "admin",
    params(HistoryQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The samples, oldest first", body = DepthHistory),
        (status = 400, description = "minutes out of range, or an unknown parameter", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ))]
pub async fn history(
    _admin: AdminUser,
    db: web::Data<DatabaseConnection>,
    settings: web::Data<Settings>,
    query: web::Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    let kept = depth_history::KEPT.num_minutes();
    let minutes = query.minutes.unwrap_or(60);
    if !(1..=kept).contains(&minutes) {
        return Err(ApiError::Validation(format!(
            "minutes must be between 1 and {kept}"
        )));
    }
    let after = Utc::now() - chrono::Duration::minutes(minutes);
    let samples = queue_samples::since(&db, after)
        .await?
        .into_iter()
        .map(|row| DepthSample {
            at: row.at,
            queued: row.queued,
            running: row.running,
        })
        .collect();
    Ok(HttpResponse::Ok().json(DepthHistory {
        sample_secs: settings.stats.depth_sample_secs,
        samples,
    }))
}
