//! TaskStore: the only writer of tasks and images.
//!
//! Owns the database connection and the group-commit buffer. Concurrent writes (new
//! tasks, QUEUED → RUNNING, and ends) are batched into one transaction: each sender's
//! reply waits for the commit that holds its write, so a 202 always means "committed"
//! and one fsync serves a whole batch. With several gateways, admitting new tasks takes
//! a lock every gateway's admissions share: a batch whose new tasks find it taken
//! commits the rest and hands them to a second lane, which waits for it, so the status
//! changes of the tasks running here never wait for other gateways' admissions. While
//! the lock stays contended new tasks go to that lane straight away; once it is found
//! free again they ride with the rest, one commit for all as alone. Reads run concurrently on the connection pool and
//! never wait for the buffer. Every status change is conditional on the status (and
//! attempt) the caller expects, so a late or repeated update cannot overwrite a task
//! that already ended. A task's ending that fails to commit is tried again until it
//! does, so a passing database error leaves no task stuck RUNNING. Reads are not its
//! business: they go to the pool directly (`crate::store::tasks`).

mod admin;
mod rows;
mod writes;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use entity::prelude::Task;
use entity::task;
use futures_util::FutureExt;
use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter, Set, TransactionTrait,
};
use tokio::sync::oneshot;

use super::messages::*;
use crate::cluster::Cluster;
use crate::domain::{ChangeKind, TaskEvent, TaskStatus};
use crate::events::Relay;
use crate::store::events::{self, NewEvent};
use crate::store::StoreError;
use crate::telemetry::metrics::AttemptOutcome;
use crate::telemetry::METRICS;
use writes::{changed, requeue_running, Admission, Ending, Write};

/// Writes per group commit; keeps one insert statement well under SQLite's variable limit.
const MAX_BATCH: usize = 512;
/// Pause before an ending's next try after a failed commit; doubles with each failure.
const ENDING_RETRY_BASE: Duration = Duration::from_millis(100);
const ENDING_RETRY_MAX: Duration = Duration::from_secs(10);

/// A queue of writes with at most one commit in flight.
#[derive(Default)]
struct Lane {
    /// Writes waiting for the next commit, each with the channel its sender awaits.
    pending: Vec<Write>,
    /// A commit is in flight; writes arriving now ride on the next one.
    committing: bool,
}

/// Every write, new tasks admitted if the admission lock is free.
const CHANGES: usize = 0;
/// New tasks that found the admission lock taken (several gateways), waiting for it.
const ADMISSIONS: usize = 1;

pub struct TaskStore {
    db: DatabaseConnection,
    lanes: [Lane; 2],
    /// The admission lock was another's when last asked for: new tasks go straight to
    /// the lane that waits for it.
    contended: bool,
    /// How long a DONE's image is held while its commit keeps failing; then the task is
    /// stored as FAILED instead (the database may be refusing this very image).
    hold_results: Duration,
    /// With several gateways: this node, whose claims every change is conditional on,
    /// and the global limits admission checks.
    cluster: Option<Arc<Cluster>>,
    /// Where committed events go. Alone on SQLite, from here to the hub on another
    /// thread; with several gateways the listener publishes every gateway's, this
    /// one's included, in commit order.
    hub: Relay,
}

impl TaskStore {
    pub fn new(
        db: DatabaseConnection,
        hold_results: Duration,
        cluster: Option<Cluster>,
        hub: Relay,
    ) -> TaskStore {
        TaskStore {
            db,
            lanes: Default::default(),
            contended: false,
            hold_results,
            cluster: cluster.map(Arc::new),
            hub,
        }
    }

    fn publish(&self, events: Vec<TaskEvent>) {
        if self.cluster.is_none() {
            self.hub.publish(events);
        }
    }

    /// The lanes in use: alone, one writer is all SQLite has.
    fn lanes(&self) -> std::ops::Range<usize> {
        if self.cluster.is_some() {
            CHANGES..ADMISSIONS + 1
        } else {
            CHANGES..CHANGES + 1
        }
    }

