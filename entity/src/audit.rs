//! One admin action: who, when, what, on which filter or target, and how many rows.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_log")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub at: DateTimeUtc,
    pub actor_id: i64,
    pub actor_name: String,
    /// `tasks.cancel`, `instance.add`, `user.update`, `queue.pause`, …
    pub action: String,
    /// The instance or user acted on.
    pub target: Option<String>,
    /// The filter of a bulk action, or the change asked for, as JSON.
    pub filter: Option<String>,
    /// Rows a bulk action affected.
    pub count: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
