//! Device API keys: `igk_` followed by 43 base64url characters (32 random bytes). The
//! prefix tells a key from a JWT without parsing either; the database keeps only the
//! key's SHA-256, which is enough for a secret this long (no salt or slow hash needed).

use base64::Engine;
use chrono::{TimeDelta, Utc};
use entity::api_key;
use entity::prelude::ApiKey;
use rand::RngCore;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, Set,
};
use sha2::{Digest, Sha256};

pub const KEY_PREFIX: &str = "igk_";
/// Characters of a key kept in clear, so a user can tell their keys apart.
const SHOWN_CHARS: usize = KEY_PREFIX.len() + 8;
/// `last_used_at` is refreshed at most this often, so busy devices do not write on every call.
const LAST_USED_GRANULARITY: TimeDelta = TimeDelta::seconds(60);

/// Whether a Bearer credential is a device key rather than a JWT.
pub fn is_api_key(credential: &str) -> bool {
    credential.starts_with(KEY_PREFIX)
}

fn hash(key: &str) -> String {
    format!("{:x}", Sha256::digest(key.as_bytes()))
}

/// Stores a new key for the user; the returned string is the only copy of the key.
pub async fn create(
    db: &DatabaseConnection,
    user_id: i64,
    name: Option<String>,
) -> Result<(api_key::Model, String), DbErr> {
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let key = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    let row = api_key::ActiveModel {
        user_id: Set(user_id),
        name: Set(name),
        prefix: Set(key[..SHOWN_CHARS].to_string()),
        key_hash: Set(hash(&key)),
        created_at: Set(Utc::now()),
        last_used_at: Set(None),
        ..Default::default()
    }
    .insert(db)
    .await?;
    Ok((row, key))
}

pub async fn count(db: &DatabaseConnection, user_id: i64) -> Result<u64, DbErr> {
    ApiKey::find()
        .filter(api_key::Column::UserId.eq(user_id))
        .count(db)
        .await
}

/// The user's keys, newest first.
pub async fn list(db: &DatabaseConnection, user_id: i64) -> Result<Vec<api_key::Model>, DbErr> {
    ApiKey::find()
        .filter(api_key::Column::UserId.eq(user_id))
        .order_by_desc(api_key::Column::Id)
        .all(db)
        .await
}

/// Deletes one of the user's keys; `Ok(false)` when they have no key with that id.
pub async fn revoke(db: &DatabaseConnection, user_id: i64, id: i64) -> Result<bool, DbErr> {
    let deleted = ApiKey::delete_many()
        .filter(api_key::Column::Id.eq(id))
        .filter(api_key::Column::UserId.eq(user_id))
        .exec(db)
        .await?;
    Ok(deleted.rows_affected > 0)
}

/// The live key matching `key`, with its `last_used_at` brought up to date.
pub async fn authenticate(
    db: &DatabaseConnection,
    key: &str,
) -> Result<Option<api_key::Model>, DbErr> {
    let Some(found) = ApiKey::find()
        .filter(api_key::Column::KeyHash.eq(hash(key)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hash_to_hex_sha256() {
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(is_api_key("igk_abc") && !is_api_key("eyJhbGciOi.x.y"));
    }
}
