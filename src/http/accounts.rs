//! `POST /register` and `POST /login`.

use std::net::{IpAddr, SocketAddr};

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use entity::user;
use sea_orm::DatabaseConnection;
use serde::{Deserialize, Serialize};

use crate::auth::{accounts, HashPool, JwtKeys};
use crate::domain::{check_username, NewUser, RegisterRequest, Role};
use crate::error::{ApiError, ErrorBody};
use crate::limits::{client_key, Limits};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/register", web::post().to(register))
        .route("/login", web::post().to(login));
}

/// A user as the API shows it (never the password hash).
#[derive(Serialize, utoipa::ToSchema)]
pub struct UserView {
    pub id: i64,
    pub username: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    /// `user`, `vip` or `admin`.
    #[schema(example = "user")]
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

impl From<user::Model> for UserView {
    fn from(user: user::Model) -> Self {
        UserView {
            id: user.id,
            username: user.username,
            email: user.email,
            phone: user.phone,
            role: user.role,
            created_at: user.created_at,
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct LoginRequest {
    /// 3 to 20 characters of A-Z, a-z, 0-9 and _, in any case.
    #[schema(pattern = "^[A-Za-z0-9_]{3,20}$", example = "user1")]
    pub username: String,
    #[schema(example = "pass1234")]
    pub password: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct LoginResponse {
    /// Send as `Authorization: Bearer <token>`.
    pub token: String,
    pub user: UserView,
}

/// Create an account.
#[utoipa::path(post, path = "/register", tag = "accounts", request_body = RegisterRequest,
    responses(
        (status = 201, description = "Created", body = UserView),
        (status = 400, description = "Invalid username, password, email or phone, or a malformed body", body = ErrorBody),
        (status = 409, description = "Username taken (usernames are case-insensitive)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 429, description = "Too many registrations from this address (Retry-After)", body = ErrorBody),
        (status = 503, description = "Too many passwords being hashed right now (Retry-After)", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(username))]
pub async fn register(
    req: HttpRequest,
    db: web::Data<DatabaseConnection>,
    hasher: web::Data<HashPool>,
    limits: web::Data<Limits>,
    body: web::Json<RegisterRequest>,
) -> Result<HttpResponse, ApiError> {
    let new_user = NewUser::try_from(body.into_inner())?;
    tracing::Span::current().record("username", new_user.username.as_str());
    // Each registration costs a password hash: an address gets a few a minute.
    if let (Some(limit), Some(addr)) = (&limits.register_addr, client_addr(&req, &limits)) {
        limit.check(&addr).map_err(ApiError::RateLimited)?;
    }
    let created = accounts::create_user(&db, &hasher, new_user, Role::User).await?;
    tracing::info!(user_id = created.id, "user registered");
    Ok(HttpResponse::Created().json(UserView::from(created)))
}

/// Exchange a username and password for a JWT.
#[utoipa::path(post, path = "/login", tag = "accounts", request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = LoginResponse),
        (status = 400, description = "Malformed body, or a username no account can have (3 to 20 characters of A-Z, a-z, 0-9 and _)", body = ErrorBody),
        (status = 401, description = "Wrong username or password, or a disabled account", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 429, description = "Too many attempts for this username or from this address (Retry-After)", body = ErrorBody),
        (status = 503, description = "Too many passwords being checked right now (Retry-After)", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(username))]
pub async fn login(
    req: HttpRequest,
    db: web::Data<DatabaseConnection>,
    keys: web::Data<JwtKeys>,
    hasher: web::Data<HashPool>,
    limits: web::Data<Limits>,
    body: web::Json<LoginRequest>,
) -> Result<HttpResponse, ApiError> {
    let LoginRequest { username, password } = body.into_inner();
    // No account has a name outside the rules: refused before it reaches any limiter's
    // state or the log.
    check_username(&username)?;
    tracing::Span::current().record("username", username.as_str());
    // Password guessing is throttled per client and per account, before any hashing.
    if let (Some(limit), Some(addr)) = (&limits.login_addr, client_addr(&req, &limits)) {
        limit.check(&addr).map_err(ApiError::RateLimited)?;
    }
    if let Some(limit) = &limits.login_name {
        limit
            .check(&username.to_ascii_lowercase())
            .map_err(ApiError::RateLimited)?;
    }
    let user = accounts::check_login(&db, &hasher, &username, password).await?;
    let token = keys
        .issue(user.id, &user.username, user.role)
        .map_err(|e| ApiError::Internal(format!("cannot sign token: {e}")))?;
    Ok(HttpResponse::Ok().json(LoginResponse {
        token,
        user: user.into(),
    }))
}

/// The client's address as limits key it (`client_key`): the TCP peer, or what a trusted
/// proxy says it forwarded.
fn client_addr(req: &HttpRequest, limits: &Limits) -> Option<IpAddr> {
    let forwarded = limits.trust_forwarded_for.then(|| {
        let info = req.connection_info();
        info.realip_remote_addr().and_then(|addr| {
            addr.parse::<IpAddr>()
                .ok()
                .or_else(|| addr.parse::<SocketAddr>().ok().map(|a| a.ip()))
        })
    });
    forwarded
        .flatten()
        .or_else(|| req.peer_addr().map(|addr| addr.ip()))
        .map(client_key)
}
