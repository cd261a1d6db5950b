//! Worker: one slot, one task at a time.
//!
//! Owns its awc client and the handle of the task it runs (so a cancel or a shutdown can
//! drop the backend call at once); everything it learns goes to the actor that owns it:
//! a lease back to the InstanceRegistry, the task's end to the TaskStore, a retry and
//! its own idleness to the Dispatcher, which then hands it the next task. With several
//! gateways a call that succeeded may leave the worker holding its lease (the registry
//! decides), which goes with its idleness to the Dispatcher and comes back with the next
//! task, so that task starts without giving the shared slot back and taking one again.

use std::time::{Duration, Instant};

use std::panic::AssertUnwindSafe;

use actix::prelude::*;
use futures_util::FutureExt;
use rand::Rng;
use tracing::Instrument;

use super::dispatcher::Dispatcher;
use super::instance_registry::InstanceRegistry;
use super::messages::*;
use super::task_store::write;
use super::task_store::TaskStore;
use crate::backends;
use crate::domain::{InstanceKind, QueuedTask, TaskId};
use crate::telemetry::METRICS;
use crate::{faults, telemetry};

/// Longest pause between two attempts of one task.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Pause before asking a restarting registry for an instance again.
const ASK_AGAIN: Duration = Duration::from_millis(100);

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
    pub max_attempts: i32,
    /// Pause before the first retry; doubles with each further attempt.
    pub retry_base: Duration,
}

pub struct Worker {
    slot: usize,
    deps: WorkerDeps,
    /// Backend calls; created in `started` because awc clients are bound to their thread.
    client: Option<awc::Client>,
    /// The task running now, and the handle that drops it.
    current: Option<(TaskId, SpawnHandle)>,
}

impl Worker {
    pub fn new(slot: usize, deps: WorkerDeps) -> Worker {
        Worker {
            slot,
            deps,
            client: None,
            current: None,
        }
    }

    fn report_idle(&mut self, kept: Option<Lease>, ctx: &mut Context<Self>) {
        self.current = None;
        let me = ctx.address();
        let handle = WorkerHandle {
            slot: self.slot,
            run: me.clone().recipient(),
            abort: me.recipient(),
        };
        self.deps.dispatcher.do_send(WorkerIdle(handle, kept));
    }
}

impl Actor for Worker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.client = Some(backends::client());
        self.report_idle(None, ctx);
    }
}

impl Supervised for Worker {}

/// Runs the task to its end, then asks for the next.
impl Handler<Run> for Worker {
    type Result = ();

    fn handle(&mut self, Run(task, kept): Run, ctx: &mut Context<Self>) {
        let span = tracing::info_span!(
            "task attempt",
            otel.name = "image task attempt",
            task_id = %task.task_id,
            user_id = %task.user_id,
            attempt = task.attempts + 1,
            slot = self.slot,
            instance = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        // A child of the submission's span, even after a restart: the context is stored.
        telemetry::continue_trace(&span, task.trace.as_ref());
        let task_id = task.task_id.clone();
        let client = self.client.clone().expect("client is created in started");
        // A panic inside the attempt is contained here: its lease is released as the
        // future unwinds, the task is put back (or failed), and the worker restarts.
        let run = AssertUnwindSafe(run_task(self.deps.clone(), client, task.clone(), kept))
            .catch_unwind()
            .instrument(span.clone());
        let handle = ctx.spawn(run.into_actor(self).map(move |ran, worker, ctx| match ran {
            Ok(kept) => worker.report_idle(kept, ctx),
            Err(panic) => worker.crashed(task, panic_message(&panic), span, ctx),
        }));
        self.current = Some((task_id, handle));
    }
}

impl Worker {
    /// After a panic in an attempt: the attempt counts (back to QUEUED, or FAILED when it
    /// was the last), then the worker stops and its supervisor starts it afresh, and the
    /// fresh worker reports idle. A task that had not become RUNNING goes back to the
    /// queue as it was.
    fn crashed(
        &mut self,
        task: QueuedTask,
        panic: String,
        span: tracing::Span,
        ctx: &mut Context<Self>,
    ) {
        let attempt = task.attempts + 1;
        let _entered = span.enter();
        tracing::error!(%panic, slot = self.slot, "worker crashed during an attempt; restarting it");
        let error = format!("the gateway's worker crashed during attempt {attempt}: {panic}");
        let deps = self.deps.clone();
        let put_back = async move {
            let last = attempt >= deps.max_attempts;
            let delay = backoff(deps.retry_base, attempt);
            let outcome = if last {
                TaskOutcome::Failed { error }
            } else {
                TaskOutcome::Retry {
                    error,
                    after: delay,
                }
            };
            let expect = Expect::Running { attempt };
            if finish(&deps, &task, expect, outcome, None).await {
                if !last {
                    let mut task = task;
                    task.attempts = attempt;
                    deps.dispatcher.do_send(RetryLater { task, delay });
                }
            } else {
                // Not RUNNING at this attempt: still QUEUED (the next worker's conditional
                // RUNNING tells), or it ended meanwhile (and the next worker skips it).
                deps.dispatcher.do_send(RetryLater {
                    task,
                    delay: Duration::ZERO,
                });
            }
        };
        ctx.spawn(put_back.into_actor(self).map(|_, _, ctx| ctx.stop()));
    }
}

/// What a caught panic said.
fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Drops the running task's future (its backend call and lease with it) if it is this one.
impl Handler<Abort> for Worker {
    type Result = ();

