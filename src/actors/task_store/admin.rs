//! The TaskStore's changes of many tasks at once for operators: the bulk cancel (the
//! same statement and events as an owner's cancel) and the retry of ended tasks.

use actix::prelude::*;
use chrono::Utc;
use entity::prelude::Task;
use entity::task;
use sea_orm::{
    ColumnTrait, Condition, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder, Set,
    TransactionTrait,
};

use super::writes::{changed, Changed};
use super::TaskStore;
use crate::actors::messages::{CancelTasks, RequeueFinished};
use crate::cluster::Cluster;
use crate::domain::{ChangeKind, QueuedTask, TaskEvent, TaskId, TaskStatus, UserId};
use crate::store::cluster::{self as shared, Admitting};
use crate::store::events::{self, NewEvent};
use crate::store::{notify, StoreError};

/// QUEUED or RUNNING → CANCELLED for the tasks `which` selects, each with its event;
/// with several gateways each cancel is announced, so the one running it aborts it.
pub(super) async fn cancel_where(
    txn: &DatabaseTransaction,
    clustered: bool,
    which: Condition,
) -> Result<(Vec<Changed>, Vec<TaskEvent>), StoreError> {
    let update = Task::update_many()
        .set(task::ActiveModel {
            status: Set(TaskStatus::Cancelled),
            updated_at: Set(Utc::now()),
            ..Default::default()
        })
        .filter(which)
        .filter(task::Column::Status.is_in([TaskStatus::Queued, TaskStatus::Running]));
    let cancelled = changed(txn, update).await?;
    let new_events = cancelled
        .iter()
        .map(|t| {
            NewEvent::new(
                t.user_id,
                t.task_id.clone(),
                ChangeKind::Cancelled,
                TaskStatus::Cancelled,
            )
        })
        .collect();
    let logged = events::append(txn, new_events).await?;
    if clustered {
        for task in &cancelled {
            notify(txn, &format!("c:{}", task.task_id)).await?;
        }
    }
    Ok((cancelled, logged))
}

/// Cancels those of the tasks still unfinished, in one transaction.
impl Handler<CancelTasks> for TaskStore {
    type Result = ResponseActFuture<Self, Result<Vec<(TaskId, UserId)>, StoreError>>;

    fn handle(&mut self, msg: CancelTasks, _: &mut Context<Self>) -> Self::Result {
        let (db, clustered) = (self.db.clone(), self.cluster.is_some());
        let cancel = async move {
            let txn = db.begin().await?;
            let ids = msg.0.iter().map(TaskId::as_str);
            let which = Condition::all().add(task::Column::TaskId.is_in(ids));
            let (cancelled, logged) = cancel_where(&txn, clustered, which).await?;
            txn.commit().await?;
            let cancelled = cancelled.into_iter().map(|t| (t.task_id, t.user_id));
            Ok::<_, StoreError>((cancelled.collect(), logged))
        };
        Box::pin(cancel.into_actor(self).map(|cancelled, store, _| {
            let (cancelled, logged) = cancelled?;
            store.publish(logged);
            Ok(cancelled)
        }))
    }
}

/// FAILED or CANCELLED → QUEUED as if new: no attempts, error, instance or backoff.
fn requeued(fair_key: Option<i64>) -> task::ActiveModel {
    let mut row = task::ActiveModel {
        status: Set(TaskStatus::Queued),
        attempts: Set(0),
        error: Set(None),
        instance: Set(None),
        started_at: Set(None),
        run_after: Set(None),
        holder: Set(None),
        lease_until: Set(None),
        updated_at: Set(Utc::now()),
        ..Default::default()
    };
    if let Some(key) = fair_key {
        row.fair_key = Set(key);
    }
    row
}

const RETRYABLE: [TaskStatus; 2] = [TaskStatus::Failed, TaskStatus::Cancelled];

/// Alone, the Dispatcher has admitted them; with several gateways, admission runs here.
async fn requeue(
    txn: &DatabaseTransaction,
    cluster: Option<&Cluster>,
    ids: &[TaskId],
) -> Result<Vec<Changed>, StoreError> {
    let names = ids.iter().map(TaskId::as_str);
    let Some(cluster) = cluster else {
        let update = Task::update_many()
            .set(requeued(None))
            .filter(task::Column::TaskId.is_in(names))
            .filter(task::Column::Status.is_in(RETRYABLE));
        return Ok(changed(txn, update).await?);
    };
    let rows = Task::find()
        .filter(task::Column::TaskId.is_in(names))
        .filter(task::Column::Status.is_in(RETRYABLE))
        .order_by_asc(task::Column::Id)
        .all(txn)
        .await?;
    let admitting: Vec<Admitting> = rows
        .iter()
        .map(|t| Admitting {
            user_id: UserId(t.user_id),
        })
        .collect();
    let admission = &cluster.admission;
    let verdicts = shared::admit(
        txn,
        &admitting,
        admission.capacity,
        admission.quota,
        admission.fair,
        true,
    )
    .await?
    .expect("an admission that waits for the lock answers")
    .0;
    let mut requeued_rows = Vec::new();
    for (row, verdict) in rows.into_iter().zip(verdicts) {
        let Ok(fair_key) = verdict else { continue };
        let update = Task::update_many()
            .set(requeued(Some(fair_key)))
            .filter(task::Column::Id.eq(row.id))
            .filter(task::Column::Status.is_in(RETRYABLE));
        requeued_rows.extend(changed(txn, update).await?);
    }
    if !requeued_rows.is_empty() {
        notify(txn, "q").await?;
    }
    Ok(requeued_rows)
}

/// Back to QUEUED, each with its `queued` event; answers them as the queue takes them.
impl Handler<RequeueFinished> for TaskStore {
    type Result = ResponseActFuture<Self, Result<Vec<QueuedTask>, StoreError>>;

    fn handle(&mut self, msg: RequeueFinished, _: &mut Context<Self>) -> Self::Result {
        let (db, cluster) = (self.db.clone(), self.cluster.clone());
        let retry = async move {
            let txn = db.begin().await?;
            let requeued = requeue(&txn, cluster.as_deref(), &msg.0).await?;
            let new_events = requeued
                .iter()
                .map(|t| {
                    NewEvent::new(
                        t.user_id,
                        t.task_id.clone(),
                        ChangeKind::Queued,
                        TaskStatus::Queued,
                    )
                })
                .collect();
            let logged = events::append(&txn, new_events).await?;
            txn.commit().await?;
            let ids: Vec<TaskId> = requeued.into_iter().map(|t| t.task_id).collect();
            let tasks = crate::store::tasks::queued_among(&db, &ids).await?;
            Ok::<_, StoreError>((tasks, logged))
        };
        Box::pin(retry.into_actor(self).map(|retried, store, _| {
            let (tasks, logged) = retried?;
            store.publish(logged);
            Ok(tasks)
        }))
    }
}
