//! `POST /api/v1/image/async` and `GET /api/images/{id}`.

use actix::Addr;
use actix_web::http::header;
use actix_web::{web, HttpResponse};
use serde::Serialize;

use crate::actors::messages::{GetImage, Submit, SubmitError};
use crate::actors::{Dispatcher, TaskStore};
use crate::auth::AuthUser;
use crate::domain::{ImageJob, ImageRequest};
use crate::error::{ApiError, ErrorBody};
use crate::http::ACTOR_REPLY_TIMEOUT;
use crate::settings::Settings;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/image/async", web::post().to(submit))
        .route("/api/images/{id}", web::get().to(get_image));
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SubmitResponse {
    #[schema(example = "550e8400-e29b-41d4-a716-446655440000")]
    pub task_id: String,
    #[schema(example = "QUEUED")]
    pub status: &'static str,
    #[schema(example = "task submitted successfully")]
    pub message: &'static str,
}

/// Queue a text-to-image task. The 202 means the task is committed to the database.
#[utoipa::path(post, path = "/api/v1/image/async", tag = "image", request_body = ImageRequest,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Queued", body = SubmitResponse),
        (status = 400, description = "Invalid or malformed body", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 503, description = "Queue full (see Retry-After)", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = user.id, task_id))]
pub async fn submit(
    user: AuthUser,
    settings: web::Data<Settings>,
    dispatcher: web::Data<Addr<Dispatcher>>,
    body: web::Json<ImageRequest>,
) -> Result<HttpResponse, ApiError> {
    let job = ImageJob::parse(body.into_inner(), &settings.image)?;
    let task_id = dispatcher
        .send(Submit {
            user_id: user.id,
            job,
        })
        .timeout(ACTOR_REPLY_TIMEOUT)
        .await?
        .map_err(|e| match e {
            SubmitError::QueueFull { capacity } => ApiError::QueueFull { capacity },
            SubmitError::ShuttingDown => ApiError::ShuttingDown,
            SubmitError::Store(e) => ApiError::Database(e),
        })?;
    tracing::Span::current().record("task_id", task_id.as_str());
    tracing::info!("task queued");
    Ok(HttpResponse::Accepted().json(SubmitResponse {
        task_id,
        status: "QUEUED",
        message: "task submitted successfully",
    }))
}

/// The image a task produced, with its Content-Type.
#[utoipa::path(get, path = "/api/images/{id}", tag = "image",
    params(("id" = i64, Path, description = "Image id from a task's result_url")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Image bytes", content_type = "image/png"),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 404, description = "No such image of yours", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = user.id, image_id = *id))]
pub async fn get_image(
    user: AuthUser,
    store: web::Data<Addr<TaskStore>>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let image = store
        .send(GetImage {
            image_id: id.into_inner(),
            user_id: user.id,
        })
        .timeout(ACTOR_REPLY_TIMEOUT)
        .await??
        .ok_or(ApiError::NotFound("image"))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, image.content_type))
        .insert_header((header::CACHE_CONTROL, "private, max-age=86400, immutable"))
        .body(image.data))
}
