//! Who is calling: JWT issue/verify, password hashing, and the `AuthUser` extractor.

mod extractor;
mod jwt;
mod password;

pub use extractor::AuthUser;
pub use jwt::{load_or_create_secret, Claims, JwtKeys};
pub use password::{hash_password, verify_password};
