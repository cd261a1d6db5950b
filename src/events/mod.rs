//! The event hub: every stream (SSE, WebSocket) subscribes here for one user's events,
//! or one task's, and every logged change is published here once committed: by the
//! TaskStore on SQLite, or, on PostgreSQL, by the listener that hears every gateway's
//! events (this one's too) in commit order. A subscriber's buffer is bounded: one that
//! falls behind is dropped, its stream ends, and its client resumes from its last `seq`
//! out of the stored log. So the hub never holds more than the buffers, and a stream
//! never misses an event silently: what the hub could not hand over, the log has. A
//! user who is disabled has every stream revoked at once: it ends, and its client's
//! next attempt gets 401.

pub mod feed;
pub mod rate;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::mpsc;

use crate::domain::{TaskEvent, TaskId, UserId};
use crate::telemetry::METRICS;
use rate::CompletionRate;

/// An event on its way to every stream that wants it, its JSON written once for all.
#[derive(Debug)]
pub struct Published {
    pub event: TaskEvent,
    json: OnceLock<String>,
}

impl Published {
    pub fn new(event: TaskEvent) -> Arc<Published> {
        Arc::new(Published {
            event,
            json: OnceLock::new(),
        })
    }

    /// The event as every channel sends it.
    pub fn json(&self) -> &str {
        self.json
            .get_or_init(|| serde_json::to_string(&self.event).expect("an event serializes"))
    }
}

impl std::ops::Deref for Published {
    type Target = TaskEvent;

    fn deref(&self) -> &TaskEvent {
        &self.event
    }
}

/// What a subscriber receives.
#[derive(Debug, Clone)]
pub enum Pushed {
    Event(Arc<Published>),
    /// Events may have been lost on the way (the listener reconnected): read the log
    /// after the last one seen.
    CatchUp,
}

struct Subscriber {
    id: u64,
    /// Only this task's events; all the user's when `None`.
    task: Option<TaskId>,
    tx: mpsc::Sender<Pushed>,
    /// Set when the user is shut out: a flag beside the channel, since a full buffer
    /// could not take one more message and what is buffered must not be sent.
    revoked: Arc<AtomicBool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyStreams {
    pub limit: usize,
}

#[derive(Clone)]
pub struct EventHub(Arc<Inner>);

struct Inner {
    users: Mutex<HashMap<UserId, Vec<Subscriber>>>,
    next_id: AtomicU64,
    /// Events a subscriber may have waiting before it is dropped.
    buffer: usize,
    max_streams_per_user: usize,
    rate: Mutex<CompletionRate>,
    /// Rung when webhook deliveries may have been queued: the deliverer looks for them.
    /// One permit at most, so a burst is one wake-up.
    deliveries: tokio::sync::Notify,
    /// With several gateways, commits that queue deliveries say so with a `NOTIFY`, which
    /// the listener passes on (`deliveries_queued`), so the commits that queue none wake
    /// nobody; else every published commit wakes the deliverer.
    deliveries_announced: bool,
}

/// Hands committed events to the hub, which publishes them, in order, on the thread
/// the relay was made on: the writer that committed them goes on to its next commit
/// without waiting for the fan-out to a thousand streams (one wake-up per stream).
#[derive(Clone)]
pub struct Relay(mpsc::UnboundedSender<Vec<TaskEvent>>);

impl Relay {
    pub fn publish(&self, events: Vec<TaskEvent>) {
        if !events.is_empty() {
            // Closed only as the gateway stops, when nobody listens any more.
            let _ = self.0.send(events);
        }
    }
}

/// One stream's subscription; dropping it unsubscribes.
pub struct Subscription {
    pub rx: mpsc::Receiver<Pushed>,
    hub: EventHub,
    user_id: UserId,
    id: u64,
    revoked: Arc<AtomicBool>,
}

impl Subscription {
    /// Whether the user was shut out (disabled): nothing more may be sent.
    pub fn revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.user_id, self.id);
    }
}

impl EventHub {
    pub fn new(buffer: usize, max_streams_per_user: usize, deliveries_announced: bool) -> EventHub {
        EventHub(Arc::new(Inner {
            users: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            buffer: buffer.max(1),
            max_streams_per_user,
            rate: Mutex::new(CompletionRate::default()),
            deliveries: tokio::sync::Notify::new(),
            deliveries_announced,
        }))
    }

