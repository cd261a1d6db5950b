//! Who is calling, as extractors: `AuthUser` (a login token), `AdminUser` (the token of a
//! user the database says is an admin now), `DeviceOrUser` (a device API key or a login
//! token) and `Streamer` (either of those, or a stream ticket). What they check is `crate::auth`'s; here it becomes a request's caller.
//! Every one of them also checks that the user still exists and is not disabled
//! (`UserStanding`), so a removed or disabled user's token or key gets 401 everywhere.

use std::future::ready;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{http::header, web, FromRequest, HttpMessage, HttpRequest};
use futures_util::future::LocalBoxFuture;
use futures_util::FutureExt;
use sea_orm::DatabaseConnection;

use crate::auth::{api_keys, tickets, AuthError, JwtKeys, UserStanding};
use crate::domain::{Role, UserId};
use crate::error::ApiError;
use crate::store::users;

/// The authenticated caller, taken from `Authorization: Bearer <JWT>`.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: UserId,
    pub username: String,
    pub role: Role,
}

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<AuthUser, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let user = match from_jwt(req) {
            Ok(user) => user,
            Err(e) => return ready(Err(e.into())).boxed_local(),
        };
        let standing = standing(req);
        async move {
            standing.check(user.id).await?;
            Ok(user)
        }
        .boxed_local()
    }
}

fn standing(req: &HttpRequest) -> web::Data<UserStanding> {
    req.app_data::<web::Data<UserStanding>>()
        .cloned()
        .expect("startup registers the UserStanding")
}

/// The caller of a route that takes only login tokens.
fn from_jwt(req: &HttpRequest) -> Result<AuthUser, AuthError> {
    let token = bearer_token(req)?;
    if api_keys::is_api_key(token) {
        return Err(AuthError::ApiKeyNotAccepted);
    }
    verify_jwt(req, token)
}

/// The credential of `Authorization: Bearer <credential>`.
fn bearer_token(req: &HttpRequest) -> Result<&str, AuthError> {
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or(AuthError::MissingAuthorization)?;
    value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(AuthError::MalformedAuthorization)
}

fn verify_jwt(req: &HttpRequest, token: &str) -> Result<AuthUser, AuthError> {
    let keys = req
        .app_data::<web::Data<JwtKeys>>()
        .expect("startup registers the JwtKeys");
    let claims = keys.verify(token)?;
    let id = claims.sub.parse().map_err(|_| AuthError::InvalidToken)?;
    Ok(AuthUser {
        id: UserId(id),
        username: claims.name,
        role: claims.role,
    })
}

/// An admin: a login token whose user the database says is an admin now. The role in
/// the token is not trusted here, so demoting an admin shuts them out of the admin
/// routes at once rather than when their token expires.
#[derive(Debug, Clone)]
pub struct AdminUser(pub AuthUser);

impl AdminUser {
    /// The request's admin, checked against the database, or why not (401, 403).
    pub fn of(req: &HttpRequest) -> LocalBoxFuture<'static, Result<AdminUser, ApiError>> {
        if let Some(admin) = req.extensions().get::<AdminUser>() {
            return ready(Ok(admin.clone())).boxed_local();
        }
        let user = match from_jwt(req) {
            Ok(user) => user,
            Err(e) => return ready(Err(e.into())).boxed_local(),
        };
        let db = req
            .app_data::<web::Data<DatabaseConnection>>()
            .cloned()
            .expect("startup registers the database");
        async move {
            let row = users::find_by_id(&db, user.id.0)
                .await
                .map_err(AuthError::from)?
                .ok_or(AuthError::UserGone)?;
            if row.disabled {
                return Err(AuthError::Disabled.into());
            }
            if row.role != Role::Admin {
                return Err(AuthError::NotAdmin.into());
            }
            Ok(AdminUser(AuthUser {
                role: row.role,
                ..user
            }))
        }
        .boxed_local()
    }
}

/// The admin `require_admin` found, or the same check done here.
impl FromRequest for AdminUser {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<AdminUser, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        AdminUser::of(req)
    }
}

