//! The SQL of several gateways on one PostgreSQL database: nodes and their heartbeats,
//! task claims in global fair order (`FOR UPDATE SKIP LOCKED`), leases and their rescue,
//! the backends' call slots shared by every process, admission against global limits,
//! and the wake-ups sent with `NOTIFY`.
//!
//! Every change is conditional on the holder (and, where it matters, the attempt), so a
//! process presumed dead that comes back late changes nothing it no longer holds.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::prelude::Node;
use entity::{node, task};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, FromQueryResult, QueryFilter,
    Statement, Value,
};

use super::events::NewEvent;
use super::{StoreError, CHANNEL};
use crate::domain::{ChangeKind, NodeId, QueuedTask, TaskId, TaskStatus, UserId};

/// An advisory lock taken by every admission, so the global queue capacity and quotas
/// hold across processes (the number spells nothing; it only has to be ours).
pub const ADMISSION_LOCK: i64 = 0x696e_6667_6174_6501;

fn statement(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

fn millis(d: Duration) -> Value {
    (d.as_millis() as i64).into()
}

/// Records this process as live (or again, after a pause).
pub async fn register_node(
    db: &DatabaseConnection,
    node: &NodeId,
    host: &str,
) -> Result<(), StoreError> {
    db.execute(statement(
        "INSERT INTO nodes (id, host, pid, started_at, heartbeat_at, running) \
         VALUES ($1, $2, $3, now(), now(), 0) \
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
        vec![
            node.as_str().into(),
            host.into(),
            (std::process::id() as i32).into(),
        ],
    ))
    .await?;
    // The shared counters exist before anyone locks them.
    db.execute(statement(
        "INSERT INTO cluster_state (key, value) VALUES ('vip_streak', 0), ('fair_top', 0) \
         ON CONFLICT (key) DO NOTHING",
        vec![],
    ))
    .await?;
    Ok(())
}

/// The heartbeat: this process is alive, and holds `live` (renewing their leases).
pub async fn heartbeat(
    db: &DatabaseConnection,
    node: &NodeId,
    live: &[TaskId],
    lease: Duration,
) -> Result<(), StoreError> {
    let ids: Vec<String> = live.iter().map(|id| id.as_str().to_string()).collect();
    db.execute(statement(
        "UPDATE nodes SET heartbeat_at = now(), running = $2 WHERE id = $1",
        vec![node.as_str().into(), (ids.len() as i32).into()],
    ))
    .await?;
    if !ids.is_empty() {
        db.execute(statement(
            // A row another transaction holds (its ending being written) is skipped, not
            // waited for: waiting on rows locked in another order is how deadlocks start,
            // and the next beat renews it if it still needs it.
            "UPDATE tasks SET lease_until = now() + $3 * interval '1 millisecond' \
             WHERE id IN (SELECT id FROM tasks WHERE holder = $1 AND task_id = ANY($2) \
               AND status IN ('QUEUED', 'RUNNING') FOR UPDATE SKIP LOCKED)",
            vec![node.as_str().into(), ids.into(), millis(lease)],
        ))
        .await?;
    }
    Ok(())
}

/// A task whose holder stopped renewing it.
#[derive(Debug, Clone)]
pub struct Rescued {
    pub task_id: TaskId,
    pub user_id: UserId,
    /// QUEUED again, or FAILED out of attempts.
    pub failed: bool,
}

/// Takes over the RUNNING tasks whose lease ran out: back to QUEUED (the interrupted
/// attempt counts), or FAILED when it was the last of `max_attempts`.
pub async fn rescue(
    db: &DatabaseConnection,
    max_attempts: i32,
) -> Result<Vec<Rescued>, StoreError> {
    use sea_orm::TransactionTrait;
    let txn = db.begin().await?;
    let rows = txn
        .query_all(statement(
            "UPDATE tasks SET \
               status = CASE WHEN attempts >= $1 THEN 'FAILED' ELSE 'QUEUED' END, \
               error = CASE WHEN attempts >= $1 \
                 THEN 'the gateway running it stopped during the last of ' || $1 || ' attempts' \
                 ELSE error END, \
               holder = NULL, lease_until = NULL, updated_at = now() \
             WHERE status = 'RUNNING' AND lease_until < now() \
             RETURNING task_id, user_id, status, attempts, error",
            vec![max_attempts.into()],
        ))
        .await?;
    let mut rescued = Vec::with_capacity(rows.len());
    let mut changes = Vec::with_capacity(rows.len());
    for row in &rows {
        let task = Rescued {
            task_id: TaskId::from(row.try_get::<String>("", "task_id")?),
            user_id: UserId(row.try_get("", "user_id")?),
            failed: row.try_get::<String>("", "status")? == "FAILED",
        };
        let (kind, status) = if task.failed {
            (ChangeKind::Failed, TaskStatus::Failed)
        } else {
            (ChangeKind::Queued, TaskStatus::Queued)
        };
        let mut change = NewEvent::new(task.user_id, task.task_id.clone(), kind, status);
        if task.failed {
            let error: Option<String> = row.try_get("", "error")?;
            change = change
                .attempt(row.try_get("", "attempts")?)
                .error(&error.unwrap_or_default());
        }
        changes.push(change);
        rescued.push(task);
    }
    super::events::append(&txn, changes).await?;
    txn.commit().await?;
    Ok(rescued)
}

/// The claimed-but-not-started tasks of this process go back to the others at once.
pub async fn hand_back(db: &DatabaseConnection, node: &NodeId) -> Result<u64, StoreError> {
    let done = db
        .execute(statement(
            "UPDATE tasks SET holder = NULL, lease_until = NULL \
             WHERE holder = $1 AND status = 'QUEUED'",
            vec![node.as_str().into()],
        ))
        .await?;
    Ok(done.rows_affected())
}

/// How claims are ordered.
#[derive(Debug, Clone, Copy)]
pub struct ClaimOrder {
    /// VIP tasks in a row while normal ones wait; 0: one class.
    pub vip_share: u32,
}

/// How many tasks a claim may take.
#[derive(Debug, Clone)]
pub enum Room {
    /// This many.
    Exactly(usize),
    /// Up to this many, and no more than the call slots free now among these instances
    /// (key, capacity), counted by the claiming statement itself.
    FreeSlots(usize, Vec<(String, u32)>),
}

/// Claims ready QUEUED tasks for `node` (as many as `room` says), in the global fair
/// order (users in turn by `fair_key`, VIP before normal within the VIP share), in one
/// statement and one round trip (the free slots are counted, and the VIP streak is read,
/// locked and written, by that statement too): rows other processes are claiming are
/// skipped, not waited for. Answers them in order, with the room there was.
pub async fn claim(
    db: &DatabaseConnection,
    node: &NodeId,
    room: Room,
    lease: Duration,
    order: ClaimOrder,
) -> Result<Claimed, StoreError> {
    let (n, targets) = match room {
        Room::Exactly(n) => (n, None),
        Room::FreeSlots(n, targets) => (n, Some(targets)),
    };
    if n == 0 || targets.as_ref().is_some_and(Vec::is_empty) {
        return Ok(Claimed {
            tasks: Vec::new(),
            room: 0,
        });
    }
    let ready = "status = 'QUEUED' AND (holder IS NULL OR lease_until < now()) \
                 AND (run_after IS NULL OR run_after <= now())";
    let take =
        "UPDATE tasks t SET holder = $1, lease_until = now() + $3 * interval '1 millisecond' \
                FROM chosen WHERE t.id = chosen.id";
    let mut values: Vec<Value> = vec![node.as_str().into(), (n as i64).into(), millis(lease)];
    // `$2` the most wanted; `room` what may be taken now.
    let room = match targets {
        None => "room AS (SELECT $2::bigint AS n)".to_string(),
        Some(targets) => {
            let next = values.len();
            values.push(
                targets
                    .iter()
                    .map(|(k, _)| k.clone())
                    .collect::<Vec<_>>()
                    .into(),
            );
            values.push(
                targets
                    .iter()
                    .map(|(_, c)| *c as i32)
                    .collect::<Vec<_>>()
                    .into(),
            );
            format!(
                "room AS (SELECT least($2::bigint, count(*)) AS n FROM slots s \
                   JOIN unnest(${}::text[], ${}::int[]) AS c(key, cap) \
                     ON s.instance_key = c.key AND s.slot < c.cap \
                   WHERE s.holder IS NULL OR s.held_until < now())",
                next + 1,
                next + 2
            )
        }
    };
    let limit = "LIMIT (SELECT n FROM room)";
    // One row at least, so that the room comes back when nothing was claimed.
    let answer = "SELECT r.n AS room, c.* FROM room r LEFT JOIN claimed c ON true";
    let sql = if order.vip_share == 0 {
        format!(
            "WITH {room}, chosen AS ( \
               SELECT id, row_number() OVER (ORDER BY fair_key, id) AS rn FROM tasks \
               WHERE {ready} ORDER BY fair_key, id {limit} FOR UPDATE SKIP LOCKED), \
             claimed AS ({take} RETURNING t.*, chosen.rn) \
             {answer}"
        )
    } else {
        let share = values.len() + 1;
        values.push((order.vip_share as i64).into());
        // The streak after these dispatches, as the in-memory fair queue counts it (VIP
        // dispatches in a row while normal tasks waited): those after the last normal
        // one; with none normal, one more each while normal tasks wait; else none.
        format!(
            "WITH {room}, streak AS (SELECT value FROM cluster_state WHERE key = 'vip_streak' FOR UPDATE), \
             vip AS (SELECT id, fair_key FROM tasks WHERE {ready} AND priority = 'vip' \
               ORDER BY fair_key, id {limit} FOR UPDATE SKIP LOCKED), \
             normal AS (SELECT id, fair_key FROM tasks WHERE {ready} AND priority <> 'vip' \
               ORDER BY fair_key, id {limit} FOR UPDATE SKIP LOCKED), \
             ranked AS ( \
               SELECT id, fair_key, 0 AS class, \
                 (row_number() OVER (ORDER BY fair_key, id) - 1 \
                   + coalesce((SELECT value FROM streak), 0)) / ${share} AS grp FROM vip \
               UNION ALL \
               SELECT id, fair_key, 1 AS class, \
                 row_number() OVER (ORDER BY fair_key, id) - 1 AS grp FROM normal), \
             chosen AS (SELECT id, class, \
                 row_number() OVER (ORDER BY grp, class, fair_key, id) AS rn FROM ranked \
               ORDER BY grp, class, fair_key, id {limit}), \
             claimed AS ({take} RETURNING t.*, chosen.rn), \
             counted AS (UPDATE cluster_state SET value = CASE \
                 WHEN EXISTS (SELECT 1 FROM chosen WHERE class = 1) THEN (SELECT count(*) \
                   FROM chosen WHERE rn > (SELECT max(rn) FROM chosen WHERE class = 1)) \
                 WHEN EXISTS (SELECT 1 FROM normal) \
                   THEN coalesce((SELECT value FROM streak), 0) + (SELECT count(*) FROM chosen) \
                 ELSE 0 END \
               WHERE key = 'vip_streak' AND EXISTS (SELECT 1 FROM chosen)) \
             {answer}"
        )
    };
    let mut rows = db.query_all(statement(&sql, values)).await?;
    rows.sort_by_key(|row| row.try_get::<i64>("", "rn").unwrap_or(0));
    let room = match rows.first() {
        Some(row) => row.try_get::<i64>("", "room")? as usize,
        None => 0,
    };
    let tasks = rows
        .iter()
        // The one row of a claim that took nothing holds the room alone.
        .filter(|row| {
            row.try_get::<Option<i64>>("", "id")
                .is_ok_and(|id| id.is_some())
        })
        .map(|row| {
            Ok(super::tasks::queued_task(task::Model::from_query_result(
                row, "",
            )?))
        })
        .collect::<Result<_, sea_orm::DbErr>>()?;
    Ok(Claimed { tasks, room })
}

/// What a claim took, and the room it had: taking fewer than the room, it found no more
/// ready tasks; taking the room, and less than it wanted, it ran out of free slots.
pub struct Claimed {
    pub tasks: Vec<QueuedTask>,
    pub room: usize,
}

/// A submission as admission sees it.
pub struct Admitting {
    pub user_id: UserId,
}

/// Why admission refused a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    QueueFull { capacity: usize },
    QuotaExceeded { limit: u32 },
}

