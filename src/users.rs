//! User accounts in the database: create, look up, change role. Password hashing is
//! CPU-heavy, so callers run it on a blocking thread.

use chrono::Utc;
use entity::prelude::User;
use entity::user::{self, Role};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, Set, SqlErr,
};

use crate::auth::hash_password;
use crate::domain::NewUser;
use crate::error::ApiError;

/// Hashes the password off the async threads and inserts the user; 409 when the name is taken.
pub async fn create(
    db: &DatabaseConnection,
    new_user: NewUser,
    role: Role,
) -> Result<user::Model, ApiError> {
    if find_by_username(db, &new_user.username).await?.is_some() {
        return Err(ApiError::UsernameTaken);
    }
    let password = new_user.password;
    let hash = actix_web::web::block(move || hash_password(&password))
        .await
        .map_err(|e| ApiError::Internal(format!("hashing thread failed: {e}")))??;
    let row = user::ActiveModel {
        username: Set(new_user.username),
        password_hash: Set(hash),
        email: Set(new_user.email),
        phone: Set(new_user.phone),
        role: Set(role),
        created_at: Set(Utc::now()),
        ..Default::default()
    };
    row.insert(db).await.map_err(|e| match e.sql_err() {
        // Two registrations of one name racing past the check above.
        Some(SqlErr::UniqueConstraintViolation(_)) => ApiError::UsernameTaken,
        _ => ApiError::Database(e),
    })
}

pub async fn find_by_username(
    db: &DatabaseConnection,
    username: &str,
) -> Result<Option<user::Model>, DbErr> {
    User::find()
        .filter(user::Column::Username.eq(username))
        .one(db)
        .await
}

/// Sets the user's role; `Ok(false)` when there is no such user.
pub async fn set_role(db: &DatabaseConnection, username: &str, role: Role) -> Result<bool, DbErr> {
    let Some(found) = find_by_username(db, username).await? else {
        return Ok(false);
    };
    let mut row: user::ActiveModel = found.into();
    row.role = Set(role);
    row.update(db).await?;
    Ok(true)
}
