//! Dispatcher: admission control and the queue of admitted tasks.
//!
//! Owns the bounded in-memory queue (served in fair order, see `fair_queue`), each
//! user's count of unfinished tasks (for the quota), the idle workers and which worker
//! runs which task; no one else touches them. A submission is refused while the queue
//! (counting submissions still committing) is full or the user is at their quota, so
//! nothing is written for a refused task. On start (and after a restart by its
//! supervisor, which a panic in one of its handlers leads to) it reloads the QUEUED tasks
//! from the database, which is why tasks are committed before they are queued; every
//! `RESYNC_EVERY` it also takes in QUEUED tasks it does not know, so a task committed
//! while nobody could queue it (a crash between commit and reply) still runs.
//!
//! With several gateways on PostgreSQL (`shared`), the queue is the database's: admission
//! happens in the inserting transaction, and idle workers get tasks claimed in the
//! global fair order, on wake-ups, after each task and on a poll (a worker whose call
//! ended on a slot it kept gets the next task claimed for that slot); this actor renews
//! its claims, takes over those of dead gateways, and hands its own back on a drain.

mod fair_queue;
mod shared;

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use actix::prelude::*;
use sea_orm::DatabaseConnection;
use tokio::sync::oneshot;

use super::messages::*;
use super::task_store::{write, TaskStore};
use crate::cluster::Cluster;
use crate::domain::{NewTask, QueuedTask, TaskId, UserId};
use crate::faults;
use crate::settings::Settings;
use crate::store::{self, StoreError};
use fair_queue::FairQueue;
use shared::Shared;

/// How often the queue is checked against the database's QUEUED tasks.
const RESYNC_EVERY: Duration = Duration::from_secs(5);

pub struct Dispatcher {
    store: Addr<TaskStore>,
    /// Where the queue is reloaded from at start.
    db: DatabaseConnection,
    capacity: usize,
    queue: FairQueue,
    /// Admitted submissions whose insert has not committed yet; they hold queue places.
    reserved: usize,
    /// Their ids, and those of tasks waiting out a retry's backoff: QUEUED in the
    /// database but not in `queue`, and known, so a resync does not queue them twice.
    inserting: HashSet<TaskId>,
    retrying: HashSet<TaskId>,
    /// Unfinished tasks per user (committing, queued, waiting to retry or running).
    unfinished: HashMap<UserId, u32>,
    /// Most unfinished tasks per user; 0 = no quota.
    quota: u32,
    /// Workers waiting for a task.
    idle: Vec<WorkerHandle>,
    /// Every live worker, by slot: after a restart, those not running a task are idle
    /// (a panic mid-dispatch may have dropped one from `idle`).
    live: HashMap<usize, WorkerHandle>,
    /// Which worker runs which user's task, so a cancel or a shutdown can abort it.
    running: HashMap<TaskId, (WorkerHandle, UserId)>,
    workers: usize,
    /// Workers the WorkerPool asked to retire that were busy: the next ones to report
    /// idle are dropped, and a worker nobody holds an address of stops.
    retiring: usize,
    /// Set by `Drain`: nothing is admitted or dispatched any more.
    draining: bool,
    /// Set by an admin: submissions are admitted, nothing is dispatched.
    paused: bool,
    /// Told when the last running task ends during a drain.
    drained: Option<oneshot::Sender<()>>,
    /// With several gateways: the queue is the database's, claimed from.
    shared: Option<Shared>,
    /// When this gateway started, for the nodes listing.
    started_at: chrono::DateTime<chrono::Utc>,
}

