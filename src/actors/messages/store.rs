use std::time::Duration;

use chrono::{DateTime, Utc};

use actix::prelude::*;
use entity::task;

pub use crate::store::cluster::Refusal;

use crate::domain::{InstanceId, NewTask, QueuedTask, TaskId, UserId};
use crate::store::StoreError;

/// Insert a new QUEUED task; the reply comes once the transaction holding it commits.
#[derive(Message)]
#[rtype(result = "Result<Inserted, StoreError>")]
pub struct InsertTask(pub NewTask);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    New,
    /// Refused by the global limits checked in the inserting transaction (several
    /// gateways on PostgreSQL); nothing was written.
    Refused(Refusal),
    /// The user already had a task under this idempotency key; nothing was inserted.
    Existing {
        task_id: TaskId,
        request_hash: Option<String>,
    },
    /// The user no longer exists (removed since their token was checked); nothing was
    /// inserted.
    UserGone,
}

/// QUEUED → RUNNING on `instance` as attempt `attempt`. `Ok(false)` when the task is no
/// longer QUEUED at `attempt - 1` attempts (cancelled, or taken by someone else).
#[derive(Message)]
#[rtype(result = "Result<bool, StoreError>")]
pub struct MarkRunning {
    pub task_id: TaskId,
    pub user_id: UserId,
    pub attempt: i32,
    /// The instance's URL without userinfo, shown as the task's `instance`.
    pub instance: String,
    /// Its id, as the `running` event names it.
    pub instance_id: InstanceId,
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
    /// Back to QUEUED for another attempt, keeping this attempt's error, to run again
    /// no sooner than `after` from now.
    Retry {
        error: String,
        after: Duration,
    },
}

/// Apply an outcome to a task still as `expect`ed. `Ok(false)` when it was not.
#[derive(Message)]
#[rtype(result = "Result<bool, StoreError>")]
pub struct FinishTask {
    pub task_id: TaskId,
    pub user_id: UserId,
    pub expect: Expect,
    pub outcome: TaskOutcome,
    /// When the task was admitted, and how long this attempt's backend call took (none
    /// when it made none): what the metrics of its end count.
    pub created_at: DateTime<Utc>,
    pub ran: Option<Duration>,
}

/// At start: tasks a dead process left RUNNING go back to QUEUED, or FAILED once they
/// have had `max_attempts`. Answers (re-queued, failed).
#[derive(Message)]
#[rtype(result = "Result<(u64, u64), StoreError>")]
pub struct RecoverOrphans {
    pub max_attempts: i32,
}

/// Answers once every write queued before it has committed (or failed): the last step of
/// a drain, since workers hand over a task's ending without waiting for its commit.
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct Flush;

/// RUNNING → QUEUED for these tasks, whose attempts were aborted by a shutdown.
#[derive(Message)]
#[rtype(result = "Result<u64, StoreError>")]
pub struct RequeueRunning(pub Vec<TaskId>);

/// Owner's cancel: QUEUED or RUNNING → CANCELLED.
#[derive(Message)]
#[rtype(result = "Result<CancelOutcome, StoreError>")]
pub struct CancelTask {
    pub task_id: TaskId,
    pub user_id: UserId,
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

/// An admin's bulk cancel of these tasks, each as its owner's cancel would: QUEUED or
/// RUNNING → CANCELLED. Answers the tasks it changed, with their owners.
#[derive(Message)]
#[rtype(result = "Result<Vec<(TaskId, UserId)>, StoreError>")]
pub struct CancelTasks(pub Vec<TaskId>);

/// An admin's retry: FAILED or CANCELLED → QUEUED with attempts and error reset. With
/// several gateways the global queue capacity and quotas are checked as it writes.
/// Answers the tasks now QUEUED, ready for the queue.
#[derive(Message)]
#[rtype(result = "Result<Vec<QueuedTask>, StoreError>")]
pub struct RequeueFinished(pub Vec<TaskId>);
