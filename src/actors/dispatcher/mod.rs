//! Dispatcher: admission control and the queue of admitted tasks.
//!
//! Owns the bounded in-memory queue (served in fair order, see `fair_queue`), each
//! user's count of unfinished tasks (for the quota), the idle workers and which worker
//! runs which task; no one else touches them. A submission is refused while the queue
//! (counting submissions still committing) is full or the user is at their quota, so
//! nothing is written for a refused task. On start it reloads the QUEUED tasks from the
//! database, which is why tasks are committed before they are queued.

mod fair_queue;

use std::collections::HashMap;
use std::time::Instant;

use actix::prelude::*;
use sea_orm::DatabaseConnection;
use tokio::sync::oneshot;

use super::messages::*;
use super::task_store::{write, TaskStore};
use crate::domain::{NewTask, QueuedTask, TaskId, UserId};
use crate::settings::LimitSettings;
use crate::store::{self, StoreError};
use fair_queue::FairQueue;

pub struct Dispatcher {
    store: Addr<TaskStore>,
    /// Where the queue is reloaded from at start.
    db: DatabaseConnection,
    capacity: usize,
    queue: FairQueue,
    /// Admitted submissions whose insert has not committed yet; they hold queue places.
    reserved: usize,
    /// Unfinished tasks per user (committing, queued, waiting to retry or running).
    unfinished: HashMap<UserId, u32>,
    /// Most unfinished tasks per user; 0 = no quota.
    quota: u32,
    /// Workers waiting for a task.
    idle: Vec<WorkerHandle>,
    /// Which worker runs which user's task, so a cancel or a shutdown can abort it.
    running: HashMap<TaskId, (WorkerHandle, UserId)>,
    workers: usize,
    /// Workers the WorkerPool asked to retire that were busy: the next ones to report
    /// idle are dropped, and a worker nobody holds an address of stops.
    retiring: usize,
    /// Set by `Drain`: nothing is admitted or dispatched any more.
    draining: bool,
    /// Told when the last running task ends during a drain.
    drained: Option<oneshot::Sender<()>>,
}

impl Dispatcher {
    /// No workers: the WorkerPool announces them with `ResizeWorkers`.
    pub fn new(
        store: Addr<TaskStore>,
        db: DatabaseConnection,
        capacity: usize,
        limits: &LimitSettings,
    ) -> Dispatcher {
        Dispatcher {
            store,
            db,
            capacity,
            queue: FairQueue::new(limits.fair_order, limits.vip_share),
            reserved: 0,
            unfinished: HashMap::new(),
            quota: limits.max_queued_per_user,
            idle: Vec::new(),
            running: HashMap::new(),
            workers: 0,
            retiring: 0,
            draining: false,
            drained: None,
        }
    }

