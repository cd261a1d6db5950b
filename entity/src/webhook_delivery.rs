//! One event to deliver to a task's webhook: the outbox row, kept across restarts and
//! retried until a 2xx, a 410, or its last attempt.
use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// To be sent (again) at `next_at`.
    #[sea_orm(string_value = "pending")]
    Pending,
    /// A 2xx came back.
    #[sea_orm(string_value = "delivered")]
    Delivered,
    /// Out of attempts, or the receiver answered 410 Gone.
    #[sea_orm(string_value = "failed")]
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_deliveries")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub user_id: i64,
    pub task_id: String,
    /// The `webhook-id` header: the same on every attempt of this delivery.
    #[sea_orm(unique)]
    pub webhook_id: String,
    pub url: String,
    /// The event JSON, exactly as signed and sent on every attempt.
    pub body: String,
    pub state: State,
    pub attempts: i32,
    /// When it is due; while an attempt runs, when that attempt's claim runs out.
    pub next_at: DateTimeUtc,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    /// The gateway process running the current attempt.
    pub holder: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
