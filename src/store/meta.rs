//! Facts the gateway keeps about itself in the `meta` table.

use base64::Engine;
use entity::meta;
use entity::prelude::Meta;
use rand::RngCore;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveModelTrait, DatabaseConnection, DbErr, EntityTrait, Set};

use super::StoreError;

const JWT_SECRET_KEY: &str = "jwt_secret";
const PAUSED_KEY: &str = "queue_paused";

/// Whether an admin paused dispatching (kept here so that a restart keeps the pause).
pub async fn paused(db: &DatabaseConnection) -> Result<bool, StoreError> {
    Ok(Meta::find_by_id(PAUSED_KEY)
        .one(db)
        .await?
        .is_some_and(|row| row.value == "true"))
}

pub async fn set_paused(db: &DatabaseConnection, paused: bool) -> Result<(), StoreError> {
    let row = meta::ActiveModel {
        key: Set(PAUSED_KEY.into()),
        value: Set(paused.to_string()),
    };
    Meta::insert(row)
        .on_conflict(
            OnConflict::column(meta::Column::Key)
                .update_column(meta::Column::Value)
                .to_owned(),
        )
        .exec(db)
        .await?;
    Ok(())
}

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
