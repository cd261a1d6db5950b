//! A feed: one stream's events in order, the stored ones after a given `seq` first, then
//! the live ones, with no gap and no duplicate. It subscribes before it reads the log,
//! so nothing committed in between is missed; a live event it already replayed is
//! skipped by its number; and a gap in the numbers (an event lost on the way) or a
//! catch-up call is filled from the log. SSE and WebSocket both read feeds.

use std::collections::VecDeque;
use std::sync::Arc;

use sea_orm::DatabaseConnection;

use super::{EventHub, Pushed, Subscription, TooManyStreams};
use crate::domain::{TaskEvent, TaskId, UserId};
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
    backlog: VecDeque<Arc<TaskEvent>>,
    /// The log has more after the backlog.
    more: bool,
}

/// Why a feed has nothing more.
#[derive(Debug)]
pub enum FeedEnd {
    /// Dropped by the hub (it fell behind) or the gateway is shutting down: the client
    /// resumes from its last `seq`.
    Closed,
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

    /// The next event: stored ones in order, progress as it comes.
    pub async fn next(&mut self) -> Result<Arc<TaskEvent>, FeedEnd> {
        loop {
            if let Some(event) = self.backlog.pop_front() {
                self.last = event.seq.unwrap_or(self.last);
                if self.backlog.is_empty() && self.backlog.capacity() > PAGE as usize {
                    self.backlog.shrink_to_fit();
                }
                return Ok(event);
            }
            if self.more {
                self.fill().await.map_err(FeedEnd::Store)?;
                continue;
            }
            let pushed = self.subscription.rx.recv().await.ok_or(FeedEnd::Closed)?;
            let event = match pushed {
                Pushed::CatchUp => {
                    self.fill().await.map_err(FeedEnd::Store)?;
                    continue;
                }
                Pushed::Event(event) => event,
            };
            let Some(seq) = event.seq else {
                return Ok(event);
            };
            if seq <= self.last {
                continue; // replayed already
            }
            // A user's events are numbered without gaps; one task's are not, and the
            // hub hands a task's stream only that task's.
            if self.task.is_some() || seq == self.last + 1 {
                self.last = seq;
                return Ok(event);
            }
            self.fill().await.map_err(FeedEnd::Store)?;
        }
    }

    /// Reads a page of the log after `last` into the (empty) backlog; `more` says
    /// whether another page follows.
    async fn fill(&mut self) -> Result<(), StoreError> {
        let page =
            events::after(&self.db, self.user_id, self.last, self.task.as_ref(), PAGE).await?;
        self.more = page.len() as u64 == PAGE;
        self.backlog.extend(page.into_iter().map(Arc::new));
        Ok(())
    }
}
