//! Every message that crosses between actors (and from HTTP handlers to actors).

use std::time::{Duration, Instant};

use actix::prelude::*;
use entity::task::Priority;
use entity::{image, task};
use sea_orm::DbErr;

use super::instance_registry::{InstanceView, Lease};
use super::worker::Worker;
use crate::backends::BackendError;
use crate::domain::{Idempotency, ImageJob, InstanceChange};
use crate::settings::{InstanceKind, InstanceSettings};

/// A task admitted to the queue, as a worker needs it.
#[derive(Clone, Debug)]
pub struct QueuedTask {
    pub task_id: String,
    pub user_id: i64,
    pub priority: Priority,
    pub job: ImageJob,
    /// Attempts already made (the stored `attempts`); the next one is `attempts + 1`.
    pub attempts: i32,
    /// The instance the last attempt failed on, to be avoided by the next.
    pub avoid: Option<u64>,
    /// When this process queued it; the queue's max wait counts from here.
    pub enqueued_at: Instant,
}

// ---- to the Dispatcher ----

/// Admit a new image task: refused when the queue is full, otherwise committed, then queued.
#[derive(Message)]
#[rtype(result = "Result<Submitted, SubmitError>")]
pub struct Submit {
    pub user_id: i64,
    pub priority: Priority,
    pub job: ImageJob,
    pub idempotency: Option<Idempotency>,
}

#[derive(Debug)]
pub struct Submitted {
    pub task_id: String,
    /// The idempotency key was already used for this same request: nothing new was made.
    pub replayed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("queue is full")]
    QueueFull { capacity: usize },
    #[error("the user has {limit} unfinished tasks")]
    QuotaExceeded { limit: u32 },
    #[error("the gateway is shutting down")]
    ShuttingDown,
    #[error("the idempotency key was used for another request")]
    KeyReused,
    #[error("cannot store task: {0}")]
    Store(#[from] DbErr),
}

/// A worker is free for its next task.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WorkerIdle(pub Addr<Worker>);

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
    pub task_id: String,
    pub user_id: i64,
}

/// The 1-based queue positions of these tasks of the user (`None`: not queued here).
#[derive(Message)]
#[rtype(result = "Vec<Option<usize>>")]
pub struct QueuePositions {
    pub user_id: i64,
    pub task_ids: Vec<String>,
}

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

/// Abandon this task now if it is the one running (its backend call is dropped), and
/// report idle.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Abort(pub String);

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

impl From<&BackendError> for CallOutcome {
    /// A 4xx says the request was at fault, anything else that the instance was.
    fn from(error: &BackendError) -> Self {
        if error.is_instance_fault() {
            CallOutcome::InstanceFault {
                error: error.to_string(),
            }
        } else {
            CallOutcome::Neutral
        }
    }
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

/// How many `Acquire` requests of the kind wait for room.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CountWaiting(pub InstanceKind);

/// Add and persist an instance (checked); it takes work once its first ping succeeds.
#[derive(Message)]
#[rtype(result = "Result<InstanceView, InstanceAdminError>")]
pub struct AddInstance(pub InstanceSettings);

/// Change an instance's capacity, weight or enabled.
#[derive(Message)]
#[rtype(result = "Result<InstanceView, InstanceAdminError>")]
pub struct UpdateInstance {
    pub id: u64,
    pub change: InstanceChange,
}

/// Drain an instance (no new work, calls in flight finish), then remove it.
#[derive(Message)]
#[rtype(result = "Result<InstanceView, InstanceAdminError>")]
pub struct RemoveInstance(pub u64);

#[derive(Debug, thiserror::Error)]
pub enum InstanceAdminError {
    #[error("no such instance")]
    NotFound,
    #[error("the instance is draining")]
    Draining,
    #[error("an instance of this kind with this url exists")]
    Exists,
    #[error("cannot store the instance: {0}")]
    Store(#[from] DbErr),
}

impl InstanceAdminError {
    /// An insert's error: a unique violation is the same kind and url added meanwhile.
    pub fn from_insert(e: DbErr) -> InstanceAdminError {
        match e.sql_err() {
            Some(sea_orm::SqlErr::UniqueConstraintViolation(_)) => InstanceAdminError::Exists,
            _ => InstanceAdminError::Store(e),
        }
    }
}

// ---- to the WorkerPool ----

/// The enabled image instances' total capacity, sent by the registry when it changes.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ImageCapacity(pub u32);

// ---- to the TaskStore ----

/// Insert a new QUEUED task; the reply comes once the transaction holding it commits.
#[derive(Message)]
#[rtype(result = "Result<Inserted, DbErr>")]
pub struct InsertTask(pub task::ActiveModel);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    New,
    /// The user already had a task under this idempotency key; nothing was inserted.
    Existing {
        task_id: String,
        request_hash: Option<String>,
    },
}

/// The user's task submitted under this idempotency key, if any.
#[derive(Message)]
#[rtype(result = "Result<Option<task::Model>, DbErr>")]
pub struct FindByIdempotencyKey {
    pub user_id: i64,
    pub key: String,
}

/// QUEUED → RUNNING on `instance` as attempt `attempt`. `Ok(false)` when the task is no
/// longer QUEUED at `attempt - 1` attempts (cancelled, or taken by someone else).
#[derive(Message)]
#[rtype(result = "Result<bool, DbErr>")]
pub struct MarkRunning {
    pub task_id: String,
    pub attempt: i32,
    pub instance: String,
}

/// The status a change expects to find; anything else means the task moved on and the
/// change is dropped.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    Queued,
    Running { attempt: i32 },
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
    /// Back to QUEUED for another attempt, keeping this attempt's error.
    Retry {
        error: String,
    },
}

/// Apply an outcome to a task still as `expect`ed. `Ok(false)` when it was not.
#[derive(Message)]
#[rtype(result = "Result<bool, DbErr>")]
pub struct FinishTask {
    pub task_id: String,
    pub user_id: i64,
    pub expect: Expect,
    pub outcome: TaskOutcome,
}

/// At start: tasks a dead process left RUNNING go back to QUEUED, or FAILED once they
/// have had `max_attempts`. Answers (re-queued, failed).
#[derive(Message)]
#[rtype(result = "Result<(u64, u64), DbErr>")]
pub struct RecoverOrphans {
    pub max_attempts: i32,
}

/// Answers once every write queued before it has committed (or failed): the last step of
/// a drain, since workers hand over a task's ending without waiting for its commit.
#[derive(Message)]
#[rtype(result = "Result<(), DbErr>")]
pub struct Flush;

/// RUNNING → QUEUED for these tasks, whose attempts were aborted by a shutdown.
#[derive(Message)]
#[rtype(result = "Result<u64, DbErr>")]
pub struct RequeueRunning(pub Vec<String>);

/// Owner's cancel: QUEUED or RUNNING → CANCELLED.
#[derive(Message)]
#[rtype(result = "Result<CancelOutcome, DbErr>")]
pub struct CancelTask {
    pub task_id: String,
    pub user_id: i64,
}

#[derive(Debug)]
pub enum CancelOutcome {
    NotFound,
    /// Cancelled now (`changed`) or earlier.
    Cancelled {
        task: task::Model,
        changed: bool,
    },
    /// It had already ended DONE or FAILED.
    Finished(task::Model),
}

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
