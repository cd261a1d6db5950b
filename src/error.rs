//! The one error table of the HTTP API: every failure a client can see, with its status,
//! its stable `code` and its retry hint on one row, rendered as
//! `{"error": "...", "code": "..."}`, or in OpenAI's shape
//! `{"error": {"message", "type", "code"}}` on the OpenAI-compatible routes (the same
//! row, another body). Every internal error type (the store's, the dispatcher's, the
//! registry's, the speech path's, the image waits', the domain's) is mapped to a row
//! here and nowhere else.

use std::fmt;

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, HttpResponseBuilder, ResponseError};
use serde::Serialize;

use crate::actors::messages::{InstanceAdminError, SubmitError};
use crate::auth::accounts::AccountError;
use crate::auth::{AuthError, HashError};
use crate::backends::BackendError;
use crate::domain::{TaskId, TaskStatus, ValidationError};
use crate::generation::GenerationError;
use crate::limits::{Limited, RateInfo};
use crate::speech::SpeechError;
use crate::store::StoreError;
use crate::webhooks::address::Refused;

/// Whose fault a failure is, which decides how loudly it is logged: a server fault once
/// at ERROR, a backend's at WARN, the gateway being full at INFO, a client's mistake at
/// DEBUG.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Blame {
    Client,
    Load,
    Backend,
    Server,
}

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
    #[error("you have {limit} event streams open here, the most allowed; close one first")]
    TooManyStreams { limit: usize },
    #[error("audio is longer than {max_secs}s of 16 kHz 16-bit mono PCM")]
    AudioTooLong { max_secs: u64 },
    #[error(transparent)]
    WebhookRefused(#[from] Refused),
    #[error("a webhook needs your webhook secret: create it with POST /api/v1/webhook-secret")]
    NoWebhookSecret,
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A known route asked with a method it does not take; `allow` lists those it does.
    #[error("this route takes {allow}")]
    MethodNotAllowed { allow: String },
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
    #[error(
        "the images were not ready within {waited_secs}s; their tasks keep running: poll \
         GET /api/v1/tasks?task_id=ID for {}",
        list_ids(.task_ids)
    )]
    StillRunning {
        task_ids: Vec<TaskId>,
        waited_secs: u64,
    },
    #[error("task {task_id} failed: {error}")]
    TaskFailed { task_id: TaskId, error: String },
    #[error("internal error")]
    Internal(String),
}

