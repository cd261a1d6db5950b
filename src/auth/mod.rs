//! Who is calling: JWT issue/verify, password hashing, device API keys, and the
//! `AuthUser` (JWT only) and `DeviceOrUser` (API key or JWT) extractors.

pub mod api_keys;
mod device;
mod extractor;
mod jwt;
mod password;

pub use device::{DeviceOrUser, API_KEY_HEADER};
pub use extractor::AuthUser;
pub use jwt::{load_or_create_secret, Claims, JwtKeys};
pub use password::{hash_password, verify_password};
