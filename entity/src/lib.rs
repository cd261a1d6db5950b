//! sea-orm entities of the infergate database.

pub mod api_key;
pub mod audit;
pub mod event_ticket;
pub mod image;
pub mod instance;
pub mod meta;
pub mod node;
pub mod prelude;
pub mod queue_sample;
pub mod task;
pub mod task_event;
pub mod user;
pub mod webhook_delivery;

use sea_orm::{ActiveEnum, Iterable};

/// A stored enum from its wire spelling (`image`, `qwen`, …), or an error naming the
/// spellings there are, for settings and requests alike.
pub fn from_wire<E>(raw: String) -> Result<E, String>
where
    E: ActiveEnum<Value = String> + Iterable,
{
    E::try_from_value(&raw).map_err(|_| {
        let valid: Vec<String> = E::iter().map(|e| format!("`{}`", e.to_value())).collect();
        format!("`{raw}` is not one of {}", valid.join(", "))
    })
}
