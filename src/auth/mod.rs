//! Who is calling: JWT issue and check, password hashing, accounts and device API keys.
//! The extractors that make these a request's caller are the HTTP layer's
//! (`crate::http::caller`).

pub mod accounts;
pub mod api_keys;
mod jwt;
mod password;
mod standing;
pub mod tickets;

pub use api_keys::API_KEY_HEADER;
pub use jwt::{load_or_create_secret, Claims, JwtKeys};
pub use password::{HashError, HashPool};
pub use standing::UserStanding;

use crate::store::StoreError;

/// Why a caller is not let in.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing Authorization header")]
    MissingAuthorization,
    #[error("Authorization header must be `Bearer <token>`")]
    MalformedAuthorization,
    #[error("API keys are accepted only by the speech endpoints; log in for a token")]
    ApiKeyNotAccepted,
    #[error("invalid token")]
    InvalidToken,
    #[error("token has expired")]
    TokenExpired,
    #[error("invalid or revoked API key")]
    InvalidKey,
    #[error("the token's user no longer exists")]
    UserGone,
    #[error("this account is disabled")]
    Disabled,
    #[error("this needs the admin role")]
    NotAdmin,
    #[error(
        "invalid, expired or already used ticket; get a new one from POST /api/v1/events/ticket"
    )]
    InvalidTicket,
    #[error(transparent)]
    Store(#[from] StoreError),
}
