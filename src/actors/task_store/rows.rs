//! The row shapes of the tasks table, from the domain's types.

use chrono::Utc;
use entity::task;
use sea_orm::Set;

use crate::domain::{NewTask, TaskStatus};

/// The QUEUED row of a new submission.
pub fn new_task(task: NewTask) -> task::ActiveModel {
    let now = Utc::now();
    let NewTask {
        task_id,
        user_id,
        priority,
        job,
        idempotency,
        trace,
        webhook,
    } = task;
    let (idempotency_key, request_hash) = match idempotency {
        Some(i) => (Some(i.key), Some(i.request_hash)),
        None => (None, None),
    };
    task::ActiveModel {
        task_id: Set(task_id.into_string()),
        user_id: Set(user_id.0),
        prompt: Set(job.prompt),
        negative_prompt: Set(job.negative_prompt),
        width: Set(job.width.map(|v| v as i32)),
        height: Set(job.height.map(|v| v as i32)),
        steps: Set(job.steps as i32),
        seed: Set(job.seed.map(|v| v as i64)),
        status: Set(TaskStatus::Queued),
        image_id: Set(None),
        error: Set(None),
        instance: Set(None),
        attempts: Set(0),
        priority: Set(priority),
        idempotency_key: Set(idempotency_key),
        request_hash: Set(request_hash),
        traceparent: Set(trace.as_ref().map(|t| t.traceparent.clone())),
        tracestate: Set(trace.and_then(|t| t.tracestate)),
        webhook_url: Set(webhook.as_ref().map(|w| w.url.to_string())),
        webhook_events: Set(webhook.map(|w| w.events.stored())),
        holder: Set(None),
        lease_until: Set(None),
        fair_key: Set(0),
        run_after: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
}
