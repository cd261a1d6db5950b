//! The statements of a group commit: every write a batch holds, in one transaction.

use std::time::Instant;

use chrono::Utc;
use std::collections::HashSet;

use entity::prelude::{Image, Task, User};
use entity::{image, task, user};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait,
    QueryFilter, QuerySelect, Set, SqlErr, TransactionTrait,
};
use tokio::sync::oneshot;

use crate::actors::messages::{Expect, FinishTask, Inserted, MarkRunning, TaskOutcome};
use crate::domain::{TaskId, TaskStatus};
use crate::store::StoreError;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A write waiting for a group commit, with the channel its sender awaits.
pub enum Write {
    Insert(Box<task::ActiveModel>, Reply<Inserted>),
    MarkRunning(MarkRunning, Reply<bool>),
    Finish(Ending),
    /// Holds no write; answered when the commit it rides on ends.
    Flush(Reply<()>),
}

impl Write {
    /// An ending that failed to commit before; it is committed alone.
    pub fn is_retry(&self) -> bool {
        matches!(self, Write::Finish(ending) if ending.failures > 0)
    }
}

/// A task's ending. Unlike the other writes it is never answered with a database
/// error: its worker has already moved on, so the store retries it until it commits.
pub struct Ending {
    pub msg: FinishTask,
    pub reply: Reply<bool>,
    /// Commits this ending has failed so far, and when the first one did.
    pub failures: u32,
    pub first_failure: Option<Instant>,
    /// The error of the last failed commit.
    pub last_error: Option<String>,
}

