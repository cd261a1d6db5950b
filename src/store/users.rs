//! User rows: insert, look up (by name whatever its case), change role, disable, remove.

use chrono::Utc;
use entity::prelude::{ApiKey, Image, Task, User};
use entity::{api_key, image, task, user};
use sea_orm::sea_query::{Expr, Func};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, IntoActiveModel,
    PaginatorTrait, QueryFilter, Set, TransactionTrait,
};

use super::StoreError;
use crate::domain::{NewUser, Role};

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

/// Disables or enables the user; `Ok(None)` when there is no such user.
pub async fn set_disabled(
    db: &DatabaseConnection,
    username: &str,
    disabled: bool,
) -> Result<Option<user::Model>, StoreError> {
    let Some(found) = find_by_username(db, username).await? else {
        return Ok(None);
    };
    let mut row = found.into_active_model();
    row.disabled = Set(disabled);
    Ok(Some(row.update(db).await?))
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
    txn.commit().await?;
    Ok((deleted == 1).then_some(Removed {
        user_id: found.id,
        tasks,
        images,
        keys,
    }))
}
