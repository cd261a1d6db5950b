//! Deliverer: sends the webhook outbox's due deliveries, signed, at most
//! `webhooks.concurrency` at a time, and stores each attempt's outcome. It owns no task
//! state: the rows are the truth, so a restart (of the actor or the process) loses
//! nothing, and a delivery whose attempt was cut short is sent again once its claim runs
//! out (at once after a restart on SQLite). Woken by the event hub when changes commit,
//! by its own timer when a retry falls due, and once a second in case a wake-up went to
//! another gateway or was lost.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use entity::webhook_delivery::State;
use sea_orm::DatabaseConnection;
use tracing::Instrument;
use url::Url;

use super::messages::StopDelivering;
use crate::events::EventHub;
use crate::faults;
use crate::settings::WebhookSettings;
use crate::store::webhooks::{self, Attempted, Claimed};
use crate::webhooks::address::{check_literal, PublicResolver};
use crate::webhooks::signing;

/// The backstop poll.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// A claim outlives its attempt's timeout by this much before another may take it.
const CLAIM_MARGIN: Duration = Duration::from_secs(5);
/// The longest pause between two attempts, whatever `retry_base_ms` and the count say.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// The largest body sent. Events are small by construction (errors are cut to 1,000
/// characters, images are URLs); one over this is failed, never sent cut.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

pub struct Deliverer {
    db: DatabaseConnection,
    settings: WebhookSettings,
    hub: EventHub,
    /// This process's name on its claims.
    holder: Arc<str>,
    /// One client for every delivery: its connections are pooled.
    client: reqwest::Client,
    /// Attempts under way; no more than `settings.concurrency`.
    in_flight: usize,
    /// A claim is under way; `again` asks for another as soon as it ends.
    claiming: bool,
    again: bool,
    /// The gateway is stopping: nothing more is claimed or sent.
    stopping: bool,
    /// The poll set for when the next pending delivery falls due: one at a time.
    due_timer: Option<SpawnHandle>,
}

impl Deliverer {
    pub fn new(db: DatabaseConnection, settings: WebhookSettings, hub: EventHub) -> Deliverer {
        Deliverer {
            client: client(&settings),
            db,
            settings,
            hub,
            holder: format!("deliverer-{}", uuid::Uuid::new_v4().simple()).into(),
            in_flight: 0,
            claiming: false,
            again: false,
            stopping: false,
            due_timer: None,
        }
    }

