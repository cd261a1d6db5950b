//! Webhooks: where a delivery may go (`address`) and how it is signed (`signing`). The
//! outbox is the store's (`crate::store::webhooks`); the deliverer is an actor
//! (`crate::actors::webhooks`).

pub mod address;
pub mod signing;
