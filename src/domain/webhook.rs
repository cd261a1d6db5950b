//! Which of a task's events its webhook receives: `webhook_events`, any of `queued`,
//! `running`, `retrying` and `completed` (DONE, FAILED or CANCELLED), `completed` alone
//! by default. Stored as the names joined by commas.

use super::{ChangeKind, ValidationError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookEvent {
    Queued,
    Running,
    Retrying,
    Completed,
}

const ALL: [(WebhookEvent, &str); 4] = [
    (WebhookEvent::Queued, "queued"),
    (WebhookEvent::Running, "running"),
    (WebhookEvent::Retrying, "retrying"),
    (WebhookEvent::Completed, "completed"),
];

impl WebhookEvent {
    /// The subscription a change falls under.
    pub fn of(kind: ChangeKind) -> WebhookEvent {
        match kind {
            ChangeKind::Queued => WebhookEvent::Queued,
            ChangeKind::Running => WebhookEvent::Running,
            ChangeKind::Retrying => WebhookEvent::Retrying,
            ChangeKind::Done | ChangeKind::Failed | ChangeKind::Cancelled => {
                WebhookEvent::Completed
            }
        }
    }

    pub fn name(self) -> &'static str {
        ALL.iter()
            .find(|(e, _)| *e == self)
            .map(|(_, n)| *n)
            .unwrap()
    }
}

/// The events a webhook receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookEvents(Vec<WebhookEvent>);

impl Default for WebhookEvents {
    fn default() -> Self {
        WebhookEvents(vec![WebhookEvent::Completed])
    }
}

impl WebhookEvents {
    /// From the request's list: known names only, at least one.
    pub fn parse(names: &[String]) -> Result<WebhookEvents, ValidationError> {
        let mut events = Vec::new();
        for name in names {
            let event = ALL
                .iter()
                .find(|(_, n)| n == name)
                .map(|(e, _)| *e)
                .ok_or_else(|| {
                    ValidationError(format!(
                        "webhook_events: `{name}` is not one of queued, running, retrying, completed"
                    ))
                })?;
            if !events.contains(&event) {
                events.push(event);
            }
        }
        if events.is_empty() {
            return Err(ValidationError(
                "webhook_events must name at least one event".into(),
            ));
        }
        Ok(WebhookEvents(events))
    }

    /// As stored: `completed`, `queued,completed`, …
    pub fn stored(&self) -> String {
        let names: Vec<&str> = self.0.iter().map(|e| e.name()).collect();
        names.join(",")
    }

    /// From the stored form; names it does not know are skipped.
    pub fn from_stored(stored: &str) -> WebhookEvents {
        WebhookEvents(
            stored
                .split(',')
                .filter_map(|name| ALL.iter().find(|(_, n)| *n == name).map(|(e, _)| *e))
                .collect(),
        )
    }

    pub fn wants(&self, kind: ChangeKind) -> bool {
        self.0.contains(&WebhookEvent::of(kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_covers_every_ending() {
        let events = WebhookEvents::default();
        for kind in [ChangeKind::Done, ChangeKind::Failed, ChangeKind::Cancelled] {
            assert!(events.wants(kind));
        }
        assert!(!events.wants(ChangeKind::Running));
    }

    #[test]
    fn names_parse_and_round_trip() {
        let names = ["running".to_string(), "completed".into(), "running".into()];
        let events = WebhookEvents::parse(&names).unwrap();
        assert_eq!(events.stored(), "running,completed");
        assert_eq!(WebhookEvents::from_stored(&events.stored()), events);
        assert!(WebhookEvents::parse(&["done".to_string()]).is_err());
        assert!(WebhookEvents::parse(&[]).is_err());
    }
}