/// The table: one row per variant, its status, its code, and whether (and after how
/// many seconds) the client may retry.
impl ApiError {
    fn row(&self) -> (StatusCode, &'static str, Option<u64>, Blame) {
        use ApiError::*;
        use Blame::{Backend as Gpu, Client, Load, Server};
        use StatusCode as S;
        let retry = Some(RETRY_AFTER_SECS);
        match self {
            Validation(_) => (S::BAD_REQUEST, "invalid_request", None, Client),
            MalformedBody(_) => (S::BAD_REQUEST, "malformed_body", None, Client),
            WebhookRefused(_) => (S::BAD_REQUEST, "webhook_refused", None, Client),
            NoWebhookSecret => (S::BAD_REQUEST, "no_webhook_secret", None, Client),
            Unauthorized(_) => (S::UNAUTHORIZED, "unauthorized", None, Client),
            TokenExpired => (S::UNAUTHORIZED, "token_expired", None, Client),
            BadCredentials => (S::UNAUTHORIZED, "invalid_credentials", None, Client),
            Forbidden(_) => (S::FORBIDDEN, "forbidden", None, Client),
            NotFound(_) => (S::NOT_FOUND, "not_found", None, Client),
            MethodNotAllowed { .. } => (S::METHOD_NOT_ALLOWED, "method_not_allowed", None, Client),
            UploadTimeout(_) => (S::REQUEST_TIMEOUT, "upload_timeout", None, Client),
            UsernameTaken => (S::CONFLICT, "username_taken", None, Client),
            TaskFinished(_) => (S::CONFLICT, "task_finished", None, Client),
            TooManyKeys { .. } => (S::CONFLICT, "too_many_keys", None, Client),
            InstanceExists => (S::CONFLICT, "instance_exists", None, Client),
            InstanceDraining => (S::CONFLICT, "instance_draining", None, Client),
            PayloadTooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "payload_too_large", None, Client),
            AudioTooLong { .. } => (S::PAYLOAD_TOO_LARGE, "audio_too_long", None, Client),
            UnsupportedMediaType(_) => (
                S::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                None,
                Client,
            ),
            IdempotencyKeyReused => (
                S::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                None,
                Client,
            ),
            RateLimited(limited) => {
                let after = Some(limited.retry_after_secs);
                (S::TOO_MANY_REQUESTS, "rate_limited", after, Load)
            }
            QuotaExceeded { .. } => (S::TOO_MANY_REQUESTS, "quota_exceeded", retry, Load),
            TooManyConnections => (S::TOO_MANY_REQUESTS, "too_many_connections", Some(1), Load),
            TooManyStreams { .. } => (S::TOO_MANY_REQUESTS, "too_many_streams", None, Client),
            Internal(_) => (S::INTERNAL_SERVER_ERROR, "internal_error", None, Server),
            Backend(BackendError::Timeout(_)) => (S::GATEWAY_TIMEOUT, "backend_timeout", None, Gpu),
            Backend(_) => (S::BAD_GATEWAY, "backend_error", None, Gpu),
            TaskFailed { .. } => (S::BAD_GATEWAY, "task_failed", None, Gpu),
            StillRunning { .. } => (S::GATEWAY_TIMEOUT, "tasks_still_running", None, Load),
            QueueFull { .. } => (S::SERVICE_UNAVAILABLE, "queue_full", retry, Load),
            ShuttingDown => (S::SERVICE_UNAVAILABLE, "shutting_down", retry, Load),
            Busy(_) => (S::SERVICE_UNAVAILABLE, "busy", retry, Server),
            // Shedding load under a flood: one error line per refusal would flood the log.
            HashingBusy => (S::SERVICE_UNAVAILABLE, "hashing_busy", Some(1), Client),
            NoHealthyInstance => (S::SERVICE_UNAVAILABLE, "no_healthy_instance", retry, Gpu),
            InstancesBusy => (S::SERVICE_UNAVAILABLE, "instances_busy", retry, Load),
            Database(_) => (
                S::SERVICE_UNAVAILABLE,
                "database_unavailable",
                retry,
                Server,
            ),
        }
    }

    pub fn code(&self) -> &'static str {
        self.row().1
    }
}

