//! Every message that crosses between actors (and from HTTP handlers to actors).

use std::time::{Duration, Instant};

use actix::prelude::*;
use entity::{image, task};
use sea_orm::DbErr;

use super::instance_registry::{InstanceView, Lease};
use super::worker::Worker;
use crate::domain::ImageJob;
use crate::settings::InstanceKind;

/// A task admitted to the queue, as a worker needs it.
#[derive(Clone, Debug)]
pub struct QueuedTask {
    pub task_id: String,
    pub user_id: i64,
    pub job: ImageJob,
    /// When this process queued it; the queue's max wait counts from here.
    pub enqueued_at: Instant,
}

// ---- to the Dispatcher ----

/// Admit a new image task: refused when the queue is full, otherwise committed, then queued.
#[derive(Message)]
#[rtype(result = "Result<String, SubmitError>")]
pub struct Submit {
    pub user_id: i64,
    pub job: ImageJob,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("queue is full")]
    QueueFull { capacity: usize },
    #[error("cannot store task: {0}")]
    Store(#[from] DbErr),
}

/// A worker is free for its next task.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WorkerIdle(pub Addr<Worker>);

/// Queue figures for `/api/v1/system/stats`.
#[derive(Message)]
#[rtype(result = "QueueStats")]
pub struct GetQueueStats;

#[derive(Debug, Clone, Copy)]
pub struct QueueStats {
    pub queue_length: usize,
    pub queue_capacity: usize,
    pub workers: usize,
    pub busy_workers: usize,
}

// ---- to a Worker ----

/// Run this task to its end, then report idle.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Run(pub QueuedTask);

// ---- to the InstanceRegistry ----

/// Wait for a free slot on a healthy instance of `kind`, chosen by the kind's strategy.
/// Dropping the reply future withdraws the request.
#[derive(Message)]
#[rtype(result = "Result<Lease, AcquireError>")]
pub struct Acquire {
    pub kind: InstanceKind,
    pub user_id: i64,
    /// The instance of a failed earlier attempt: skipped while another healthy one exists.
    pub avoid: Option<u64>,
    /// Answer `NoHealthyInstance` at once when no instance of the kind is healthy,
    /// instead of waiting for one (synchronous callers).
    pub fail_fast: bool,
    /// Answer `TooManyWaiting` at once when this many requests of the kind already wait.
    pub max_waiting: Option<usize>,
}

impl Acquire {
    /// Wait as long as it takes (the caller bounds the wait).
    pub fn waiting(kind: InstanceKind, user_id: i64) -> Acquire {
        Acquire {
            kind,
            user_id,
            avoid: None,
            fail_fast: false,
            max_waiting: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error("the instance registry stopped")]
    RegistryStopped,
    #[error("no healthy backend instance")]
    NoHealthyInstance,
    #[error("too many requests are waiting for a backend instance")]
    TooManyWaiting,
}

/// How a call on a leased instance went; feeds passive health and the instance's figures.
#[derive(Debug, Clone)]
pub enum CallOutcome {
    Success {
        latency: Duration,
    },
    /// The instance misbehaved (transport error, 5xx, timeout, unreadable answer).
    InstanceFault {
        error: String,
    },
    /// The call ended for reasons that say nothing about the instance (4xx, abandoned).
    Neutral,
}

/// Give a lease back (sent by `Lease::release` or its `Drop`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Release {
    pub instance_id: u64,
    pub outcome: CallOutcome,
}

/// A snapshot of every instance.
#[derive(Message)]
#[rtype(result = "Vec<InstanceView>")]
pub struct ListInstances;

// ---- to the TaskStore ----

/// Insert a new QUEUED task; the reply comes once the transaction holding it commits.
#[derive(Message)]
#[rtype(result = "Result<(), DbErr>")]
pub struct InsertTask(pub task::ActiveModel);

/// QUEUED → RUNNING on `instance`, counting an attempt. `Ok(false)` when the task is no
/// longer QUEUED (cancelled, or already taken).
#[derive(Message)]
#[rtype(result = "Result<bool, DbErr>")]
pub struct MarkRunning {
    pub task_id: String,
    pub instance: String,
}

#[derive(Debug)]
pub enum TaskOutcome {
    Done {
        content_type: String,
        bytes: Vec<u8>,
    },
    Failed {
        error: String,
    },
}

/// End a task that is still in status `from`. `Ok(false)` when it was not (it already ended).
#[derive(Message)]
#[rtype(result = "Result<bool, DbErr>")]
pub struct FinishTask {
    pub task_id: String,
    pub user_id: i64,
    pub from: task::Status,
    pub outcome: TaskOutcome,
}

/// Put tasks a dead process left RUNNING back to QUEUED (once, at start).
#[derive(Message)]
#[rtype(result = "Result<u64, DbErr>")]
pub struct RequeueOrphans;

/// Every QUEUED task in submission order, for the Dispatcher's queue.
#[derive(Message)]
#[rtype(result = "Result<Vec<task::Model>, DbErr>")]
pub struct LoadQueued;

/// One of the user's tasks.
#[derive(Message)]
#[rtype(result = "Result<Option<task::Model>, DbErr>")]
pub struct GetTask {
    pub task_id: String,
    pub user_id: i64,
}

/// The user's newest tasks.
#[derive(Message)]
#[rtype(result = "Result<Vec<task::Model>, DbErr>")]
pub struct ListTasks {
    pub user_id: i64,
    pub limit: u64,
}

/// One of the user's images.
#[derive(Message)]
#[rtype(result = "Result<Option<image::Model>, DbErr>")]
pub struct GetImage {
    pub image_id: i64,
    pub user_id: i64,
}

/// A worker could not start a task it was handed; it goes back to the head of the queue.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Requeue(pub QueuedTask);