/// Admits the rows in order against the global queue capacity and each user's quota of
/// unfinished tasks, under a lock every process's admission takes, and gives each
/// admitted row its fair key: after its user's last unfinished task, and not before the
/// head of the queue (start-time fair queueing). Runs in the transaction that inserts
/// the rows, so a refused row is never written and no limit is passed between a check
/// and a write. Without `wait`, a lock another transaction holds answers `None` at once.
/// Also says whether the lock was another's when asked for.
pub async fn admit(
    txn: &impl ConnectionTrait,
    rows: &[Admitting],
    capacity: usize,
    quota: u32,
    fair: bool,
    wait: bool,
) -> Result<Option<(Vec<Result<i64, Refusal>>, bool)>, StoreError> {
    let locked = txn
        .query_one(statement(
            "SELECT pg_try_advisory_xact_lock($1) AS locked",
            vec![ADMISSION_LOCK.into()],
        ))
        .await?
        .expect("a function call answers one row");
    let busy = !locked.try_get::<bool>("", "locked")?;
    if busy && !wait {
        return Ok(None);
    }
    if busy {
        txn.execute(statement(
            "SELECT pg_advisory_xact_lock($1)",
            vec![ADMISSION_LOCK.into()],
        ))
        .await?;
    }
    let head = txn
        .query_one(statement(
            "SELECT count(*) AS queued, min(fair_key) AS head FROM tasks WHERE status = 'QUEUED'",
            vec![],
        ))
        .await?
        .expect("an aggregate answers one row");
    let mut queued = head.try_get::<i64>("", "queued")? as usize;
    let head: Option<i64> = head.try_get("", "head")?;
    let top: i64 = txn
        .query_one(statement(
            "SELECT value FROM cluster_state WHERE key = 'fair_top'",
            vec![],
        ))
        .await?
        .map(|r| r.try_get("", "value"))
        .transpose()?
        .unwrap_or(0);
    let round = head.unwrap_or(top);
    let users: Vec<i64> = rows.iter().map(|r| r.user_id.0).collect();
    let mut per_user: HashMap<i64, (u32, Option<i64>)> = HashMap::new();
    for row in txn
        .query_all(statement(
            "SELECT user_id, count(*) AS n, max(fair_key) AS last FROM tasks \
             WHERE user_id = ANY($1) AND status IN ('QUEUED', 'RUNNING') GROUP BY user_id",
            vec![users.into()],
        ))
        .await?
    {
        let n: i64 = row.try_get("", "n")?;
        per_user.insert(
            row.try_get("", "user_id")?,
            (n as u32, row.try_get("", "last")?),
        );
    }
    let mut top_now = top;
    let mut answers = Vec::with_capacity(rows.len());
    for row in rows {
        let (unfinished, last) = per_user.entry(row.user_id.0).or_insert((0, None));
        if queued >= capacity {
            answers.push(Err(Refusal::QueueFull { capacity }));
            continue;
        }
        if quota > 0 && *unfinished >= quota {
            answers.push(Err(Refusal::QuotaExceeded { limit: quota }));
            continue;
        }
        let key = if fair {
            last.map_or(round, |last| (last + 1).max(round))
        } else {
            0
        };
        *unfinished += 1;
        *last = Some(key);
        queued += 1;
        top_now = top_now.max(key);
        answers.push(Ok(key));
    }
    if top_now != top {
        txn.execute(statement(
            "UPDATE cluster_state SET value = $1 WHERE key = 'fair_top'",
            vec![top_now.into()],
        ))
        .await?;
    }
    Ok(Some((answers, busy)))
}

