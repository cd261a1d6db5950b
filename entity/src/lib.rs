//! sea-orm entities of the infergate database.

pub mod api_key;
pub mod image;
pub mod instance;
pub mod meta;
pub mod prelude;
pub mod task;
pub mod user;
