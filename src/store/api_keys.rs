//! Device API key rows: only the key's hash is ever stored.

use chrono::{TimeDelta, Utc};
use entity::prelude::{ApiKey, User};
use entity::{api_key, user};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, Set, TransactionTrait,
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

/// How a capped insert went.
#[derive(Debug)]
pub enum KeyInsert {
    Created(api_key::Model),
    /// The user already holds `max` keys; nothing was stored.
    TooMany,
    /// The user no longer exists; nothing was stored.
    UserGone,
}

/// Stores the key unless the user already holds `max`. The count and the insert share
/// one transaction that first takes a lock on the user (the row's lock on PostgreSQL,
/// the database's write lock on SQLite, both by writing the row), so concurrent
/// creations for one user count one after another and the cap holds.
pub async fn insert_capped(
    db: &DatabaseConnection,
    user_id: UserId,
    key: NewKey,
    max: u64,
) -> Result<KeyInsert, StoreError> {
    let txn = db.begin().await?;
    let locked = User::update_many()
        .col_expr(
            user::Column::Disabled,
            Expr::col(user::Column::Disabled).into(),
        )
        .filter(user::Column::Id.eq(user_id.0))
        .exec(&txn)
        .await?
        .rows_affected;
    if locked == 0 {
        return Ok(KeyInsert::UserGone);
    }
    let held = ApiKey::find()
        .filter(api_key::Column::UserId.eq(user_id.0))
        .count(&txn)
        .await?;
    if held >= max {
        return Ok(KeyInsert::TooMany);
    }
    let row = api_key::ActiveModel {
        user_id: Set(user_id.0),
        name: Set(key.name),
        prefix: Set(key.prefix),
        key_hash: Set(key.key_hash),
        created_at: Set(Utc::now()),
        last_used_at: Set(None),
        ..Default::default()
    };
    let row = row.insert(&txn).await?;
    txn.commit().await?;
    Ok(KeyInsert::Created(row))
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
