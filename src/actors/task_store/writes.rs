//! The statements of a group commit: every write a batch holds, in one transaction.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use entity::prelude::{Image, Task, User};
use entity::{image, task, user};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait,
    QueryFilter, QuerySelect, Set, SqlErr, TransactionTrait,
};
use tokio::sync::oneshot;

use crate::actors::messages::{Expect, FinishTask, Inserted, MarkRunning, TaskOutcome};
use crate::cluster::Cluster;
use crate::domain::{ChangeKind, ImageId, TaskEvent, TaskId, TaskStatus, UserId};
use crate::store::cluster::{self as shared, Admitting};
use crate::store::events::{self, NewEvent};
use crate::store::{notify, StoreError};

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
/// The store keeps the ending itself while its commit runs (the commit reads `msg`
/// through the `Arc`), so a commit that fails, or panics, cannot lose it.
pub struct Ending {
    pub msg: Arc<FinishTask>,
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

/// What a commit did: whether each ending applied, the events it logged, the new tasks
/// it left for a commit that waits for admission, and whether its admission found the
/// lock another's (`None`: it admitted nothing).
pub struct Committed {
    pub applied: Vec<bool>,
    pub events: Vec<TaskEvent>,
    pub deferred: Vec<Write>,
    pub contended: Option<bool>,
}

/// How a commit with new tasks treats the admission lock of several gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Takes it if it is free, and otherwise commits the rest and hands the new tasks
    /// back: the status changes of tasks running here never wait for other gateways'
    /// admissions.
    IfFree,
    /// Waits for it.
    Wait,
}

/// Applies the batch and the endings in one transaction, then answers every writer of
/// the batch: each its own outcome once committed, or the error if anything failed.
/// The endings are the caller's to answer: this says whether each applied. New tasks
/// left out for the admission lock (`Admission::IfFree`) come back unanswered.
pub async fn commit(
    db: DatabaseConnection,
    cluster: Option<Arc<Cluster>>,
    batch: Vec<Write>,
    endings: Vec<Arc<FinishTask>>,
    admission: Admission,
) -> Result<Committed, StoreError> {
    let cluster = cluster.as_deref();
    let mut inserts = Vec::new();
    let mut insert_replies = Vec::new();
    let mut marks = Vec::new();
    let mut flushes = Vec::new();
    for write in batch {
        match write {
            Write::Insert(row, reply) => {
                inserts.push(*row);
                insert_replies.push(reply);
            }
            Write::MarkRunning(msg, reply) => marks.push((msg, reply)),
            Write::Finish(_) => unreachable!("endings are passed on their own"),
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
            match apply(
                &db, cluster, &inserts, &existing, &marks, &endings, admission,
            )
            .await
            {
                Err(StoreError::Constraint(e)) if tries < 3 && is_foreign_key(&e) => {
                    tries += 1;
                    existing = existing_users(&db, &inserts).await?;
                }
                other => break other,
            }
        }
    }
    .await;
    match result {
        Ok((inserted, contended, applied, events)) => {
            let mut deferred = Vec::new();
            match inserted {
                Some(inserted) => {
                    for (reply, outcome) in insert_replies.into_iter().zip(inserted) {
                        let _ = reply.send(Ok(outcome));
                    }
                }
                None => {
                    for (row, reply) in inserts.into_iter().zip(insert_replies) {
                        deferred.push(Write::Insert(Box::new(row), reply));
                    }
                }
            }
            let mut applied = applied.into_iter();
            for ((_, reply), applied) in marks.into_iter().zip(&mut applied) {
                let _ = reply.send(Ok(applied));
            }
            for reply in flushes {
                let _ = reply.send(Ok(()));
            }
            Ok(Committed {
                applied: applied.collect(),
                events,
                deferred,
                contended,
            })
        }
        Err(e) => {
            let size = insert_replies.len() + marks.len() + endings.len();
            tracing::error!(error = %e, batch = size, "group commit failed");
            let error = e;
            for reply in insert_replies {
                let _ = reply.send(Err(error.clone()));
            }
            for (_, reply) in marks {
                let _ = reply.send(Err(error.clone()));
            }
            for reply in flushes {
                let _ = reply.send(Err(error.clone()));
            }
            Err(error)
        }
    }
}