    /// Queues a write and starts a commit unless one is in flight.
    fn push(&mut self, write: Write, ctx: &mut Context<Self>) {
        let lane = match write {
            Write::Insert(..) if self.contended => ADMISSIONS,
            _ => CHANGES,
        };
        self.push_to(lane, write, ctx);
    }

    fn push_to(&mut self, lane: usize, write: Write, ctx: &mut Context<Self>) {
        self.lanes[lane].pending.push(write);
        self.flush(lane, ctx);
    }

    fn flush(&mut self, lane: usize, ctx: &mut Context<Self>) {
        let Lane {
            pending,
            committing,
        } = &mut self.lanes[lane];
        if *committing || pending.is_empty() {
            return;
        }
        *committing = true;
        // An ending that failed before commits alone, so that if it is the write the
        // database refuses, it does not take other writes down with it again.
        let take = if pending[0].is_retry() {
            1
        } else {
            let fresh = pending.iter().take(MAX_BATCH);
            fresh.take_while(|write| !write.is_retry()).count()
        };
        let (mut batch, mut endings) = (Vec::new(), Vec::new());
        for write in pending.drain(..take) {
            match write {
                Write::Finish(ending) => endings.push(ending),
                other => batch.push(other),
            }
        }
        let messages = endings.iter().map(|e| e.msg.clone()).collect();
        let started = Instant::now();
        // A panic inside the commit is contained: its transaction is dropped (rolled
        // back), the writers waiting on it hear that the store restarted, and the
        // endings, kept here, are tried again.
        let commit = AssertUnwindSafe(writes::commit(
            self.db.clone(),
            self.cluster.clone(),
            batch,
            messages,
            if lane == ADMISSIONS {
                Admission::Wait
            } else {
                Admission::IfFree
            },
        ))
        .catch_unwind();
        ctx.spawn(commit.into_actor(self).map(move |committed, store, ctx| {
            store.lanes[lane].committing = false;
            let error = match committed {
                Ok(Ok(committed)) => {
                    METRICS.db_commit(started.elapsed(), take);
                    for (ending, applied) in endings.into_iter().zip(committed.applied) {
                        if applied {
                            count_ending(&ending.msg);
                        }
                        let _ = ending.reply.send(Ok(applied));
                    }
                    store.publish(committed.events);
                    if let Some(contended) = committed.contended {
                        store.contended = contended;
                    }
                    for write in committed.deferred {
                        store.push_to(ADMISSIONS, write, ctx);
                    }
                    return store.flush(lane, ctx);
                }
                Ok(Err(error)) => error.to_string(),
                Err(_) => {
                    tracing::error!(writes = take, "the task store panicked during a group commit; its writes are refused and its endings retried");
                    "the task store failed during the commit".to_string()
                }
            };
            for mut ending in endings {
                ending.failures += 1;
                ending.last_error = Some(error.clone());
                store.retry_later(ending, ctx);
            }
            store.flush(lane, ctx);
        }));
    }

    /// Tries a task's ending again after a failed commit, with backoff and for as long
    /// as it takes: its worker has moved on, and a task left RUNNING would be stuck
    /// until the next start.
    fn retry_later(&mut self, mut ending: Ending, ctx: &mut Context<Self>) {
        let error = ending.last_error.take().unwrap_or_default();
        let task_id = ending.msg.task_id.clone();
        let held = ending
            .first_failure
            .get_or_insert_with(Instant::now)
            .elapsed();
        if held >= self.hold_results && matches!(ending.msg.outcome, TaskOutcome::Done { .. }) {
            tracing::error!(%task_id, %error, "cannot store the image; the task fails instead");
            ending.msg = Arc::new(FinishTask {
                task_id: ending.msg.task_id.clone(),
                user_id: ending.msg.user_id,
                expect: ending.msg.expect,
                outcome: TaskOutcome::Failed {
                    error: format!("the result could not be stored: {error}"),
                },
                created_at: ending.msg.created_at,
                ran: ending.msg.ran,
            });
        }
        let delay = ENDING_RETRY_BASE
            .saturating_mul(1 << (ending.failures - 1).min(16))
            .min(ENDING_RETRY_MAX);
        tracing::warn!(
            %task_id,
            failures = ending.failures,
            retry_in_ms = delay.as_millis() as u64,
            "task ending not stored; will retry"
        );
        ctx.run_later(delay, move |store, ctx| {
            store.push(Write::Finish(ending), ctx)
        });
    }
}

