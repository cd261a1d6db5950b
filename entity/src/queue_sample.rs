//! The queue's depth at one sampling instant, across every gateway on the database.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "queue_samples")]
pub struct Model {
    /// The start of the sampling interval.
    #[sea_orm(primary_key, auto_increment = false)]
    pub at: DateTimeUtc,
    /// Tasks QUEUED at that instant.
    pub queued: i64,
    /// Tasks RUNNING at that instant.
    pub running: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
