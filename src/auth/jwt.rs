use std::time::Duration;

use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use sea_orm::DatabaseConnection;
use serde::{Deserialize, Serialize};

use super::AuthError;
use crate::domain::Role;
use crate::store::{meta, StoreError};

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

    pub fn issue(
        &self,
        user_id: i64,
        name: &str,
        role: Role,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = chrono::Utc::now().timestamp() as u64;
        let claims = Claims {
            sub: user_id.to_string(),
            name: name.to_string(),
            role,
            iat: now,
            exp: now + self.ttl.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::TokenExpired,
                _ => AuthError::InvalidToken,
            })
    }
}

/// The configured secret, or the one generated at first start and kept in the database
/// so that tokens survive restarts.
pub async fn load_or_create_secret(
    db: &DatabaseConnection,
    configured: &str,
) -> Result<Vec<u8>, StoreError> {
    if !configured.is_empty() {
        return Ok(configured.as_bytes().to_vec());
    }
    meta::jwt_secret(db).await
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
        assert!(matches!(other.verify(&token), Err(AuthError::InvalidToken)));
        assert!(matches!(
            keys.verify("not.a.token"),
            Err(AuthError::InvalidToken)
        ));
    }
}
