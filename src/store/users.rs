//! User rows: insert, look up, change role.

use chrono::Utc;
use entity::prelude::User;
use entity::user;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, IntoActiveModel, QueryFilter,
    Set,
};

use super::StoreError;
use crate::domain::{NewUser, Role};

/// Inserts the user with its password hash; `StoreError::Constraint` when the name is taken.
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
        created_at: Set(Utc::now()),
        ..Default::default()
    };
    Ok(row.insert(db).await?)
}

pub async fn find_by_username(
    db: &DatabaseConnection,
    username: &str,
) -> Result<Option<user::Model>, StoreError> {
    Ok(User::find()
        .filter(user::Column::Username.eq(username))
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
