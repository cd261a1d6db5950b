//! TaskStore: the only writer of tasks and images.
//!
//! Owns the database connection and the group-commit buffer. Concurrent writes (new
//! tasks, QUEUED → RUNNING, and ends) are batched into one transaction: each sender's
//! reply waits for the commit that holds its write, so a 202 always means "committed"
//! and one fsync serves a whole batch. Reads run concurrently on the connection pool and
//! never wait for the buffer. Every status change is conditional on the status (and
//! attempt) the caller expects, so a late or repeated update cannot overwrite a task
//! that already ended.

mod writes;

use actix::prelude::*;
use chrono::Utc;
use entity::prelude::{Image, Task};
use entity::{image, task};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
    TransactionTrait,
};
use tokio::sync::oneshot;

use super::messages::*;
use writes::{requeue_running, Write};

/// Writes per group commit; keeps one insert statement well under SQLite's variable limit.
const MAX_BATCH: usize = 512;

pub struct TaskStore {
    db: DatabaseConnection,
    /// Writes waiting for the next commit, each with the channel its sender awaits.
    pending: Vec<Write>,
    /// A commit is in flight; writes arriving now ride on the next one.
    committing: bool,
}

impl TaskStore {
    pub fn new(db: DatabaseConnection) -> TaskStore {
        TaskStore {
            db,
            pending: Vec::new(),
            committing: false,
        }
    }

    /// Queues a write and starts a commit unless one is in flight.
    fn push(&mut self, write: Write, ctx: &mut Context<Self>) {
        self.pending.push(write);
        self.flush(ctx);
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.committing || self.pending.is_empty() {
            return;
        }
        self.committing = true;
        let take = self.pending.len().min(MAX_BATCH);
        let batch: Vec<Write> = self.pending.drain(..take).collect();
        let commit = writes::commit(self.db.clone(), batch);
        ctx.spawn(commit.into_actor(self).map(|_, store, ctx| {
            store.committing = false;
            store.flush(ctx);
        }));
    }
}

/// The reply future of a queued write.
fn committed<T: Send + 'static>(
    rx: oneshot::Receiver<Result<T, DbErr>>,
) -> ResponseFuture<Result<T, DbErr>> {
    Box::pin(async move {
        rx.await
            .unwrap_or_else(|_| Err(DbErr::Custom("task store restarted before commit".into())))
    })
}

impl Actor for TaskStore {
    type Context = Context<Self>;
}

impl Supervised for TaskStore {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // Dropping the senders tells their writers the write did not happen.
        self.pending.clear();
        self.committing = false;
    }
}

/// Queues the row for the next group commit.
impl Handler<InsertTask> for TaskStore {
    type Result = ResponseFuture<Result<Inserted, DbErr>>;

    fn handle(&mut self, msg: InsertTask, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.push(Write::Insert(Box::new(msg.0), tx), ctx);
        committed(rx)
    }
}

/// Queues a conditional QUEUED → RUNNING for the next group commit.
impl Handler<MarkRunning> for TaskStore {
    type Result = ResponseFuture<Result<bool, DbErr>>;

    fn handle(&mut self, msg: MarkRunning, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.push(Write::MarkRunning(msg, tx), ctx);
        committed(rx)
    }
}

/// Queues a conditional end (or back to QUEUED) for the next group commit.
impl Handler<FinishTask> for TaskStore {
    type Result = ResponseFuture<Result<bool, DbErr>>;

    fn handle(&mut self, msg: FinishTask, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.push(Write::Finish(msg, tx), ctx);
        committed(rx)
    }
}

/// RUNNING tasks of a dead process: FAILED when out of attempts, else QUEUED.
impl Handler<RecoverOrphans> for TaskStore {
    type Result = ResponseFuture<Result<(u64, u64), DbErr>>;

    fn handle(&mut self, msg: RecoverOrphans, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        Box::pin(async move {
            let now = Utc::now();
            let txn = db.begin().await?;
            let failed = Task::update_many()
                .set(task::ActiveModel {
                    status: Set(task::Status::Failed),
                    error: Set(Some(format!(
                        "the gateway stopped during the last of {} attempts",
                        msg.max_attempts
                    ))),
                    updated_at: Set(now),
                    ..Default::default()
                })
                .filter(task::Column::Status.eq(task::Status::Running))
                .filter(task::Column::Attempts.gte(msg.max_attempts))
                .exec(&txn)
                .await?
                .rows_affected;
            let requeued = requeue_running(&txn, None).await?;
            txn.commit().await?;
            Ok((requeued, failed))
        })
    }
}