    /// Webhook deliveries were (or may have been) queued: the deliverer looks.
    pub fn deliveries_queued(&self) {
        self.0.deliveries.notify_one();
    }

    /// A relay publishing on this thread's runtime, for as long as a relay is held.
    pub fn relay(&self) -> Relay {
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<TaskEvent>>();
        let hub = self.clone();
        tokio::task::spawn_local(async move {
            while let Some(events) = rx.recv().await {
                hub.publish(events);
            }
        });
        Relay(tx)
    }

    /// Subscribes to the user's events (only `task`'s when given). Refused beyond
    /// `events.max_streams_per_user` open streams of this user on this gateway.
    pub fn subscribe(
        &self,
        user_id: UserId,
        task: Option<TaskId>,
    ) -> Result<Subscription, TooManyStreams> {
        let (tx, rx) = mpsc::channel(self.0.buffer);
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        let mut users = self.0.users.lock().unwrap();
        let subscribers = users.entry(user_id).or_default();
        let limit = self.0.max_streams_per_user;
        if limit > 0 && subscribers.len() >= limit {
            return Err(TooManyStreams { limit });
        }
        let revoked = Arc::new(AtomicBool::new(false));
        subscribers.push(Subscriber {
            id,
            task,
            tx,
            revoked: revoked.clone(),
        });
        Ok(Subscription {
            rx,
            hub: self.clone(),
            user_id,
            id,
            revoked,
        })
    }

    /// Ends every stream of the user on this gateway at once (they were disabled):
    /// their feeds stop before anything still buffered.
    pub fn revoke(&self, user_id: UserId) {
        let removed = self.0.users.lock().unwrap().remove(&user_id);
        for subscriber in removed.into_iter().flatten() {
            subscriber.revoked.store(true, Ordering::Release);
            // Dropping the sender wakes a feed waiting on its channel.
        }
    }

    fn unsubscribe(&self, user_id: UserId, id: u64) {
        let mut users = self.0.users.lock().unwrap();
        if let Some(subscribers) = users.get_mut(&user_id) {
            subscribers.retain(|s| s.id != id);
            if subscribers.is_empty() {
                users.remove(&user_id);
            }
        }
    }

