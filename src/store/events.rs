//! The task event log: every change of a task's state, appended in the transaction that
//! makes the change, numbered per user, kept for `events.retention_hours`, and read back
//! for replay. Appending also queues the webhook deliveries the change calls for, and
//! with several gateways on PostgreSQL sends the events to the others with `NOTIFY`
//! (delivered at commit, in commit order), as few notifications as fit them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use entity::prelude::{Task, TaskEvent as EventRow, WebhookDelivery};
use entity::{task, task_event, webhook_delivery};
use sea_orm::{
    AccessMode, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait,
    IsolationLevel, QueryFilter, QueryOrder, QuerySelect, Set, Statement, TransactionTrait,
};

use super::StoreError;
use crate::domain::{
    event_error, ChangeKind, EventType, ImageId, InstanceId, TaskEvent, TaskId, TaskStatus, UserId,
    WebhookEvents,
};

/// The channel events travel on between gateways: a JSON array of `{…event,
/// "user_id": N}`, in order.
pub const EVENTS_CHANNEL: &str = "infergate_events";

/// The most a notification carries: PostgreSQL refuses payloads of 8,000 bytes and more.
const NOTIFICATION_BYTES: usize = 7000;

/// A change to log.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub user_id: UserId,
    pub task_id: TaskId,
    pub kind: ChangeKind,
    pub status: TaskStatus,
    pub attempt: Option<i32>,
    pub instance: Option<InstanceId>,
    pub image_id: Option<ImageId>,
    pub error: Option<String>,
    pub retry_at: Option<DateTime<Utc>>,
}

impl NewEvent {
    pub fn new(user_id: UserId, task_id: TaskId, kind: ChangeKind, status: TaskStatus) -> Self {
        NewEvent {
            user_id,
            task_id,
            kind,
            status,
            attempt: None,
            instance: None,
            image_id: None,
            error: None,
            retry_at: None,
        }
    }

    pub fn attempt(mut self, attempt: i32) -> Self {
        self.attempt = Some(attempt);
        self
    }

    pub fn error(mut self, error: &str) -> Self {
        self.error = Some(event_error(error));
        self
    }
}

/// Logs the changes in the caller's transaction and answers them as sent, numbered.
/// Every user's counter moves in one statement (see `take_numbers`). Events of a user
/// who no longer exists are dropped (their tasks are going with them).
pub async fn append(
    txn: &impl ConnectionTrait,
    events: Vec<NewEvent>,
) -> Result<Vec<TaskEvent>, DbErr> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let now = Utc::now();
    let mut by_user: BTreeMap<UserId, Vec<NewEvent>> = BTreeMap::new();
    for event in events {
        by_user.entry(event.user_id).or_default().push(event);
    }
    let wanted: Vec<(UserId, i64)> = by_user
        .iter()
        .map(|(user_id, events)| (*user_id, events.len() as i64))
        .collect();
    let mut lasts = take_numbers(txn, &wanted).await?;
    let (mut logged, mut rows) = (Vec::new(), Vec::new());
    for (user_id, events) in by_user {
        let Some(last) = lasts.remove(&user_id) else {
            continue;
        };
        let first = last - events.len() as i64 + 1;
        for (seq, event) in (first..).zip(events) {
            rows.push(task_event::ActiveModel {
                user_id: Set(user_id.0),
                seq: Set(seq),
                task_id: Set(event.task_id.to_string()),
                kind: Set(event.kind),
                status: Set(event.status),
                attempt: Set(event.attempt),
                instance_id: Set(event.instance.map(|id| id.0 as i64)),
                image_id: Set(event.image_id.map(|id| id.0)),
                error: Set(event.error.clone()),
                retry_at: Set(event.retry_at),
                at: Set(now),
                ..Default::default()
            });
            logged.push(TaskEvent {
                seq: Some(seq),
                kind: EventType::from(event.kind),
                task_id: event.task_id,
                status: event.status,
                at: now,
                attempt: event.attempt,
                instance: event.instance,
                result_url: event.image_id.map(ImageId::result_url),
                error: event.error,
                retry_at: event.retry_at,
                queue_position: None,
                eta_secs: None,
                user_id,
            });
        }
    }
    if logged.is_empty() {
        return Ok(logged);
    }
    let backend = txn.get_database_backend();
    EventRow::insert_many(rows).exec(txn).await?;
    queue_webhooks(txn, &logged).await?;
    if backend == DbBackend::Postgres {
        let payloads = notifications(&logged);
        txn.execute(Statement::from_sql_and_values(
            backend,
            "SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload",
            [EVENTS_CHANNEL.into(), payloads.into()],
        ))
        .await?;
    }
    Ok(logged)
}

