//! Who is calling: JWT issue/verify, password hashing, device API keys, and the
//! `AuthUser` (JWT only), `AdminUser` (JWT of a current admin) and `DeviceOrUser` (API
//! key or JWT) extractors.

mod admin;
pub mod api_keys;
mod device;
mod extractor;
mod jwt;
mod password;

pub use admin::AdminUser;
pub use device::{DeviceOrUser, API_KEY_HEADER};
pub use extractor::AuthUser;
pub use jwt::{load_or_create_secret, Claims, JwtKeys};
pub use password::{hash_password, verify_password};
