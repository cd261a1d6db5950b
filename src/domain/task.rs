//! Image tasks as the actors see them: a new submission on its way to the database, and
//! a committed task waiting in (or coming back to) the queue.

use std::time::Instant;

use chrono::{DateTime, Utc};

use super::{Idempotency, ImageJob, InstanceId, TaskId, UserId, Webhook};

pub use entity::task::{Priority, Status as TaskStatus};

/// The W3C trace context a task was submitted in, stored with it so that its attempts
/// continue the submitting trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

/// A validated submission, before it is stored.
#[derive(Clone, Debug)]
pub struct NewTask {
    pub task_id: TaskId,
    pub user_id: UserId,
    pub priority: Priority,
    pub job: ImageJob,
    pub idempotency: Option<Idempotency>,
    pub trace: Option<TraceContext>,
    /// Where the task's events are delivered, if anywhere.
    pub webhook: Option<Webhook>,
}

/// A committed task admitted to the queue, as a worker needs it.
#[derive(Clone, Debug)]
pub struct QueuedTask {
    pub task_id: TaskId,
    pub user_id: UserId,
    pub priority: Priority,
    pub job: ImageJob,
    /// Attempts already made (the stored `attempts`); the next one is `attempts + 1`.
    pub attempts: i32,
    /// The instance the last attempt failed on, to be avoided by the next.
    pub avoid: Option<InstanceId>,
    /// When this process queued it; the queue's max wait counts from here.
    pub enqueued_at: Instant,
    /// When it was admitted: its queue wait and total time count from here.
    pub created_at: DateTime<Utc>,
    pub trace: Option<TraceContext>,
}

impl QueuedTask {
    /// A task just committed, on its way to its first attempt.
    pub fn fresh(task: NewTask) -> QueuedTask {
        QueuedTask {
            task_id: task.task_id,
            user_id: task.user_id,
            priority: task.priority,
            job: task.job,
            attempts: 0,
            avoid: None,
            enqueued_at: Instant::now(),
            created_at: Utc::now(),
            trace: task.trace,
        }
    }
}
