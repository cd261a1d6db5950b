//! The OpenAI-compatible front door under `/v1`, so the official SDKs can use the
//! gateway (`OpenAI(api_key=<device key>, base_url="http://host:8080/v1")`):
//!
//! - `images`: `POST /v1/images/generations`, each image a durable task, waited for;
//! - `transcriptions`: `POST /v1/audio/transcriptions`, through the speech pool;
//! - `models`: `GET /v1/models`, what the pool serves.
//!
//! Callers authenticate as on the device endpoints (`DeviceOrUser`: a device key or a
//! JWT, as `Authorization: Bearer`). Errors keep the one table's status codes and codes,
//! rendered in OpenAI's shape by this scope's middleware.

pub mod images;
pub mod models;
pub mod transcriptions;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, Next};
use actix_web::web;

use crate::error::{ApiError, ErrorShape};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/v1")
            .wrap(from_fn(openai_errors))
            .configure(images::configure)
            .configure(transcriptions::configure)
            .configure(models::configure)
            .default_service(web::to(super::no_route)),
    );
}

/// Renders the scope's errors in OpenAI's shape: the same row of the table (status,
/// headers, code), another body.
async fn openai_errors(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let response = next.call(req).await?.map_into_boxed_body();
    let reshaped = response
        .response()
        .error()
        .and_then(|error| error.as_error::<ApiError>())
        .map(|error| error.render(ErrorShape::OpenAi));
    Ok(match reshaped {
        Some(reshaped) => response.into_response(reshaped.map_into_boxed_body()),
        None => response,
    })
}

/// Seconds since the Unix epoch, for the `created` fields.
fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}
