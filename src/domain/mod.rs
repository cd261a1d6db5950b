//! Domain types: input is parsed into these at the HTTP boundary, so everything past a
//! handler holds only valid values. They know nothing of actors, HTTP or the database
//! (the stored enums are the entity crate's, re-exported here as the one vocabulary).

mod error;
mod event;
mod idempotency;
mod ids;
mod image_job;
mod instance;
mod new_user;
mod openai;
mod task;
mod task_filter;
mod webhook;

pub use entity::user::Role;
pub use error::ValidationError;
pub use event::{event_error, ChangeKind, EventType, TaskEvent, MAX_EVENT_ERROR_CHARS};
pub use idempotency::Idempotency;
pub use ids::{ImageId, InstanceId, NodeId, TaskId, UserId};
pub use image_job::{ImageJob, ImageLimits, ImageRequest};
pub use instance::{
    check_instance_url, redact_url, url_key, InstanceChange, InstanceChangeRequest, InstanceKind,
    InstanceSpec, NewInstanceRequest, Protocol, Strategy, MAX_INSTANCE_CAPACITY,
    MAX_INSTANCE_WEIGHT,
};
pub use new_user::{check_username, NewUser, RegisterRequest};
pub use openai::{
    ImageFormat, ImageGeneration, ImageGenerationRequest, TranscriptionRequest, MAX_IMAGES,
};
pub use task::{NewTask, Priority, QueuedTask, TaskStatus, TraceContext};
pub use task_filter::{TaskFilter, TaskFilterQuery, Window, MAX_FILTER_VALUES, MAX_QUERY_CHARS};
pub use webhook::{Webhook, WebhookEvent, WebhookEvents, MAX_WEBHOOK_URL_CHARS};