/// Middleware of the admin scope: the caller must be an admin before anything of the
/// request (path, query, Content-Type, body) is looked at, so a non-admin always gets
/// 401 or 403, never a 400, 404 or 415 that would depend on what they sent.
pub async fn require_admin(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let admin = match AdminUser::of(req.request()).await {
        Ok(admin) => admin,
        Err(refused) => return Ok(req.error_response(refused)),
    };
    req.extensions_mut().insert(admin);
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// A caller of the device-facing endpoints (speech, the OpenAI-compatible routes, image
/// downloads): a device with an API key (`X-API-Key: <key>` or `Authorization: Bearer
/// igk_…`, as the OpenAI SDKs send an `api_key`), or a user with a JWT. Either way it
/// acts as the key's owner, with the owner's role (a key's: the owner's now, since a key
/// outlives promotions; a token's: the one it carries).
#[derive(Debug, Clone)]
pub struct DeviceOrUser {
    pub user_id: UserId,
    /// The API key used, when not a JWT.
    pub key_id: Option<i64>,
    pub role: Role,
}

impl FromRequest for DeviceOrUser {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<DeviceOrUser, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let key = match req.headers().get(api_keys::API_KEY_HEADER) {
            Some(value) => match value.to_str() {
                Ok(key) => key.trim().to_string(),
                Err(_) => return ready(Err(AuthError::InvalidKey.into())).boxed_local(),
            },
            None => match bearer_token(req) {
                Ok(token) if api_keys::is_api_key(token) => token.to_string(),
                Ok(token) => {
                    let user = match verify_jwt(req, token) {
                        Ok(user) => user,
                        Err(e) => return ready(Err(e.into())).boxed_local(),
                    };
                    let standing = standing(req);
                    return async move {
                        standing.check(user.id).await?;
                        Ok(DeviceOrUser {
                            user_id: user.id,
                            key_id: None,
                            role: user.role,
                        })
                    }
                    .boxed_local();
                }
                Err(e) => return ready(Err(e.into())).boxed_local(),
            },
        };
        let db = req
            .app_data::<web::Data<DatabaseConnection>>()
            .cloned()
            .expect("startup registers the database");
        let standing = standing(req);
        async move {
            if !api_keys::is_api_key(&key) {
                return Err(AuthError::InvalidKey.into());
            }
            let found = api_keys::authenticate(&db, &key)
                .await
                .map_err(AuthError::from)?
                .ok_or(AuthError::InvalidKey)?;
            let role = standing.check(UserId(found.user_id)).await?;
            Ok(DeviceOrUser {
                user_id: UserId(found.user_id),
                key_id: Some(found.id),
                role,
            })
        }
        .boxed_local()
    }
}

/// A caller of the event streams: a device key or login token as for `DeviceOrUser`,
/// or a single-use `?ticket=` (browsers' `EventSource` and `WebSocket` cannot send
/// headers).
#[derive(Debug, Clone)]
pub struct Streamer {
    pub user_id: UserId,
}

#[derive(serde::Deserialize)]
struct TicketQuery {
    ticket: Option<String>,
}

impl FromRequest for Streamer {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Streamer, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut actix_web::dev::Payload) -> Self::Future {
        let ticket = web::Query::<TicketQuery>::from_query(req.query_string())
            .ok()
            .and_then(|q| q.into_inner().ticket);
        let Some(ticket) = ticket else {
            let caller = DeviceOrUser::from_request(req, payload);
            return async move {
                Ok(Streamer {
                    user_id: caller.await?.user_id,
                })
            }
            .boxed_local();
        };
        let db = req
            .app_data::<web::Data<DatabaseConnection>>()
            .cloned()
            .expect("startup registers the database");
        let standing = standing(req);
        async move {
            let user_id = tickets::redeem(&db, &ticket)
                .await
                .map_err(AuthError::from)?
                .ok_or(AuthError::InvalidTicket)?;
            standing.check(user_id).await?;
            Ok(Streamer { user_id })
        }
        .boxed_local()
    }
}