/// A conditional status change, answered with whether it applied.
enum Update<'a> {
    MarkRunning(&'a MarkRunning),
    Finish(&'a FinishTask),
}

/// Applies the batch in one transaction, then answers every writer: each its own
/// outcome once committed, or the error if anything failed. Endings of a failed commit
/// are not answered but handed back, to be tried again.
pub async fn commit(db: DatabaseConnection, batch: Vec<Write>) -> Vec<Ending> {
    let mut inserts = Vec::new();
    let mut insert_replies = Vec::new();
    let mut marks = Vec::new();
    let mut endings = Vec::new();
    let mut flushes = Vec::new();
    for write in batch {
        match write {
            Write::Insert(row, reply) => {
                inserts.push(*row);
                insert_replies.push(reply);
            }
            Write::MarkRunning(msg, reply) => marks.push((msg, reply)),
            Write::Finish(ending) => endings.push(ending),
            Write::Flush(reply) => flushes.push(reply),
        }
    }
    let result = async {
        // Users are looked up before the transaction, whose first statement must be a
        // write (on SQLite a transaction that read first may not get to write). A user
        // removed in between fails the batch on the foreign key: looked up again, and the
        // batch is tried again without their rows.
        let mut existing = existing_users(&db, &inserts).await?;
        let mut tries = 1;
        loop {
            match apply(&db, &inserts, &existing, &marks, &endings).await {
                Err(e) if tries < 3 && is_foreign_key(&e) => {
                    tries += 1;
                    existing = existing_users(&db, &inserts).await?;
                }
                other => break other,
            }
        }
    }
    .await;
    match result {
        Ok((inserted, applied)) => {
            for (reply, outcome) in insert_replies.into_iter().zip(inserted) {
                let _ = reply.send(Ok(outcome));
            }
            let mut applied = applied.into_iter();
            for ((_, reply), applied) in marks.into_iter().zip(&mut applied) {
                let _ = reply.send(Ok(applied));
            }
            for (ending, applied) in endings.into_iter().zip(applied) {
                let _ = ending.reply.send(Ok(applied));
            }
            for reply in flushes {
                let _ = reply.send(Ok(()));
            }
            Vec::new()
        }
        Err(e) => {
            let size = insert_replies.len() + marks.len() + endings.len();
            tracing::error!(error = %e, batch = size, "group commit failed");
            let error = StoreError::from(e);
            for reply in insert_replies {
                let _ = reply.send(Err(error.clone()));
            }
            for (_, reply) in marks {
                let _ = reply.send(Err(error.clone()));
            }
            for reply in flushes {
                let _ = reply.send(Err(error.clone()));
            }
            for ending in &mut endings {
                ending.failures += 1;
                ending.last_error = Some(error.to_string());
            }
            endings
        }
    }
}

/// One try of the batch's transaction.
async fn apply(
    db: &DatabaseConnection,
    inserts: &[task::ActiveModel],
    existing: &HashSet<i64>,
    marks: &[(MarkRunning, Reply<bool>)],
    endings: &[Ending],
) -> Result<(Vec<Inserted>, Vec<bool>), DbErr> {
    let updates = marks
        .iter()
        .map(|(msg, _)| Update::MarkRunning(msg))
        .chain(endings.iter().map(|ending| Update::Finish(&ending.msg)));
    let txn = db.begin().await?;
    let inserted = insert_rows(&txn, inserts, existing).await?;
    let mut applied = Vec::with_capacity(marks.len() + endings.len());
    for update in updates {
        applied.push(match update {
            Update::MarkRunning(msg) => mark_running(&txn, msg).await?,
            Update::Finish(msg) => finish(&txn, msg).await?,
        });
    }
    txn.commit().await?;
    Ok((inserted, applied))
}

fn is_foreign_key(e: &DbErr) -> bool {
    matches!(e.sql_err(), Some(SqlErr::ForeignKeyConstraintViolation(_)))
}

/// Which of the rows' users exist.
async fn existing_users(
    db: &DatabaseConnection,
    rows: &[task::ActiveModel],
) -> Result<HashSet<i64>, DbErr> {
    if rows.is_empty() {
        return Ok(HashSet::new());
    }
    let mut user_ids: Vec<i64> = rows
        .iter()
        .filter_map(|r| r.user_id.clone().take())
        .collect();
    user_ids.sort_unstable();
    user_ids.dedup();
    Ok(User::find()
        .select_only()
        .column(user::Column::Id)
        .filter(user::Column::Id.is_in(user_ids))
        .into_tuple::<i64>()
        .all(db)
        .await?
        .into_iter()
        .collect())
}

/// A row's user, idempotency key and task id, when it came with a key.
type KeyedRow = (i64, String, String);

/// Inserts the rows. A row whose user no longer exists is not inserted (answered
/// `UserGone`: its foreign key would fail the whole batch). A row whose idempotency key
/// the user already used is skipped (`ON CONFLICT DO NOTHING`, safe against racing
/// duplicates) and answered with the task that holds the key.
async fn insert_rows(
    txn: &DatabaseTransaction,
    rows: &[task::ActiveModel],
    existing: &HashSet<i64>,
) -> Result<Vec<Inserted>, DbErr> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let (rows, gone): (Vec<_>, Vec<_>) = rows.iter().cloned().enumerate().partition(|(_, row)| {
        row.user_id
            .clone()
            .take()
            .is_some_and(|id| existing.contains(&id))
    });
    let keyed: Vec<(usize, Option<KeyedRow>)> = rows
        .iter()
        .map(|(i, row)| {
            let key = (|| {
                let key = row.idempotency_key.clone().take().flatten()?;
                Some((
                    row.user_id.clone().take()?,
                    key,
                    row.task_id.clone().take()?,
                ))
            })();
            (*i, key)
        })
        .collect();
    let mut outcomes: Vec<Option<Inserted>> = vec![None; keyed.len() + gone.len()];
    for (i, _) in &gone {
        outcomes[*i] = Some(Inserted::UserGone);
    }
    if !rows.is_empty() {
        let conflict = OnConflict::columns([task::Column::UserId, task::Column::IdempotencyKey])
            .do_nothing()
            .to_owned();
        Task::insert_many(rows.into_iter().map(|(_, row)| row))
            .on_conflict(conflict)
            .do_nothing()
            .exec(txn)
            .await?;
    }
    for (i, key) in keyed {
        let Some((user_id, key, task_id)) = key else {
            outcomes[i] = Some(Inserted::New);
            continue;
        };
        let holder = Task::find()
            .filter(task::Column::UserId.eq(user_id))
            .filter(task::Column::IdempotencyKey.eq(key))
            .one(txn)
            .await?
            .ok_or(DbErr::RecordNotInserted)?;
        outcomes[i] = Some(if holder.task_id == task_id {
            Inserted::New
        } else {
            Inserted::Existing {
                task_id: TaskId::from(holder.task_id),
                request_hash: holder.request_hash,
            }
        });
    }
    Ok(outcomes
        .into_iter()
        .map(|o| o.expect("every row answered"))
        .collect())
}