    /// Hands committed changes (or progress) to their subscribers. A subscriber whose
    /// buffer is full is dropped: its stream ends and its client resumes from the log.
    pub fn publish(&self, events: Vec<TaskEvent>) {
        if events.is_empty() {
            return;
        }
        {
            let mut rate = self.0.rate.lock().unwrap();
            for event in events.iter().filter(|e| e.seq.is_some()) {
                rate.observe(event.kind);
            }
        }
        if !self.0.deliveries_announced && events.iter().any(|e| e.seq.is_some()) {
            self.deliveries_queued();
        }
        let mut users = self.0.users.lock().unwrap();
        for event in events {
            let Some(subscribers) = users.get_mut(&event.user_id) else {
                continue;
            };
            let event = Published::new(event);
            subscribers.retain(|s| {
                if s.task.as_ref().is_some_and(|t| *t != event.task_id) {
                    return true;
                }
                match s.tx.try_send(Pushed::Event(event.clone())) {
                    Ok(()) => {
                        METRICS.stream_event();
                        true
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::debug!(user_id = %event.user_id, "event stream fell behind; closing it");
                        METRICS.stream_fell_behind();
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            });
            if subscribers.is_empty() {
                users.remove(&event.user_id);
            }
        }
    }

    /// Waits until webhook deliveries may have been queued (at once if they may have
    /// been since the last wait ended).
    pub async fn deliveries(&self) {
        self.0.deliveries.notified().await
    }

    /// Every subscriber reads the log: events may have been lost on the way.
    pub fn catch_up_all(&self) {
        let mut users = self.0.users.lock().unwrap();
        for subscribers in users.values_mut() {
            // A full buffer will read the log anyway once it is dropped.
            subscribers.retain(|s| s.tx.try_send(Pushed::CatchUp).is_ok());
        }
        users.retain(|_, subscribers| !subscribers.is_empty());
    }

    /// Ends every stream (at shutdown): their clients resume elsewhere or later.
    pub fn close_all(&self) {
        self.0.users.lock().unwrap().clear();
    }

    /// Users with an open stream, and the tasks their streams are about (`None`: all
    /// of the user's).
    pub fn watched(&self) -> Vec<(UserId, Option<Vec<TaskId>>)> {
        let users = self.0.users.lock().unwrap();
        users
            .iter()
            .map(|(user_id, subscribers)| {
                let tasks: Option<Vec<TaskId>> =
                    subscribers.iter().map(|s| s.task.clone()).collect();
                (*user_id, tasks)
            })
            .collect()
    }

    /// Open streams on this gateway.
    pub fn streams(&self) -> usize {
        self.0.users.lock().unwrap().values().map(Vec::len).sum()
    }

    /// Seconds until `position` more tasks have ended at the recent rate, if any.
    pub fn eta_secs(&self, position: usize) -> Option<u64> {
        self.0.rate.lock().unwrap().eta_secs(position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventType, TaskStatus};

    fn event(user: i64, task: &str, seq: i64) -> TaskEvent {
        TaskEvent {
            seq: Some(seq),
            kind: EventType::Running,
            task_id: TaskId::from(task.to_string()),
            status: TaskStatus::Running,
            at: chrono::Utc::now(),
            attempt: None,
            instance: None,
            result_url: None,
            error: None,
            retry_at: None,
            queue_position: None,
            eta_secs: None,
            user_id: UserId(user),
        }
    }

    fn seq_of(pushed: Pushed) -> i64 {
        match pushed {
            Pushed::Event(e) => e.seq.unwrap(),
            Pushed::CatchUp => -1,
        }
    }

    #[tokio::test]
    async fn each_stream_gets_its_users_events_and_its_tasks_only() {
        let hub = EventHub::new(8, 0, false);
        let mut all = hub.subscribe(UserId(1), None).unwrap();
        let mut one = hub
            .subscribe(UserId(1), Some(TaskId::from("b".to_string())))
            .unwrap();
        let mut other = hub.subscribe(UserId(2), None).unwrap();
        hub.publish(vec![event(1, "a", 1), event(1, "b", 2), event(3, "c", 1)]);
        assert_eq!(seq_of(all.rx.recv().await.unwrap()), 1);
        assert_eq!(seq_of(all.rx.recv().await.unwrap()), 2);
        assert_eq!(seq_of(one.rx.recv().await.unwrap()), 2);
        assert!(other.rx.try_recv().is_err());
        assert!(one.rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_stream_that_falls_behind_is_dropped_and_the_rest_go_on() {
        let hub = EventHub::new(2, 0, false);
        let mut slow = hub.subscribe(UserId(1), None).unwrap();
        let mut fast = hub.subscribe(UserId(1), None).unwrap();
        for seq in 1..=3 {
            hub.publish(vec![event(1, "a", seq)]);
            assert_eq!(seq_of(fast.rx.recv().await.unwrap()), seq);
        }
        // The slow one got what fit, then its channel closed.
        assert_eq!(seq_of(slow.rx.recv().await.unwrap()), 1);
        assert_eq!(seq_of(slow.rx.recv().await.unwrap()), 2);
        assert!(slow.rx.recv().await.is_none());
        assert_eq!(hub.streams(), 1);
    }

    #[tokio::test]
    async fn a_revoked_users_streams_end_before_what_they_had_buffered() {
        let hub = EventHub::new(8, 0, false);
        let mut revoked = hub.subscribe(UserId(1), None).unwrap();
        let mut other = hub.subscribe(UserId(2), None).unwrap();
        hub.publish(vec![event(1, "a", 1), event(2, "b", 1)]);
        hub.revoke(UserId(1));
        assert!(revoked.revoked());
        assert!(!other.revoked());
        assert_eq!(seq_of(other.rx.recv().await.unwrap()), 1);
        hub.publish(vec![event(1, "a", 2)]);
        assert_eq!(hub.streams(), 1);
        // The channel is closed behind what it held; the flag says not to send that.
        assert_eq!(seq_of(revoked.rx.recv().await.unwrap()), 1);
        assert!(revoked.rx.recv().await.is_none());
    }

    #[test]
    fn streams_per_user_are_bounded_and_freed_on_drop() {
        let hub = EventHub::new(2, 2, false);
        let a = hub.subscribe(UserId(1), None).unwrap();
        let _b = hub.subscribe(UserId(1), None).unwrap();
        assert_eq!(
            hub.subscribe(UserId(1), None).err(),
            Some(TooManyStreams { limit: 2 })
        );
        assert!(hub.subscribe(UserId(2), None).is_ok());
        drop(a);
        assert!(hub.subscribe(UserId(1), None).is_ok());
    }
}