/// Sends a write and waits for its reply, the store's own silence (a full mailbox, a
/// restart) being one more `StoreError`.
pub async fn write<M, T>(store: &Addr<TaskStore>, msg: M) -> Result<T, StoreError>
where
    M: Message<Result = Result<T, StoreError>> + Send + 'static,
    T: Send + 'static,
    TaskStore: Handler<M>,
{
    store.send(msg).await?
}

/// The reply future of a queued write.
fn committed<T: Send + 'static>(
    rx: oneshot::Receiver<Result<T, StoreError>>,
) -> ResponseFuture<Result<T, StoreError>> {
    Box::pin(async move { rx.await.unwrap_or(Err(StoreError::Restarted)) })
}

impl Actor for TaskStore {
    type Context = Context<Self>;
}

impl Supervised for TaskStore {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // Dropping the senders tells their writers the write did not happen.
        self.lanes = Default::default();
    }
}

/// Queues the row for the next group commit.
impl Handler<InsertTask> for TaskStore {
    type Result = ResponseFuture<Result<Inserted, StoreError>>;

    fn handle(&mut self, msg: InsertTask, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.push(Write::Insert(Box::new(rows::new_task(msg.0)), tx), ctx);
        committed(rx)
    }
}

/// Queues a conditional QUEUED → RUNNING for the next group commit.
impl Handler<MarkRunning> for TaskStore {
    type Result = ResponseFuture<Result<bool, StoreError>>;

    fn handle(&mut self, msg: MarkRunning, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.push(Write::MarkRunning(msg, tx), ctx);
        committed(rx)
    }
}

/// Queues a conditional end (or back to QUEUED) for the next group commit.
impl Handler<FinishTask> for TaskStore {
    type Result = ResponseFuture<Result<bool, StoreError>>;

    fn handle(&mut self, msg: FinishTask, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        let ending = Ending {
            msg: Arc::new(msg),
            reply: tx,
            failures: 0,
            first_failure: None,
            last_error: None,
        };
        self.push(Write::Finish(ending), ctx);
        committed(rx)
    }
}

/// The metrics of an ending that applied: the attempt's outcome, and the task's end.
fn count_ending(msg: &FinishTask) {
    let status = match msg.outcome {
        TaskOutcome::Done { .. } => TaskStatus::Done,
        TaskOutcome::Failed { .. } => TaskStatus::Failed,
        TaskOutcome::Retry { .. } => TaskStatus::Queued,
    };
    if matches!(msg.expect, Expect::Running { .. }) {
        METRICS.attempt_ended(match status {
            TaskStatus::Done => AttemptOutcome::Done,
            TaskStatus::Failed => AttemptOutcome::Failed,
            _ => AttemptOutcome::Retried,
        });
    }
    if status.is_terminal() {
        let total = (Utc::now() - msg.created_at).to_std().unwrap_or_default();
        METRICS.task_ended(status, Some(total), msg.ran);
    }
}

/// Answers after the commits that follow every write queued so far, in every lane.
impl Handler<Flush> for TaskStore {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) -> Self::Result {
        let flushed: Vec<_> = self
            .lanes()
            .map(|lane| {
                let (tx, rx) = oneshot::channel();
                self.push_to(lane, Write::Flush(tx), ctx);
                committed(rx)
            })
            .collect();
        Box::pin(async move {
            for lane in flushed {
                lane.await?;
            }
            Ok(())
        })
    }
}

/// Answering is being ready.
impl Handler<Ping> for TaskStore {
    type Result = bool;

    fn handle(&mut self, _: Ping, _: &mut Context<Self>) -> bool {
        true
    }
}

/// RUNNING tasks of a dead process: FAILED when out of attempts, else QUEUED.
impl Handler<RecoverOrphans> for TaskStore {
    type Result = ResponseActFuture<Self, Result<(u64, u64), StoreError>>;