/// What one try of a batch's transaction did: each new task's outcome (`None`: left
/// out for the admission lock), whether the admission lock was another's, whether each
/// status change applied, the events logged.
type Applied = (
    Option<Vec<Inserted>>,
    Option<bool>,
    Vec<bool>,
    Vec<TaskEvent>,
);

/// One try of the batch's transaction: the writes, and the events of those that
/// applied, logged with them. The status changes come first, so that with several
/// gateways the admission lock is held for the new tasks alone.
async fn apply(
    db: &DatabaseConnection,
    cluster: Option<&Cluster>,
    inserts: &[task::ActiveModel],
    existing: &HashSet<i64>,
    marks: &[(MarkRunning, Reply<bool>)],
    endings: &[Arc<FinishTask>],
    admission: Admission,
) -> Result<Applied, StoreError> {
    let updates = marks
        .iter()
        .map(|(msg, _)| Update::MarkRunning(msg))
        .chain(endings.iter().map(|msg| Update::Finish(msg)));
    let txn = db.begin().await?;
    let mut changes = Vec::new();
    let mut applied = Vec::with_capacity(marks.len() + endings.len());
    for update in updates {
        let change = match update {
            Update::MarkRunning(msg) => mark_running(&txn, cluster, msg).await?,
            Update::Finish(msg) => finish(&txn, cluster, msg).await?,
        };
        applied.push(change.is_some());
        changes.extend(change);
    }
    let (inserted, contended) = insert_rows(&txn, cluster, inserts, existing, admission).await?;
    if let Some(inserted) = &inserted {
        changes.extend(
            inserts
                .iter()
                .zip(inserted)
                .filter(|(_, inserted)| **inserted == Inserted::New)
                .filter_map(|(row, _)| {
                    Some(NewEvent::new(
                        UserId(row.user_id.clone().take()?),
                        TaskId::from(row.task_id.clone().take()?),
                        ChangeKind::Queued,
                        TaskStatus::Queued,
                    ))
                }),
        );
    }
    let events = events::append(&txn, changes).await?;
    crate::faults::hit(crate::faults::Site::StoreCommit);
    txn.commit().await?;
    Ok((inserted, contended, applied, events))
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

/// Inserts the rows, answering each. A row whose user no longer exists is not inserted
/// (`UserGone`: its foreign key would fail the whole batch). With several gateways the
/// global limits are checked first, and a refused row is not inserted either
/// (`Refused`); `None`: the admission lock was taken and `IfFree` asked not to wait.
/// Also says whether the admission lock was another's when asked for.
async fn insert_rows(
    txn: &DatabaseTransaction,
    cluster: Option<&Cluster>,
    rows: &[task::ActiveModel],
    existing: &HashSet<i64>,
    admission: Admission,
) -> Result<(Option<Vec<Inserted>>, Option<bool>), StoreError> {
    if rows.is_empty() {
        return Ok((Some(Vec::new()), None));
    }
    let mut outcomes: Vec<Option<Inserted>> = vec![None; rows.len()];
    let mut live: Vec<(usize, task::ActiveModel)> = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let exists = row
            .user_id
            .clone()
            .take()
            .is_some_and(|id| existing.contains(&id));
        if exists {
            live.push((i, row.clone()));
        } else {
            outcomes[i] = Some(Inserted::UserGone);
        }
    }
    let (admitted, contended) = match cluster {
        Some(cluster) => match admit(txn, cluster, live, &mut outcomes, admission).await? {
            Some((admitted, contended)) => (admitted, contended),
            None => return Ok((None, Some(true))),
        },
        None => (live, None),
    };
    let any = !admitted.is_empty();
    let (places, rows): (Vec<usize>, Vec<task::ActiveModel>) = admitted.into_iter().unzip();
    for (i, inserted) in places.into_iter().zip(insert_admitted(txn, rows).await?) {
        outcomes[i] = Some(inserted);
    }
    if any && cluster.is_some() {
        notify(txn, "q").await?;
    }
    let outcomes = outcomes
        .into_iter()
        .map(|o| o.expect("every row answered"))
        .collect();
    Ok((Some(outcomes), contended))
}

