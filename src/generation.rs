//! Images answered in one call, as OpenAI's image API answers, on top of the task queue.
//!
//! Each image is an ordinary durable task, submitted through the Dispatcher like any
//! other (the same queue, fairness, quota and retries, visible in `GET /api/v1/tasks`);
//! [`GenerationService::generate`] submits them and waits for their endings. Should a
//! submission be refused part-way, the tasks already admitted are cancelled, so a refused
//! call leaves nothing running for an answer nobody will get.
//!
//! Task endings are not published yet (there is no event bus), so the wait is a bounded
//! poll of the tasks' rows through `store::tasks::get`, one indexed read per unfinished
//! task: every 50 ms at first, doubling up to once a second. A waiter thus costs at most
//! n reads a second, and sees an ending within a second of its commit. A task that has
//! not ended by the deadline keeps running, and the error names it.

use std::time::Duration;

use actix::Addr;
use sea_orm::DatabaseConnection;
use tokio::time::Instant;

use crate::actors::messages::{
    CancelOutcome, CancelTask, Submit, SubmitError, Submitted, TaskCancelled,
};
use crate::actors::task_store::write;
use crate::actors::{Dispatcher, TaskStore};
use crate::domain::{ImageId, ImageJob, Priority, TaskId, TaskStatus, TraceContext, UserId};
use crate::store::{tasks, StoreError};

/// The first pause between two looks at unfinished tasks; it doubles up to the next.
const FIRST_POLL: Duration = Duration::from_millis(50);
const MAX_POLL: Duration = Duration::from_secs(1);
/// How long the Dispatcher may take to admit one task.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a call got no images.
#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    /// A submission was refused (queue full, quota, shutting down, database).
    #[error(transparent)]
    Submit(#[from] SubmitError),
    #[error("tasks not ended within {}s", .waited.as_secs())]
    StillRunning {
        task_ids: Vec<TaskId>,
        waited: Duration,
    },
    #[error("task {task_id} failed: {error}")]
    Failed { task_id: TaskId, error: String },
    #[error("task {0} was cancelled")]
    Cancelled(TaskId),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the dispatcher is not answering: {0}")]
    Unavailable(#[from] actix::MailboxError),
}

/// What a call asks for: `n` images of one job, as one user.
pub struct Generation {
    pub user_id: UserId,
    pub priority: Priority,
    pub job: ImageJob,
    pub n: usize,
    /// The request's trace, continued by each task's attempts.
    pub trace: Option<TraceContext>,
}

/// One DONE task and the image it made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub task_id: TaskId,
    pub image_id: ImageId,
}

/// Submits and waits; shared by every HTTP worker.
pub struct GenerationService {
    /// Admits the tasks, and is told of cancels.
    dispatcher: Addr<Dispatcher>,
    /// Cancels what a refused call had admitted.
    store: Addr<TaskStore>,
    /// Where the tasks' endings are read.
    db: DatabaseConnection,
    /// Longest wait for the tasks (`openai.wait_secs`).
    wait: Duration,
}

impl GenerationService {
    pub fn new(
        dispatcher: Addr<Dispatcher>,
        store: Addr<TaskStore>,
        db: DatabaseConnection,
        wait: Duration,
    ) -> GenerationService {
        GenerationService {
            dispatcher,
            store,
            db,
            wait,
        }
    }

    /// Submits the generation's tasks and waits up to `openai.wait_secs` for all of them
    /// to be DONE; their images in submission order.
    #[tracing::instrument(skip_all, fields(user_id = %generation.user_id, n = generation.n))]
    pub async fn generate(
        &self,
        generation: Generation,
    ) -> Result<Vec<Generated>, GenerationError> {
        let deadline = Instant::now() + self.wait;
        let mut task_ids = Vec::with_capacity(generation.n);
        for _ in 0..generation.n {
            match self.submit(&generation).await {
                Ok(task_id) => task_ids.push(task_id),
                Err(refused) => {
                    self.cancel(generation.user_id, task_ids).await;
                    return Err(refused);
                }
            }
        }
        tracing::debug!(task_ids = ?task_ids, "image tasks queued; waiting for them");
        self.wait_for(generation.user_id, task_ids, deadline).await
    }

    async fn submit(&self, generation: &Generation) -> Result<TaskId, GenerationError> {
        let submit = Submit {
            user_id: generation.user_id,
            priority: generation.priority,
            job: generation.job.clone(),
            idempotency: None,
            trace: generation.trace.clone(),
            webhook: None,
        };
        let Submitted { task_id, .. } = self
            .dispatcher
            .send(submit)
            .timeout(SUBMIT_TIMEOUT)
            .await??;
        Ok(task_id)
    }

    /// Cancels tasks nobody will wait for; a failure leaves them to run, which is harmless.
    async fn cancel(&self, user_id: UserId, task_ids: Vec<TaskId>) {
        for task_id in task_ids {
            let cancel = CancelTask {
                task_id: task_id.clone(),
                user_id,
            };
            match write(&self.store, cancel).await {
                Ok(CancelOutcome::Cancelled { changed: true, .. }) => {
                    self.dispatcher.do_send(TaskCancelled {
                        task_id,
                        user_id: Some(user_id),
                    });
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%task_id, %error, "cannot cancel a task of a refused call")
                }
            }
        }
    }

    /// Polls the tasks until each is DONE (or one is not going to be), or `deadline`.
    async fn wait_for(
        &self,
        user_id: UserId,
        task_ids: Vec<TaskId>,
        deadline: Instant,
    ) -> Result<Vec<Generated>, GenerationError> {
        let mut images: Vec<Option<ImageId>> = vec![None; task_ids.len()];
        let mut pause = FIRST_POLL;
        loop {
            for (task_id, image) in task_ids.iter().zip(images.iter_mut()) {
                if image.is_some() {
                    continue;
                }
                let Some(task) = tasks::get(&self.db, user_id, task_id).await? else {
                    // Deleted meanwhile: it will not end either.
                    return Err(GenerationError::Cancelled(task_id.clone()));
                };
                match (task.status, task.image_id) {
                    (TaskStatus::Done, Some(image_id)) => *image = Some(ImageId(image_id)),
                    (TaskStatus::Failed, _) => {
                        return Err(GenerationError::Failed {
                            task_id: task_id.clone(),
                            error: task.error.unwrap_or_default(),
                        })
                    }
                    (TaskStatus::Cancelled, _) => {
                        return Err(GenerationError::Cancelled(task_id.clone()))
                    }
                    _ => {}
                }
            }
            if images.iter().all(Option::is_some) {
                let done = task_ids.into_iter().zip(images.into_iter().flatten());
                return Ok(done
                    .map(|(task_id, image_id)| Generated { task_id, image_id })
                    .collect());
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(task_ids = ?task_ids, "image tasks still running at the deadline");
                return Err(GenerationError::StillRunning {
                    task_ids,
                    waited: self.wait,
                });
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(MAX_POLL);
        }
    }
}
