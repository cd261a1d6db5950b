//! A feed: one stream's events in order, the stored ones after a given `seq` first, then
//! the live ones, with no gap and no duplicate. It subscribes before it reads the log,
//! so nothing committed in between is missed; a live event it already replayed is
//! skipped by its number; and a gap in the numbers (an event lost on the way) or a
//! catch-up call is filled from the log. SSE and WebSocket both read feeds.

use std::collections::VecDeque;
use std::sync::Arc;

use sea_orm::DatabaseConnection;

use super::{EventHub, Published, Pushed, Subscription, TooManyStreams};
use crate::domain::{TaskId, UserId};
use crate::store::{events, StoreError};

/// Stored events read per query while replaying.
const PAGE: u64 = 500;

pub struct Feed {
    subscription: Subscription,
    db: DatabaseConnection,
    user_id: UserId,
    /// One task's events only.
    task: Option<TaskId>,
    /// The last stored event handed out.
    last: i64,
    backlog: VecDeque<Arc<Published>>,
    /// The log has more after the backlog.
    more: bool,
    /// Something `ready` took from the hub that needs `next` (a catch-up, a gap).
    held: Option<Pushed>,
}

/// Why a feed has nothing more.
#[derive(Debug)]
pub enum FeedEnd {
    /// Dropped by the hub (it fell behind) or the gateway is shutting down: the client
    /// resumes from its last `seq`.
    Closed,
    /// The user was disabled: the client may not resume.
    Revoked,
    Store(StoreError),
}

impl Feed {
    /// Subscribes; `replay_from` or `start_after` then says where the feed starts.
    pub fn subscribe(
        hub: &EventHub,
        db: DatabaseConnection,
        user_id: UserId,
        task: Option<TaskId>,
    ) -> Result<Feed, TooManyStreams> {
        Ok(Feed {
            subscription: hub.subscribe(user_id, task.clone())?,
            db,
            user_id,
            task,
            last: i64::MAX,
            backlog: VecDeque::new(),
            more: false,
            held: None,
        })
    }

    /// Replays the stored events after `after` before the live ones.
    pub async fn replay_from(&mut self, after: i64) -> Result<(), StoreError> {
        self.last = after;
        self.backlog.clear();
        self.fill().await
    }

    /// Starts after `last` without replaying (it was read with a snapshot).
    pub fn start_after(&mut self, last: i64) {
        self.last = last;
        self.backlog.clear();
    }

    /// The next event: stored ones in order, progress as it comes. Cancel-safe: a wait
    /// given up (a stream's timer fired first) loses nothing, a catch-up included.
    pub async fn next(&mut self) -> Result<Arc<Published>, FeedEnd> {
        loop {
            if let Some(event) = self.ready() {
                return Ok(event);
            }
            if self.subscription.revoked() {
                return Err(FeedEnd::Revoked);
            }
            let catch_up = matches!(self.held, Some(Pushed::CatchUp));
            if self.more || catch_up {
                // `fill` changes nothing until its read is back; the catch-up is let go
                // only then.
                self.fill().await.map_err(FeedEnd::Store)?;
                if catch_up {
                    self.held = None;
                }
                continue;
            }
            match self.subscription.rx.recv().await {
                Some(pushed) => self.held = Some(pushed),
                None if self.subscription.revoked() => return Err(FeedEnd::Revoked),
                None => return Err(FeedEnd::Closed),
            }
        }
    }

    /// The next event if one is at hand, without waiting or reading the log: a stream
    /// under load sends what has piled up in one write.
    pub fn ready(&mut self) -> Option<Arc<Published>> {
        if self.subscription.revoked() {
            return None;
        }
        loop {
            if let Some(event) = self.backlog.pop_front() {
                self.last = event.seq.unwrap_or(self.last);
                if self.backlog.is_empty() && self.backlog.capacity() > PAGE as usize {
                    self.backlog.shrink_to_fit();
                }
                return Some(event);
            }
            if self.more {
                return None;
            }
            let pushed = match self.held.take() {
                Some(pushed) => pushed,
                None => self.subscription.rx.try_recv().ok()?,
            };
            let event = match pushed {
                Pushed::CatchUp => {
                    self.held = Some(Pushed::CatchUp);
                    return None;
                }
                Pushed::Event(event) => event,
            };
            let Some(seq) = event.seq else {
                return Some(event);
            };
            if seq <= self.last {
                continue; // replayed already
            }
            // A user's events are numbered without gaps; one task's are not, and the
            // hub hands a task's stream only that task's.
            if self.task.is_some() || seq == self.last + 1 {
                self.last = seq;
                return Some(event);
            }
            // A gap: the log has what is missing, and this event after it.
            self.held = Some(Pushed::CatchUp);
            return None;
        }
    }

    /// Reads a page of the log after `last` into the (empty) backlog; `more` says
    /// whether another page follows.
    async fn fill(&mut self) -> Result<(), StoreError> {
        let page =
            events::after(&self.db, self.user_id, self.last, self.task.as_ref(), PAGE).await?;
        self.more = page.len() as u64 == PAGE;
        self.backlog.extend(page.into_iter().map(Published::new));
        Ok(())
    }
}
