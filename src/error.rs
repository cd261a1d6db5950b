//! The one error table of the HTTP API: every failure a client can see, its status and
//! its stable `code`, rendered as `{"error": "...", "code": "..."}`.

use std::fmt;

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, HttpResponseBuilder, ResponseError};
use serde::Serialize;

use crate::backends::BackendError;
use crate::limits::{Limited, RateInfo};

/// Seconds a client is told to wait after a 503 it may retry.
pub const RETRY_AFTER_SECS: u64 = 5;

#[derive(thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    MalformedBody(String),
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    UnsupportedMediaType(&'static str),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("token has expired")]
    TokenExpired,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("invalid username or password")]
    BadCredentials,
    #[error("username is already taken")]
    UsernameTaken,
    #[error("{0}")]
    UploadTimeout(String),
    #[error("audio is longer than {max_secs}s of 16 kHz 16-bit mono PCM")]
    AudioTooLong { max_secs: u64 },
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("you already have {max} API keys; revoke one first")]
    TooManyKeys { max: usize },
    #[error("an instance of this kind with this url already exists (or is still draining)")]
    InstanceExists,
    #[error("the instance is draining and goes once its last call ends; it cannot be changed")]
    InstanceDraining,
    #[error("the task queue is full ({capacity} tasks); retry later")]
    QueueFull { capacity: usize },
    #[error("the task has already ended ({0})")]
    TaskFinished(entity::task::Status),
    #[error("this Idempotency-Key was already used for a different request")]
    IdempotencyKeyReused,
    #[error("too many requests; retry in {}s", .0.retry_after_secs)]
    RateLimited(Limited),
    #[error(
        "you have {limit} unfinished tasks, the most allowed; wait for one to finish or cancel one"
    )]
    QuotaExceeded { limit: u32 },
    #[error("the gateway is shutting down; retry later")]
    ShuttingDown,
    #[error("the gateway is busy; retry later")]
    Busy(#[source] actix::MailboxError),
    #[error("no healthy speech backend instance; retry later")]
    NoHealthyInstance,
    #[error("every speech backend instance is busy; retry later")]
    InstancesBusy,
    /// A backend call that failed; its own message is the client's.
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("the database is unavailable; retry later")]
    Database(#[from] sea_orm::DbErr),
    #[error("internal error")]
    Internal(String),
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A human-readable message.
    #[schema(example = "prompt must not be empty")]
    pub error: String,
    /// A stable snake_case code for programs.
    #[schema(example = "invalid_request")]
    pub code: &'static str,
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Validation(_) => "invalid_request",
            ApiError::MalformedBody(_) => "malformed_body",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::TokenExpired => "token_expired",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::BadCredentials => "invalid_credentials",
            ApiError::UsernameTaken => "username_taken",
            ApiError::UploadTimeout(_) => "upload_timeout",
            ApiError::AudioTooLong { .. } => "audio_too_long",
            ApiError::NotFound(_) => "not_found",
            ApiError::TooManyKeys { .. } => "too_many_keys",
            ApiError::InstanceExists => "instance_exists",
            ApiError::InstanceDraining => "instance_draining",
            ApiError::QueueFull { .. } => "queue_full",
            ApiError::TaskFinished(_) => "task_finished",
            ApiError::IdempotencyKeyReused => "idempotency_key_reused",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::QuotaExceeded { .. } => "quota_exceeded",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::Busy(_) => "busy",
            ApiError::NoHealthyInstance => "no_healthy_instance",
            ApiError::InstancesBusy => "instances_busy",
            ApiError::Backend(BackendError::Timeout(_)) => "backend_timeout",
            ApiError::Backend(_) => "backend_error",
            ApiError::Database(_) => "database_unavailable",
            ApiError::Internal(_) => "internal_error",
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::QueueFull { .. }
            | ApiError::ShuttingDown
            | ApiError::Busy(_)
            | ApiError::NoHealthyInstance
            | ApiError::InstancesBusy
            | ApiError::QuotaExceeded { .. }
            | ApiError::Database(_) => Some(RETRY_AFTER_SECS),
            ApiError::RateLimited(limited) => Some(limited.retry_after_secs),
            _ => None,
        }
    }
}

impl From<actix::MailboxError> for ApiError {
    fn from(e: actix::MailboxError) -> Self {
        ApiError::Busy(e)
    }
}

impl fmt::Debug for ApiError {
    // The whole cause chain, for logs; clients only ever see `Display`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")?;
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            write!(f, "\n  caused by: {cause}")?;
            source = cause.source();
        }
        if let ApiError::Internal(detail) = self {
            write!(f, "\n  detail: {detail}")?;
        }
        Ok(())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Validation(_) | ApiError::MalformedBody(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } | ApiError::AudioTooLong { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::UploadTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unauthorized(_) | ApiError::TokenExpired | ApiError::BadCredentials => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::UsernameTaken
            | ApiError::TaskFinished(_)
            | ApiError::TooManyKeys { .. }
            | ApiError::InstanceExists
            | ApiError::InstanceDraining => StatusCode::CONFLICT,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited(_) | ApiError::QuotaExceeded { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::QueueFull { .. }
            | ApiError::ShuttingDown
            | ApiError::Busy(_)
            | ApiError::NoHealthyInstance
            | ApiError::InstancesBusy
            | ApiError::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Backend(BackendError::Timeout(_)) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Backend(_) => StatusCode::BAD_GATEWAY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() {
            tracing::error!(error = ?self, "request failed");
        }
        let mut response = HttpResponse::build(status);
        if let Some(secs) = self.retry_after() {
            response.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        if let ApiError::RateLimited(limited) = self {
            insert_rate_headers(&mut response, &limited.info);
        }
        response.json(ErrorBody {
            error: self.to_string(),
            code: self.code(),
        })
    }
}

/// `X-RateLimit-Limit`, `-Remaining` and `-Reset` (seconds until the bucket is full).
pub fn insert_rate_headers(response: &mut HttpResponseBuilder, info: &RateInfo) {
    response
        .insert_header(("X-RateLimit-Limit", info.limit.to_string()))
        .insert_header(("X-RateLimit-Remaining", info.remaining.to_string()))
        .insert_header(("X-RateLimit-Reset", info.reset_secs.to_string()));
}
