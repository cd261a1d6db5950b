//! Event-stream tickets: stored by their SHA-256 until used or expired.

use chrono::{DateTime, Utc};
use entity::event_ticket;
use entity::prelude::EventTicket;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, Set};

use super::StoreError;
use crate::domain::UserId;

pub async fn insert(
    db: &DatabaseConnection,
    user_id: UserId,
    ticket_hash: String,
    expires_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let row = event_ticket::ActiveModel {
        ticket_hash: Set(ticket_hash),
        user_id: Set(user_id.0),
        expires_at: Set(expires_at),
    };
    EventTicket::insert(row).exec_without_returning(db).await?;
    Ok(())
}

/// The ticket's user, once: the ticket is deleted, and only the one call whose delete
/// removed it is answered with its user. An expired ticket answers `None`.
pub async fn redeem(
    db: &DatabaseConnection,
    ticket_hash: &str,
) -> Result<Option<UserId>, StoreError> {
    let Some(found) = EventTicket::find_by_id(ticket_hash).one(db).await? else {
        return Ok(None);
    };
    let deleted = EventTicket::delete_by_id(ticket_hash)
        .exec(db)
        .await?
        .rows_affected;
    Ok((deleted == 1 && found.expires_at > Utc::now()).then_some(UserId(found.user_id)))
}

/// Forgets expired tickets.
pub async fn prune(db: &DatabaseConnection) -> Result<u64, StoreError> {
    Ok(EventTicket::delete_many()
        .filter(event_ticket::Column::ExpiresAt.lt(Utc::now()))
        .exec(db)
        .await?
        .rows_affected)
}
