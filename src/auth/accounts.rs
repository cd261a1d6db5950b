//! Accounts: creating a user (its password hashed on the bounded `HashPool`) and checking
//! a login. Used by `POST /register`, `POST /login` and `infergate user add`.

use entity::user;
use sea_orm::DatabaseConnection;

use super::password::{HashError, HashPool};
use crate::domain::{NewUser, Role};
use crate::store::{users, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("username is already taken")]
    UsernameTaken,
    #[error("invalid username or password")]
    BadCredentials,
    #[error("this account is disabled")]
    Disabled,
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Hashes the password on the pool and inserts the user.
pub async fn create_user(
    db: &DatabaseConnection,
    hasher: &HashPool,
    new_user: NewUser,
    role: Role,
) -> Result<user::Model, AccountError> {
    if users::find_by_username(db, &new_user.username)
        .await?
        .is_some()
    {
        return Err(AccountError::UsernameTaken);
    }
    let hash = hasher.hash(new_user.password.clone()).await?;
    users::insert(db, new_user, hash, role)
        .await
        .map_err(|e| match e {
            // Two registrations of one name racing past the check above.
            StoreError::Constraint(_) => AccountError::UsernameTaken,
            other => other.into(),
        })
}

/// The user, if the password is theirs and the account is not disabled.
pub async fn check_login(
    db: &DatabaseConnection,
    hasher: &HashPool,
    username: &str,
    password: String,
) -> Result<user::Model, AccountError> {
    let found = users::find_by_username(db, username).await?;
    let stored = found.as_ref().map(|u| u.password_hash.clone());
    let valid = hasher.verify(password, stored).await?;
    match found {
        // Said only to whoever knows the password.
        Some(user) if valid && user.disabled => Err(AccountError::Disabled),
        Some(user) if valid => Ok(user),
        _ => Err(AccountError::BadCredentials),
    }
}