impl Dispatcher {
    /// No workers: the WorkerPool announces them with `ResizeWorkers`.
    pub fn new(
        store: Addr<TaskStore>,
        db: DatabaseConnection,
        settings: &Settings,
        cluster: Option<Cluster>,
    ) -> Dispatcher {
        let limits = &settings.limits;
        let max_attempts = settings.workers.max_attempts as i32;
        Dispatcher {
            store,
            db,
            capacity: settings.queue.capacity,
            shared: cluster.map(|cluster| Shared::new(cluster, limits.vip_share, max_attempts)),
            queue: FairQueue::new(limits.fair_order, limits.vip_share),
            reserved: 0,
            inserting: HashSet::new(),
            retrying: HashSet::new(),
            unfinished: HashMap::new(),
            quota: limits.max_queued_per_user,
            idle: Vec::new(),
            live: HashMap::new(),
            running: HashMap::new(),
            workers: 0,
            retiring: 0,
            draining: false,
            paused: false,
            drained: None,
            started_at: chrono::Utc::now(),
        }
    }

    /// Hands queued tasks to idle workers. A panic in here is contained: the Dispatcher
    /// stops and its supervisor starts it again, with the queue reloaded.
    fn dispatch(&mut self, ctx: &mut Context<Self>) {
        if self.shared.is_some() {
            return self.claim(ctx);
        }
        if std::panic::catch_unwind(AssertUnwindSafe(|| self.dispatch_now())).is_err() {
            tracing::error!("the dispatcher failed; restarting it with the queue reloaded");
            ctx.stop();
        }
    }

    fn dispatch_now(&mut self) {
        while !self.draining && !self.paused && !self.queue.is_empty() {
            let Some(worker) = self.idle.pop() else {
                return;
            };
            let task = self.queue.pop().expect("queue is not empty");
            faults::hit(faults::Site::DispatcherDispatch);
            let (task_id, user_id) = (task.task_id.clone(), task.user_id);
            match worker.run.try_send(Run(task, None)) {
                Ok(()) => {
                    self.running.insert(task_id, (worker, user_id));
                }
                // A worker that cannot take a task is not idle; its supervisor will
                // announce it again.
                Err(SendError::Full(Run(task, _)) | SendError::Closed(Run(task, _))) => {
                    self.queue.push_front(task)
                }
            }
        }
    }

    fn count_in(&mut self, user_id: UserId) {
        *self.unfinished.entry(user_id).or_default() += 1;
    }

    fn count_out(&mut self, user_id: UserId) {
        if let Some(count) = self.unfinished.get_mut(&user_id) {
            *count -= 1;
            if *count == 0 {
                self.unfinished.remove(&user_id);
            }
        }
    }
}

impl Actor for Dispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.shared.is_some() {
            return self.start_shared(ctx);
        }
        // Hold every other message until the queue is rebuilt, so older tasks stay ahead.
        let db = self.db.clone();
        let reload = async move {
            let paused = store::meta::paused(&db).await?;
            Ok::<_, StoreError>((paused, store::tasks::queued(&db).await?))
        };
        ctx.wait(
            reload
                .into_actor(self)
                .map(|result, dispatcher, ctx| match result {
                    Ok((paused, tasks)) => {
                        dispatcher.paused = paused;
                        if paused {
                            tracing::warn!("dispatching is paused by an admin");
                        }
                        if !tasks.is_empty() {
                            tracing::info!(tasks = tasks.len(), "re-queued unfinished tasks");
                        }
                        let running: Vec<UserId> =
                            dispatcher.running.values().map(|(_, user)| *user).collect();
                        for user_id in running {
                            dispatcher.count_in(user_id);
                        }
                        for task in tasks {
                            dispatcher.count_in(task.user_id);
                            dispatcher.queue.push_back(task);
                        }
                        dispatcher.dispatch(ctx);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot reload queued tasks; restarting");
                        ctx.stop();
                    }
                }),
        );
        ctx.run_interval(RESYNC_EVERY, |dispatcher, ctx| dispatcher.resync(ctx));
    }
}

impl Supervised for Dispatcher {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // The queue is rebuilt from the database in `started`; tasks handed out before
        // are guarded by the conditional QUEUED → RUNNING. The workers, idle and busy,
        // are as they were: only this actor knows them, and they are alive.
        self.queue.clear();
        self.reserved = 0;
        self.inserting.clear();
        self.retrying.clear();
        self.unfinished.clear();
        let busy: HashSet<usize> = self.running.values().map(|(w, _)| w.slot).collect();
        self.idle = self
            .live
            .values()
            .filter(|w| !busy.contains(&w.slot))
            .cloned()
            .collect();
    }
}

