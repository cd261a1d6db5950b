use actix::prelude::*;

/// The gateway is stopping: claim nothing more (attempts under way end as they will).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopDelivering;