/// Moves each user's event counter on by their count in one statement, and answers
/// each user's last number (a user who no longer exists is missing). The counter's row
/// lock keeps a user's events committing in number order. On PostgreSQL the rows are
/// first locked in id order, so two transactions numbering for the same users never
/// wait on each other in a cycle; SQLite has one writer.
async fn take_numbers(
    txn: &impl ConnectionTrait,
    wanted: &[(UserId, i64)],
) -> Result<BTreeMap<UserId, i64>, DbErr> {
    let backend = txn.get_database_backend();
    let ids: Vec<i64> = wanted.iter().map(|(id, _)| id.0).collect();
    let counts: Vec<i64> = wanted.iter().map(|(_, n)| *n).collect();
    let rows = if backend == DbBackend::Postgres {
        // The locking CTE takes the rows in id order, whatever order the update
        // changes them in (materialized, it is not merged into the update's join).
        txn.query_all(Statement::from_sql_and_values(
            backend,
            "WITH locked AS MATERIALIZED ( \
               SELECT id FROM users WHERE id = ANY($1) ORDER BY id FOR UPDATE) \
             UPDATE users AS u SET event_seq = u.event_seq + v.n \
             FROM locked JOIN unnest($1::bigint[], $2::bigint[]) AS v(id, n) ON v.id = locked.id \
             WHERE u.id = locked.id RETURNING u.id, u.event_seq",
            [ids.into(), counts.into()],
        ))
        .await?
    } else {
        // As JSON, one parameter whatever the batch's size.
        let counts: serde_json::Map<String, serde_json::Value> = wanted
            .iter()
            .map(|(id, n)| (id.0.to_string(), (*n).into()))
            .collect();
        txn.query_all(Statement::from_sql_and_values(
            backend,
            "UPDATE users SET event_seq = event_seq + v.n \
             FROM (SELECT CAST(key AS INTEGER) AS id, value AS n FROM json_each(?)) AS v \
             WHERE users.id = v.id RETURNING users.id AS id, users.event_seq AS event_seq",
            [serde_json::Value::Object(counts).to_string().into()],
        ))
        .await?
    };
    rows.into_iter()
        .map(|row| {
            let id: i64 = row.try_get("", "id")?;
            let last: i64 = row.try_get("", "event_seq")?;
            Ok((UserId(id), last))
        })
        .collect()
}

/// An event as it travels between gateways: its JSON with the user it belongs to.
/// The events as notification payloads, in order, each as many as fit.
fn notifications(events: &[TaskEvent]) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut payload = String::from("[");
    for event in events {
        let mut json = serde_json::to_value(event).expect("an event serializes");
        json["user_id"] = event.user_id.0.into();
        let json = json.to_string();
        if payload.len() > 1 && payload.len() + json.len() + 2 > NOTIFICATION_BYTES {
            payload.push(']');
            payloads.push(std::mem::replace(&mut payload, String::from("[")));
        }
        if payload.len() > 1 {
            payload.push(',');
        }
        payload.push_str(&json);
    }
    if payload.len() > 1 {
        payload.push(']');
        payloads.push(payload);
    }
    payloads
}

/// The events of another gateway's notification, in order. A single event (not in an
/// array) is what a gateway of the previous version sends, during a rolling upgrade.
pub fn from_notification(payload: &str) -> Option<Vec<TaskEvent>> {
    if payload.starts_with('[') {
        serde_json::from_str(payload).ok()
    } else {
        serde_json::from_str(payload).ok().map(|event| vec![event])
    }
}

