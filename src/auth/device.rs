use actix_web::{web, FromRequest, HttpRequest};
use futures_util::future::{ready, LocalBoxFuture};
use futures_util::FutureExt;
use sea_orm::DatabaseConnection;

use super::api_keys;
use super::extractor::{bearer_token, verify_jwt};
use crate::error::ApiError;

pub const API_KEY_HEADER: &str = "X-API-Key";

/// A caller of the device-facing endpoints: a device with an API key (`X-API-Key: <key>`
/// or `Authorization: Bearer igk_…`), or a user with a JWT. Either way it acts as the
/// key's owner.
#[derive(Debug, Clone)]
pub struct DeviceOrUser {
    pub user_id: i64,
    /// The API key used, when not a JWT.
    pub key_id: Option<i64>,
}

impl FromRequest for DeviceOrUser {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<DeviceOrUser, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let key = match req.headers().get(API_KEY_HEADER) {
            Some(value) => match value.to_str() {
                Ok(key) => key.trim().to_string(),
                Err(_) => return ready(Err(invalid_key())).boxed_local(),
            },
            None => match bearer_token(req) {
                Ok(token) if api_keys::is_api_key(token) => token.to_string(),
                Ok(token) => {
                    let user = verify_jwt(req, token).map(|user| DeviceOrUser {
                        user_id: user.id,
                        key_id: None,
                    });
                    return ready(user).boxed_local();
                }
                Err(e) => return ready(Err(e)).boxed_local(),
            },
        };
        let Some(db) = req.app_data::<web::Data<DatabaseConnection>>().cloned() else {
            let missing = ApiError::Internal("database missing from app data".into());
            return ready(Err(missing)).boxed_local();
        };
        async move {
            if !api_keys::is_api_key(&key) {
                return Err(invalid_key());
            }
            let found = api_keys::authenticate(&db, &key)
                .await?
                .ok_or_else(invalid_key)?;
            Ok(DeviceOrUser {
                user_id: found.user_id,
                key_id: Some(found.id),
            })
        }
        .boxed_local()
    }
}

fn invalid_key() -> ApiError {
    ApiError::Unauthorized("invalid or revoked API key")
}
