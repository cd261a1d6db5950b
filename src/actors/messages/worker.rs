use actix::prelude::*;

use super::Lease;
use crate::domain::{QueuedTask, TaskId};

/// Run this task to its end, then report idle; on this lease, when the worker kept one
/// from its last call, instead of acquiring one.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Run(pub QueuedTask, pub Option<Lease>);

/// Abandon this task now if it is the one running (its backend call is dropped), and
/// report idle.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Abort(pub TaskId);

/// How the Dispatcher reaches one worker: by its slot, which it is known by, and the
/// two messages a worker takes.
#[derive(Clone)]
pub struct WorkerHandle {
    pub slot: usize,
    pub run: Recipient<Run>,
    pub abort: Recipient<Abort>,
}

impl PartialEq for WorkerHandle {
    fn eq(&self, other: &WorkerHandle) -> bool {
        self.slot == other.slot
    }
}
