//! Every message that crosses between actors (and from HTTP handlers to actors), as plain
//! types: this module knows no actor. Actors are reached through `Recipient`s where a
//! message must name its sender (a worker, the registry a lease returns to), so the
//! actors import the messages and never each other in a circle.
//!
//! One file per recipient: `store` (the TaskStore's writes), `dispatcher`, `worker`,
//! `registry` (the InstanceRegistry, its leases and views), `pool` (the WorkerPool) and
//! `webhooks` (the Deliverer).

mod dispatcher;
mod pool;
mod registry;
mod store;
mod webhooks;
mod worker;

use actix::prelude::*;

pub use dispatcher::*;
pub use pool::*;
pub use registry::*;
pub use store::*;
pub use webhooks::*;
pub use worker::*;

/// Are you there, and ready? Answered by the TaskStore and the Dispatcher as soon as
/// they run, by the InstanceRegistry once every instance has answered its first ping.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Ping;