    fn handle(&mut self, Abort(task_id): Abort, ctx: &mut Context<Self>) {
        if let Some((running, handle)) = self.current.take() {
            if running == task_id {
                ctx.cancel_future(handle);
                tracing::info!(%task_id, slot = self.slot, "task aborted");
                self.report_idle(None, ctx);
            } else {
                self.current = Some((running, handle));
            }
        }
    }
}

/// Runs one attempt; answers the lease when the registry lets the worker keep it.
async fn run_task(
    deps: WorkerDeps,
    client: awc::Client,
    mut task: QueuedTask,
    kept: Option<Lease>,
) -> Option<Lease> {
    // A kept lease serves unless the task is to avoid its instance (dropped, it goes back).
    let lease = match kept.filter(|lease| Some(lease.instance_id()) != task.avoid) {
        Some(lease) => lease,
        None => acquire(&deps, &task).await?,
    };
    tracing::Span::current().record("instance", lease.shown_url.as_str());
    let attempt = task.attempts + 1;
    let marked = write(
        &deps.store,
        MarkRunning {
            task_id: task.task_id.clone(),
            user_id: task.user_id,
            attempt,
            instance: lease.shown_url.clone(),
            instance_id: lease.instance_id(),
        },
    );
    // The backend call starts while RUNNING is being committed, so the GPU does not idle
    // for a commit; its answer only counts once that commit has applied, and the call is
    // dropped (aborted) if it did not.
    tracing::debug!("calling backend");
    let started = Instant::now();
    let (url, model, job) = (lease.url.clone(), lease.model.clone(), task.job.clone());
    let path = backends::image_path(lease.protocol);
    let call_span = telemetry::backend_span(&format!("{}{path}", url.trim_end_matches('/')));
    let headers = telemetry::propagation_headers(&call_span);
    let target = backends::Target {
        url: &url,
        protocol: lease.protocol,
        model: model.as_deref(),
    };
    let call = async {
        let (timeout, max_bytes) = (deps.task_timeout, deps.max_response_bytes);
        let result =
            backends::generate_image(&client, target, &job, timeout, max_bytes, &headers).await;
        telemetry::record_backend_outcome(&tracing::Span::current(), result.as_ref().err());
        result
    }
    .instrument(call_span);
    tokio::pin!(marked, call);
    let mut answered = None;
    let marked = tokio::select! {
        marked = &mut marked => marked,
        result = &mut call => {
            answered = Some(result);
            marked.await
        }
    };
    match marked {
        Ok(true) => {
            if attempt == 1 {
                let waited = (chrono::Utc::now() - task.created_at).to_std();
                METRICS.task_started(waited.unwrap_or_default());
            }
            faults::hit(faults::Site::WorkerAttempt)
        }
        Ok(false) => {
            tracing::debug!("task is no longer queued; skipping it");
            lease.release(CallOutcome::Neutral);
            return None;
        }
        Err(e) => {
            retry_soon(&deps, task, lease, e.to_string());
            return None;
        }
    }
    let result = match answered {
        Some(result) => result,
        None => call.await,
    };
    let ran = Some(started.elapsed());
    let outcome = result.as_ref().map_or_else(|e| e.kind(), |_| "ok");
    METRICS.backend_call(
        InstanceKind::Image,
        lease.instance_id(),
        outcome,
        started.elapsed(),
    );
    let expect = Expect::Running { attempt };
    let error = match result {
        Ok(image) => {
            let latency = started.elapsed();
            tracing::debug!(
                bytes = image.bytes.len(),
                elapsed_ms = latency.as_millis() as u64,
                "task done"
            );
            let outcome = TaskOutcome::Done {
                content_type: image.content_type,
                bytes: image.bytes,
            };
            hand_over(&deps, &task, expect, outcome, ran);
            return end_call(&deps, lease, CallOutcome::Success { latency }).await;
        }
        Err(error) => error,
    };

    let instance_id = lease.instance_id();
    lease.release(CallOutcome::from(&error));
    if error.is_instance_fault() && attempt < deps.max_attempts {
        let delay = backoff(deps.retry_base, attempt);
        tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "attempt failed; will retry");
        let outcome = TaskOutcome::Retry {
            error: error.to_string(),
            after: delay,
        };
        if finish(&deps, &task, expect, outcome, ran).await {
            task.attempts = attempt;
            task.avoid = Some(instance_id);
            deps.dispatcher.do_send(RetryLater { task, delay });
        }
        return None;
    }
    tracing::warn!(%error, "task failed");
    let error = if attempt > 1 {
        format!("{error} (attempt {attempt} of {})", deps.max_attempts)
    } else {
        error.to_string()
    };
    hand_over(&deps, &task, expect, TaskOutcome::Failed { error }, ran);
    None
}

