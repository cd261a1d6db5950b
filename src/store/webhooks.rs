//! The webhook outbox (`webhook_deliveries`, filled by `events::append`) as the deliverer
//! works it, the task view's delivery status, and the users' signing secrets. A row is
//! claimed by stamping it with its holder and pushing `next_at` to when the claim runs
//! out; an attempt's outcome clears the holder. Both are written a batch at a time: a
//! claim takes up to the free slots in one statement, and outcomes are stored several in
//! one transaction. With several gateways on PostgreSQL the
//! claim skips rows another one is claiming (`FOR UPDATE SKIP LOCKED`); a SQLite file
//! has one gateway, whose single deliverer is the only claimer.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::prelude::{User, WebhookDelivery};
use entity::user;
use entity::webhook_delivery::{self, State};
use sea_orm::sea_query::{Expr, LockBehavior, LockType};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, Set, TransactionTrait,
};

use super::StoreError;
use crate::domain::UserId;

/// A delivery claimed for an attempt.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub task_id: String,
    pub webhook_id: String,
    pub url: String,
    pub body: String,
    /// Attempts already made; this one is `attempts + 1`.
    pub attempts: i32,
    /// The owner's secret as stored (`whsec_…`), if they have one.
    pub secret: Option<String>,
}

/// How an attempt ended, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempted {
    /// The delivery's row.
    pub id: i64,
    /// Attempts made, this one included.
    pub attempts: i32,
    pub state: State,
    /// The receiver's HTTP status, when it answered.
    pub status: Option<u16>,
    pub error: Option<String>,
    /// When a pending delivery is due again.
    pub next_at: DateTime<Utc>,
}

/// A task's webhook as the task view shows it: its latest event's delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryStatus {
    pub delivered: bool,
    pub attempts: i32,
    pub last_status: Option<i32>,
}

/// Claims up to `n` due deliveries for `holder` until `claim_for` from now, oldest due
/// first.
pub async fn claim(
    db: &DatabaseConnection,
    holder: &str,
    n: usize,
    claim_for: Duration,
) -> Result<Vec<Claimed>, StoreError> {
    if n == 0 {
        return Ok(Vec::new());
    }
    match db.get_database_backend() {
        DbBackend::Postgres => {
            let txn = db.begin().await?;
            let claimed = claim_in(&txn, holder, n, claim_for).await?;
            txn.commit().await?;
            Ok(claimed)
        }
        // One claimer; and a read that turns into a write inside a SQLite transaction
        // fails at once when another write committed in between.
        _ => claim_in(db, holder, n, claim_for).await,
    }
}

async fn claim_in(
    db: &impl ConnectionTrait,
    holder: &str,
    n: usize,
    claim_for: Duration,
) -> Result<Vec<Claimed>, StoreError> {
    let now = Utc::now();
    let due = WebhookDelivery::find()
        .filter(webhook_delivery::Column::State.eq(State::Pending))
        .filter(webhook_delivery::Column::NextAt.lte(now))
        .order_by_asc(webhook_delivery::Column::NextAt)
        .limit(n as u64)
        .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
        .all(db)
        .await?;
    if due.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = due.iter().map(|d| d.id).collect();
    let until = now + claim_for;
    WebhookDelivery::update_many()
        .col_expr(webhook_delivery::Column::Holder, Expr::value(holder))
        .col_expr(webhook_delivery::Column::NextAt, Expr::value(until))
        .col_expr(webhook_delivery::Column::UpdatedAt, Expr::value(now))
        .filter(webhook_delivery::Column::Id.is_in(ids))
        .exec(db)
        .await?;
    let mut owners: Vec<i64> = due.iter().map(|d| d.user_id).collect();
    owners.sort_unstable();
    owners.dedup();
    let secrets: HashMap<i64, Option<String>> = User::find()
        .select_only()
        .column(user::Column::Id)
        .column(user::Column::WebhookSecret)
        .filter(user::Column::Id.is_in(owners))
        .into_tuple::<(i64, Option<String>)>()
        .all(db)
        .await?
        .into_iter()
        .collect();
    Ok(due
        .into_iter()
        .map(|d| Claimed {
            secret: secrets.get(&d.user_id).cloned().flatten(),
            id: d.id,
            task_id: d.task_id,
            webhook_id: d.webhook_id,
            url: d.url,
            body: d.body,
            attempts: d.attempts,
        })
        .collect())
}

