//! Domain types: input is parsed into these at the HTTP boundary, so everything past a
//! handler holds only valid values.

mod idempotency;
mod image_job;
mod instance;
mod new_user;

pub use idempotency::Idempotency;
pub use image_job::{ImageJob, ImageRequest};
pub use instance::{InstanceChange, InstanceChangeRequest, NewInstanceRequest};
pub use new_user::{NewUser, RegisterRequest};