    fn handle(&mut self, msg: RecoverOrphans, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        let recover = async move {
            let now = Utc::now();
            let txn = db.begin().await?;
            let error = format!(
                "the gateway stopped during the last of {} attempts",
                msg.max_attempts
            );
            let update = Task::update_many()
                .set(task::ActiveModel {
                    status: Set(TaskStatus::Failed),
                    error: Set(Some(error.clone())),
                    updated_at: Set(now),
                    ..Default::default()
                })
                .filter(task::Column::Status.eq(TaskStatus::Running))
                .filter(task::Column::Attempts.gte(msg.max_attempts));
            let failed: Vec<NewEvent> = changed(&txn, update)
                .await?
                .into_iter()
                .map(|t| {
                    NewEvent::new(t.user_id, t.task_id, ChangeKind::Failed, TaskStatus::Failed)
                        .attempt(t.attempts)
                        .error(&error)
                })
                .collect();
            let failed_count = failed.len() as u64;
            let mut logged = events::append(&txn, failed).await?;
            let requeued = requeue_running(&txn, None, None).await?;
            let requeued_count = requeued.len() as u64;
            logged.extend(requeued);
            txn.commit().await?;
            Ok::<_, StoreError>(((requeued_count, failed_count), logged))
        };
        Box::pin(recover.into_actor(self).map(|recovered, store, _| {
            let (counts, logged) = recovered?;
            for _ in 0..counts.1 {
                METRICS.task_ended(TaskStatus::Failed, None, None);
            }
            store.publish(logged);
            Ok(counts)
        }))
    }
}

/// RUNNING → QUEUED for the given tasks.
impl Handler<RequeueRunning> for TaskStore {
    type Result = ResponseActFuture<Self, Result<u64, StoreError>>;

    fn handle(&mut self, msg: RequeueRunning, _: &mut Context<Self>) -> Self::Result {
        let (db, cluster) = (self.db.clone(), self.cluster.clone());
        let requeue = async move {
            let txn = db.begin().await?;
            let logged = requeue_running(&txn, cluster.as_deref(), Some(msg.0)).await?;
            txn.commit().await?;
            Ok::<_, StoreError>(logged)
        };
        Box::pin(requeue.into_actor(self).map(|requeued, store, _| {
            let logged = requeued?;
            let count = logged.len() as u64;
            store.publish(logged);
            Ok(count)
        }))
    }
}

/// The owner's cancel: conditional QUEUED/RUNNING → CANCELLED, then what the task is now.
impl Handler<CancelTask> for TaskStore {
    type Result = ResponseActFuture<Self, Result<CancelOutcome, StoreError>>;

    fn handle(&mut self, msg: CancelTask, _: &mut Context<Self>) -> Self::Result {
        let (db, clustered) = (self.db.clone(), self.cluster.is_some());
        let cancel = async move {
            let txn = db.begin().await?;
            let which = Condition::all()
                .add(task::Column::TaskId.eq(msg.task_id.as_str()))
                .add(task::Column::UserId.eq(msg.user_id.0));
            let (cancelled, logged) = admin::cancel_where(&txn, clustered, which).await?;
            let changed = !cancelled.is_empty();
            txn.commit().await?;
            let found = crate::store::tasks::get(&db, msg.user_id, &msg.task_id).await?;
            let outcome = match found {
                None => CancelOutcome::NotFound,
                Some(task) if task.status == TaskStatus::Cancelled => {
                    CancelOutcome::Cancelled { task, changed }
                }
                Some(task) => CancelOutcome::Finished(task),
            };
            Ok::<_, StoreError>((outcome, logged))
        };
        Box::pin(cancel.into_actor(self).map(|cancelled, store, _| {
            let (outcome, logged) = cancelled?;
            if let CancelOutcome::Cancelled {
                task,
                changed: true,
            } = &outcome
            {
                let total = (Utc::now() - task.created_at).to_std().unwrap_or_default();
                METRICS.task_ended(TaskStatus::Cancelled, Some(total), None);
            }
            store.publish(logged);
            Ok(outcome)
        }))
    }
}