    fn dispatch(&mut self) {
        while !self.draining && !self.queue.is_empty() {
            let Some(worker) = self.idle.pop() else {
                return;
            };
            let task = self.queue.pop().expect("queue is not empty");
            let (task_id, user_id) = (task.task_id.clone(), task.user_id);
            match worker.run.try_send(Run(task)) {
                Ok(()) => {
                    self.running.insert(task_id, (worker, user_id));
                }
                // A worker that cannot take a task is not idle; its supervisor will
                // announce it again.
                Err(SendError::Full(Run(task)) | SendError::Closed(Run(task))) => {
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
        // Hold every other message until the queue is rebuilt, so older tasks stay ahead.
        let db = self.db.clone();
        let reload = async move { store::tasks::queued(&db).await };
        ctx.wait(
            reload
                .into_actor(self)
                .map(|result, dispatcher, ctx| match result {
                    Ok(tasks) => {
                        if !tasks.is_empty() {
                            tracing::info!(tasks = tasks.len(), "re-queued unfinished tasks");
                        }
                        for task in tasks {
                            dispatcher.count_in(task.user_id);
                            dispatcher.queue.push_back(task);
                        }
                        dispatcher.dispatch();
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot reload queued tasks; restarting");
                        ctx.stop();
                    }
                }),
        );
    }
}

impl Supervised for Dispatcher {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // The queue is rebuilt from the database in `started`; tasks handed out before
        // are guarded by the conditional QUEUED → RUNNING.
        self.queue.clear();
        self.reserved = 0;
        self.unfinished.clear();
    }
}

/// Admission control, then commit, then queue.
impl Handler<Submit> for Dispatcher {
    type Result = ResponseActFuture<Self, Result<Submitted, SubmitError>>;

    fn handle(&mut self, msg: Submit, _: &mut Context<Self>) -> Self::Result {
        if self.draining {
            return Box::pin(fut::ready(Err(SubmitError::ShuttingDown)));
        }
        if self.queue.len() + self.reserved >= self.capacity {
            let capacity = self.capacity;
            return Box::pin(fut::ready(Err(SubmitError::QueueFull { capacity })));
        }
        let user_id = msg.user_id;
        if self.quota > 0 && self.unfinished.get(&user_id).copied().unwrap_or(0) >= self.quota {
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
        };
        let insert = self.store.send(InsertTask(task.clone()));
        Box::pin(insert.into_actor(self).map(move |result, dispatcher, _| {
            dispatcher.reserved -= 1;
            let result = result
                .map_err(StoreError::from)
                .and_then(|inserted| inserted);
            if !matches!(result, Ok(Inserted::New)) {
                dispatcher.count_out(user_id);
            }
            match result? {
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
                    let task_id = task.task_id.clone();
                    dispatcher.queue.push_back(QueuedTask::fresh(task));
                    dispatcher.dispatch();
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

    fn handle(&mut self, WorkerIdle(worker): WorkerIdle, _: &mut Context<Self>) {
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
            tracing::debug!("worker retired");
            return;
        }
        if !self.idle.contains(&worker) {
            self.idle.push(worker);
        }
        self.dispatch();
    }
}

/// Counts new workers (they announce themselves) and retires idle ones, or busy ones as
/// they finish.
impl Handler<ResizeWorkers> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: ResizeWorkers, _: &mut Context<Self>) {
        self.workers = (self.workers + msg.added).saturating_sub(msg.retire);
        self.retiring += msg.retire;
        while self.retiring > 0 && self.idle.pop().is_some() {
            self.retiring -= 1;
        }
    }
}

/// Back to the head of the queue once the backoff has passed.
impl Handler<RetryLater> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: RetryLater, ctx: &mut Context<Self>) {
        let mut task = msg.task;
        // Still unfinished after its worker reports idle (which comes after this).
        self.count_in(task.user_id);
        ctx.run_later(msg.delay, move |dispatcher, _| {
            // A fresh max wait: the instance it failed on may have been ejected.
            task.enqueued_at = Instant::now();
            dispatcher.queue.push_front(task);
            dispatcher.dispatch();
        });
    }
}

/// Out of the queue, or abort the worker running it.
impl Handler<TaskCancelled> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: TaskCancelled, _: &mut Context<Self>) {
        if self.queue.remove(&msg.task_id, msg.user_id).is_some() {
            self.count_out(msg.user_id);
        }
        // A running task is counted out when its worker reports idle.
        if let Some((worker, _)) = self.running.get(&msg.task_id) {
            worker.abort.do_send(Abort(msg.task_id));
        }
    }
}

/// Where the user's tasks stand in the queue.
impl Handler<QueuePositions> for Dispatcher {
    type Result = MessageResult<QueuePositions>;

    fn handle(&mut self, msg: QueuePositions, _: &mut Context<Self>) -> Self::Result {
        MessageResult(
            msg.task_ids
                .iter()
                .map(|task_id| self.queue.position(task_id, msg.user_id))
                .collect(),
        )
    }
}

/// Graceful shutdown: stop, let running tasks finish within the grace, then abort the
/// rest and return them to QUEUED, and answer once every ending is committed.
impl Handler<Drain> for Dispatcher {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Drain, _: &mut Context<Self>) -> Self::Result {
        self.draining = true;
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

/// Queue length, capacity and worker use.
impl Handler<GetQueueStats> for Dispatcher {
    type Result = MessageResult<GetQueueStats>;

    fn handle(&mut self, _: GetQueueStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(QueueStats {
            queue_length: self.queue.len(),
            queue_capacity: self.capacity,
            workers: self.workers,
            busy_workers: self.workers.saturating_sub(self.idle.len()),
        })
    }
}
