use std::sync::Arc;

use sea_orm::{DbErr, SqlErr};

/// Why something could not be read or written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database refused or could not be reached: an outage, worth retrying. Shared,
    /// because one failed group commit answers every writer in it.
    #[error("database error: {0}")]
    Database(Arc<DbErr>),
    /// A unique or foreign-key constraint refused the write: the request's fault, not an
    /// outage (the caller names which rule).
    #[error("the write breaks a constraint: {0}")]
    Constraint(Arc<DbErr>),
    /// The task store actor is not answering (full, restarting or stopped).
    #[error("the task store is not answering: {0}")]
    Unavailable(#[from] actix::MailboxError),
    /// The task store restarted while the write waited for its commit: it did not happen.
    #[error("the task store restarted before the write committed")]
    Restarted,
}

impl From<DbErr> for StoreError {
    fn from(e: DbErr) -> StoreError {
        match e.sql_err() {
            Some(
                SqlErr::UniqueConstraintViolation(_) | SqlErr::ForeignKeyConstraintViolation(_),
            ) => StoreError::Constraint(Arc::new(e)),
            _ => StoreError::Database(Arc::new(e)),
        }
    }
}
