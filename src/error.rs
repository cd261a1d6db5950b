//! The one error table of the HTTP API: every failure a client can see, with its status,
//! its stable `code` and its retry hint on one row, rendered as
//! `{"error": "...", "code": "..."}`. Every internal error type (the store's, the
//! dispatcher's, the registry's, the speech path's, the domain's) is mapped to a row
//! here and nowhere else.

use std::fmt;

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, HttpResponseBuilder, ResponseError};
use serde::Serialize;

use crate::actors::messages::{InstanceAdminError, SubmitError};
use crate::auth::accounts::AccountError;
use crate::auth::{AuthError, HashError};
use crate::backends::BackendError;
use crate::domain::{TaskStatus, ValidationError};
use crate::limits::{Limited, RateInfo};
use crate::speech::SpeechError;
use crate::store::StoreError;

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
    Unauthorized(String),
    #[error("token has expired")]
    TokenExpired,
    #[error("{0}")]
    Forbidden(String),
    #[error("invalid username or password")]
    BadCredentials,
    #[error("username is already taken")]
    UsernameTaken,
    /// The body was not read in time; the connection is closed after the answer.
    #[error("{0}")]
    UploadTimeout(String),
    #[error("too many connections from your address; close some and retry")]
    TooManyConnections,
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
    TaskFinished(TaskStatus),
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
    /// An actor did not answer in time (busy, restarting or stopped); the detail is for
    /// the log.
    #[error("the gateway is busy; retry later")]
    Busy(String),
    #[error("too many passwords are being checked right now; retry shortly")]
    HashingBusy,
    #[error("no healthy speech backend instance; retry later")]
    NoHealthyInstance,
    #[error("every speech backend instance is busy; retry later")]
    InstancesBusy,
    /// A backend call that failed; its own message is the client's.
    #[error(transparent)]
    Backend(BackendError),
    #[error("the database is unavailable; retry later")]
    Database(#[source] StoreError),
    #[error("internal error")]
    Internal(String),
}

/// The table: one row per variant, its status, its code, and whether (and after how
/// many seconds) the client may retry.
impl ApiError {
    fn row(&self) -> (StatusCode, &'static str, Option<u64>) {
        use ApiError::*;
        use StatusCode as S;
        let retry = Some(RETRY_AFTER_SECS);
        match self {
            Validation(_) => (S::BAD_REQUEST, "invalid_request", None),
            MalformedBody(_) => (S::BAD_REQUEST, "malformed_body", None),
            Unauthorized(_) => (S::UNAUTHORIZED, "unauthorized", None),
            TokenExpired => (S::UNAUTHORIZED, "token_expired", None),
            BadCredentials => (S::UNAUTHORIZED, "invalid_credentials", None),
            Forbidden(_) => (S::FORBIDDEN, "forbidden", None),
            NotFound(_) => (S::NOT_FOUND, "not_found", None),
            UploadTimeout(_) => (S::REQUEST_TIMEOUT, "upload_timeout", None),
            UsernameTaken => (S::CONFLICT, "username_taken", None),
            TaskFinished(_) => (S::CONFLICT, "task_finished", None),
            TooManyKeys { .. } => (S::CONFLICT, "too_many_keys", None),
            InstanceExists => (S::CONFLICT, "instance_exists", None),
            InstanceDraining => (S::CONFLICT, "instance_draining", None),
            PayloadTooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "payload_too_large", None),
            AudioTooLong { .. } => (S::PAYLOAD_TOO_LARGE, "audio_too_long", None),
            UnsupportedMediaType(_) => (S::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", None),
            IdempotencyKeyReused => (S::UNPROCESSABLE_ENTITY, "idempotency_key_reused", None),
            RateLimited(limited) => (
                S::TOO_MANY_REQUESTS,
                "rate_limited",
                Some(limited.retry_after_secs),
            ),
            QuotaExceeded { .. } => (S::TOO_MANY_REQUESTS, "quota_exceeded", retry),
            TooManyConnections => (S::TOO_MANY_REQUESTS, "too_many_connections", Some(1)),
            Internal(_) => (S::INTERNAL_SERVER_ERROR, "internal_error", None),
            Backend(BackendError::Timeout(_)) => (S::GATEWAY_TIMEOUT, "backend_timeout", None),
            Backend(_) => (S::BAD_GATEWAY, "backend_error", None),
            QueueFull { .. } => (S::SERVICE_UNAVAILABLE, "queue_full", retry),
            ShuttingDown => (S::SERVICE_UNAVAILABLE, "shutting_down", retry),
            Busy(_) => (S::SERVICE_UNAVAILABLE, "busy", retry),
            HashingBusy => (S::SERVICE_UNAVAILABLE, "hashing_busy", Some(1)),
            NoHealthyInstance => (S::SERVICE_UNAVAILABLE, "no_healthy_instance", retry),
            InstancesBusy => (S::SERVICE_UNAVAILABLE, "instances_busy", retry),
            Database(_) => (S::SERVICE_UNAVAILABLE, "database_unavailable", retry),
        }
    }

