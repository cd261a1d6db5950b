//! Dispatcher: admission control and the queue of admitted tasks.
//!
//! Owns the bounded in-memory queue (in submission order) and the set of idle workers;
//! no one else touches either. A submission is refused while the queue (counting
//! submissions still committing) is full, so nothing is written for a refused task. On
//! start it reloads the QUEUED tasks from the TaskStore, which is why tasks are committed
//! before they are queued.

use std::collections::VecDeque;
use std::time::Instant;

use actix::prelude::*;
use chrono::Utc;
use entity::task;
use sea_orm::{DbErr, Set};
use uuid::Uuid;

use super::messages::*;
use super::{TaskStore, Worker};
use crate::domain::ImageJob;

pub struct Dispatcher {
    store: Addr<TaskStore>,
    capacity: usize,
    queue: VecDeque<QueuedTask>,
    /// Admitted submissions whose insert has not committed yet; they hold queue places.
    reserved: usize,
    /// Workers waiting for a task.
    idle: Vec<Addr<Worker>>,
    workers: usize,
}

impl Dispatcher {
    pub fn new(store: Addr<TaskStore>, capacity: usize, workers: usize) -> Dispatcher {
        Dispatcher {
            store,
            capacity,
            queue: VecDeque::new(),
            reserved: 0,
            idle: Vec::new(),
            workers,
        }
    }

    fn dispatch(&mut self) {
        while !self.queue.is_empty() {
            let Some(worker) = self.idle.pop() else {
                return;
            };
            let task = self.queue.pop_front().expect("queue is not empty");
            if let Err(SendError::Full(Run(task)) | SendError::Closed(Run(task))) =
                worker.try_send(Run(task))
            {
                // A worker that cannot take a task is not idle; its supervisor will announce it again.
                self.queue.push_front(task);
            }
        }
    }
}

fn queued_task(model: task::Model) -> QueuedTask {
    QueuedTask {
        task_id: model.task_id,
        user_id: model.user_id,
        job: ImageJob {
            prompt: model.prompt,
            negative_prompt: model.negative_prompt,
            width: model.width.map(|v| v as u32),
            height: model.height.map(|v| v as u32),
            steps: model.steps as u32,
            seed: model.seed.map(|v| v as u64),
        },
        enqueued_at: Instant::now(),
    }
}

impl Actor for Dispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Hold every other message until the queue is rebuilt, so older tasks stay ahead.
        let reload = self.store.send(LoadQueued);
        ctx.wait(reload.into_actor(self).map(|result, dispatcher, ctx| match result {
            Ok(Ok(tasks)) => {
                if !tasks.is_empty() {
                    tracing::info!(tasks = tasks.len(), "re-queued unfinished tasks");
                }
                dispatcher.queue.extend(tasks.into_iter().map(queued_task));
                dispatcher.dispatch();
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot reload queued tasks; restarting the dispatcher");
                ctx.stop();
            }
            Err(e) => {
                tracing::error!(error = %e, "task store unavailable; restarting the dispatcher");
                ctx.stop();
            }
        }));
    }
}

impl Supervised for Dispatcher {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // The queue is rebuilt from the database in `started`.
        self.queue.clear();
        self.reserved = 0;
    }
}

/// Admission control, then commit, then queue.
impl Handler<Submit> for Dispatcher {
    type Result = ResponseActFuture<Self, Result<String, SubmitError>>;

    fn handle(&mut self, msg: Submit, _: &mut Context<Self>) -> Self::Result {
        if self.queue.len() + self.reserved >= self.capacity {
            return Box::pin(fut::ready(Err(SubmitError::QueueFull {
                capacity: self.capacity,
            })));
        }
        // Reserve the place before awaiting, so concurrent submissions cannot overfill.
        self.reserved += 1;
        let task_id = Uuid::new_v4().to_string();
        let now = Utc::now();
        let job = msg.job;
        let row = task::ActiveModel {
            task_id: Set(task_id.clone()),
            user_id: Set(msg.user_id),
            prompt: Set(job.prompt.clone()),
            negative_prompt: Set(job.negative_prompt.clone()),
            width: Set(job.width.map(|v| v as i32)),
            height: Set(job.height.map(|v| v as i32)),
            steps: Set(job.steps as i32),
            seed: Set(job.seed.map(|v| v as i64)),
            status: Set(task::Status::Queued),
            image_id: Set(None),
            error: Set(None),
            instance: Set(None),
            attempts: Set(0),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        };
        let insert = self.store.send(InsertTask(row));
        let user_id = msg.user_id;
        Box::pin(insert.into_actor(self).map(move |result, dispatcher, _| {
            dispatcher.reserved -= 1;
            match result {
                Ok(Ok(())) => {
                    dispatcher.queue.push_back(QueuedTask {
                        task_id: task_id.clone(),
                        user_id,
                        job,
                        enqueued_at: Instant::now(),
                    });
                    dispatcher.dispatch();
                    Ok(task_id)
                }
                Ok(Err(e)) => Err(SubmitError::Store(e)),
                Err(e) => Err(SubmitError::Store(DbErr::Custom(format!(
                    "task store unavailable: {e}"
                )))),
            }
        }))
    }
}

/// A worker is ready for its next task.
impl Handler<WorkerIdle> for Dispatcher {
    type Result = ();

    fn handle(&mut self, WorkerIdle(worker): WorkerIdle, _: &mut Context<Self>) {
        if !self.idle.contains(&worker) {
            self.idle.push(worker);
        }
        self.dispatch();
    }
}

/// Back to the head of the queue.
impl Handler<Requeue> for Dispatcher {
    type Result = ();

    fn handle(&mut self, Requeue(task): Requeue, _: &mut Context<Self>) {
        self.queue.push_front(task);
        self.dispatch();
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
