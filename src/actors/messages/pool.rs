use actix::prelude::*;

/// The enabled image instances' total capacity, sent by the registry when it changes.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ImageCapacity(pub u32);
