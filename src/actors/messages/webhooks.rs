use actix::prelude::*;

/// The gateway is stopping: claim nothing more (attempts under way end as they will);
/// answered once what was answered is stored.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopDelivering;
