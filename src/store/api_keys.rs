//! Device API key rows: only the key's hash is ever stored.

use chrono::{TimeDelta, Utc};
use entity::api_key;
use entity::prelude::ApiKey;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, Set,
};

use super::StoreError;
use crate::domain::UserId;

/// `last_used_at` is refreshed at most this often, so busy devices do not write on every call.
const LAST_USED_GRANULARITY: TimeDelta = TimeDelta::seconds(60);

/// A key as it is stored: its shown prefix and its hash.
pub struct NewKey {
    pub name: Option<String>,
    pub prefix: String,
    pub key_hash: String,
}

pub async fn insert(
    db: &DatabaseConnection,
    user_id: UserId,
    key: NewKey,
) -> Result<api_key::Model, StoreError> {
    let row = api_key::ActiveModel {
        user_id: Set(user_id.0),
        name: Set(key.name),
        prefix: Set(key.prefix),
        key_hash: Set(key.key_hash),
        created_at: Set(Utc::now()),
        last_used_at: Set(None),
        ..Default::default()
    };
    Ok(row.insert(db).await?)
}

pub async fn count(db: &DatabaseConnection, user_id: UserId) -> Result<u64, StoreError> {
    Ok(ApiKey::find()
        .filter(api_key::Column::UserId.eq(user_id.0))
        .count(db)
        .await?)
}

/// The user's keys, newest first.
pub async fn list(
    db: &DatabaseConnection,
    user_id: UserId,
) -> Result<Vec<api_key::Model>, StoreError> {
    Ok(ApiKey::find()
        .filter(api_key::Column::UserId.eq(user_id.0))
        .order_by_desc(api_key::Column::Id)
        .all(db)
        .await?)
}

/// Deletes one of the user's keys; `Ok(false)` when they have no key with that id.
pub async fn revoke(db: &DatabaseConnection, user_id: UserId, id: i64) -> Result<bool, StoreError> {
    let deleted = ApiKey::delete_many()
        .filter(api_key::Column::Id.eq(id))
        .filter(api_key::Column::UserId.eq(user_id.0))
        .exec(db)
        .await?;
    Ok(deleted.rows_affected > 0)
}

/// The key with this hash, with its `last_used_at` brought up to date.
pub async fn find_and_touch(
    db: &DatabaseConnection,
    key_hash: &str,
) -> Result<Option<api_key::Model>, StoreError> {
    let Some(found) = ApiKey::find()
        .filter(api_key::Column::KeyHash.eq(key_hash))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    let now = Utc::now();
    if found
        .last_used_at
        .is_none_or(|at| now - at >= LAST_USED_GRANULARITY)
    {
        // Bookkeeping only: a failed write must not refuse a valid key.
        let update = ApiKey::update_many()
            .col_expr(api_key::Column::LastUsedAt, now.into())
            .filter(api_key::Column::Id.eq(found.id))
            .exec(db)
            .await;
        if let Err(error) = update {
            tracing::warn!(%error, key_id = found.id, "cannot record key use");
        }
    }
    Ok(Some(found))
}
