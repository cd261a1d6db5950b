//! The operators' task filter: which tasks `GET /api/v1/admin/tasks` lists and the bulk
//! actions act on. Every part narrows the set; an empty filter matches every task, which
//! a bulk action refuses.

use chrono::{DateTime, Utc};
use sea_orm::{ActiveEnum, Iterable};
use serde::{Deserialize, Serialize};

use super::{InstanceKind, TaskStatus, ValidationError};

/// Values per list (`statuses`, `users`, …) at most, so a filter stays one bounded
/// statement.
pub const MAX_FILTER_VALUES: usize = 100;
/// Longest `q`, in characters.
pub const MAX_QUERY_CHARS: usize = 256;

/// The filter as the query string spells it: lists are comma-separated.
#[derive(Debug, Default, Deserialize, Serialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TaskFilterQuery {
    /// Comma-separated statuses: QUEUED, RUNNING, DONE, FAILED, CANCELLED.
    #[param(example = "FAILED,CANCELLED")]
    pub statuses: Option<String>,
    /// Comma-separated user ids.
    #[param(example = "1,2")]
    pub users: Option<String>,
    /// Comma-separated kinds: `image` (speech requests are answered at once, not stored).
    #[param(example = "image")]
    pub kinds: Option<String>,
    /// Comma-separated instance URLs, as a task's `instance` shows them.
    pub instances: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    pub started_after: Option<DateTime<Utc>>,
    pub started_before: Option<DateTime<Utc>>,
    /// Finished (DONE, FAILED or CANCELLED) after this time.
    pub finished_after: Option<DateTime<Utc>>,
    pub finished_before: Option<DateTime<Utc>>,
    /// Text the prompt contains, in any case.
    #[param(max_length = 256)]
    pub q: Option<String>,
    /// The listing's page size and cursor (documented with the listing; refused by the
    /// bulk actions). Here so that one strict query string holds them all.
    #[param(ignore)]
    pub limit: Option<u64>,
    #[param(ignore)]
    pub from: Option<i64>,
}

/// A time window; either end may be open. `after` is exclusive, `before` exclusive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Window {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<DateTime<Utc>>,
}

impl Window {
    fn is_open(&self) -> bool {
        self.after.is_none() && self.before.is_none()
    }
}

/// A parsed filter. Serialised, it is what the audit log keeps of a bulk action.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TaskFilter {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub statuses: Vec<TaskStatus>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<InstanceKind>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<String>,
    #[serde(skip_serializing_if = "Window::is_open")]
    pub created: Window,
    #[serde(skip_serializing_if = "Window::is_open")]
    pub started: Window,
    #[serde(skip_serializing_if = "Window::is_open")]
    pub finished: Window,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
}

impl TaskFilter {
    /// Whether it matches every task.
    pub fn is_empty(&self) -> bool {
        *self == TaskFilter::default()
    }

    /// Whether it can match an image task at all (every stored task is one).
    pub fn matches_images(&self) -> bool {
        self.kinds.is_empty() || self.kinds.contains(&InstanceKind::Image)
    }

    /// The filter as JSON, for the audit log.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl TryFrom<TaskFilterQuery> for TaskFilter {
    type Error = ValidationError;

    fn try_from(query: TaskFilterQuery) -> Result<TaskFilter, ValidationError> {
        if query.limit.is_some() || query.from.is_some() {
            return Err(ValidationError::new(
                "limit and from are for the listing only",
            ));
        }
        let q = match query.q {
            Some(q) if q.chars().count() > MAX_QUERY_CHARS => {
                return Err(ValidationError::new(format!(
                    "q is at most {MAX_QUERY_CHARS} characters"
                )))
            }
            Some(q) if q.chars().any(char::is_control) => {
                return Err(ValidationError::new("q may not hold control characters"))
            }
            Some(q) if !q.is_empty() => Some(q),
            _ => None,
        };
        let filter = TaskFilter {
            statuses: list("statuses", query.statuses, |s| {
                TaskStatus::try_from_value(&s.to_uppercase()).map_err(|_| {
                    let valid: Vec<String> = TaskStatus::iter().map(|s| s.to_string()).collect();
                    format!("`{s}` is not one of {}", valid.join(", "))
                })
            })?,
            users: list("users", query.users, |s| {
                s.parse::<i64>()
                    .map_err(|_| format!("`{s}` is not a user id"))
            })?,
            kinds: list("kinds", query.kinds, |s| entity::from_wire(s.to_string()))?,
            instances: list("instances", query.instances, |s| Ok(s.to_string()))?,
            created: window("created", query.created_after, query.created_before)?,
            started: window("started", query.started_after, query.started_before)?,
            finished: window("finished", query.finished_after, query.finished_before)?,
            q,
        };
        Ok(filter)
    }
}

/// A comma-separated list, each value parsed; empty items are skipped.
fn list<T: PartialEq>(
    name: &str,
    raw: Option<String>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, ValidationError> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    let mut values = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let value = parse(item).map_err(|e| ValidationError::new(format!("{name}: {e}")))?;
        if !values.contains(&value) {
            values.push(value);
        }
    }
    if values.len() > MAX_FILTER_VALUES {
        return Err(ValidationError::new(format!(
            "{name}: at most {MAX_FILTER_VALUES} values"
        )));
    }
    Ok(values)
}

fn window(
    name: &str,
    after: Option<DateTime<Utc>>,
    before: Option<DateTime<Utc>>,
) -> Result<Window, ValidationError> {
    if let (Some(after), Some(before)) = (after, before) {
        if after >= before {
            return Err(ValidationError::new(format!(
                "{name}_after must be earlier than {name}_before"
            )));
        }
    }
    Ok(Window { after, before })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_comma_separated_and_checked() {
        let query = TaskFilterQuery {
            statuses: Some("failed, CANCELLED,,FAILED".into()),
            users: Some("3,4".into()),
            ..Default::default()
        };
        let filter = TaskFilter::try_from(query).unwrap();
        assert_eq!(filter.statuses, [TaskStatus::Failed, TaskStatus::Cancelled]);
        assert_eq!(filter.users, [3, 4]);
        let bad = TaskFilterQuery {
            statuses: Some("LOST".into()),
            ..Default::default()
        };
        let error = TaskFilter::try_from(bad).unwrap_err();
        assert!(
            error.0.starts_with("statuses: `LOST` is not one of"),
            "{error}"
        );
    }

    #[test]
    fn an_empty_filter_is_empty_and_a_reversed_window_is_refused() {
        assert!(TaskFilter::try_from(TaskFilterQuery::default())
            .unwrap()
            .is_empty());
        let blank_q = TaskFilterQuery {
            q: Some(String::new()),
            ..Default::default()
        };
        assert!(TaskFilter::try_from(blank_q).unwrap().is_empty());
        let now = Utc::now();
        let reversed = TaskFilterQuery {
            created_after: Some(now),
            created_before: Some(now),
            ..Default::default()
        };
        assert!(TaskFilter::try_from(reversed).is_err());
    }
}
