//! Deliverer: sends the webhook outbox's due deliveries, signed, at most
//! `webhooks.concurrency` at a time, and stores each attempt's outcome. It owns no task
//! state: the rows are the truth, so a restart (of the actor or the process) loses
//! nothing, and a delivery whose attempt was cut short is sent again once its claim runs
//! out (at once after a restart on SQLite). Woken by the event hub when changes commit
//! (with several gateways, only those of any gateway that queued deliveries), by its
//! own timer when a retry falls due, and once a second in case a wake-up was lost.
//!
//! Claims take a batch of rows, up to the free slots and as many again ahead, so a
//! freed slot starts its next attempt at once. Outcomes are stored by a recorder task
//! beside the actor, several in one transaction (a group commit: whatever answered
//! while the last write ran goes in the next), so a burst of answers costs a few writes
//! rather than one each. An attempt's slot is free once it is answered; its row stays
//! claimed until its outcome is stored, and at most `MAX_UNSTORED` outcomes wait, so a
//! slow database holds the sending back.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use entity::webhook_delivery::State;
use sea_orm::DatabaseConnection;
use tokio::sync::{mpsc, Notify};
use tracing::Instrument;
use url::Url;

use super::messages::StopDelivering;
use crate::events::EventHub;
use crate::faults;
use crate::settings::WebhookSettings;
use crate::store::webhooks::{self, Attempted, Claimed};
use crate::telemetry::METRICS;
use crate::webhooks::address::{check_literal, PublicResolver};
use crate::webhooks::signing;

/// The backstop poll.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// The shortest time between two claims that commits asked for.
const WAKE_GAP: Duration = Duration::from_millis(20);
/// A claim outlives its attempt's timeout by this much before another may take it.
const CLAIM_MARGIN: Duration = Duration::from_secs(5);
/// The longest pause between two attempts, whatever `retry_base_ms` and the count say.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// The largest body sent. Events are small by construction (errors are cut to 1,000
/// characters, images are URLs); one over this is failed, never sent cut.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Outcomes stored in one transaction at most.
const RECORD_BATCH: usize = 256;
/// Outcomes waiting to be stored at most before nothing more is claimed.
const MAX_UNSTORED: usize = 2 * RECORD_BATCH;
/// How long a stop waits for the outcomes handed over to be stored.
const STOP_WAIT: Duration = Duration::from_secs(2);