impl Dispatcher {
    /// Queues the QUEUED tasks of the database this actor does not know.
    fn resync(&mut self, ctx: &mut Context<Self>) {
        if self.draining {
            return;
        }
        let db = self.db.clone();
        let queued = async move { store::tasks::queued_ids(&db).await };
        ctx.spawn(queued.into_actor(self).then(|ids, dispatcher, _| {
            let queued = dispatcher.queue.ids();
            let unknown: Vec<TaskId> = ids
                .unwrap_or_default()
                .into_iter()
                .filter(|id| !queued.contains(id) && !dispatcher.elsewhere(id))
                .collect();
            let db = dispatcher.db.clone();
            async move {
                if unknown.is_empty() {
                    return Ok(Vec::new());
                }
                store::tasks::queued_among(&db, &unknown).await
            }
            .into_actor(dispatcher)
            .map(|found, dispatcher, ctx| {
                let queued: HashSet<TaskId> = dispatcher.queue.ids().into_iter().cloned().collect();
                for task in found.unwrap_or_default() {
                    // Known by now (its insert's reply came in meanwhile): queued already.
                    if queued.contains(&task.task_id) || dispatcher.elsewhere(&task.task_id) {
                        continue;
                    }
                    tracing::warn!(task_id = %task.task_id, "a queued task was not in the queue; queueing it");
                    dispatcher.count_in(task.user_id);
                    dispatcher.queue.push_back(task);
                }
                dispatcher.dispatch(ctx);
            })
        }));
    }

    /// Whether the task is running, committing or waiting to retry here.
    fn elsewhere(&self, task_id: &TaskId) -> bool {
        self.running.contains_key(task_id)
            || self.inserting.contains(task_id)
            || self.retrying.contains(task_id)
    }
}

/// Admission control, then commit, then queue.
impl Handler<Submit> for Dispatcher {
    type Result = ResponseActFuture<Self, Result<Submitted, SubmitError>>;

    fn handle(&mut self, msg: Submit, _: &mut Context<Self>) -> Self::Result {
        if self.draining {
            return Box::pin(fut::ready(Err(SubmitError::ShuttingDown)));
        }
        let shared = self.shared.is_some();
        // With several gateways the limits are global: the store checks them as it inserts.
        if !shared && self.queue.len() + self.reserved >= self.capacity {
            let capacity = self.capacity;
            return Box::pin(fut::ready(Err(SubmitError::QueueFull { capacity })));
        }
        let user_id = msg.user_id;
        if !shared
            && self.quota > 0
            && self.unfinished.get(&user_id).copied().unwrap_or(0) >= self.quota
        {
            let limit = self.quota;
            return Box::pin(fut::ready(Err(SubmitError::QuotaExceeded { limit })));
        }
        // Reserve the place before awaiting, so concurrent submissions cannot overfill.
        self.reserved += 1;
        self.count_in(user_id);
        let task = NewTask {
            task_id: TaskId::generate(),
            user_id,
            priority: msg.priority,
            job: msg.job,
            idempotency: msg.idempotency,
            trace: msg.trace,
            webhook: msg.webhook,
        };
        self.inserting.insert(task.task_id.clone());
        let insert = self.store.send(InsertTask(task.clone()));
        Box::pin(insert.into_actor(self).map(move |result, dispatcher, ctx| {
            dispatcher.reserved -= 1;
            dispatcher.inserting.remove(&task.task_id);
            let result = result
                .map_err(StoreError::from)
                .and_then(|inserted| inserted);
            if !matches!(result, Ok(Inserted::New)) {
                dispatcher.count_out(user_id);
            }
            match result? {
                Inserted::Refused(Refusal::QueueFull { capacity }) => {
                    Err(SubmitError::QueueFull { capacity })
                }
                Inserted::Refused(Refusal::QuotaExceeded { limit }) => {
                    Err(SubmitError::QuotaExceeded { limit })
                }
                Inserted::UserGone => Err(SubmitError::UserGone),
                Inserted::Existing {
                    task_id,
                    request_hash,
                } => {
                    let asked = task.idempotency.map(|i| i.request_hash);
                    if request_hash != asked {
                        return Err(SubmitError::KeyReused);
                    }
                    Ok(Submitted {
                        task_id,
                        replayed: true,
                    })
                }
                Inserted::New => {
                    crate::telemetry::METRICS.task_submitted();
                    let task_id = task.task_id.clone();
                    if dispatcher.shared.is_none() {
                        dispatcher.queue.push_back(QueuedTask::fresh(task));
                    }
                    dispatcher.dispatch(ctx);
                    Ok(Submitted {
                        task_id,
                        replayed: false,
                    })
                }
            }
        }))
    }
}