/// QUEUED tasks in the whole cluster.
pub async fn queue_length(db: &DatabaseConnection) -> Result<u64, StoreError> {
    let row = db
        .query_one(statement(
            "SELECT count(*) AS n FROM tasks WHERE status = 'QUEUED'",
            vec![],
        ))
        .await?
        .expect("an aggregate answers one row");
    Ok(row.try_get::<i64>("", "n")? as u64)
}

/// The 1-based place each of these QUEUED tasks will be claimed in: tasks of its class
/// before it in fair order, plus (for a normal task) the VIP tasks the share lets by.
pub async fn positions(
    db: &DatabaseConnection,
    ids: &[TaskId],
    vip_share: u32,
) -> Result<HashMap<TaskId, usize>, StoreError> {
    let ids: Vec<String> = ids.iter().map(|id| id.as_str().to_string()).collect();
    let class = if vip_share == 0 {
        "true"
    } else {
        "(o.priority = 'vip') = (t.priority = 'vip')"
    };
    let rows = db
        .query_all(statement(
            &format!(
                "SELECT t.task_id, t.priority, \
                   (SELECT count(*) FROM tasks o WHERE o.status = 'QUEUED' AND {class} \
                     AND (o.fair_key, o.id) < (t.fair_key, t.id)) AS ahead, \
                   (SELECT count(*) FROM tasks o WHERE o.status = 'QUEUED' AND o.priority = 'vip') AS vips \
                 FROM tasks t WHERE t.task_id = ANY($1) AND t.status = 'QUEUED'"
            ),
            vec![ids.into()],
        ))
        .await?;
    let mut positions = HashMap::new();
    for row in rows {
        let ahead = row.try_get::<i64>("", "ahead")? as usize;
        let vip = row.try_get::<String>("", "priority")? == "vip";
        let vips = row.try_get::<i64>("", "vips")? as usize;
        let share = vip_share as usize;
        let interleaved = if vip || share == 0 {
            0
        } else {
            vips.min(share * (ahead + 1))
        };
        positions.insert(
            TaskId::from(row.try_get::<String>("", "task_id")?),
            ahead + interleaved + 1,
        );
    }
    Ok(positions)
}