/// Gives the lease back with the call's outcome; with a shared slot, the registry may
/// answer it kept instead.
async fn end_call(deps: &WorkerDeps, lease: Lease, outcome: CallOutcome) -> Option<Lease> {
    if lease.slot().is_none() {
        lease.release(outcome);
        return None;
    }
    // Unanswered (the registry restarting), the lease is dropped with the message: it
    // goes back.
    deps.registry
        .send(CallEnded { lease, outcome })
        .await
        .ok()
        .flatten()
}

/// A lease on an instance with room, or `None` once the task has been failed for want
/// of one.
async fn acquire(deps: &WorkerDeps, task: &QueuedTask) -> Option<Lease> {
    let deadline = tokio::time::Instant::from_std(task.enqueued_at + deps.max_wait);
    let error = loop {
        let mut request = Acquire::waiting(InstanceKind::Image, task.user_id);
        request.avoid = task.avoid;
        match tokio::time::timeout_at(deadline, deps.registry.send(request)).await {
            Ok(Ok(Ok(lease))) => return Some(lease),
            // The registry restarted and dropped the request, or is restarting: ask again.
            Ok(Ok(Err(AcquireError::RegistryStopped)) | Err(_)) => {
                tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + ASK_AGAIN))
                    .await;
            }
            Ok(Ok(Err(e))) => break e.to_string(),
            Err(_) => {
                break format!(
                    "no healthy backend instance within {}s",
                    deps.max_wait.as_secs()
                )
            }
        }
    };
    tracing::warn!(%error, "task failed before reaching a backend");
    let outcome = TaskOutcome::Failed { error };
    finish(deps, task, Expect::Queued, outcome, None).await;
    None
}

/// The store could not mark the task running; hand it back for a later try so a failing
/// database is not hammered in a loop.
fn retry_soon(deps: &WorkerDeps, task: QueuedTask, lease: Lease, error: String) {
    tracing::error!(%error, "cannot mark the task running; it goes back to the queue");
    lease.release(CallOutcome::Neutral);
    let delay = Duration::from_secs(1);
    deps.dispatcher.do_send(RetryLater { task, delay });
}

/// Exponential backoff with equal jitter: half the step fixed, half random.
fn backoff(base: Duration, attempt: i32) -> Duration {
    let step = base
        .saturating_mul(1 << (attempt - 1).clamp(0, 16))
        .min(MAX_BACKOFF);
    let half = step / 2;
    half + half.mul_f64(rand::thread_rng().gen_range(0.0..=1.0))
}

/// Queues the task's final outcome for the store's next commit without waiting for it:
/// the slot's instance is free once the backend has answered, so the next task starts
/// while this ending commits. `do_send` puts it in the store's mailbox before the worker
/// reports idle, so a drain's closing `Flush` comes after it. Should the process die
/// before the commit, the task is still RUNNING and the start-up recovery runs it again.
/// Endings cannot pile up: the worker's next answer counts only after its RUNNING has
/// committed, which is after this ending's commit.
fn hand_over(
    deps: &WorkerDeps,
    task: &QueuedTask,
    expect: Expect,
    outcome: TaskOutcome,
    ran: Option<Duration>,
) {
    deps.store
        .do_send(finish_message(task, expect, outcome, ran));
}

fn finish_message(
    task: &QueuedTask,
    expect: Expect,
    outcome: TaskOutcome,
    ran: Option<Duration>,
) -> FinishTask {
    FinishTask {
        task_id: task.task_id.clone(),
        user_id: task.user_id,
        expect,
        outcome,
        created_at: task.created_at,
        ran,
    }
}

/// Applies the outcome if the task is still as expected, and waits for it; `true` when
/// it was applied.
async fn finish(
    deps: &WorkerDeps,
    task: &QueuedTask,
    expect: Expect,
    outcome: TaskOutcome,
    ran: Option<Duration>,
) -> bool {
    match write(&deps.store, finish_message(task, expect, outcome, ran)).await {
        Ok(applied) => applied,
        // The task stays as stored; the start-up recovery pass picks it up again.
        Err(e) => {
            tracing::error!(error = %e, "cannot store the task's outcome");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let base = Duration::from_millis(100);
        for _ in 0..100 {
            let first = backoff(base, 1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = backoff(base, 3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            assert!(backoff(base, 40) <= MAX_BACKOFF);
        }
    }
}