/// A worker is ready for its next task.
impl Handler<WorkerIdle> for Dispatcher {
    type Result = ();

    fn handle(&mut self, WorkerIdle(worker, kept): WorkerIdle, ctx: &mut Context<Self>) {
        let finished = self
            .running
            .iter()
            .find(|(_, (w, _))| *w == worker)
            .map(|(task_id, (_, user_id))| (task_id.clone(), *user_id));
        if let Some((task_id, user_id)) = finished {
            self.running.remove(&task_id);
            self.count_out(user_id);
        }
        if self.draining && self.running.is_empty() {
            if let Some(drained) = self.drained.take() {
                let _ = drained.send(());
            }
        }
        if self.retiring > 0 {
            self.retiring -= 1;
            self.idle.retain(|w| *w != worker);
            self.live.remove(&worker.slot);
            tracing::debug!("worker retired");
            // A lease it kept is dropped here: it goes back.
            return;
        }
        self.live.insert(worker.slot, worker.clone());
        if let Some(lease) = kept.filter(|_| !self.idle.contains(&worker)) {
            return self.claim_next(worker, lease, ctx);
        }
        if !self.idle.contains(&worker) {
            self.idle.push(worker);
        }
        self.dispatch(ctx);
    }
}

/// Counts new workers (they announce themselves) and retires idle ones, or busy ones as
/// they finish.
impl Handler<ResizeWorkers> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: ResizeWorkers, _: &mut Context<Self>) {
        self.workers = (self.workers + msg.added).saturating_sub(msg.retire);
        self.retiring += msg.retire;
        while self.retiring > 0 {
            let Some(retired) = self.idle.pop() else {
                break;
            };
            self.live.remove(&retired.slot);
            self.retiring -= 1;
        }
    }
}

/// Back to the head of the queue once the backoff has passed.
impl Handler<RetryLater> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: RetryLater, ctx: &mut Context<Self>) {
        if self.shared.is_some() {
            // The task waits in the database until its backoff is over; look then.
            ctx.run_later(msg.delay, |dispatcher, ctx| dispatcher.claim(ctx));
            return;
        }
        let mut task = msg.task;
        // Still unfinished after its worker reports idle (which comes after this).
        self.count_in(task.user_id);
        self.retrying.insert(task.task_id.clone());
        ctx.run_later(msg.delay, move |dispatcher, ctx| {
            dispatcher.retrying.remove(&task.task_id);
            // A fresh max wait: the instance it failed on may have been ejected.
            task.enqueued_at = Instant::now();
            dispatcher.queue.push_front(task);
            dispatcher.dispatch(ctx);
        });
    }
}

/// Out of the queue, or abort the worker running it.
impl Handler<TaskCancelled> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: TaskCancelled, _: &mut Context<Self>) {
        if let Some(user_id) = msg.user_id {
            if self.queue.remove(&msg.task_id, user_id).is_some() {
                self.count_out(user_id);
            }
        }
        // A running task is counted out when its worker reports idle.
        if let Some((worker, _)) = self.running.get(&msg.task_id) {
            worker.abort.do_send(Abort(msg.task_id));
        }
    }
}

/// Where the user's tasks stand in the queue.
impl Handler<QueuePositions> for Dispatcher {
    type Result = ResponseFuture<Result<Vec<Option<usize>>, StoreError>>;