    /// Claims what is due, as much as there is room for, and sends it.
    fn poll(&mut self, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        if self.claiming {
            self.again = true;
            return;
        }
        let room = self.settings.concurrency.saturating_sub(self.in_flight);
        if room == 0 {
            return; // a finishing attempt polls again
        }
        self.claiming = true;
        self.again = false;
        let claim_for = Duration::from_secs(self.settings.timeout_secs) + CLAIM_MARGIN;
        let claim = {
            let (db, holder) = (self.db.clone(), self.holder.clone());
            async move { webhooks::claim(&db, &holder, room, claim_for).await }
        };
        ctx.spawn(claim.into_actor(self).map(move |claimed, deliverer, ctx| {
            deliverer.claiming = false;
            match claimed {
                // Claimed as the gateway stops: sent again at the next start (or once
                // the claims run out, by another gateway).
                Ok(_) if deliverer.stopping => {}
                Ok(claimed) => {
                    let full = claimed.len() == room;
                    // A panic in here is contained: the actor stops and its supervisor
                    // starts it again; what it had claimed goes out once the claims
                    // run out.
                    let sent = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        for delivery in claimed {
                            deliverer.send(delivery, ctx);
                        }
                    }));
                    if sent.is_err() {
                        tracing::error!("the webhook deliverer failed; restarting it");
                        return ctx.stop();
                    }
                    if full || deliverer.again {
                        deliverer.poll(ctx);
                    } else {
                        deliverer.wake_when_due(ctx);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot claim webhook deliveries"),
            }
        }));
    }

    /// Polls again when the next pending delivery falls due, if that is before the
    /// backstop poll.
    fn wake_when_due(&mut self, ctx: &mut Context<Self>) {
        let db = self.db.clone();
        let next = async move { webhooks::next_due(&db).await };
        ctx.spawn(next.into_actor(self).map(|next, deliverer, ctx| {
            let Ok(Some(at)) = next else { return };
            let wait = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            if wait < POLL_EVERY {
                if let Some(earlier) = deliverer.due_timer.take() {
                    ctx.cancel_future(earlier);
                }
                let timer = ctx.run_later(wait, |deliverer, ctx| {
                    deliverer.due_timer = None;
                    deliverer.poll(ctx);
                });
                deliverer.due_timer = Some(timer);
            }
        }));
    }

    /// One attempt, on a task of its own: a panic on the way costs that attempt (sent
    /// again once its claim runs out), not the actor.
    fn send(&mut self, delivery: Claimed, ctx: &mut Context<Self>) {
        faults::hit(faults::Site::DelivererSend);
        self.in_flight += 1;
        let client = self.client.clone();
        let (db, holder, settings) = (self.db.clone(), self.holder.clone(), self.settings.clone());
        let span = tracing::info_span!(
            "webhook_attempt",
            task_id = delivery.task_id,
            webhook_id = delivery.webhook_id,
            attempt = delivery.attempts + 1,
        );
        let attempt = actix_web::rt::spawn(async move {
            faults::hit(faults::Site::WebhookAttempt);
            let answer = attempt(&client, &delivery, settings.allow_private_networks).await;
            let attempts = delivery.attempts + 1;
            let retry_base = Duration::from_millis(settings.retry_base_ms);
            let (state, retry) = judge(&answer, attempts, settings.max_attempts, retry_base);
            let (status, error) = match answer {
                Ok(status) => (Some(status), None),
                Err(error) => (None, Some(error)),
            };
            tracing::debug!(
                ?status,
                ?error,
                ?state,
                "webhook attempt"
            );
            let next_at = Utc::now() + retry.unwrap_or(Duration::ZERO);
            let attempted = Attempted {
                state,
                status,
                error,
                next_at,
            };
            if let Err(e) = webhooks::record(&db, &delivery, &holder, attempted).await {
                tracing::warn!(error = %e, "cannot store a webhook attempt; it is sent again later");
            }
        }.instrument(span));
        // The poll that follows sets the timer for a retry this attempt scheduled.
        ctx.spawn(attempt.into_actor(self).map(|ended, deliverer, ctx| {
            deliverer.in_flight -= 1;
            if let Err(e) = ended {
                tracing::error!(error = %e, "a webhook attempt panicked");
            }
            deliverer.poll(ctx);
        }));
    }
}

fn client(settings: &WebhookSettings) -> reqwest::Client {
    reqwest::Client::builder()
        // A 3xx is an answer, and not a 2xx: a failed attempt, never followed.
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(settings.timeout_secs))
        // A proxy would resolve the name itself, past the address check.
        .no_proxy()
        .dns_resolver(Arc::new(PublicResolver {
            allow_private: settings.allow_private_networks,
        }))
        .user_agent(concat!("infergate-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the webhook HTTP client builds")
}

/// Sends one attempt: the receiver's status, or why there was none.
async fn attempt(
    client: &reqwest::Client,
    delivery: &Claimed,
    allow_private: bool,
) -> Result<u16, String> {
    let url = Url::parse(&delivery.url).map_err(|e| format!("bad webhook_url: {e}"))?;
    check_literal(&url, allow_private).map_err(|e| e.to_string())?;
    if delivery.body.len() > MAX_BODY_BYTES {
        return Err(format!("body over {MAX_BODY_BYTES} bytes"));
    }
    let key = delivery
        .secret
        .as_deref()
        .and_then(signing::key_of)
        .ok_or("the user has no webhook secret")?;
    let timestamp = Utc::now().timestamp();
    let signature = signing::sign(&key, &delivery.webhook_id, timestamp, &delivery.body);
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &delivery.webhook_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(delivery.body.clone())
        .send()
        .await
        .map_err(|e| error_chain(&e))?;
    Ok(response.status().as_u16())
}

