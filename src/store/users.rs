//! User rows: insert, look up (by name whatever its case), change role, disable, remove.

use chrono::Utc;
use entity::prelude::{ApiKey, Image, Task, User};
use entity::{api_key, image, task, user};
use sea_orm::sea_query::{Expr, Func};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait,
    IntoActiveModel, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set, TransactionTrait,
};
use std::collections::HashMap;

use super::{notify, StoreError};
use crate::domain::{NewUser, Role, TaskStatus};

/// Inserts the user with its password hash; `StoreError::Constraint` when the name is
/// taken in any case.
pub async fn insert(
    db: &DatabaseConnection,
    new_user: NewUser,
    password_hash: String,
    role: Role,
) -> Result<user::Model, StoreError> {
    let row = user::ActiveModel {
        username: Set(new_user.username),
        password_hash: Set(password_hash),
        email: Set(new_user.email),
        phone: Set(new_user.phone),
        role: Set(role),
        disabled: Set(false),
        created_at: Set(Utc::now()),
        ..Default::default()
    };
    Ok(row.insert(db).await?)
}

/// The user with this name in any case (`EVE` finds `eve`); the expression is the one
/// the unique index is on, so the lookup uses it.
pub async fn find_by_username(
    db: &DatabaseConnection,
    username: &str,
) -> Result<Option<user::Model>, StoreError> {
    let lower = Expr::expr(Func::lower(Expr::col(user::Column::Username)));
    Ok(User::find()
        .filter(lower.eq(username.to_lowercase()))
        .one(db)
        .await?)
}

pub async fn find_by_id(
    db: &DatabaseConnection,
    id: i64,
) -> Result<Option<user::Model>, StoreError> {
    Ok(User::find_by_id(id).one(db).await?)
}

/// Sets the user's role; `Ok(false)` when there is no such user.
pub async fn set_role(
    db: &DatabaseConnection,
    username: &str,
    role: Role,
) -> Result<bool, StoreError> {
    let Some(found) = find_by_username(db, username).await? else {
        return Ok(false);
    };
    let mut row = found.into_active_model();
    row.role = Set(role);
    row.update(db).await?;
    Ok(true)
}

/// Disables (announced to every gateway) or enables the user; `Ok(None)` when there is
/// no such user.
pub async fn set_disabled(
    db: &DatabaseConnection,
    username: &str,
    disabled: bool,
) -> Result<Option<user::Model>, StoreError> {
    let Some(found) = find_by_username(db, username).await? else {
        return Ok(None);
    };
    let txn = db.begin().await?;
    let mut row = found.into_active_model();
    row.disabled = Set(disabled);
    let user = row.update(&txn).await?;
    if disabled {
        announce_shut_out(&txn, user.id).await?;
    }
    txn.commit().await?;
    Ok(Some(user))
}

/// Those of `ids` who are disabled or gone.
pub async fn shut_out(db: &DatabaseConnection, ids: &[i64]) -> Result<Vec<i64>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let active: Vec<i64> = User::find()
        .select_only()
        .column(user::Column::Id)
        .filter(user::Column::Id.is_in(ids.iter().copied()))
        .filter(user::Column::Disabled.eq(false))
        .into_tuple()
        .all(db)
        .await?;
    Ok(ids
        .iter()
        .copied()
        .filter(|id| !active.contains(id))
        .collect())
}

/// With several gateways on PostgreSQL, tells them all (when the change commits) that
/// the user is shut out: each ends the user's open streams and forgets their standing.
async fn announce_shut_out(db: &impl ConnectionTrait, user_id: i64) -> Result<(), StoreError> {
    if db.get_database_backend() == DbBackend::Postgres {
        notify(db, &format!("u:{user_id}")).await?;
    }
    Ok(())
}

/// What removing a user deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    pub user_id: i64,
    pub tasks: u64,
    pub images: u64,
    pub keys: u64,
}

/// Deletes the user and everything of theirs in one transaction: their images here, their
/// tasks and device keys by the foreign keys' `ON DELETE CASCADE`. `Ok(None)` when there
/// is no such user.
pub async fn remove(
    db: &DatabaseConnection,
    username: &str,
) -> Result<Option<Removed>, StoreError> {
    let Some(found) = find_by_username(db, username).await? else {
        return Ok(None);
    };
    let txn = db.begin().await?;
    // A write first: on SQLite a transaction that read first may not get to write.
    let images = Image::delete_many()
        .filter(image::Column::UserId.eq(found.id))
        .exec(&txn)
        .await?
        .rows_affected;
    let tasks = Task::find()
        .filter(task::Column::UserId.eq(found.id))
        .count(&txn)
        .await?;
    let keys = ApiKey::find()
        .filter(api_key::Column::UserId.eq(found.id))
        .count(&txn)
        .await?;
    let deleted = User::delete_by_id(found.id).exec(&txn).await?.rows_affected;
    announce_shut_out(&txn, found.id).await?;
    txn.commit().await?;
    Ok((deleted == 1).then_some(Removed {
        user_id: found.id,
        tasks,
        images,
        keys,
    }))
}

/// A page of users in id order from `from` on, at most `limit`, with the total and the
/// `from` of the next page.
pub async fn page(
    db: &DatabaseConnection,
    limit: u64,
    from: Option<i64>,
) -> Result<(Vec<user::Model>, u64, Option<i64>), StoreError> {
    let total = User::find().count(db).await?;
    let mut query = User::find();
    if let Some(from) = from {
        query = query.filter(user::Column::Id.gte(from));
    }
    let mut rows = query
        .order_by_asc(user::Column::Id)
        .limit(limit + 1)
        .all(db)
        .await?;
    let next = if rows.len() as u64 > limit {
        rows.pop().map(|u| u.id)
    } else {
        None
    };
    Ok((rows, total, next))
}

/// Each of these users' tasks per status (on the user and status index).
pub async fn task_counts(
    db: &DatabaseConnection,
    user_ids: &[i64],
) -> Result<HashMap<i64, HashMap<TaskStatus, u64>>, StoreError> {
    let rows: Vec<(i64, TaskStatus, i64)> = Task::find()
        .select_only()
        .column(task::Column::UserId)
        .column(task::Column::Status)
        .column_as(task::Column::Id.count(), "n")
        .filter(task::Column::UserId.is_in(user_ids.iter().copied()))
        .group_by(task::Column::UserId)
        .group_by(task::Column::Status)
        .into_tuple()
        .all(db)
        .await?;
    let mut counts: HashMap<i64, HashMap<TaskStatus, u64>> = HashMap::new();
    for (user_id, status, n) in rows {
        counts.entry(user_id).or_default().insert(status, n as u64);
    }
    Ok(counts)
}

/// Changes the user's role and whether they are disabled (announced to every gateway);
/// `Ok(None)` when there is no such user.
pub async fn update(
    db: &DatabaseConnection,
    id: i64,
    role: Option<Role>,
    disabled: Option<bool>,
) -> Result<Option<user::Model>, StoreError> {
    let Some(found) = find_by_id(db, id).await? else {
        return Ok(None);
    };
    let txn = db.begin().await?;
    let mut row = found.into_active_model();
    if let Some(role) = role {
        row.role = Set(role);
    }
    if let Some(disabled) = disabled {
        row.disabled = Set(disabled);
    }
    let user = row.update(&txn).await?;
    if disabled == Some(true) {
        announce_shut_out(&txn, id).await?;
    }
    txn.commit().await?;
    Ok(Some(user))
}
