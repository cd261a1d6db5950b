//! TaskStore: the only writer of tasks and images.
//!
//! Owns the database connection and the group-commit buffer. Concurrent inserts are
//! batched into one transaction: each submitter's reply waits for the commit that
//! holds its row, so a 202 always means "committed". Reads run concurrently on the
//! connection pool and never wait for the buffer. Every status change is conditional on
//! the status the caller expects, so a late or repeated update cannot overwrite a task
//! that already ended.

use actix::prelude::*;
use chrono::Utc;
use entity::prelude::{Image, Task};
use entity::{image, task};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, Set, TransactionTrait,
};
use tokio::sync::oneshot;

use super::messages::*;

/// Rows per group commit; keeps one statement well under SQLite's variable limit.
const MAX_BATCH: usize = 512;

type Committed = oneshot::Sender<Result<Inserted, DbErr>>;

pub struct TaskStore {
    db: DatabaseConnection,
    /// Inserts waiting for the next commit, each with the channel its submitter awaits.
    pending: Vec<(task::ActiveModel, Committed)>,
    /// A commit is in flight; inserts arriving now ride on the next one.
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

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.committing || self.pending.is_empty() {
            return;
        }
        self.committing = true;
        let take = self.pending.len().min(MAX_BATCH);
        let (rows, waiters): (Vec<_>, Vec<_>) = self.pending.drain(..take).unzip();
        let db = self.db.clone();
        let commit = async move {
            match insert_batch(&db, rows).await {
                Ok(outcomes) => {
                    for (waiter, outcome) in waiters.into_iter().zip(outcomes) {
                        let _ = waiter.send(Ok(outcome));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, batch = waiters.len(), "group commit failed");
                    for waiter in waiters {
                        let _ = waiter.send(Err(DbErr::Custom(e.to_string())));
                    }
                }
            }
        };
        ctx.spawn(commit.into_actor(self).map(|_, store, ctx| {
            store.committing = false;
            store.flush(ctx);
        }));
    }
}

/// Inserts the rows in one transaction. A row whose idempotency key the user already
/// used is skipped (`ON CONFLICT DO NOTHING`, safe against racing duplicates) and
/// answered with the task that holds the key.
async fn insert_batch(
    db: &DatabaseConnection,
    rows: Vec<task::ActiveModel>,
) -> Result<Vec<Inserted>, DbErr> {
    let keyed: Vec<Option<(i64, String, String)>> = rows
        .iter()
        .map(|row| {
            let key = row.idempotency_key.clone().take().flatten()?;
            Some((
                row.user_id.clone().take()?,
                key,
                row.task_id.clone().take()?,
            ))
        })
        .collect();
    let txn = db.begin().await?;
    let conflict = OnConflict::columns([task::Column::UserId, task::Column::IdempotencyKey])
        .do_nothing()
        .to_owned();
    Task::insert_many(rows)
        .on_conflict(conflict)
        .do_nothing()
        .exec(&txn)
        .await?;
    let mut outcomes = Vec::with_capacity(keyed.len());
    for key in keyed {
        let Some((user_id, key, task_id)) = key else {
            outcomes.push(Inserted::New);
            continue;
        };
        let holder = Task::find()
            .filter(task::Column::UserId.eq(user_id))
            .filter(task::Column::IdempotencyKey.eq(key))
            .one(&txn)
            .await?
            .ok_or(DbErr::RecordNotInserted)?;
        outcomes.push(if holder.task_id == task_id {
            Inserted::New
        } else {
            Inserted::Existing {
                task_id: holder.task_id,
                request_hash: holder.request_hash,
            }
        });
    }
    txn.commit().await?;
    Ok(outcomes)
}

impl Actor for TaskStore {
    type Context = Context<Self>;
}

impl Supervised for TaskStore {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // Dropping the senders tells their submitters the insert did not happen.
        self.pending.clear();
        self.committing = false;
    }
}

/// Queues the row for the next group commit.
impl Handler<InsertTask> for TaskStore {
    type Result = ResponseFuture<Result<Inserted, DbErr>>;

    fn handle(&mut self, msg: InsertTask, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.pending.push((msg.0, tx));
        self.flush(ctx);
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(DbErr::Custom("task store restarted before commit".into())))
        })
    }
}

/// Conditional QUEUED → RUNNING, counting the attempt.
impl Handler<MarkRunning> for TaskStore {
    type Result = ResponseFuture<Result<bool, DbErr>>;

    fn handle(&mut self, msg: MarkRunning, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        Box::pin(async move {
            let result = Task::update_many()
                .set(task::ActiveModel {
                    status: Set(task::Status::Running),
                    instance: Set(Some(msg.instance)),
                    attempts: Set(msg.attempt),
                    updated_at: Set(Utc::now()),
                    ..Default::default()
                })
                .filter(task::Column::TaskId.eq(msg.task_id))
                .filter(task::Column::Status.eq(task::Status::Queued))
                .filter(task::Column::Attempts.eq(msg.attempt - 1))
                .exec(&db)
                .await?;
            Ok(result.rows_affected == 1)
        })
    }
}

/// Conditional end (DONE with its image, FAILED with its error) or back to QUEUED.
impl Handler<FinishTask> for TaskStore {
    type Result = ResponseFuture<Result<bool, DbErr>>;

    fn handle(&mut self, msg: FinishTask, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        Box::pin(async move {
            let now = Utc::now();
            let txn = db.begin().await?;
            let mut update = task::ActiveModel {
                updated_at: Set(now),
                ..Default::default()
            };
            match msg.outcome {
                TaskOutcome::Done {
                    content_type,
                    bytes,
                } => {
                    let stored = image::ActiveModel {
                        user_id: Set(msg.user_id),
                        task_id: Set(msg.task_id.clone()),
                        content_type: Set(content_type),
                        data: Set(bytes),
                        created_at: Set(now),
                        ..Default::default()
                    }
                    .insert(&txn)
                    .await?;
                    update.status = Set(task::Status::Done);
                    update.image_id = Set(Some(stored.id));
                    update.error = Set(None);
                }
                TaskOutcome::Failed { error } => {
                    update.status = Set(task::Status::Failed);
                    update.error = Set(Some(error));
                }
                TaskOutcome::Retry { error } => {
                    update.status = Set(task::Status::Queued);
                    update.error = Set(Some(error));
                }
            }
            let query = Task::update_many()
                .set(update)
                .filter(task::Column::TaskId.eq(msg.task_id));
            let query = match msg.expect {
                Expect::Queued => query.filter(task::Column::Status.eq(task::Status::Queued)),
                Expect::Running { attempt } => query
                    .filter(task::Column::Status.eq(task::Status::Running))
                    .filter(task::Column::Attempts.eq(attempt)),
            };
            if query.exec(&txn).await?.rows_affected != 1 {
                txn.rollback().await?;
                return Ok(false);
            }
            txn.commit().await?;
            Ok(true)
        })
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

/// RUNNING → QUEUED for `only` these tasks, or for all.
async fn requeue_running(
    db: &impl ConnectionTrait,
    only: Option<Vec<String>>,
) -> Result<u64, DbErr> {
    let mut query = Task::update_many()
        .set(task::ActiveModel {
            status: Set(task::Status::Queued),
            updated_at: Set(Utc::now()),
            ..Default::default()
        })
        .filter(task::Column::Status.eq(task::Status::Running));
    if let Some(ids) = only {
        query = query.filter(task::Column::TaskId.is_in(ids));
    }
    Ok(query.exec(db).await?.rows_affected)
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
