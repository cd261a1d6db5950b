//! The audit log: every admin action, kept for good (retention leaves it alone).

use chrono::Utc;
use entity::audit;
use entity::prelude::Audit;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Set,
};

use super::StoreError;

/// An action about to be logged.
#[derive(Debug, Clone)]
pub struct Entry {
    pub actor_id: i64,
    pub actor_name: String,
    pub action: &'static str,
    pub target: Option<String>,
    pub filter: Option<String>,
    pub count: Option<u64>,
}

pub async fn append(db: &DatabaseConnection, entry: Entry) -> Result<audit::Model, StoreError> {
    let row = audit::ActiveModel {
        at: Set(Utc::now()),
        actor_id: Set(entry.actor_id),
        actor_name: Set(entry.actor_name),
        action: Set(entry.action.to_string()),
        target: Set(entry.target),
        filter: Set(entry.filter),
        count: Set(entry.count.map(|c| c as i64)),
        ..Default::default()
    };
    Ok(row.insert(db).await?)
}

/// The newest entries from id `from` down, at most `limit`, with the total and the
/// `from` of the next page.
pub async fn list(
    db: &DatabaseConnection,
    limit: u64,
    from: Option<i64>,
) -> Result<(Vec<audit::Model>, u64, Option<i64>), StoreError> {
    let total = Audit::find().count(db).await?;
    let mut page = Audit::find();
    if let Some(from) = from {
        page = page.filter(audit::Column::Id.lte(from));
    }
    let mut rows = page
        .order_by_desc(audit::Column::Id)
        .limit(limit + 1)
        .all(db)
        .await?;
    let next = if rows.len() as u64 > limit {
        rows.pop().map(|r| r.id)
    } else {
        None
    };
    Ok((rows, total, next))
}
