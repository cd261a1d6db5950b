//! Single-use tickets for event streams. A browser's `EventSource` and `WebSocket`
//! cannot send an `Authorization` header, and a long-lived token in a URL ends up in
//! logs and histories; so an authenticated call to `POST /api/v1/events/ticket` gets a
//! ticket (`igt_` and 32 random bytes in base64url) that opens one stream, once, within
//! `TICKET_TTL`, as `?ticket=`. Only its SHA-256 is stored.

use std::time::Duration;

use base64::Engine;
use rand::RngCore;
use sea_orm::DatabaseConnection;
use sha2::{Digest, Sha256};

use crate::domain::UserId;
use crate::store::{tickets, StoreError};

pub const TICKET_PREFIX: &str = "igt_";
pub const TICKET_TTL: Duration = Duration::from_secs(60);

fn hash(ticket: &str) -> String {
    format!("{:x}", Sha256::digest(ticket.as_bytes()))
}

/// A new ticket for the user; the returned string is its only copy.
pub async fn issue(db: &DatabaseConnection, user_id: UserId) -> Result<String, StoreError> {
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let ticket = format!(
        "{TICKET_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    let expires_at = chrono::Utc::now() + TICKET_TTL;
    tickets::insert(db, user_id, hash(&ticket), expires_at).await?;
    Ok(ticket)
}

/// The ticket's user, if it is a live ticket not used before; it cannot be used again.
pub async fn redeem(db: &DatabaseConnection, ticket: &str) -> Result<Option<UserId>, StoreError> {
    if !ticket.starts_with(TICKET_PREFIX) {
        return Ok(None);
    }
    tickets::redeem(db, &hash(ticket)).await
}