/// The processes that beat within `alive`.
pub async fn live_nodes(
    db: &DatabaseConnection,
    alive: Duration,
) -> Result<Vec<node::Model>, StoreError> {
    let since: DateTime<Utc> = Utc::now() - chrono::Duration::from_std(alive).unwrap_or_default();
    use sea_orm::{ColumnTrait, QueryOrder};
    Ok(Node::find()
        .filter(node::Column::HeartbeatAt.gte(since))
        .order_by_asc(node::Column::StartedAt)
        .all(db)
        .await?)
}

/// Forgets processes silent for longer than `gone`.
pub async fn forget_nodes(db: &DatabaseConnection, gone: Duration) -> Result<(), StoreError> {
    db.execute(statement(
        "DELETE FROM nodes WHERE heartbeat_at < now() - $1 * interval '1 millisecond'",
        vec![millis(gone)],
    ))
    .await?;
    Ok(())
}

/// Call slots `0..capacity` of the instance exist.
pub async fn ensure_slots(
    db: &DatabaseConnection,
    instance: &str,
    capacity: u32,
) -> Result<(), StoreError> {
    db.execute(statement(
        "INSERT INTO slots (instance_key, slot) SELECT $1, generate_series(0, $2 - 1) \
         ON CONFLICT DO NOTHING",
        vec![instance.into(), (capacity as i32).into()],
    ))
    .await?;
    Ok(())
}

