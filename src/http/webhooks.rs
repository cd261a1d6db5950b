//! `POST /api/v1/webhook-secret`: the secret a user's webhook deliveries are signed with.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use sea_orm::DatabaseConnection;
use serde::Serialize;

use crate::error::{ApiError, ErrorBody};
use crate::http::caller::AuthUser;
use crate::store;
use crate::webhooks::signing;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/webhook-secret", web::post().to(rotate_secret));
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct WebhookSecret {
    /// Verify deliveries with it as the Standard Webhooks libraries take it. Shown once.
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    pub secret: String,
}

/// Create your webhook signing secret, or replace it: deliveries from now on, retries of
/// earlier events included, are signed with the new one. It is shown only in this answer.
#[utoipa::path(post, path = "/api/v1/webhook-secret", tag = "webhooks",
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The new secret", body = WebhookSecret),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
pub async fn rotate_secret(
    user: AuthUser,
    db: web::Data<DatabaseConnection>,
) -> Result<HttpResponse, ApiError> {
    let secret = signing::new_secret();
    if !store::webhooks::set_secret(&db, user.id, &secret).await? {
        return Err(ApiError::Unauthorized("the user no longer exists".into()));
    }
    tracing::info!("webhook secret rotated");
    Ok(HttpResponse::Created()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(WebhookSecret { secret }))
}