/// Stored changes only have a change kind.
fn change_kind(kind: EventType) -> ChangeKind {
    match kind {
        EventType::Queued | EventType::Progress => ChangeKind::Queued,
        EventType::Running => ChangeKind::Running,
        EventType::Retrying => ChangeKind::Retrying,
        EventType::Done => ChangeKind::Done,
        EventType::Failed => ChangeKind::Failed,
        EventType::Cancelled => ChangeKind::Cancelled,
    }
}

/// Queues a delivery for each event a task's webhook asked for, in the same
/// transaction: a change that commits is delivered, whatever happens next.
async fn queue_webhooks(txn: &impl ConnectionTrait, events: &[TaskEvent]) -> Result<(), DbErr> {
    let mut task_ids: Vec<&str> = events.iter().map(|e| e.task_id.as_str()).collect();
    task_ids.sort_unstable();
    task_ids.dedup();
    let hooked: Vec<(String, String, Option<String>)> = Task::find()
        .select_only()
        .column(task::Column::TaskId)
        .column(task::Column::WebhookUrl)
        .column(task::Column::WebhookEvents)
        .filter(task::Column::TaskId.is_in(task_ids))
        .filter(task::Column::WebhookUrl.is_not_null())
        .into_tuple::<(String, Option<String>, Option<String>)>()
        .all(txn)
        .await?
        .into_iter()
        .filter_map(|(task_id, url, events)| Some((task_id, url?, events)))
        .collect();
    if hooked.is_empty() {
        return Ok(());
    }
    let now = Utc::now();
    let mut rows = Vec::new();
    for event in events {
        let Some((_, url, wanted)) = hooked.iter().find(|(id, ..)| id == event.task_id.as_str())
        else {
            continue;
        };
        let wanted = wanted
            .as_deref()
            .map(WebhookEvents::from_stored)
            .unwrap_or_default();
        if !wanted.wants(change_kind(event.kind)) {
            continue;
        }
        rows.push(webhook_delivery::ActiveModel {
            user_id: Set(event.user_id.0),
            task_id: Set(event.task_id.to_string()),
            webhook_id: Set(format!("msg_{}", uuid::Uuid::new_v4().simple())),
            url: Set(url.clone()),
            body: Set(serde_json::to_string(event).expect("an event serializes")),
            state: Set(webhook_delivery::State::Pending),
            attempts: Set(0),
            next_at: Set(now),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        });
    }
    if !rows.is_empty() {
        WebhookDelivery::insert_many(rows).exec(txn).await?;
        if txn.get_database_backend() == DbBackend::Postgres {
            // Every gateway's deliverer may send them: wake them, at commit.
            super::notify(txn, "w").await?;
        }
    }
    Ok(())
}

/// The user's stored events after `after`, oldest first, at most `limit`; only those of
/// `task` when given.
pub async fn after(
    db: &impl ConnectionTrait,
    user_id: UserId,
    after: i64,
    task: Option<&TaskId>,
    limit: u64,
) -> Result<Vec<TaskEvent>, StoreError> {
    let mut query = EventRow::find()
        .filter(task_event::Column::UserId.eq(user_id.0))
        .filter(task_event::Column::Seq.gt(after));
    if let Some(task) = task {
        query = query.filter(task_event::Column::TaskId.eq(task.as_str()));
    }
    let rows = query
        .order_by_asc(task_event::Column::Seq)
        .limit(limit)
        .all(db)
        .await?;
    Ok(rows.into_iter().map(stored).collect())
}

/// The number of the user's last event (0: none yet).
pub async fn last_seq(db: &impl ConnectionTrait, user_id: UserId) -> Result<i64, StoreError> {
    Ok(entity::prelude::User::find_by_id(user_id.0)
        .select_only()
        .column(entity::user::Column::EventSeq)
        .into_tuple::<i64>()
        .one(db)
        .await?
        .unwrap_or(0))
}

