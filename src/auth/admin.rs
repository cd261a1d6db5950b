use actix_web::{web, FromRequest, HttpRequest};
use entity::prelude::User;
use entity::user::Role;
use futures_util::future::{ready, LocalBoxFuture};
use futures_util::FutureExt;
use sea_orm::{DatabaseConnection, EntityTrait};

use super::extractor::from_jwt;
use super::AuthUser;
use crate::error::ApiError;

/// An admin: a login token whose user the database says is an admin now. The role in
/// the token is not trusted here, so demoting an admin shuts them out of the admin
/// routes at once rather than when their token expires.
#[derive(Debug, Clone)]
pub struct AdminUser(pub AuthUser);

impl FromRequest for AdminUser {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<AdminUser, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let user = match from_jwt(req) {
            Ok(user) => user,
            Err(e) => return ready(Err(e)).boxed_local(),
        };
        let Some(db) = req.app_data::<web::Data<DatabaseConnection>>().cloned() else {
            let missing = ApiError::Internal("database missing from app data".into());
            return ready(Err(missing)).boxed_local();
        };
        async move {
            let row = User::find_by_id(user.id)
                .one(db.get_ref())
                .await?
                .ok_or(ApiError::Unauthorized("the token's user no longer exists"))?;
            if row.role != Role::Admin {
                return Err(ApiError::Forbidden("this needs the admin role"));
            }
            Ok(AdminUser(AuthUser {
                role: row.role,
                ..user
            }))
        }
        .boxed_local()
    }
}
