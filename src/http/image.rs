//! `POST /api/v1/image/async` and `GET /api/images/{id}`.

use actix::Addr;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use sea_orm::DatabaseConnection;
use serde::Serialize;

use crate::actors::messages::Submit;
use crate::actors::Dispatcher;
use crate::domain::{
    Idempotency, ImageId, ImageJob, ImageRequest, Priority, Role, TaskId, Webhook,
};
use crate::error::{insert_rate_headers, ApiError, ErrorBody};
use crate::http::ask;
use crate::http::caller::DeviceOrUser;
use crate::limits::{Limits, RateInfo};
use crate::settings::Settings;
use crate::store::{self, tasks};
use crate::telemetry;
use crate::webhooks::address;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/image/async", web::post().to(submit))
        .route("/api/images/{id}", web::get().to(get_image))
        .route("/api/images/{id}", web::head().to(get_image));
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
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 202, description = "Queued", body = SubmitResponse),
        (status = 400, description = "Invalid or malformed body; a webhook_url that does not resolve or leads to a private address; a webhook without a webhook secret", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 422, description = "Idempotency-Key already used for another request", body = ErrorBody),
        (status = 429, description = "Over the submission rate (Retry-After, X-RateLimit-*) or the unfinished-task quota", body = ErrorBody),
        (status = 503, description = "Queue full or shutting down (see Retry-After)", body = ErrorBody),
    ),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255,
        pattern = "^[!-~]{1,255}$",
        description = "Retry-safe submission (1 to 255 visible ASCII characters): the same key and request answer the same task_id and create nothing")))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id, task_id))]
pub async fn submit(
    user: DeviceOrUser,
    req: HttpRequest,
    settings: web::Data<Settings>,
    dispatcher: web::Data<Addr<Dispatcher>>,
    db: web::Data<DatabaseConnection>,
    limits: web::Data<Limits>,
    body: web::Json<ImageRequest>,
) -> Result<HttpResponse, ApiError> {
    let request = body.into_inner();
    let webhook = Webhook::parse(
        request.webhook_url.as_deref(),
        request.webhook_events.as_deref(),
    )?;
    let job = ImageJob::parse(request, &settings.image)?;
    let rate = match &limits.submit {
        Some(limit) => Some(limit.check(&user.user_id).map_err(ApiError::RateLimited)?),
        None => None,
    };
    let idempotency = match req.headers().get(IDEMPOTENCY_KEY) {
        Some(value) => {
            let key = value.to_str().map_err(|_| {
                ApiError::Validation("Idempotency-Key must be visible ASCII".into())
            })?;
            Some(Idempotency::parse(key, &job)?)
        }
        None => None,
    };
    // A replay answers even when the queue is full, so check before admission.
    if let Some(idempotency) = &idempotency {
        if let Some(task) = tasks::by_idempotency_key(&db, user.user_id, &idempotency.key).await? {
            if task.request_hash.as_deref() != Some(idempotency.request_hash.as_str()) {
                return Err(ApiError::IdempotencyKeyReused);
            }
            return Ok(accepted(TaskId::from(task.task_id), true, rate));
        }
    }
    if let Some(webhook) = &webhook {
        address::check(&webhook.url, settings.webhooks.allow_private_networks).await?;
        if !store::webhooks::has_secret(&db, user.user_id).await? {
            return Err(ApiError::NoWebhookSecret);
        }
    }
    let submit = Submit {
        user_id: user.user_id,
        priority: priority_of(user.role),
        job,
        idempotency,
        trace: telemetry::current_trace(),
        webhook,
    };
    let submitted = ask(&dispatcher, submit).await??;
    tracing::Span::current().record("task_id", submitted.task_id.as_str());
    tracing::debug!(replayed = submitted.replayed, "task queued");
    Ok(accepted(submitted.task_id, submitted.replayed, rate))
}

/// VIP users' tasks wait in the priority line; everyone else's (admins too) in the normal one.
pub(crate) fn priority_of(role: Role) -> Priority {
    match role {
        Role::Vip => Priority::Vip,
        Role::User | Role::Admin => Priority::Normal,
    }
}

const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// The 202, with the user's rate-limit figures; a replay says so in
/// `Idempotent-Replayed`, as payment APIs do.
fn accepted(task_id: TaskId, replayed: bool, rate: Option<RateInfo>) -> HttpResponse {
    let mut response = HttpResponse::Accepted();
    if replayed {
        response.insert_header(("Idempotent-Replayed", "true"));
    }
    if let Some(rate) = rate {
        insert_rate_headers(&mut response, &rate);
    }
    response.json(SubmitResponse {
        task_id: task_id.into_string(),
        status: "QUEUED",
        message: "task submitted successfully",
    })
}

/// The image a task produced, with its Content-Type. Device keys may fetch it too: the
/// OpenAI-compatible route answers links to it.
#[utoipa::path(method(get, head), path = "/api/images/{id}", tag = "image",
    params(("id" = i64, Path, description = "Image id from a task's result_url")),
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "Image bytes", content_type = "image/png"),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 404, description = "No such image of yours", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id, image_id = *id))]
pub async fn get_image(
    caller: DeviceOrUser,
    db: web::Data<DatabaseConnection>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let image = tasks::image(&db, caller.user_id, ImageId(id.into_inner()))
        .await?
        .ok_or(ApiError::NotFound("image"))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, image.content_type))
        .insert_header((header::CACHE_CONTROL, "private, max-age=86400, immutable"))
        .body(image.data))
}