/// Stores attempts' outcomes in one transaction, each only if `holder` still holds its
/// delivery (a claim that ran out may have passed to another gateway); answers how many
/// were. Rows are written in id order, so two writers never wait on each other in turn.
pub async fn record(
    db: &DatabaseConnection,
    holder: &str,
    attempts: &[Attempted],
) -> Result<u64, StoreError> {
    let mut in_order: Vec<&Attempted> = attempts.iter().collect();
    in_order.sort_unstable_by_key(|a| a.id);
    let now = Utc::now();
    let txn = db.begin().await?;
    let mut stored = 0;
    for attempted in in_order {
        let row = webhook_delivery::ActiveModel {
            state: Set(attempted.state),
            attempts: Set(attempted.attempts),
            next_at: Set(attempted.next_at),
            last_status: Set(attempted.status.map(i32::from)),
            last_error: Set(attempted.error.clone()),
            holder: Set(None),
            updated_at: Set(now),
            ..Default::default()
        };
        stored += WebhookDelivery::update_many()
            .set(row)
            .filter(webhook_delivery::Column::Id.eq(attempted.id))
            .filter(webhook_delivery::Column::Holder.eq(holder))
            .exec(&txn)
            .await?
            .rows_affected;
    }
    txn.commit().await?;
    Ok(stored)
}

/// Deliveries claimed by a gateway that stopped are due at once (at start-up, where this
/// gateway is the database's only one).
pub async fn release_all(db: &DatabaseConnection) -> Result<u64, StoreError> {
    let done = WebhookDelivery::update_many()
        .col_expr(
            webhook_delivery::Column::Holder,
            Expr::value(None::<String>),
        )
        .col_expr(webhook_delivery::Column::NextAt, Expr::value(Utc::now()))
        .filter(webhook_delivery::Column::State.eq(State::Pending))
        .filter(webhook_delivery::Column::Holder.is_not_null())
        .exec(db)
        .await?;
    Ok(done.rows_affected)
}

/// Deliveries not yet delivered nor given up, in the whole outbox (every gateway's).
pub async fn pending(db: &DatabaseConnection) -> Result<u64, StoreError> {
    Ok(WebhookDelivery::find()
        .filter(webhook_delivery::Column::State.eq(State::Pending))
        .count(db)
        .await?)
}

/// When the next pending delivery is due, if any is.
pub async fn next_due(db: &DatabaseConnection) -> Result<Option<DateTime<Utc>>, StoreError> {
    Ok(WebhookDelivery::find()
        .select_only()
        .column(webhook_delivery::Column::NextAt)
        .filter(webhook_delivery::Column::State.eq(State::Pending))
        .order_by_asc(webhook_delivery::Column::NextAt)
        .into_tuple::<DateTime<Utc>>()
        .one(db)
        .await?)
}

/// Each task's latest delivery (tasks without one are absent).
pub async fn status_of(
    db: &DatabaseConnection,
    task_ids: Vec<String>,
) -> Result<HashMap<String, DeliveryStatus>, StoreError> {
    if task_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, State, i32, Option<i32>)> = WebhookDelivery::find()
        .select_only()
        .column(webhook_delivery::Column::TaskId)
        .column(webhook_delivery::Column::State)
        .column(webhook_delivery::Column::Attempts)
        .column(webhook_delivery::Column::LastStatus)
        .filter(webhook_delivery::Column::TaskId.is_in(task_ids))
        .order_by_asc(webhook_delivery::Column::Id)
        .into_tuple()
        .all(db)
        .await?;
    // In id order: the latest of each task's is the one left.
    Ok(rows
        .into_iter()
        .map(|(task_id, state, attempts, last_status)| {
            let status = DeliveryStatus {
                delivered: state == State::Delivered,
                attempts,
                last_status,
            };
            (task_id, status)
        })
        .collect())
}

/// Stores the user's new signing secret, replacing any; `Ok(false)` when there is no
/// such user.
pub async fn set_secret(
    db: &DatabaseConnection,
    user_id: UserId,
    secret: &str,
) -> Result<bool, StoreError> {
    let done = User::update_many()
        .col_expr(user::Column::WebhookSecret, Expr::value(secret))
        .filter(user::Column::Id.eq(user_id.0))
        .exec(db)
        .await?;
    Ok(done.rows_affected == 1)
}

/// Whether the user has a signing secret.
pub async fn has_secret(db: &DatabaseConnection, user_id: UserId) -> Result<bool, StoreError> {
    let secret: Option<Option<String>> = User::find_by_id(user_id.0)
        .select_only()
        .column(user::Column::WebhookSecret)
        .into_tuple()
        .one(db)
        .await?;
    Ok(secret.flatten().is_some())
}