    pub fn code(&self) -> &'static str {
        self.row().1
    }
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

impl From<actix::MailboxError> for ApiError {
    fn from(e: actix::MailboxError) -> Self {
        ApiError::Busy(format!("an actor did not answer: {e}"))
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::Validation(e.0)
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        ApiError::Backend(e)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            // The task store not answering is an actor fault, not an outage of the database.
            StoreError::Unavailable(_) | StoreError::Restarted => ApiError::Busy(e.to_string()),
            StoreError::Constraint(_) => ApiError::Internal(e.to_string()),
            StoreError::Database(_) => ApiError::Database(e),
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::QueueFull { capacity } => ApiError::QueueFull { capacity },
            SubmitError::QuotaExceeded { limit } => ApiError::QuotaExceeded { limit },
            SubmitError::ShuttingDown => ApiError::ShuttingDown,
            SubmitError::KeyReused => ApiError::IdempotencyKeyReused,
            SubmitError::UserGone => ApiError::Unauthorized(AuthError::UserGone.to_string()),
            SubmitError::Store(e) => e.into(),
        }
    }
}

impl From<InstanceAdminError> for ApiError {
    fn from(e: InstanceAdminError) -> Self {
        match e {
            InstanceAdminError::NotFound => ApiError::NotFound("instance"),
            InstanceAdminError::Draining => ApiError::InstanceDraining,
            InstanceAdminError::Exists => ApiError::InstanceExists,
            InstanceAdminError::Store(e) => e.into(),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::TokenExpired => ApiError::TokenExpired,
            AuthError::NotAdmin => ApiError::Forbidden(e.to_string()),
            AuthError::Store(e) => e.into(),
            other => ApiError::Unauthorized(other.to_string()),
        }
    }
}

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::UsernameTaken => ApiError::UsernameTaken,
            AccountError::BadCredentials => ApiError::BadCredentials,
            AccountError::Disabled => ApiError::Unauthorized(e.to_string()),
            AccountError::Hash(HashError::Busy) => ApiError::HashingBusy,
            AccountError::Hash(_) => ApiError::Internal(e.to_string()),
            AccountError::Store(e) => e.into(),
        }
    }
}

impl From<SpeechError> for ApiError {
    fn from(e: SpeechError) -> Self {
        match e {
            SpeechError::Stalled(_) | SpeechError::TooSlow(_) | SpeechError::BelowMinRate(_) => {
                ApiError::UploadTimeout(e.to_string())
            }
            SpeechError::TooLarge(limit) => ApiError::PayloadTooLarge { limit },
            SpeechError::TooLong(max_secs) => ApiError::AudioTooLong { max_secs },
            SpeechError::OddLength => ApiError::Validation(e.to_string()),
            SpeechError::Unreadable(_) => ApiError::MalformedBody(e.to_string()),
            SpeechError::NoHealthyInstance => ApiError::NoHealthyInstance,
            SpeechError::InstancesBusy => ApiError::InstancesBusy,
            SpeechError::RegistryUnavailable(_) => ApiError::Busy(e.to_string()),
            SpeechError::Backend(e) => ApiError::Backend(e),
        }
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
        if let ApiError::Internal(detail) | ApiError::Busy(detail) = self {
            write!(f, "\n  detail: {detail}")?;
        }
        Ok(())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.row().0
    }

    fn error_response(&self) -> HttpResponse {
        let (status, code, retry_after) = self.row();
        // Shedding load is expected under a flood: one error line per refusal would
        // flood the log too.
        if matches!(self, ApiError::HashingBusy) {
            tracing::debug!(error = ?self, "request refused");
        } else if status.is_server_error() {
            tracing::error!(error = ?self, "request failed");
        }
        let mut response = HttpResponse::build(status);
        if let Some(secs) = retry_after {
            response.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        // A body cut off mid-way leaves the connection unusable.
        if status == StatusCode::REQUEST_TIMEOUT {
            response.force_close();
        }
        if let ApiError::RateLimited(limited) = self {
            insert_rate_headers(&mut response, &limited.info);
        }
        response.json(ErrorBody {
            error: self.to_string(),
            code,
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
