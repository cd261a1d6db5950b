//! Progress: once a second, the queue position and ETA of every queued task someone
//! streams, pushed as a `progress` event when either changed. Not stored: it is derived
//! from the queue, which a stream that missed one simply shows at the next.

use std::collections::HashMap;
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use sea_orm::DatabaseConnection;

use super::messages::QueuePositions;
use super::Dispatcher;
use crate::domain::{EventType, TaskEvent, TaskId, TaskStatus, UserId};
use crate::events::EventHub;
use crate::store::{tasks, StoreError};

const EVERY: Duration = Duration::from_secs(1);
/// A user-wide stream's progress covers the user's oldest queued tasks up to this many
/// (a page of a list; the rest are further back and change little). A task's own
/// stream always gets its task's.
pub const MAX_PROGRESS_PER_USER: u64 = 20;

pub struct Progress {
    hub: EventHub,
    db: DatabaseConnection,
    dispatcher: Addr<Dispatcher>,
    /// What each task's last progress said: nothing is sent until it changes.
    last: HashMap<TaskId, (usize, Option<u64>)>,
    /// A round is under way; the next tick waits for it.
    busy: bool,
}

impl Progress {
    pub fn new(hub: EventHub, db: DatabaseConnection, dispatcher: Addr<Dispatcher>) -> Progress {
        Progress {
            hub,
            db,
            dispatcher,
            last: HashMap::new(),
            busy: false,
        }
    }

    fn round(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            return;
        }
        let watched = self.hub.watched();
        if watched.is_empty() {
            self.last.clear();
            return;
        }
        self.busy = true;
        let (db, dispatcher) = (self.db.clone(), self.dispatcher.clone());
        // One read of the log for every user-wide stream, one question to the queue.
        let positions = async move {
            let mut asked: Vec<(UserId, TaskId)> = Vec::new();
            let mut user_wide = Vec::new();
            for (user_id, tasks) in watched {
                match tasks {
                    Some(ids) => asked.extend(ids.into_iter().map(|id| (user_id, id))),
                    None => user_wide.push(user_id),
                }
            }
            asked.extend(tasks::queued_ids_of(&db, &user_wide, MAX_PROGRESS_PER_USER).await?);
            if asked.is_empty() {
                return Ok(Vec::new());
            }
            let positions = dispatcher.send(QueuePositions(asked.clone())).await??;
            let found: Vec<(UserId, TaskId, usize)> = asked
                .into_iter()
                .zip(positions)
                .filter_map(|((user_id, task_id), position)| Some((user_id, task_id, position?)))
                .collect();
            Ok::<_, StoreError>(found)
        };
        ctx.spawn(positions.into_actor(self).map(|found, progress, _| {
            progress.busy = false;
            match found {
                Ok(found) => progress.publish(found),
                Err(e) => tracing::debug!(error = %e, "no progress this round"),
            }
        }));
    }

    fn publish(&mut self, found: Vec<(UserId, TaskId, usize)>) {
        let now = Utc::now();
        let mut seen = HashMap::with_capacity(found.len());
        let mut events = Vec::new();
        for (user_id, task_id, position) in found {
            if seen.contains_key(&task_id) {
                continue; // watched by more than one stream of its user
            }
            let eta = self.hub.eta_secs(position);
            if self.last.get(&task_id) != Some(&(position, eta)) {
                events.push(TaskEvent {
                    seq: None,
                    kind: EventType::Progress,
                    task_id: task_id.clone(),
                    status: TaskStatus::Queued,
                    at: now,
                    attempt: None,
                    instance: None,
                    result_url: None,
                    error: None,
                    retry_at: None,
                    queue_position: Some(position),
                    eta_secs: eta,
                    user_id,
                });
            }
            seen.insert(task_id, (position, eta));
        }
        self.last = seen;
        self.hub.publish(events);
    }
}

impl Actor for Progress {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(EVERY, |progress, ctx| progress.round(ctx));
    }
}

impl Supervised for Progress {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.busy = false;
    }
}
