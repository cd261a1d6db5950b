//! `POST /v1/images/generations`: `n` images, each a durable task like any other, waited
//! for up to `openai.wait_secs` by the generation service and answered in OpenAI's shape.

use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use sea_orm::DatabaseConnection;
use serde::Serialize;

use super::unix_now;
use crate::domain::{ImageFormat, ImageGeneration, ImageGenerationRequest};
use crate::error::{ApiError, OpenAiErrorBody};
use crate::generation::{Generated, Generation, GenerationService};
use crate::http::caller::DeviceOrUser;
use crate::http::image::priority_of;
use crate::limits::Limits;
use crate::settings::Settings;
use crate::store::tasks;
use crate::telemetry;

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/images/generations", web::post().to(generations));
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ImagesResponse {
    /// Seconds since the Unix epoch.
    pub created: i64,
    pub data: Vec<ImageData>,
}

/// One image: in the answer, or a link to it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ImageData {
    /// The image, base64-encoded (response_format `b64_json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b64_json: Option<String>,
    /// `…/api/images/{id}`, fetched with the same key or token (response_format `url`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "http://localhost:8080/api/images/17")]
    pub url: Option<String>,
}

/// Generate images. Each is a task of its own (queue, fairness, quota, retries, listed
/// in `GET /api/v1/tasks`); the call waits for them up to `openai.wait_secs`.
#[utoipa::path(post, path = "/v1/images/generations", tag = "openai",
    request_body = ImageGenerationRequest,
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "The images, in the order asked", body = ImagesResponse),
        (status = 400, description = "Invalid prompt, n, size or response_format, or a malformed body", body = OpenAiErrorBody),
        (status = 401, description = "Missing or bad key or token", body = OpenAiErrorBody),
        (status = 409, description = "A task was cancelled while the call waited", body = OpenAiErrorBody),
        (status = 413, description = "Body too large", body = OpenAiErrorBody),
        (status = 429, description = "Over the submission rate or the unfinished-task quota (Retry-After)", body = OpenAiErrorBody),
        (status = 502, description = "A task failed (after its retries); the message says why", body = OpenAiErrorBody),
        (status = 503, description = "Queue full or shutting down (Retry-After); nothing keeps running", body = OpenAiErrorBody),
        (status = 504, description = "Not ready within openai.wait_secs; the message names the tasks, which keep running (x-should-retry: false)", body = OpenAiErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id, key_id = caller.key_id))]
pub async fn generations(
    caller: DeviceOrUser,
    req: HttpRequest,
    settings: web::Data<Settings>,
    limits: web::Data<Limits>,
    generation: web::Data<GenerationService>,
    db: web::Data<DatabaseConnection>,
    body: web::Json<ImageGenerationRequest>,
) -> Result<HttpResponse, ApiError> {
    let request = ImageGeneration::parse(body.into_inner(), &settings.image)?;
    if let Some(limit) = &limits.submit {
        // One submission per image, as if each had been posted alone.
        for _ in 0..request.n {
            limit
                .check(&caller.user_id)
                .map_err(ApiError::RateLimited)?;
        }
    }
    let generated = generation
        .generate(Generation {
            user_id: caller.user_id,
            priority: priority_of(caller.role),
            job: request.job,
            n: request.n,
            trace: telemetry::current_trace(),
        })
        .await?;
    let task_ids: Vec<&str> = generated.iter().map(|g| g.task_id.as_str()).collect();
    tracing::debug!(?task_ids, "images generated");
    let mut data = Vec::with_capacity(generated.len());
    for &Generated { image_id, .. } in &generated {
        data.push(match request.format {
            ImageFormat::Url => {
                let info = req.connection_info();
                let url = format!("{}://{}/api/images/{image_id}", info.scheme(), info.host());
                ImageData {
                    b64_json: None,
                    url: Some(url),
                }
            }
            ImageFormat::B64Json => {
                let image = tasks::image(&db, caller.user_id, image_id)
                    .await?
                    .ok_or(ApiError::NotFound("image"))?;
                let encoded = base64::engine::general_purpose::STANDARD.encode(image.data);
                ImageData {
                    b64_json: Some(encoded),
                    url: None,
                }
            }
        });
    }
    Ok(HttpResponse::Ok().json(ImagesResponse {
        created: unix_now(),
        data,
    }))
}
