use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// QUEUED → RUNNING → DONE | FAILED, and CANCELLED. The last three are terminal.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    EnumIter,
    DeriveActiveEnum,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    #[sea_orm(string_value = "QUEUED")]
    Queued,
    #[sea_orm(string_value = "RUNNING")]
    Running,
    #[sea_orm(string_value = "DONE")]
    Done,
    #[sea_orm(string_value = "FAILED")]
    Failed,
    #[sea_orm(string_value = "CANCELLED")]
    Cancelled,
}

impl std::fmt::Display for Status {
    /// The wire form: QUEUED, RUNNING, DONE, FAILED, CANCELLED.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_value())
    }
}

impl Status {
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Done | Status::Failed | Status::Cancelled)
    }
}

/// Which line a queued task waits in: `vip` tasks are served first, within a bound.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    EnumIter,
    DeriveActiveEnum,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    #[default]
    #[sea_orm(string_value = "normal")]
    Normal,
    #[sea_orm(string_value = "vip")]
    Vip,
}

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "tasks")]
pub struct Model {
    /// Monotonic submission order; the queue is rebuilt in this order after a restart.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The public id (UUID v4) clients poll with.
    #[sea_orm(unique)]
    pub task_id: String,
    pub user_id: i64,
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub steps: i32,
    pub seed: Option<i64>,
    pub status: Status,
    pub image_id: Option<i64>,
    pub error: Option<String>,
    /// URL of the backend instance of the latest attempt.
    pub instance: Option<String>,
    pub attempts: i32,
    /// The client's `Idempotency-Key`, unique per user.
    pub idempotency_key: Option<String>,
    /// SHA-256 of the request that came with the key, to tell a replay from a reuse.
    pub request_hash: Option<String>,
    pub priority: Priority,
    /// The W3C trace context of the submission, continued by every attempt.
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    /// Several gateways on PostgreSQL: the process that claimed the task, and until when
    /// its claim holds unless renewed.
    pub holder: Option<String>,
    pub lease_until: Option<DateTimeUtc>,
    /// Its place in the fair order of claims across processes (users in turn).
    pub fair_key: i64,
    /// A retried task waits out its backoff until then.
    pub run_after: Option<DateTimeUtc>,
    /// Where the task's events are delivered, and which (`completed`, …, comma-separated).
    pub webhook_url: Option<String>,
    pub webhook_events: Option<String>,
    /// When its latest attempt started.
    pub started_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
