//! One change of a task's state, numbered per user (`seq`), kept for replay.
use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

use crate::task::Status;

/// What happened to the task.
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
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Submitted, or back in the queue after its gateway stopped.
    #[sea_orm(string_value = "queued")]
    Queued,
    /// An attempt started on an instance.
    #[sea_orm(string_value = "running")]
    Running,
    /// An attempt failed; the task waits in the queue until `retry_at`.
    #[sea_orm(string_value = "retrying")]
    Retrying,
    #[sea_orm(string_value = "done")]
    Done,
    #[sea_orm(string_value = "failed")]
    Failed,
    #[sea_orm(string_value = "cancelled")]
    Cancelled,
}

impl Kind {
    /// DONE, FAILED or CANCELLED: the task's last event.
    pub fn is_terminal(self) -> bool {
        matches!(self, Kind::Done | Kind::Failed | Kind::Cancelled)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "task_events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub user_id: i64,
    /// Increasing per user, without gaps: the SSE `id`.
    pub seq: i64,
    pub task_id: String,
    pub kind: Kind,
    /// The task's status after the change.
    pub status: Status,
    pub attempt: Option<i32>,
    /// The instance an attempt runs on (`running`).
    pub instance_id: Option<i64>,
    /// The stored image (`done`).
    pub image_id: Option<i64>,
    pub error: Option<String>,
    /// When a `retrying` task may run again.
    pub retry_at: Option<DateTimeUtc>,
    pub at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