/// QUEUED → RUNNING as attempt `msg.attempt`, if still QUEUED after `attempt - 1`.
async fn mark_running(txn: &DatabaseTransaction, msg: &MarkRunning) -> Result<bool, DbErr> {
    let result = Task::update_many()
        .set(task::ActiveModel {
            status: Set(TaskStatus::Running),
            instance: Set(Some(msg.instance.clone())),
            attempts: Set(msg.attempt),
            updated_at: Set(Utc::now()),
            ..Default::default()
        })
        .filter(task::Column::TaskId.eq(msg.task_id.as_str()))
        .filter(task::Column::Status.eq(TaskStatus::Queued))
        .filter(task::Column::Attempts.eq(msg.attempt - 1))
        .exec(txn)
        .await?;
    Ok(result.rows_affected == 1)
}

/// The outcome, if the task is still as expected. A DONE's image is inserted first (its
/// id goes into the same conditional update) and removed again if the update did not
/// apply, so a losing race leaves nothing behind.
async fn finish(txn: &DatabaseTransaction, msg: &FinishTask) -> Result<bool, DbErr> {
    let now = Utc::now();
    let mut update = task::ActiveModel {
        updated_at: Set(now),
        ..Default::default()
    };
    let mut image_id = None;
    match &msg.outcome {
        TaskOutcome::Done {
            content_type,
            bytes,
        } => {
            let row = image::ActiveModel {
                user_id: Set(msg.user_id.0),
                task_id: Set(msg.task_id.to_string()),
                content_type: Set(content_type.clone()),
                data: Set(bytes.clone()),
                created_at: Set(now),
                ..Default::default()
            };
            // Only the id comes back, not the whole row with its bytes.
            image_id = Some(Image::insert(row).exec(txn).await?.last_insert_id);
            update.status = Set(TaskStatus::Done);
            update.image_id = Set(image_id);
            update.error = Set(None);
        }
        TaskOutcome::Failed { error } => {
            update.status = Set(TaskStatus::Failed);
            update.error = Set(Some(error.clone()));
        }
        TaskOutcome::Retry { error } => {
            update.status = Set(TaskStatus::Queued);
            update.error = Set(Some(error.clone()));
        }
    }
    let query = Task::update_many()
        .set(update)
        .filter(task::Column::TaskId.eq(msg.task_id.as_str()));
    let query = match msg.expect {
        Expect::Queued => query.filter(task::Column::Status.eq(TaskStatus::Queued)),
        Expect::Running { attempt } => query
            .filter(task::Column::Status.eq(TaskStatus::Running))
            .filter(task::Column::Attempts.eq(attempt)),
    };
    let applied = query.exec(txn).await?.rows_affected == 1;
    if !applied {
        // Workers hand over a task's ending without waiting, so it is said here.
        tracing::info!(
            task_id = %msg.task_id,
            "task had already moved on (cancelled or ended); outcome dropped"
        );
        if let Some(id) = image_id {
            Image::delete_by_id(id).exec(txn).await?;
        }
    }
    Ok(applied)
}

/// RUNNING → QUEUED for `only` these tasks, or for all.
pub async fn requeue_running(
    db: &impl ConnectionTrait,
    only: Option<Vec<TaskId>>,
) -> Result<u64, DbErr> {
    let mut query = Task::update_many()
        .set(task::ActiveModel {
            status: Set(TaskStatus::Queued),
            updated_at: Set(Utc::now()),
            ..Default::default()
        })
        .filter(task::Column::Status.eq(TaskStatus::Running));
    if let Some(ids) = only {
        query = query.filter(task::Column::TaskId.is_in(ids.into_iter().map(TaskId::into_string)));
    }
    Ok(query.exec(db).await?.rows_affected)
}