    fn handle(
        &mut self,
        QueuePositions(asked): QueuePositions,
        _: &mut Context<Self>,
    ) -> Self::Result {
        if let Some(shared) = &self.shared {
            let (db, share) = (self.db.clone(), shared.vip_share);
            return Box::pin(async move {
                let ids: Vec<TaskId> = asked.iter().map(|(_, id)| id.clone()).collect();
                let found = store::cluster::positions(&db, &ids, share).await?;
                Ok(ids.iter().map(|id| found.get(id).copied()).collect())
            });
        }
        let in_queue: Vec<(&TaskId, UserId)> = asked.iter().map(|(u, t)| (t, *u)).collect();
        // A task a worker holds while it waits for an instance, or one waiting out a
        // retry's backoff, is still QUEUED: it is next, ahead of the queue.
        let positions = self
            .queue
            .positions(&in_queue)
            .into_iter()
            .zip(&asked)
            .map(|(position, (_, task_id))| {
                position.or_else(|| {
                    (self.running.contains_key(task_id) || self.retrying.contains(task_id))
                        .then_some(1)
                })
            })
            .collect();
        Box::pin(async move { Ok(positions) })
    }
}

/// Graceful shutdown: stop, let running tasks finish within the grace, then abort the
/// rest and return them to QUEUED, and answer once every ending is committed.
impl Handler<Drain> for Dispatcher {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Drain, ctx: &mut Context<Self>) -> Self::Result {
        self.draining = true;
        if self.shared.is_some() {
            self.hand_back(ctx);
        }
        let (tx, rx) = oneshot::channel();
        if self.running.is_empty() {
            let _ = tx.send(());
        } else {
            tracing::info!(
                running = self.running.len(),
                "waiting for running tasks to finish"
            );
            self.drained = Some(tx);
        }
        let wait = async move { tokio::time::timeout(msg.grace, rx).await.is_ok() };
        Box::pin(wait.into_actor(self).then(|finished, dispatcher, _| {
            let leftover: Vec<TaskId> = dispatcher
                .running
                .drain()
                .map(|(task_id, (worker, _))| {
                    worker.abort.do_send(Abort(task_id.clone()));
                    task_id
                })
                .collect();
            if !finished {
                tracing::warn!(
                    tasks = leftover.len(),
                    "grace period over; re-queueing running tasks"
                );
            }
            let store = dispatcher.store.clone();
            async move {
                if !leftover.is_empty() {
                    // Left RUNNING, they are recovered at the next start.
                    if let Err(e) = write(&store, RequeueRunning(leftover)).await {
                        tracing::error!(error = %e, "cannot re-queue running tasks");
                    }
                }
                // Workers hand over endings without waiting for their commit.
                if let Err(e) = write(&store, Flush).await {
                    tracing::error!(error = %e, "cannot store the last endings");
                }
            }
            .into_actor(dispatcher)
        }))
    }
}

/// Answering is being ready: the queue is loaded before any message is handled.
impl Handler<Ping> for Dispatcher {
    type Result = bool;

    fn handle(&mut self, _: Ping, _: &mut Context<Self>) -> bool {
        true
    }
}

/// Queue length (the whole cluster's, with several gateways), capacity and worker use.
impl Handler<GetQueueStats> for Dispatcher {
    type Result = ResponseFuture<Result<QueueStats, StoreError>>;

    fn handle(&mut self, _: GetQueueStats, _: &mut Context<Self>) -> Self::Result {
        let mut stats = QueueStats {
            queue_length: self.queue.len(),
            queue_capacity: self.capacity,
            workers: self.workers,
            busy_workers: self.workers.saturating_sub(self.idle.len()),
            paused: self.paused,
        };
        if self.shared.is_none() {
            return Box::pin(async move { Ok(stats) });
        }
        let db = self.db.clone();
        Box::pin(async move {
            stats.queue_length = store::cluster::queue_length(&db).await? as usize;
            Ok(stats)
        })
    }
}

