use std::time::Duration;

use actix::prelude::*;

use super::{Lease, WorkerHandle};
use crate::domain::{
    Idempotency, ImageJob, Priority, QueuedTask, TaskId, TraceContext, UserId, Webhook,
};
use crate::store::StoreError;

/// Admit a new image task: refused when the queue is full, otherwise committed, then queued.
#[derive(Message)]
#[rtype(result = "Result<Submitted, SubmitError>")]
pub struct Submit {
    pub user_id: UserId,
    pub priority: Priority,
    pub job: ImageJob,
    pub idempotency: Option<Idempotency>,
    /// The submitting request's trace, continued by the task's attempts.
    pub trace: Option<TraceContext>,
    pub webhook: Option<Webhook>,
}

#[derive(Debug)]
pub struct Submitted {
    pub task_id: TaskId,
    /// The idempotency key was already used for this same request: nothing new was made.
    pub replayed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the task queue is full ({capacity} tasks)")]
    QueueFull { capacity: usize },
    #[error("the user has {limit} unfinished tasks")]
    QuotaExceeded { limit: u32 },
    #[error("the gateway is shutting down")]
    ShuttingDown,
    #[error("the idempotency key was used for another request")]
    KeyReused,
    #[error("the user no longer exists")]
    UserGone,
    #[error("cannot store the task: {0}")]
    Store(#[from] StoreError),
}

/// A worker is free for its next task; with several gateways, perhaps still holding the
/// lease its last call ended on, for the next task to run on at once.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WorkerIdle(pub WorkerHandle, pub Option<Lease>);

/// A failed attempt will be retried: back to the head of the queue after `delay`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RetryLater {
    pub task: QueuedTask,
    pub delay: Duration,
}

/// The task was cancelled in the database: drop it from the queue, or abort its worker.
#[derive(Message)]
#[rtype(result = "()")]
pub struct TaskCancelled {
    pub task_id: TaskId,
    /// Known when the cancel came through this gateway; not when another one says so.
    pub user_id: Option<UserId>,
}

/// Work may be waiting in the database: claim for the idle workers, unless the last
/// claim says this is no help.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Wake(pub WakeReason);

/// What another gateway said, or that what it said may have been lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeReason {
    /// It queued tasks.
    Queued,
    /// It gave a call slot back.
    SlotFreed,
    /// Wake-ups may have been lost (the listening connection dropped).
    Resync,
}

/// The image instances this gateway can call now, as (shared key, capacity): with
/// several gateways, a claim takes no more tasks than they have free slots.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ImageTargets(pub Vec<(String, u32)>);

/// The live gateways sharing the database, for `/api/v1/admin/nodes`.
#[derive(Message)]
#[rtype(result = "Result<Vec<entity::node::Model>, StoreError>")]
pub struct ListNodes;

/// The 1-based queue positions of these tasks, each with its owner, in the order asked
/// (`None`: not queued here).
#[derive(Message)]
#[rtype(result = "Result<Vec<Option<usize>>, StoreError>")]
pub struct QueuePositions(pub Vec<(UserId, TaskId)>);

/// Stop admitting and dispatching; wait up to `grace` for running tasks, then abort the
/// rest and put them back to QUEUED for the next start.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain {
    pub grace: Duration,
}

/// The WorkerPool changed size: `added` new workers will announce themselves with
/// `WorkerIdle`; `retire` workers are to go, idle ones at once, busy ones when they finish.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ResizeWorkers {
    pub added: usize,
    pub retire: usize,
}

/// Queue figures for `/api/v1/system/stats`.
#[derive(Message)]
#[rtype(result = "Result<QueueStats, StoreError>")]
pub struct GetQueueStats;

#[derive(Debug, Clone, Copy)]
pub struct QueueStats {
    pub queue_length: usize,
    pub queue_capacity: usize,
    pub workers: usize,
    pub busy_workers: usize,
    /// An admin paused dispatching.
    pub paused: bool,
}

/// Pause (`true`) or resume dispatching: kept in the database first, so a restart keeps
/// it (and, with several gateways, every one follows at its next heartbeat).
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct SetPaused(pub bool);

/// An admin's retry of these ended tasks, as far as the queue's capacity and the users'
/// quotas allow: back to QUEUED and into the queue. Answers how many were.
#[derive(Message)]
#[rtype(result = "Result<u64, StoreError>")]
pub struct RetryTasks(pub Vec<(TaskId, UserId)>);
