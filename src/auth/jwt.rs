use std::time::Duration;

use base64::Engine;
use entity::prelude::Meta;
use entity::{meta, user::Role};
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use sea_orm::{ActiveModelTrait, DatabaseConnection, DbErr, EntityTrait, Set};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

const SECRET_KEY: &str = "jwt_secret";

/// What a token says about its bearer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id, as a string per RFC 7519.
    pub sub: String,
    pub name: String,
    pub role: Role,
    pub iat: u64,
    pub exp: u64,
}

/// HS256 keys and the token lifetime, shared by every HTTP worker.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl JwtKeys {
    pub fn new(secret: &[u8], ttl: Duration) -> JwtKeys {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        JwtKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
        }
    }

    pub fn issue(&self, user_id: i64, name: &str, role: Role) -> Result<String, ApiError> {
        let now = chrono::Utc::now().timestamp() as u64;
        let claims = Claims {
            sub: user_id.to_string(),
            name: name.to_string(),
            role,
            iat: now,
            exp: now + self.ttl.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| ApiError::Internal(format!("cannot sign token: {e}")))
    }

    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => ApiError::TokenExpired,
                _ => ApiError::Unauthorized("invalid token"),
            })
    }
}

/// The configured secret, or the one generated at first start and kept in the database
/// so that tokens survive restarts.
pub async fn load_or_create_secret(
    db: &DatabaseConnection,
    configured: &str,
) -> Result<Vec<u8>, DbErr> {
    if !configured.is_empty() {
        return Ok(configured.as_bytes().to_vec());
    }
    if let Some(row) = Meta::find_by_id(SECRET_KEY).one(db).await? {
        return decode_secret(&row.value);
    }
    let mut secret = [0u8; 64];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let encoded = base64::engine::general_purpose::STANDARD.encode(secret);
    let row = meta::ActiveModel {
        key: Set(SECRET_KEY.into()),
        value: Set(encoded),
    };
    if let Err(insert_error) = row.insert(db).await {
        // Another process may have created it first; theirs wins.
        return match Meta::find_by_id(SECRET_KEY).one(db).await? {
            Some(row) => decode_secret(&row.value),
            None => Err(insert_error),
        };
    }
    Ok(secret.to_vec())
}

fn decode_secret(value: &str) -> Result<Vec<u8>, DbErr> {
    base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|e| DbErr::Custom(format!("stored jwt secret is not base64: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_other_keys() {
        let keys = JwtKeys::new(&[7u8; 64], Duration::from_secs(60));
        let token = keys.issue(42, "alice", Role::User).unwrap();
        let claims = keys.verify(&token).unwrap();
        assert_eq!(claims.sub, "42");
        assert_eq!(claims.name, "alice");

        let other = JwtKeys::new(&[8u8; 64], Duration::from_secs(60));
        assert!(matches!(
            other.verify(&token),
            Err(ApiError::Unauthorized(_))
        ));
        assert!(matches!(
            keys.verify("not.a.token"),
            Err(ApiError::Unauthorized(_))
        ));
    }
}