/// Several gateways: the global limits, checked in the inserting transaction; each
/// admitted row gets its place in the fair order, each refused one its answer. `None`:
/// the lock is another's and `IfFree` asked not to wait. Also says whether the lock was
/// another's when asked for (`None`: nothing to admit).
async fn admit(
    txn: &DatabaseTransaction,
    cluster: &Cluster,
    rows: Vec<(usize, task::ActiveModel)>,
    outcomes: &mut [Option<Inserted>],
    admission: Admission,
) -> Result<Option<(Vec<(usize, task::ActiveModel)>, Option<bool>)>, StoreError> {
    if rows.is_empty() {
        return Ok(Some((rows, None)));
    }
    // Several gateways: the global limits are checked here, in the inserting
    // transaction, and each admitted row gets its place in the fair order.
    let admitting: Vec<Admitting> = rows
        .iter()
        .map(|(_, row)| Admitting {
            user_id: crate::domain::UserId(row.user_id.clone().unwrap()),
        })
        .collect();
    let limits = &cluster.admission;
    let Some((verdicts, contended)) = shared::admit(
        txn,
        &admitting,
        limits.capacity,
        limits.quota,
        limits.fair,
        admission == Admission::Wait,
    )
    .await?
    else {
        return Ok(None);
    };
    let mut admitted = Vec::with_capacity(rows.len());
    for ((i, mut row), verdict) in rows.into_iter().zip(verdicts) {
        match verdict {
            Ok(key) => {
                row.fair_key = Set(key);
                admitted.push((i, row));
            }
            Err(refusal) => outcomes[i] = Some(Inserted::Refused(refusal)),
        }
    }
    Ok(Some((admitted, Some(contended))))
}

/// Inserts rows already admitted.
async fn insert_admitted(
    txn: &DatabaseTransaction,
    rows: Vec<task::ActiveModel>,
) -> Result<Vec<Inserted>, DbErr> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
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
    let conflict = OnConflict::columns([task::Column::UserId, task::Column::IdempotencyKey])
        .do_nothing()
        .to_owned();
    Task::insert_many(rows)
        .on_conflict(conflict)
        .do_nothing()
        .exec(txn)
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
            .one(txn)
            .await?
            .ok_or(DbErr::RecordNotInserted)?;
        outcomes.push(if holder.task_id == task_id {
            Inserted::New
        } else {
            Inserted::Existing {
                task_id: TaskId::from(holder.task_id),
                request_hash: holder.request_hash,
            }
        });
    }
    Ok(outcomes)
}

/// QUEUED → RUNNING as attempt `msg.attempt`, if still QUEUED after `attempt - 1` (and,
/// with several gateways, still claimed by this one): its event if it applied.
async fn mark_running(
    txn: &DatabaseTransaction,
    cluster: Option<&Cluster>,
    msg: &MarkRunning,
) -> Result<Option<NewEvent>, DbErr> {
    let now = Utc::now();
    let mut update = task::ActiveModel {
        status: Set(TaskStatus::Running),
        instance: Set(Some(msg.instance.clone())),
        attempts: Set(msg.attempt),
        started_at: Set(Some(now)),
        updated_at: Set(now),
        ..Default::default()
    };
    if let Some(cluster) = cluster {
        update.lease_until = Set(Some(
            now + chrono::Duration::from_std(cluster.lease).unwrap_or_default(),
        ));
    }
    let query = Task::update_many()
        .set(update)
        .filter(task::Column::TaskId.eq(msg.task_id.as_str()))
        .filter(task::Column::Status.eq(TaskStatus::Queued))
        .filter(task::Column::Attempts.eq(msg.attempt - 1));
    let result = held(query, cluster).exec(txn).await?;
    Ok((result.rows_affected == 1).then(|| NewEvent {
        instance: Some(msg.instance_id),
        ..NewEvent::new(
            msg.user_id,
            msg.task_id.clone(),
            ChangeKind::Running,
            TaskStatus::Running,
        )
        .attempt(msg.attempt)
    }))
}

/// With several gateways, a change applies only to a task this gateway holds.
fn held(query: sea_orm::UpdateMany<Task>, cluster: Option<&Cluster>) -> sea_orm::UpdateMany<Task> {
    match cluster {
        Some(cluster) => query.filter(task::Column::Holder.eq(cluster.node.as_str())),
        None => query,
    }
}

