//! Which of a task's events its webhook receives: `webhook_events`, any of `queued`,
//! `running`, `retrying` and `completed` (DONE, FAILED or CANCELLED), `completed` alone
//! by default. Stored as the names joined by commas. And `webhook_url`, checked for its
//! form here; where it leads (a public address) is checked by resolving it
//! (`crate::webhooks::address`).

use url::Url;

use super::{ChangeKind, ValidationError};

/// The longest `webhook_url` accepted (the stored column's size).
pub const MAX_WEBHOOK_URL_CHARS: usize = 2048;

/// A task's webhook: where its events go, and which.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Webhook {
    pub url: Url,
    pub events: WebhookEvents,
}

impl Webhook {
    /// From the submission's fields: none without a URL; events without a URL are refused.
    pub fn parse(
        url: Option<&str>,
        events: Option<&[String]>,
    ) -> Result<Option<Webhook>, ValidationError> {
        let Some(url) = url else {
            return match events {
                Some(_) => Err(ValidationError::new("webhook_events needs a webhook_url")),
                None => Ok(None),
            };
        };
        let events = match events {
            Some(names) => WebhookEvents::parse(names)?,
            None => WebhookEvents::default(),
        };
        Ok(Some(Webhook {
            url: parse_url(url)?,
            events,
        }))
    }
}

/// An absolute http(s) URL with a host and no credentials, at most
/// `MAX_WEBHOOK_URL_CHARS` long.
fn parse_url(text: &str) -> Result<Url, ValidationError> {
    if text.len() > MAX_WEBHOOK_URL_CHARS {
        return Err(ValidationError(format!(
            "webhook_url must be at most {MAX_WEBHOOK_URL_CHARS} characters"
        )));
    }
    let url = Url::parse(text)
        .map_err(|e| ValidationError(format!("webhook_url is not a valid URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ValidationError::new("webhook_url must be http or https"));
    }
    if url.host().is_none() {
        return Err(ValidationError::new("webhook_url must name a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ValidationError::new(
            "webhook_url must not carry credentials; verify the signature instead",
        ));
    }
    // Stored as written out again, which may be longer (percent-encoding).
    if url.as_str().len() > MAX_WEBHOOK_URL_CHARS {
        return Err(ValidationError(format!(
            "webhook_url must be at most {MAX_WEBHOOK_URL_CHARS} characters"
        )));
    }
    Ok(url)
}

/// One of `webhook_events`' names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
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

    #[test]
    fn only_plain_http_urls_with_a_host_are_taken() {
        let hook = Webhook::parse(Some("https://example.com/hook?a=1"), None)
            .unwrap()
            .unwrap();
        assert_eq!(hook.events, WebhookEvents::default());
        for bad in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "https://user:pw@example.com/",
            "not a url",
            "http://",
        ] {
            assert!(Webhook::parse(Some(bad), None).is_err(), "{bad}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_WEBHOOK_URL_CHARS));
        assert!(Webhook::parse(Some(&long), None).is_err());
        assert!(Webhook::parse(None, Some(&["queued".to_string()])).is_err());
        assert_eq!(Webhook::parse(None, None).unwrap(), None);
    }
}