pub struct Deliverer {
    db: DatabaseConnection,
    settings: WebhookSettings,
    hub: EventHub,
    /// This process's name on its claims.
    holder: Arc<str>,
    /// One client for every delivery: its connections are pooled.
    client: reqwest::Client,
    /// Where attempts hand their outcomes to be stored; the recorder task lives as long
    /// as this sender, so across the actor's restarts.
    outcomes: mpsc::UnboundedSender<Attempted>,
    /// Outcomes handed over and not stored yet; no more than `MAX_UNSTORED` before
    /// claiming waits.
    unstored: Arc<AtomicUsize>,
    /// Rung by the recorder after each write: retries it stored may be due soon, and
    /// claiming may go on.
    stored: Arc<Notify>,
    /// Attempts being sent; no more than `settings.concurrency`.
    in_flight: usize,
    /// Claimed ahead, sent as slots free, so a freed slot never waits for a claim's
    /// round trip; no more than `settings.concurrency`.
    ready: VecDeque<Claimed>,
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
        let holder: Arc<str> = format!("deliverer-{}", uuid::Uuid::new_v4().simple()).into();
        let (outcomes, to_store) = mpsc::unbounded_channel();
        let unstored = Arc::new(AtomicUsize::new(0));
        let stored = Arc::new(Notify::new());
        actix_web::rt::spawn(record(
            db.clone(),
            holder.clone(),
            to_store,
            unstored.clone(),
            stored.clone(),
        ));
        Deliverer {
            client: client(&settings),
            db,
            settings,
            hub,
            holder,
            outcomes,
            unstored,
            stored,
            in_flight: 0,
            ready: VecDeque::new(),
            claiming: false,
            again: false,
            stopping: false,
            due_timer: None,
        }
    }

    /// Claims what is due, as much as there is room for (the free slots and as many
    /// again ahead), and sends it.
    fn poll(&mut self, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        if self.claiming {
            self.again = true;
            return;
        }
        let room =
            (2 * self.settings.concurrency).saturating_sub(self.in_flight + self.ready.len());
        if room == 0 || self.unstored.load(Ordering::Acquire) >= MAX_UNSTORED {
            return; // a finishing attempt or a write polls again
        }
        self.claiming = true;
        self.again = false;
        // One claimed ahead may wait out a whole attempt before its own.
        let claim_for = 2 * Duration::from_secs(self.settings.timeout_secs) + CLAIM_MARGIN;
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
                    deliverer.ready.extend(claimed);
                    if !deliverer.send_ready(ctx) {
                        return;
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

    /// Sends what is claimed while slots are free; `false` when that failed and the actor
    /// is stopping. A panic in here is contained: the actor stops and its supervisor
    /// starts it again; the delivery it was starting goes out once its claim runs out.
    fn send_ready(&mut self, ctx: &mut Context<Self>) -> bool {
        let sent = std::panic::catch_unwind(AssertUnwindSafe(|| {
            while !self.stopping && self.in_flight < self.settings.concurrency {
                let Some(delivery) = self.ready.pop_front() else {
                    break;
                };
                self.send(delivery, ctx);
            }
        }));
        if sent.is_err() {
            tracing::error!("the webhook deliverer failed; restarting it");
            ctx.stop();
        }
        sent.is_ok()
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
    /// again once its claim runs out), not the actor. Its outcome goes to the recorder.
    fn send(&mut self, delivery: Claimed, ctx: &mut Context<Self>) {
        faults::hit(faults::Site::DelivererSend);
        self.in_flight += 1;
        let client = self.client.clone();
        let settings = self.settings.clone();
        let (outcomes, unstored) = (self.outcomes.clone(), self.unstored.clone());
        let span = tracing::info_span!(
            "webhook_attempt",
            task_id = delivery.task_id,
            webhook_id = delivery.webhook_id,
            attempt = delivery.attempts + 1,
        );
        let attempt = actix_web::rt::spawn(
            async move {
                faults::hit(faults::Site::WebhookAttempt);
                let started = Instant::now();
                let answer = attempt(&client, &delivery, settings.allow_private_networks).await;
                let attempts = delivery.attempts + 1;
                let retry_base = Duration::from_millis(settings.retry_base_ms);
                let (state, retry) = judge(&answer, attempts, settings.max_attempts, retry_base);
                METRICS.webhook_attempt(state, started.elapsed());
                let (status, error) = match answer {
                    Ok(status) => (Some(status), None),
                    Err(error) => (None, Some(error)),
                };
                tracing::debug!(?status, ?error, ?state, "webhook attempt");
                unstored.fetch_add(1, Ordering::AcqRel);
                let attempted = Attempted {
                    id: delivery.id,
                    attempts,
                    state,
                    status,
                    error,
                    next_at: Utc::now() + retry.unwrap_or(Duration::ZERO),
                };
                if outcomes.send(attempted).is_err() {
                    unstored.fetch_sub(1, Ordering::AcqRel);
                    tracing::warn!("the webhook recorder is gone; the attempt is sent again later");
                }
            }
            .instrument(span),
        );
        ctx.spawn(attempt.into_actor(self).map(|ended, deliverer, ctx| {
            deliverer.in_flight -= 1;
            if let Err(e) = ended {
                tracing::error!(error = %e, "a webhook attempt panicked");
            }
            if deliverer.send_ready(ctx) {
                deliverer.poll(ctx);
            }
        }));
    }
}

/// The recorder: stores the outcomes handed over, all that came while the last write
/// ran (up to `RECORD_BATCH`) in one transaction. A batch that fails is tried again one
/// by one, so one bad row costs only itself; an outcome that cannot be stored leaves its
/// row claimed, and the delivery is sent again once the claim runs out.
async fn record(
    db: DatabaseConnection,
    holder: Arc<str>,
    mut to_store: mpsc::UnboundedReceiver<Attempted>,
    unstored: Arc<AtomicUsize>,
    stored: Arc<Notify>,
) {
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    while to_store.recv_many(&mut batch, RECORD_BATCH).await > 0 {
        if let Err(e) = webhooks::record(&db, &holder, &batch).await {
            tracing::warn!(error = %e, n = batch.len(), "cannot store webhook attempts together; storing them one by one");
            for one in batch.chunks(1) {
                if let Err(e) = webhooks::record(&db, &holder, one).await {
                    tracing::warn!(error = %e, "cannot store a webhook attempt; it is sent again later");
                }
            }
        }
        unstored.fetch_sub(batch.len(), Ordering::AcqRel);
        batch.clear();
        stored.notify_one();
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
        let hub = self.hub.clone();
        let woken = futures_util::stream::unfold((hub, None), |(hub, last)| async move {
            hub.deliveries().await;
            // Commits ring once per group commit, of every gateway when there are
            // several: one claim per `WAKE_GAP` serves them all.
            if let Some(wait) = last.and_then(|last: Instant| WAKE_GAP.checked_sub(last.elapsed()))
            {
                tokio::time::sleep(wait).await;
            }
            Some(((), (hub, Some(Instant::now()))))
        });
        ctx.add_stream(woken);
        let stored = futures_util::stream::unfold(self.stored.clone(), |stored| async move {
            stored.notified().await;
            Some(((), stored))
        });
        ctx.add_stream(stored);
        ctx.run_interval(POLL_EVERY, |deliverer, ctx| deliverer.poll(ctx));
        self.poll(ctx);
    }
}

/// Deliveries may have been queued, or outcomes were stored
/// (retries may be due, claiming may go on).
impl StreamHandler<()> for Deliverer {
    fn handle(&mut self, _: (), ctx: &mut Context<Self>) {
        self.poll(ctx);
    }
}

/// Claims nothing more, and answers once the outcomes already handed over are stored
/// (or after `STOP_WAIT`): an answered delivery whose outcome was lost would be sent
/// again at the next start.
impl Handler<StopDelivering> for Deliverer {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: StopDelivering, _: &mut Context<Self>) -> Self::Result {
        self.stopping = true;
        let unstored = self.unstored.clone();
        Box::pin(async move {
            let until = Instant::now() + STOP_WAIT;
            while unstored.load(Ordering::Acquire) > 0 && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    }
}

impl Supervised for Deliverer {
    /// Attempts under way carry on and their outcomes are stored by the recorder, which
    /// outlives the restart; their ends come to the restarted actor's mailbox no more, so
    /// their slots are given back. What was claimed ahead is still held: it is sent.
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