/// The outcome, if the task is still as expected: its event if it applied. A DONE's
/// image is inserted first (its id goes into the same conditional update) and removed
/// again if the update did not apply, so a losing race leaves nothing behind.
async fn finish(
    txn: &DatabaseTransaction,
    cluster: Option<&Cluster>,
    msg: &FinishTask,
) -> Result<Option<NewEvent>, DbErr> {
    let now = Utc::now();
    // Ended or back in the queue: nobody holds it.
    let mut update = task::ActiveModel {
        updated_at: Set(now),
        holder: Set(None),
        lease_until: Set(None),
        ..Default::default()
    };
    let mut image_id = None;
    let mut retry_at = None;
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
        TaskOutcome::Retry { error, after } => {
            retry_at = Some(now + chrono::Duration::from_std(*after).unwrap_or_default());
            update.status = Set(TaskStatus::Queued);
            update.error = Set(Some(error.clone()));
            update.run_after = Set(retry_at);
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
    let applied = held(query, cluster).exec(txn).await?.rows_affected == 1;
    if !applied {
        // Workers hand over a task's ending without waiting, so it is said here.
        tracing::debug!(
            task_id = %msg.task_id,
            "task had already moved on (cancelled or ended); outcome dropped"
        );
        if let Some(id) = image_id {
            Image::delete_by_id(id).exec(txn).await?;
        }
        return Ok(None);
    }
    let (kind, status, error) = match &msg.outcome {
        TaskOutcome::Done { .. } => (ChangeKind::Done, TaskStatus::Done, None),
        TaskOutcome::Failed { error } => (ChangeKind::Failed, TaskStatus::Failed, Some(error)),
        TaskOutcome::Retry { error, .. } => (ChangeKind::Retrying, TaskStatus::Queued, Some(error)),
    };
    let mut event = NewEvent::new(msg.user_id, msg.task_id.clone(), kind, status);
    if let Expect::Running { attempt } = msg.expect {
        event = event.attempt(attempt);
    }
    if let Some(error) = error {
        event = event.error(error);
    }
    event.image_id = image_id.map(ImageId);
    event.retry_at = retry_at;
    Ok(Some(event))
}

/// A task a bulk update changed.
pub struct Changed {
    pub task_id: TaskId,
    pub user_id: UserId,
    pub attempts: i32,
}

/// Runs the update and answers the tasks it changed (`UPDATE … RETURNING`), so their
/// events can be logged in the same transaction.
pub async fn changed(
    db: &impl ConnectionTrait,
    query: sea_orm::UpdateMany<Task>,
) -> Result<Vec<Changed>, DbErr> {
    use sea_orm::sea_query::Query;
    use sea_orm::QueryTrait;
    let mut statement = query.into_query();
    statement.returning(Query::returning().columns([
        task::Column::TaskId,
        task::Column::UserId,
        task::Column::Attempts,
    ]));
    let rows = db
        .query_all(db.get_database_backend().build(&statement))
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Changed {
                task_id: TaskId::from(row.try_get::<String>("", "task_id")?),
                user_id: UserId(row.try_get("", "user_id")?),
                attempts: row.try_get("", "attempts")?,
            })
        })
        .collect()
}

/// RUNNING → QUEUED for `only` these tasks (held by this gateway), or for all, each
/// with its `queued` event.
pub async fn requeue_running(
    db: &impl ConnectionTrait,
    cluster: Option<&Cluster>,
    only: Option<Vec<TaskId>>,
) -> Result<Vec<TaskEvent>, DbErr> {
    let mut query = Task::update_many()
        .set(task::ActiveModel {
            status: Set(TaskStatus::Queued),
            updated_at: Set(Utc::now()),
            holder: Set(None),
            lease_until: Set(None),
            ..Default::default()
        })
        .filter(task::Column::Status.eq(TaskStatus::Running));
    if let Some(ids) = only {
        query = query.filter(task::Column::TaskId.is_in(ids.into_iter().map(TaskId::into_string)));
    }
    let requeued = changed(db, held(query, cluster)).await?;
    let changes = requeued
        .into_iter()
        .map(|t| NewEvent::new(t.user_id, t.task_id, ChangeKind::Queued, TaskStatus::Queued))
        .collect();
    events::append(db, changes).await
}
