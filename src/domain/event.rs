//! A task event as every channel sends it (SSE, WebSocket, webhooks): small, with the
//! image always a URL. Stored changes carry their per-user `seq`; progress (a queued
//! task's place and ETA) is derived, not stored, and carries none.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{ImageId, InstanceId, TaskId, TaskStatus, UserId};

pub use entity::task_event::Kind as ChangeKind;

/// The event's `type`: a stored change, or `progress`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Queued,
    Running,
    Retrying,
    Done,
    Failed,
    Cancelled,
    /// A queued task's `queue_position` and `eta_secs`, at most once a second.
    Progress,
}

impl From<ChangeKind> for EventType {
    fn from(kind: ChangeKind) -> EventType {
        match kind {
            ChangeKind::Queued => EventType::Queued,
            ChangeKind::Running => EventType::Running,
            ChangeKind::Retrying => EventType::Retrying,
            ChangeKind::Done => EventType::Done,
            ChangeKind::Failed => EventType::Failed,
            ChangeKind::Cancelled => EventType::Cancelled,
        }
    }
}

impl EventType {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            EventType::Done | EventType::Failed | EventType::Cancelled
        )
    }
}

/// One event, as JSON: `{seq, type, task_id, status, at, attempt?, instance?,
/// result_url?, error?, retry_at?, queue_position?, eta_secs?}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskEvent {
    /// The user's event number (stored changes only): the SSE `id`, and what replay
    /// starts after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    #[serde(rename = "type")]
    pub kind: EventType,
    #[schema(value_type = String)]
    pub task_id: TaskId,
    /// The task's status after the change.
    pub status: TaskStatus,
    pub at: DateTime<Utc>,
    /// The attempt that started (`running`) or failed (`retrying`, `failed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i32>,
    /// The id of the instance the attempt runs on (`running`), as the admin API shows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>)]
    pub instance: Option<InstanceId>,
    /// Where the image is (`done`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "/api/images/123")]
    pub result_url: Option<String>,
    /// Why the attempt or the task failed (`retrying`, `failed`), at most 1,000
    /// characters; the task's own `error` has it whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When a `retrying` task may run again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<DateTime<Utc>>,
    /// `progress`: the place it will be served in (1 = next).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<usize>,
    /// `progress`: estimated seconds until it is DONE, when there is a recent rate to
    /// estimate from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_secs: Option<u64>,
    /// Whose task it is: who may see the event. Not sent to clients; read back from the
    /// notifications that carry events between gateways, which add it.
    #[serde(skip_serializing)]
    #[schema(ignore)]
    pub user_id: UserId,
}

/// The longest `error` an event carries.
pub const MAX_EVENT_ERROR_CHARS: usize = 1000;

/// `error` cut to what an event carries, on a character boundary.
pub fn event_error(error: &str) -> String {
    match error.char_indices().nth(MAX_EVENT_ERROR_CHARS) {
        Some((end, _)) => format!("{}…", &error[..end]),
        None => error.to_string(),
    }
}

impl ImageId {
    /// Where the image is served: the task's and the event's `result_url`.
    pub fn result_url(self) -> String {
        format!("/api/images/{self}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        assert_eq!(event_error("short"), "short");
        let long = "é".repeat(MAX_EVENT_ERROR_CHARS + 5);
        let cut = event_error(&long);
        assert_eq!(cut.chars().count(), MAX_EVENT_ERROR_CHARS + 1);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn the_json_names_the_fields_the_channels_promise() {
        let event = TaskEvent {
            seq: Some(7),
            kind: EventType::Done,
            task_id: TaskId::from("t".to_string()),
            status: TaskStatus::Done,
            at: DateTime::from_timestamp(0, 0).unwrap(),
            attempt: Some(1),
            instance: None,
            result_url: Some(ImageId(3).result_url()),
            error: None,
            retry_at: None,
            queue_position: None,
            eta_secs: None,
            user_id: UserId(1),
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"seq": 7, "type": "done", "task_id": "t", "status": "DONE",
                "at": "1970-01-01T00:00:00Z", "attempt": 1, "result_url": "/api/images/3"})
        );
    }
}
