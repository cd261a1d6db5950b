use std::future::{ready, Ready};

use actix_web::{http::header, web, FromRequest, HttpRequest};
use entity::user::Role;

use super::{api_keys, JwtKeys};
use crate::error::ApiError;

/// The authenticated caller, taken from `Authorization: Bearer <JWT>`.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: i64,
    pub username: String,
    pub role: Role,
}

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = Ready<Result<AuthUser, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(from_jwt(req))
    }
}

/// The caller of a route that takes only login tokens.
pub(super) fn from_jwt(req: &HttpRequest) -> Result<AuthUser, ApiError> {
    let token = bearer_token(req)?;
    if api_keys::is_api_key(token) {
        return Err(ApiError::Unauthorized(
            "API keys are accepted only by the speech endpoints; log in for a token",
        ));
    }
    verify_jwt(req, token)
}

/// The credential of `Authorization: Bearer <credential>`.
pub(super) fn bearer_token(req: &HttpRequest) -> Result<&str, ApiError> {
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or(ApiError::Unauthorized("missing Authorization header"))?;
    value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::Unauthorized(
            "Authorization header must be `Bearer <token>`",
        ))
}

pub(super) fn verify_jwt(req: &HttpRequest, token: &str) -> Result<AuthUser, ApiError> {
    let keys = req
        .app_data::<web::Data<JwtKeys>>()
        .ok_or_else(|| ApiError::Internal("JwtKeys missing from app data".into()))?;
    let claims = keys.verify(token)?;
    let id = claims
        .sub
        .parse()
        .map_err(|_| ApiError::Unauthorized("invalid token"))?;
    Ok(AuthUser {
        id,
        username: claims.name,
        role: claims.role,
    })
}