/// An error with its causes, which for a connection failure say what actually failed.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What an attempt's answer makes of its delivery: delivered on a 2xx; failed for good
/// on a 410 or the last attempt; else pending, due again after the backoff.
fn judge(
    answer: &Result<u16, String>,
    attempts: i32,
    max_attempts: u32,
    retry_base: Duration,
) -> (State, Option<Duration>) {
    match answer {
        Ok(200..=299) => (State::Delivered, None),
        Ok(410) => (State::Failed, None),
        _ if attempts >= max_attempts as i32 => (State::Failed, None),
        _ => (State::Pending, Some(backoff(retry_base, attempts))),
    }
}

/// Exponential backoff with equal jitter: half the step fixed, half random.
fn backoff(base: Duration, attempt: i32) -> Duration {
    use rand::Rng;
    let step = base
        .saturating_mul(1 << (attempt - 1).clamp(0, 20))
        .min(MAX_BACKOFF);
    let half = step / 2;
    half + half.mul_f64(rand::thread_rng().gen_range(0.0..=1.0))
}

impl Actor for Deliverer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let woken = futures_util::stream::unfold(self.hub.clone(), |hub| async move {
            hub.committed().await;
            Some(((), hub))
        });
        ctx.add_stream(woken);
        ctx.run_interval(POLL_EVERY, |deliverer, ctx| deliverer.poll(ctx));
        self.poll(ctx);
    }
}

/// Stored changes committed: deliveries may have been queued.
impl StreamHandler<()> for Deliverer {
    fn handle(&mut self, _: (), ctx: &mut Context<Self>) {
        self.poll(ctx);
    }
}

impl Handler<StopDelivering> for Deliverer {
    type Result = ();

    fn handle(&mut self, _: StopDelivering, _: &mut Context<Self>) {
        self.stopping = true;
    }
}

impl Supervised for Deliverer {
    /// Attempts under way carry on; their ends come to the restarted actor's mailbox no
    /// more, so their slots are given back, and their rows are sent again once their
    /// claims run out.
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.in_flight = 0;
        self.due_timer = None;
        self.claiming = false;
        self.again = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventType, TaskEvent, TaskId, TaskStatus, UserId};
    use crate::domain::{ImageId, InstanceId, MAX_EVENT_ERROR_CHARS};

    #[test]
    fn a_2xx_delivers_a_410_stops_anything_else_is_retried_until_the_last() {
        let base = Duration::from_millis(100);
        assert_eq!(judge(&Ok(204), 1, 8, base), (State::Delivered, None));
        assert_eq!(judge(&Ok(410), 1, 8, base), (State::Failed, None));
        for failure in [Ok(301), Ok(500), Ok(404), Err("refused".to_string())] {
            let (state, retry) = judge(&failure, 2, 8, base);
            assert_eq!(state, State::Pending, "{failure:?}");
            let retry = retry.unwrap();
            assert!(retry >= base && retry <= base * 2, "{retry:?}");
            assert_eq!(judge(&failure, 8, 8, base), (State::Failed, None));
        }
        assert!(backoff(base, 60) <= MAX_BACKOFF);
    }

    #[test]
    fn the_largest_event_fits_the_body_cap() {
        let event = TaskEvent {
            seq: Some(i64::MAX),
            kind: EventType::Failed,
            task_id: TaskId::generate(),
            status: TaskStatus::Failed,
            at: Utc::now(),
            attempt: Some(i32::MAX),
            instance: Some(InstanceId(u64::MAX)),
            result_url: Some(ImageId(i64::MAX).result_url()),
            // Four bytes a character in UTF-8, and escaped where JSON must.
            error: Some(crate::domain::event_error(
                &"𝄞".repeat(MAX_EVENT_ERROR_CHARS * 2),
            )),
            retry_at: Some(Utc::now()),
            queue_position: None,
            eta_secs: None,
            user_id: UserId(1),
        };
        let body = serde_json::to_string(&event).unwrap();
        assert!(body.len() <= MAX_BODY_BYTES, "{}", body.len());
        let quotes = "\"".repeat(MAX_EVENT_ERROR_CHARS);
        let escaped = TaskEvent {
            error: Some(quotes),
            ..event
        };
        assert!(serde_json::to_string(&escaped).unwrap().len() <= MAX_BODY_BYTES);
    }
}
