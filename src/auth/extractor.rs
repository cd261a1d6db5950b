use std::future::{ready, Ready};

use actix_web::{http::header, web, FromRequest, HttpRequest};
use entity::user::Role;

use super::JwtKeys;
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
        ready(authenticate(req))
    }
}

fn authenticate(req: &HttpRequest) -> Result<AuthUser, ApiError> {
    let keys = req
        .app_data::<web::Data<JwtKeys>>()
        .ok_or_else(|| ApiError::Internal("JwtKeys missing from app data".into()))?;
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or(ApiError::Unauthorized("missing Authorization header"))?;
    let token = value
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
        ))?;
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