/// Claims for the idle workers (several gateways; one gateway has its queue in memory).
impl Handler<Wake> for Dispatcher {
    type Result = ();

    fn handle(&mut self, Wake(why): Wake, ctx: &mut Context<Self>) {
        self.wake(why, ctx);
    }
}

/// The live gateways: with several, from their heartbeats; alone, this one.
impl Handler<ListNodes> for Dispatcher {
    type Result = ResponseFuture<Result<Vec<entity::node::Model>, StoreError>>;

    fn handle(&mut self, _: ListNodes, _: &mut Context<Self>) -> Self::Result {
        let Some(shared) = &self.shared else {
            let me = shared::this_node(&self.started_at, self.running.len());
            return Box::pin(async move { Ok(vec![me]) });
        };
        let (db, alive) = (self.db.clone(), shared.cluster.lease);
        Box::pin(async move { store::cluster::live_nodes(&db, alive).await })
    }
}

/// Persists the pause, then applies it: paused, running tasks finish and queued ones
/// wait; resumed, the queue is served again.
impl Handler<SetPaused> for Dispatcher {
    type Result = ResponseActFuture<Self, Result<(), StoreError>>;

    fn handle(&mut self, SetPaused(paused): SetPaused, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        let persist = async move { store::meta::set_paused(&db, paused).await };
        Box::pin(
            persist
                .into_actor(self)
                .map(move |persisted, dispatcher, ctx| {
                    persisted?;
                    dispatcher.paused = paused;
                    tracing::info!(paused, "dispatching paused or resumed by an admin");
                    dispatcher.dispatch(ctx);
                    Ok(())
                }),
        )
    }
}

/// Admits as many of the tasks as the queue has room for (and their users' quotas
/// allow), reserving their places before the write, then queues those requeued.
impl Handler<RetryTasks> for Dispatcher {
    type Result = ResponseActFuture<Self, Result<u64, StoreError>>;

    fn handle(&mut self, RetryTasks(tasks): RetryTasks, _: &mut Context<Self>) -> Self::Result {
        if self.draining {
            return Box::pin(fut::ready(Ok(0)));
        }
        if self.shared.is_some() {
            // The queue is the database's: the store admits them as it writes.
            let ids = tasks.into_iter().map(|(task_id, _)| task_id).collect();
            let retry = self.store.send(RequeueFinished(ids));
            return Box::pin(retry.into_actor(self).map(|retried, dispatcher, ctx| {
                let retried = retried??;
                dispatcher.claim(ctx);
                Ok(retried.len() as u64)
            }));
        }
        let mut room = self
            .capacity
            .saturating_sub(self.queue.len() + self.reserved);
        let mut chosen = Vec::new();
        for (task_id, user_id) in tasks {
            if room == 0 {
                break;
            }
            let unfinished = self.unfinished.get(&user_id).copied().unwrap_or(0);
            if self.quota > 0 && unfinished >= self.quota {
                continue;
            }
            room -= 1;
            self.count_in(user_id);
            self.inserting.insert(task_id.clone());
            chosen.push((task_id, user_id));
        }
        self.reserved += chosen.len();
        let ids = chosen.iter().map(|(task_id, _)| task_id.clone()).collect();
        let retry = self.store.send(RequeueFinished(ids));
        Box::pin(retry.into_actor(self).map(move |retried, dispatcher, ctx| {
            dispatcher.reserved -= chosen.len();
            let retried = retried.map_err(StoreError::from).and_then(|r| r);
            let requeued: HashSet<TaskId> = match &retried {
                Ok(tasks) => tasks.iter().map(|t| t.task_id.clone()).collect(),
                Err(_) => HashSet::new(),
            };
            for (task_id, user_id) in &chosen {
                dispatcher.inserting.remove(task_id);
                if !requeued.contains(task_id) {
                    dispatcher.count_out(*user_id);
                }
            }
            let tasks = retried?;
            let count = tasks.len() as u64;
            for task in tasks {
                dispatcher.queue.push_back(task);
            }
            dispatcher.dispatch(ctx);
            Ok(count)
        }))
    }
}
