//! Device API keys: `igk_` followed by 43 base64url characters (32 random bytes). The
//! prefix tells a key from a JWT without parsing either; the database keeps only the
//! key's SHA-256, which is enough for a secret this long (no salt or slow hash needed).

use base64::Engine;
use entity::api_key;
use rand::RngCore;
use sea_orm::DatabaseConnection;
use sha2::{Digest, Sha256};

use crate::domain::UserId;
use crate::store::api_keys::{self as rows, KeyInsert, NewKey};
use crate::store::StoreError;

pub const KEY_PREFIX: &str = "igk_";
/// The header a device may send its key in (or `Authorization: Bearer igk_…`).
pub const API_KEY_HEADER: &str = "X-API-Key";
/// Characters of a key kept in clear, so a user can tell their keys apart.
const SHOWN_CHARS: usize = KEY_PREFIX.len() + 8;

/// Whether a Bearer credential is a device key rather than a JWT.
pub fn is_api_key(credential: &str) -> bool {
    credential.starts_with(KEY_PREFIX)
}

fn hash(key: &str) -> String {
    format!("{:x}", Sha256::digest(key.as_bytes()))
}

/// Makes and stores a new key for the user unless they hold `max` already; the returned
/// string is the only copy of the key.
pub async fn create(
    db: &DatabaseConnection,
    user_id: UserId,
    name: Option<String>,
    max: u64,
) -> Result<Result<(api_key::Model, String), Refused>, StoreError> {
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let key = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    let stored = NewKey {
        name,
        prefix: key[..SHOWN_CHARS].to_string(),
        key_hash: hash(&key),
    };
    Ok(match rows::insert_capped(db, user_id, stored, max).await? {
        KeyInsert::Created(row) => Ok((row, key)),
        KeyInsert::TooMany => Err(Refused::TooMany),
        KeyInsert::UserGone => Err(Refused::UserGone),
    })
}

/// Why no key was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    TooMany,
    UserGone,
}

/// The live key matching `key`.
pub async fn authenticate(
    db: &DatabaseConnection,
    key: &str,
) -> Result<Option<api_key::Model>, StoreError> {
    rows::find_and_touch(db, &hash(key)).await
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
