//! `POST /api/v1/keys`, `GET /api/v1/keys`, `DELETE /api/v1/keys/{id}`: a user's device
//! API keys. Managing keys takes a login token; a key cannot mint or revoke keys.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use entity::api_key;
use sea_orm::DatabaseConnection;
use serde::{Deserialize, Serialize};

use crate::auth::api_keys::{self, Refused};
use crate::auth::AuthError;
use crate::error::{ApiError, ErrorBody};
use crate::http::caller::AuthUser;
use crate::store::api_keys as key_rows;

/// Keys one user may hold at once.
pub const MAX_KEYS_PER_USER: usize = 100;
const MAX_NAME_CHARS: usize = 64;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/keys", web::post().to(create_key))
        .route("/api/v1/keys", web::get().to(list_keys))
        .route("/api/v1/keys/{id}", web::delete().to(delete_key));
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct CreateKeyRequest {
    /// A label, e.g. the device it goes on: up to 64 characters without control
    /// characters; blank is none.
    #[schema(
        max_length = 64,
        pattern = "^[\\t\\n\\u000B\\u000C\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000]*[^\\u0000-\\u001F\\u007F-\\u009F]*[\\t\\n\\u000B\\u000C\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000]*$",
        example = "kitchen-esp32"
    )]
    pub name: Option<String>,
}

/// A key as listings show it (never the key itself).
#[derive(Serialize, utoipa::ToSchema)]
pub struct KeyView {
    pub id: i64,
    pub name: Option<String>,
    /// The key's first characters.
    #[schema(example = "igk_Xq3fT9bA")]
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    /// Refreshed at most once a minute.
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<api_key::Model> for KeyView {
    fn from(key: api_key::Model) -> Self {
        KeyView {
            id: key.id,
            name: key.name,
            prefix: key.prefix,
            created_at: key.created_at,
            last_used_at: key.last_used_at,
        }
    }
}

/// A new key: the only time the key is shown.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    /// Send as `X-API-Key: <key>` or `Authorization: Bearer <key>`. Shown once: store it now.
    #[schema(example = "igk_Xq3fT9bA…")]
    pub key: String,
    #[serde(flatten)]
    pub view: KeyView,
}

/// Create a device API key.
#[utoipa::path(post, path = "/api/v1/keys", tag = "keys", request_body = CreateKeyRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created; the key is in the reply and nowhere else", body = CreatedKey),
        (status = 400, description = "Invalid name or malformed body", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 409, description = "Too many keys; revoke one first", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %user.id, key_id))]
pub async fn create_key(
    user: AuthUser,
    db: web::Data<DatabaseConnection>,
    body: web::Json<CreateKeyRequest>,
) -> Result<HttpResponse, ApiError> {
    let name = parse_name(body.into_inner().name)?;
    let (row, key) = match api_keys::create(&db, user.id, name, MAX_KEYS_PER_USER as u64).await? {
        Ok(created) => created,
        Err(Refused::TooMany) => {
            return Err(ApiError::TooManyKeys {
                max: MAX_KEYS_PER_USER,
            })
        }
        Err(Refused::UserGone) => return Err(AuthError::UserGone.into()),
    };
    tracing::Span::current().record("key_id", row.id);
    tracing::info!("api key created");
    Ok(HttpResponse::Created().json(CreatedKey {
        key,
        view: row.into(),
    }))
}

/// The caller's keys, newest first.
#[utoipa::path(get, path = "/api/v1/keys", tag = "keys",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Your keys", body = [KeyView]),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
pub async fn list_keys(
    user: AuthUser,
    db: web::Data<DatabaseConnection>,
) -> Result<HttpResponse, ApiError> {
    let keys: Vec<KeyView> = key_rows::list(&db, user.id)
        .await?
        .into_iter()
        .map(KeyView::from)
        .collect();
    Ok(HttpResponse::Ok().json(keys))
}

/// Revoke one of the caller's keys; it stops working at once.
#[utoipa::path(delete, path = "/api/v1/keys/{id}", tag = "keys",
    params(("id" = i64, Path, description = "Key id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 404, description = "No such key of yours", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %user.id, key_id = *id))]
pub async fn delete_key(
    user: AuthUser,
    db: web::Data<DatabaseConnection>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    if !key_rows::revoke(&db, user.id, id.into_inner()).await? {
        return Err(ApiError::NotFound("key"));
    }
    tracing::info!("api key revoked");
    Ok(HttpResponse::NoContent().finish())
}

/// A trimmed name of at most 64 characters without control characters; blank is none.
fn parse_name(name: Option<String>) -> Result<Option<String>, ApiError> {
    // The length is the name's as sent, blanks and all, as the document says.
    let too_long = name
        .as_ref()
        .is_some_and(|n| n.chars().count() > MAX_NAME_CHARS);
    let Some(name) = name.map(|n| n.trim().to_string()).filter(|n| !n.is_empty()) else {
        return if too_long {
            Err(ApiError::Validation(format!(
                "name must be at most {MAX_NAME_CHARS} characters"
            )))
        } else {
            Ok(None)
        };
    };
    if too_long || name.chars().any(char::is_control) {
        return Err(ApiError::Validation(format!(
            "name must be at most {MAX_NAME_CHARS} characters, without control characters"
        )));
    }
    Ok(Some(name))
}
