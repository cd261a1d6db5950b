//! Worker: one slot, one task at a time.
//!
//! Owns its awc client and nothing else; everything it learns goes to the actor that
//! owns it: a lease back to the InstanceRegistry, the task's end to the TaskStore, and
//! its own idleness to the Dispatcher, which then hands it the next task.

use std::time::{Duration, Instant};

use actix::prelude::*;
use entity::task::Status;
use tracing::Instrument;

use super::instance_registry::Lease;
use super::messages::*;
use super::{Dispatcher, InstanceRegistry, TaskStore};
use crate::backends::{qwen, BackendError};
use crate::settings::InstanceKind;

/// What a worker needs from the rest of the gateway.
#[derive(Clone)]
pub struct WorkerDeps {
    pub dispatcher: Addr<Dispatcher>,
    pub store: Addr<TaskStore>,
    pub registry: Addr<InstanceRegistry>,
    pub task_timeout: Duration,
    /// A task that finds no instance with room for this long fails.
    pub max_wait: Duration,
    pub max_response_bytes: usize,
}

pub struct Worker {
    slot: usize,
    deps: WorkerDeps,
    /// Backend calls; created in `started` because awc clients are bound to their thread.
    client: Option<awc::Client>,
}

impl Worker {
    pub fn new(slot: usize, deps: WorkerDeps) -> Worker {
        Worker {
            slot,
            deps,
            client: None,
        }
    }
}

impl Actor for Worker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // No client-wide timeout: each call carries the task timeout.
        self.client = Some(
            awc::Client::builder()
                .disable_redirects()
                .timeout(Duration::from_secs(24 * 3600))
                .finish(),
        );
        self.deps.dispatcher.do_send(WorkerIdle(ctx.address()));
    }
}

impl Supervised for Worker {}

/// Runs the task to its end, then asks for the next.
impl Handler<Run> for Worker {
    type Result = ();

    fn handle(&mut self, Run(task): Run, ctx: &mut Context<Self>) {
        let span = tracing::info_span!("task", task_id = %task.task_id, user_id = task.user_id, slot = self.slot, instance = tracing::field::Empty);
        let client = self.client.clone().expect("client is created in started");
        let run = run_task(self.deps.clone(), client, task).instrument(span);
        ctx.spawn(run.into_actor(self).map(|_, worker, ctx| {
            worker.deps.dispatcher.do_send(WorkerIdle(ctx.address()));
        }));
    }
}

async fn run_task(deps: WorkerDeps, client: awc::Client, task: QueuedTask) {
    let deadline = tokio::time::Instant::from_std(task.enqueued_at + deps.max_wait);
    let acquire = deps
        .registry
        .send(Acquire::waiting(InstanceKind::Image, task.user_id));
    let lease = match tokio::time::timeout_at(deadline, acquire).await {
        Ok(Ok(Ok(lease))) => lease,
        Ok(Ok(Err(e))) => return fail_queued(&deps, &task, e.to_string()).await,
        Ok(Err(e)) => {
            return fail_queued(
                &deps,
                &task,
                format!("the instance registry is unavailable: {e}"),
            )
            .await
        }
        Err(_) => {
            let error = format!(
                "no healthy backend instance within {}s",
                deps.max_wait.as_secs()
            );
            return fail_queued(&deps, &task, error).await;
        }
    };
    tracing::Span::current().record("instance", lease.url.as_str());

    match deps
        .store
        .send(MarkRunning {
            task_id: task.task_id.clone(),
            instance: lease.url.clone(),
        })
        .await
    {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => {
            tracing::info!("task is no longer queued; skipping it");
            return lease.release(CallOutcome::Neutral);
        }
        Ok(Err(e)) => return requeue(&deps, task, lease, e.to_string()).await,
        Err(e) => return requeue(&deps, task, lease, e.to_string()).await,
    }

    tracing::info!("calling backend");
    let started = Instant::now();
    let result = qwen::generate(
        &client,
        &lease.url,
        &task.job,
        deps.task_timeout,
        deps.max_response_bytes,
    )
    .await;
    let outcome = match result {
        Ok(image) => {
            lease.release(CallOutcome::Success {
                latency: started.elapsed(),
            });
            tracing::info!(
                bytes = image.bytes.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "task done"
            );
            TaskOutcome::Done {
                content_type: image.content_type,
                bytes: image.bytes,
            }
        }
        Err(error) => {
            let fault = classify(&error);
            lease.release(fault);
            tracing::warn!(%error, "task failed");
            TaskOutcome::Failed {
                error: error.to_string(),
            }
        }
    };
    finish(&deps, &task, Status::Running, outcome).await;
}

/// The store could not take the task; give it back and pause so a failing database is not
/// hammered in a loop.
async fn requeue(deps: &WorkerDeps, task: QueuedTask, lease: Lease, error: String) {
    tracing::error!(%error, "cannot mark the task running; putting it back in the queue");
    lease.release(CallOutcome::Neutral);
    tokio::time::sleep(Duration::from_secs(1)).await;
    deps.dispatcher.do_send(Requeue(task));
}

fn classify(error: &BackendError) -> CallOutcome {
    if error.is_instance_fault() {
        CallOutcome::InstanceFault {
            error: error.to_string(),
        }
    } else {
        CallOutcome::Neutral
    }
}

async fn fail_queued(deps: &WorkerDeps, task: &QueuedTask, error: String) {
    tracing::warn!(%error, "task failed before reaching a backend");
    finish(deps, task, Status::Queued, TaskOutcome::Failed { error }).await;
}

async fn finish(deps: &WorkerDeps, task: &QueuedTask, from: Status, outcome: TaskOutcome) {
    let message = FinishTask {
        task_id: task.task_id.clone(),
        user_id: task.user_id,
        from,
        outcome,
    };
    match deps.store.send(message).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => tracing::info!("task had already ended; outcome dropped"),
        // The task stays as stored; the start-up recovery pass picks it up again.
        Ok(Err(e)) => tracing::error!(error = %e, "cannot store the task's end"),
        Err(e) => {
            tracing::error!(error = %e, "task store unavailable; cannot store the task's end")
        }
    }
}