/// RUNNING → QUEUED for the given tasks.
impl Handler<RequeueRunning> for TaskStore {
    type Result = ResponseFuture<Result<u64, DbErr>>;

    fn handle(&mut self, msg: RequeueRunning, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        Box::pin(async move { requeue_running(&db, Some(msg.0)).await })
    }
}

/// The owner's cancel: conditional QUEUED/RUNNING → CANCELLED, then what the task is now.
impl Handler<CancelTask> for TaskStore {
    type Result = ResponseFuture<Result<CancelOutcome, DbErr>>;

    fn handle(&mut self, msg: CancelTask, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        Box::pin(async move {
            let changed = Task::update_many()
                .set(task::ActiveModel {
                    status: Set(task::Status::Cancelled),
                    updated_at: Set(Utc::now()),
                    ..Default::default()
                })
                .filter(task::Column::TaskId.eq(msg.task_id.as_str()))
                .filter(task::Column::UserId.eq(msg.user_id))
                .filter(task::Column::Status.is_in([task::Status::Queued, task::Status::Running]))
                .exec(&db)
                .await?
                .rows_affected
                == 1;
            let found = Task::find()
                .filter(task::Column::TaskId.eq(msg.task_id))
                .filter(task::Column::UserId.eq(msg.user_id))
                .one(&db)
                .await?;
            Ok(match found {
                None => CancelOutcome::NotFound,
                Some(task) if task.status == task::Status::Cancelled => {
                    CancelOutcome::Cancelled { task, changed }
                }
                Some(task) => CancelOutcome::Finished(task),
            })
        })
    }
}

/// QUEUED tasks, oldest first.
impl Handler<LoadQueued> for TaskStore {
    type Result = ResponseFuture<Result<Vec<task::Model>, DbErr>>;

    fn handle(&mut self, _: LoadQueued, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        Box::pin(async move {
            Task::find()
                .filter(task::Column::Status.eq(task::Status::Queued))
                .order_by_asc(task::Column::Id)
                .all(&db)
                .await
        })
    }
}

/// The user's task under an idempotency key.
impl Handler<FindByIdempotencyKey> for TaskStore {
    type Result = ResponseFuture<Result<Option<task::Model>, DbErr>>;

    fn handle(&mut self, msg: FindByIdempotencyKey, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        Box::pin(async move {
            Task::find()
                .filter(task::Column::UserId.eq(msg.user_id))
                .filter(task::Column::IdempotencyKey.eq(msg.key))
                .one(&db)
                .await
        })
    }
}

/// A task, only if it belongs to the user.
impl Handler<GetTask> for TaskStore {
    type Result = ResponseFuture<Result<Option<task::Model>, DbErr>>;

    fn handle(&mut self, msg: GetTask, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        Box::pin(async move {
            Task::find()
                .filter(task::Column::TaskId.eq(msg.task_id))
                .filter(task::Column::UserId.eq(msg.user_id))
                .one(&db)
                .await
        })
    }
}

/// The user's newest tasks first.
impl Handler<ListTasks> for TaskStore {
    type Result = ResponseFuture<Result<Vec<task::Model>, DbErr>>;

    fn handle(&mut self, msg: ListTasks, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        Box::pin(async move {
            Task::find()
                .filter(task::Column::UserId.eq(msg.user_id))
                .order_by_desc(task::Column::Id)
                .limit(msg.limit)
                .all(&db)
                .await
        })
    }
}

/// An image, only if it belongs to the user.
impl Handler<GetImage> for TaskStore {
    type Result = ResponseFuture<Result<Option<image::Model>, DbErr>>;

    fn handle(&mut self, msg: GetImage, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        Box::pin(async move {
            Image::find_by_id(msg.image_id)
                .filter(image::Column::UserId.eq(msg.user_id))
                .one(&db)
                .await
        })
    }
}
