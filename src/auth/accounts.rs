//! Accounts: creating a user (its password hashed off the async threads) and checking a
//! login. Used by `POST /register`, `POST /login` and `infergate user add`.

use entity::user;
use sea_orm::DatabaseConnection;

use super::password::{hash_password, verify_password, HashError};
use crate::domain::{NewUser, Role};
use crate::store::{users, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("username is already taken")]
    UsernameTaken,
    #[error("invalid username or password")]
    BadCredentials,
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error("the password hashing thread failed: {0}")]
    HashThread(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Hashes the password on a blocking thread and inserts the user.
pub async fn create_user(
    db: &DatabaseConnection,
    new_user: NewUser,
    role: Role,
) -> Result<user::Model, AccountError> {
    if users::find_by_username(db, &new_user.username)
        .await?
        .is_some()
    {
        return Err(AccountError::UsernameTaken);
    }
    let password = new_user.password.clone();
    let hash = actix_web::web::block(move || hash_password(&password))
        .await
        .map_err(|e| AccountError::HashThread(e.to_string()))??;
    users::insert(db, new_user, hash, role)
        .await
        .map_err(|e| match e {
            // Two registrations of one name racing past the check above.
            StoreError::Constraint(_) => AccountError::UsernameTaken,
            other => other.into(),
        })
}

/// The user, if the password is theirs.
pub async fn check_login(
    db: &DatabaseConnection,
    username: &str,
    password: String,
) -> Result<user::Model, AccountError> {
    let found = users::find_by_username(db, username).await?;
    let stored = found.as_ref().map(|u| u.password_hash.clone());
    let valid = actix_web::web::block(move || verify_password(&password, stored.as_deref()))
        .await
        .map_err(|e| AccountError::HashThread(e.to_string()))?;
    match found {
        Some(user) if valid => Ok(user),
        _ => Err(AccountError::BadCredentials),
    }
}