/// One of the user's tasks and the number of the user's last event, read together (one
/// snapshot of the database), so the task is as that event left it.
pub async fn task_as_of(
    db: &DatabaseConnection,
    user_id: UserId,
    task_id: &TaskId,
) -> Result<Option<(task::Model, i64)>, StoreError> {
    let txn = match db.get_database_backend() {
        DbBackend::Postgres => {
            db.begin_with_config(
                Some(IsolationLevel::RepeatableRead),
                Some(AccessMode::ReadOnly),
            )
            .await?
        }
        // A SQLite transaction reads one snapshot from its first read on.
        _ => db.begin().await?,
    };
    let found = Task::find()
        .filter(task::Column::TaskId.eq(task_id.as_str()))
        .filter(task::Column::UserId.eq(user_id.0))
        .one(&txn)
        .await?;
    let Some(found) = found else {
        return Ok(None);
    };
    let last = last_seq(&txn, user_id).await?;
    txn.commit().await?;
    Ok(Some((found, last)))
}

fn stored(row: task_event::Model) -> TaskEvent {
    TaskEvent {
        seq: Some(row.seq),
        kind: EventType::from(row.kind),
        task_id: TaskId::from(row.task_id),
        status: row.status,
        at: row.at,
        attempt: row.attempt,
        instance: row.instance_id.map(|id| InstanceId(id as u64)),
        result_url: row.image_id.map(|id| ImageId(id).result_url()),
        error: row.error,
        retry_at: row.retry_at,
        queue_position: None,
        eta_secs: None,
        user_id: UserId(row.user_id),
    }
}

/// Deletes up to `batch` events older than `before`; answers how many. Small batches:
/// the write lock is never held for long.
pub async fn prune(
    db: &impl ConnectionTrait,
    before: DateTime<Utc>,
    batch: u64,
) -> Result<u64, StoreError> {
    let old: Vec<i64> = EventRow::find()
        .select_only()
        .column(task_event::Column::Id)
        .filter(task_event::Column::At.lt(before))
        .order_by_asc(task_event::Column::At)
        .limit(batch)
        .into_tuple()
        .all(db)
        .await?;
    if old.is_empty() {
        return Ok(0);
    }
    Ok(EventRow::delete_many()
        .filter(task_event::Column::Id.is_in(old))
        .exec(db)
        .await?
        .rows_affected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: i64, error: Option<String>) -> TaskEvent {
        TaskEvent {
            seq: Some(seq),
            kind: EventType::Running,
            task_id: TaskId::from("t".to_string()),
            status: TaskStatus::Running,
            at: Utc::now(),
            attempt: Some(2),
            instance: Some(InstanceId(9)),
            result_url: None,
            error,
            retry_at: None,
            queue_position: None,
            eta_secs: None,
            user_id: UserId(42 + seq),
        }
    }

    #[test]
    fn notifications_carry_their_users_in_order_and_fit_the_payload_limit() {
        // Errors of 1,000 characters: a few events fill a notification.
        let events: Vec<TaskEvent> = (1..=40)
            .map(|seq| event(seq, (seq % 3 == 0).then(|| "e".repeat(1000))))
            .collect();
        let payloads = notifications(&events);
        assert!(payloads.len() > 1, "{} payloads", payloads.len());
        assert!(payloads.iter().all(|p| p.len() <= NOTIFICATION_BYTES));
        let read: Vec<TaskEvent> = payloads
            .iter()
            .flat_map(|p| from_notification(p).expect("a payload reads back"))
            .collect();
        assert_eq!(read, events);
        assert_eq!(notifications(&[event(1, None)]).len(), 1);
        assert!(notifications(&[]).is_empty());
        // One event alone, as the previous version sent it.
        let lone = event(7, None);
        let mut json = serde_json::to_value(&lone).unwrap();
        json["user_id"] = lone.user_id.0.into();
        let read = from_notification(&json.to_string()).expect("a lone event reads");
        assert_eq!(read, vec![lone]);
    }
}