fn list_ids(ids: &[TaskId]) -> String {
    ids.iter()
        .map(TaskId::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which body an error is rendered in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorShape {
    /// `{"error": "...", "code": "..."}`: the gateway's own API.
    Gateway,
    /// `{"error": {"message", "type", "code", "param"}}`: the OpenAI-compatible routes.
    OpenAi,
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

/// An error in OpenAI's shape, which the official SDKs read.
#[derive(Serialize, utoipa::ToSchema)]
pub struct OpenAiErrorBody {
    pub error: OpenAiError,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct OpenAiError {
    /// A human-readable message.
    #[schema(example = "n must be between 1 and 4")]
    pub message: String,
    /// The class of error, from the status: `invalid_request_error`,
    /// `authentication_error`, `permission_error`, `not_found_error`,
    /// `rate_limit_error`, `server_error`.
    #[serde(rename = "type")]
    #[schema(example = "invalid_request_error")]
    pub kind: &'static str,
    /// The same stable code as in the rest of the API.
    #[schema(example = "invalid_request")]
    pub code: &'static str,
    /// Always null: messages name the parameter.
    pub param: Option<String>,
}

/// OpenAI's `type` for an error of this status.
fn openai_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        500.. => "server_error",
        _ => "invalid_request_error",
    }
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

impl From<crate::events::TooManyStreams> for ApiError {
    fn from(e: crate::events::TooManyStreams) -> Self {
        ApiError::TooManyStreams { limit: e.limit }
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

impl From<GenerationError> for ApiError {
    fn from(e: GenerationError) -> Self {
        match e {
            GenerationError::Submit(e) => e.into(),
            GenerationError::StillRunning { task_ids, waited } => ApiError::StillRunning {
                task_ids,
                waited_secs: waited.as_secs(),
            },
            GenerationError::Failed { task_id, error } => ApiError::TaskFailed { task_id, error },
            GenerationError::Cancelled(_) => ApiError::TaskFinished(TaskStatus::Cancelled),
            GenerationError::Store(e) => e.into(),
            GenerationError::Unavailable(_) => ApiError::Busy(e.to_string()),
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

impl ApiError {
    /// The error's response: its row's status and headers, with a body of `shape`.
    pub fn render(&self, shape: ErrorShape) -> HttpResponse {
        let (status, code, retry_after, _) = self.row();
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
        match self {
            ApiError::RateLimited(limited) => insert_rate_headers(&mut response, &limited.info),
            // Asking again would make more tasks, not finish these; the OpenAI SDKs obey this.
            ApiError::StillRunning { .. } => {
                response.insert_header(("x-should-retry", "false"));
            }
            ApiError::MethodNotAllowed { allow } => {
                response.insert_header((header::ALLOW, allow.as_str()));
            }
            _ => {}
        }
        match shape {
            ErrorShape::Gateway => response.json(ErrorBody {
                error: self.to_string(),
                code,
            }),
            ErrorShape::OpenAi => response.json(OpenAiErrorBody {
                error: OpenAiError {
                    message: self.to_string(),
                    kind: openai_type(status),
                    code,
                    param: None,
                },
            }),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.row().0
    }

    fn error_response(&self) -> HttpResponse {
        let (status, code, _, blame) = self.row();
        let status = status.as_u16();
        crate::telemetry::METRICS.rejected(code);
        match blame {
            Blame::Server => tracing::error!(error = ?self, status, code, "request failed"),
            Blame::Backend => tracing::warn!(error = %self, status, code, "request failed"),
            Blame::Load => tracing::info!(error = %self, status, code, "request refused"),
            Blame::Client => tracing::debug!(error = %self, status, code, "request refused"),
        }
        self.render(ErrorShape::Gateway)
    }
}

/// `X-RateLimit-Limit`, `-Remaining` and `-Reset` (seconds until the bucket is full).
pub fn insert_rate_headers(response: &mut HttpResponseBuilder, info: &RateInfo) {
    response
        .insert_header(("X-RateLimit-Limit", info.limit.to_string()))
        .insert_header(("X-RateLimit-Remaining", info.remaining.to_string()))
        .insert_header(("X-RateLimit-Reset", info.reset_secs.to_string()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    fn header_of<'a>(response: &'a HttpResponse, name: &str) -> &'a str {
        response.headers().get(name).unwrap().to_str().unwrap()
    }

    fn body_of(response: HttpResponse) -> serde_json::Value {
        let Ok(bytes) = response.into_body().try_into_bytes() else {
            panic!("an error's body is one JSON document");
        };
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn one_row_two_shapes() {
        let error = ApiError::QueueFull { capacity: 100 };
        let message = "the task queue is full (100 tasks); retry later";
        for shape in [ErrorShape::Gateway, ErrorShape::OpenAi] {
            let response = error.render(shape);
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(header_of(&response, "retry-after"), "5");
        }
        assert_eq!(
            body_of(error.render(ErrorShape::Gateway)),
            serde_json::json!({"error": message, "code": "queue_full"})
        );
        assert_eq!(
            body_of(error.render(ErrorShape::OpenAi)),
            serde_json::json!({"error": {"message": message, "type": "server_error",
                                         "code": "queue_full", "param": null}})
        );
    }

    #[test]
    fn openai_types_follow_the_status() {
        let cases = [
            (ApiError::Validation("x".into()), "invalid_request_error"),
            (ApiError::Unauthorized("x".into()), "authentication_error"),
            (ApiError::Forbidden("x".into()), "permission_error"),
            (ApiError::NotFound("route"), "not_found_error"),
            (ApiError::QuotaExceeded { limit: 1 }, "rate_limit_error"),
            (ApiError::UploadTimeout("x".into()), "invalid_request_error"),
            (ApiError::Internal("x".into()), "server_error"),
        ];
        for (error, kind) in cases {
            assert_eq!(openai_type(error.status_code()), kind, "{error}");
        }
    }

    #[test]
    fn tasks_still_running_are_named_and_not_to_be_asked_for_again() {
        let error = ApiError::StillRunning {
            task_ids: vec![TaskId::from("a".to_string()), TaskId::from("b".to_string())],
            waited_secs: 120,
        };
        let response = error.render(ErrorShape::OpenAi);
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(header_of(&response, "x-should-retry"), "false");
        let message = error.to_string();
        assert!(
            message.contains("within 120s") && message.ends_with("for a, b"),
            "{message}"
        );
    }
}