/// Takes a free call slot of the first of `candidates` (instance key, capacity) that has
/// one, in their order, for `node`: slots `capacity` and above are not used. Slots are
/// taken, given back and renewed on the lease connections (`super::connect_leases`).
pub async fn take_slot(
    db: &DatabaseConnection,
    node: &NodeId,
    candidates: &[(String, u32)],
    lease: Duration,
) -> Result<Option<(String, u32)>, StoreError> {
    if candidates.is_empty() {
        return Ok(None);
    }
    let keys: Vec<String> = candidates.iter().map(|(k, _)| k.clone()).collect();
    let caps: Vec<i32> = candidates.iter().map(|(_, c)| *c as i32).collect();
    let row = db
        .query_one(statement(
            "UPDATE slots SET holder = $1, held_until = now() + $4 * interval '1 millisecond' \
             WHERE (instance_key, slot) = ( \
               SELECT s.instance_key, s.slot FROM slots s \
               JOIN unnest($2::text[], $3::int[]) WITH ORDINALITY AS c(key, cap, ord) \
                 ON s.instance_key = c.key AND s.slot < c.cap \
               WHERE s.holder IS NULL OR s.held_until < now() \
               ORDER BY c.ord, s.slot LIMIT 1 FOR UPDATE OF s SKIP LOCKED) \
             RETURNING instance_key, slot",
            vec![
                node.as_str().into(),
                keys.into(),
                caps.into(),
                millis(lease),
            ],
        ))
        .await?;
    row.map(|row| {
        Ok((
            row.try_get::<String>("", "instance_key")?,
            row.try_get::<i32>("", "slot")? as u32,
        ))
    })
    .transpose()
    .map_err(|e: sea_orm::DbErr| e.into())
}

/// Gives a slot back (if this node still holds it) and wakes the others' waiters.
pub async fn release_slot(
    db: &DatabaseConnection,
    node: &NodeId,
    instance: &str,
    slot: u32,
) -> Result<(), StoreError> {
    db.execute(statement(
        "WITH freed AS (UPDATE slots SET holder = NULL, held_until = NULL \
           WHERE instance_key = $1 AND slot = $2 AND holder = $3 RETURNING 1) \
         SELECT pg_notify($4, 's') FROM freed",
        vec![
            instance.into(),
            (slot as i32).into(),
            node.as_str().into(),
            CHANNEL.into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Renews every slot this node holds.
pub async fn renew_slots(
    db: &DatabaseConnection,
    node: &NodeId,
    lease: Duration,
) -> Result<(), StoreError> {
    db.execute(statement(
        "UPDATE slots SET held_until = now() + $2 * interval '1 millisecond' WHERE holder = $1",
        vec![node.as_str().into(), millis(lease)],
    ))
    .await?;
    Ok(())
}
