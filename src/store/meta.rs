//! Facts the gateway keeps about itself in the `meta` table.

use base64::Engine;
use entity::meta;
use entity::prelude::Meta;
use rand::RngCore;
use sea_orm::{ActiveModelTrait, DatabaseConnection, DbErr, EntityTrait, Set};

use super::StoreError;

const JWT_SECRET_KEY: &str = "jwt_secret";

/// The JWT secret generated at first start, so that tokens survive restarts: read it, or
/// make and keep one. Several processes starting at once agree on the first one stored.
pub async fn jwt_secret(db: &DatabaseConnection) -> Result<Vec<u8>, StoreError> {
    if let Some(row) = Meta::find_by_id(JWT_SECRET_KEY).one(db).await? {
        return decode_secret(&row.value);
    }
    let mut secret = [0u8; 64];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let encoded = base64::engine::general_purpose::STANDARD.encode(secret);
    let row = meta::ActiveModel {
        key: Set(JWT_SECRET_KEY.into()),
        value: Set(encoded),
    };
    if let Err(insert_error) = row.insert(db).await {
        // Another process may have created it first; theirs wins.
        return match Meta::find_by_id(JWT_SECRET_KEY).one(db).await? {
            Some(row) => decode_secret(&row.value),
            None => Err(insert_error.into()),
        };
    }
    Ok(secret.to_vec())
}

fn decode_secret(value: &str) -> Result<Vec<u8>, StoreError> {
    base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|e| DbErr::Custom(format!("stored jwt secret is not base64: {e}")).into())
}
