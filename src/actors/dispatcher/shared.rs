//! The Dispatcher as one of several gateways on PostgreSQL: the queue is the database's.
//! Idle workers get tasks claimed in the global fair order (never more than there are
//! free call slots on the instances this gateway may call, so none hoards work it cannot
//! start), on a wake-up from any gateway, after each task and on a poll as a backstop.
//! A worker whose call ended on a slot it kept gets a task claimed for that slot the
//! moment its call ends: that claim needs no free slot, so it neither counts them nor
//! waits for the other claims, and the GPU idles only for that one statement (workers
//! whose calls end while it is out share the next one).
//! A heartbeat renews this gateway's claims and takes over those of gateways that
//! stopped renewing theirs.

use std::collections::VecDeque;
use std::sync::Arc;

use actix::prelude::*;
use chrono::Utc;

use super::Dispatcher;
use crate::actors::messages::{ImageTargets, Lease, Run, WakeReason, WorkerHandle};
use crate::cluster::{hostname, Cluster};
use crate::domain::{QueuedTask, TaskId};
use crate::store::cluster::{self as shared, ClaimOrder, Room};

pub(super) struct Shared {
    pub cluster: Arc<Cluster>,
    pub vip_share: u32,
    max_attempts: i32,
    /// A claim is out: one at a time.
    claiming: bool,
    /// The image instances this gateway can call now (key, capacity): a claim takes no
    /// more tasks than they have free slots. Told by the InstanceRegistry.
    targets: Vec<(String, u32)>,
    /// Claimed tasks no idle worker was left for (the pool shrank meanwhile).
    claimed: VecDeque<QueuedTask>,
    /// Workers whose call ended on a lease they kept, waiting for the next claim for
    /// them; that claim needs no free slot, and is out one at a time besides the others.
    kept: Vec<(WorkerHandle, Lease)>,
    claiming_kept: bool,
    /// What the last claim ran out of, if it took fewer tasks than it wanted: a wake-up
    /// that brings no more of it is no reason to claim again (every gateway hears every
    /// slot given back and every task queued).
    short_of: Option<Shortfall>,
}

/// What a claim that took fewer tasks than it wanted ran out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shortfall {
    /// Ready tasks: a slot given back changes nothing, a task queued may.
    Tasks,
    /// Free call slots: a slot given back may change that. A task queued changes
    /// nothing while calls run here, whose ends claim again; with none running, slots
    /// may also come free unannounced (created, or their holder's lease run out).
    Slots,
}

impl Shortfall {
    /// After a claim that wanted `wanted` tasks, had room for `room` and took `took`.
    fn after(wanted: usize, took: usize, room: usize) -> Option<Shortfall> {
        if took >= wanted {
            None
        } else if took < room {
            Some(Shortfall::Tasks)
        } else {
            Some(Shortfall::Slots)
        }
    }

    /// Whether the wake-up brings nothing this shortfall lacks.
    fn unhelped_by(self, why: WakeReason, calls_running: bool) -> bool {
        match self {
            Shortfall::Tasks => why == WakeReason::SlotFreed,
            Shortfall::Slots => why == WakeReason::Queued && calls_running,
        }
    }
}

impl Shared {
    pub fn new(cluster: Cluster, vip_share: u32, max_attempts: i32) -> Shared {
        Shared {
            cluster: Arc::new(cluster),
            vip_share,
            max_attempts,
            claiming: false,
            targets: Vec::new(),
            claimed: VecDeque::new(),
            kept: Vec::new(),
            claiming_kept: false,
            short_of: None,
        }
    }
}

impl Dispatcher {
    /// Records this gateway among the live ones, then beats and polls.
    pub(super) fn start_shared(&mut self, ctx: &mut Context<Self>) {
        let shared = self.shared.as_ref().expect("shared mode");
        let (db, cluster) = (self.db.clone(), shared.cluster.clone());
        let register = async move {
            shared::register_node(&db, &cluster.node, &hostname()).await?;
            crate::store::meta::paused(&db).await
        };
        ctx.wait(register.into_actor(self).map(|registered, dispatcher, ctx| {
            match registered {
                Ok(paused) => dispatcher.paused = paused,
                Err(e) => {
                    tracing::error!(error = %e, "cannot record this gateway among the live ones; restarting");
                    ctx.stop();
                }
            }
        }));
        let cluster = &shared.cluster;
        tracing::info!(node = %cluster.node, "one of several gateways on this database");
        ctx.run_interval(cluster.heartbeat_every(), |dispatcher, ctx| {
            dispatcher.heartbeat(ctx)
        });
        ctx.run_interval(cluster.poll, |dispatcher, ctx| dispatcher.claim(ctx));
    }

    /// Claims for the idle workers on another gateway's word, unless the last claim ran
    /// out of something it does not bring.
    pub(super) fn wake(&mut self, why: WakeReason, ctx: &mut Context<Self>) {
        let Some(shared) = self.shared.as_ref() else {
            return;
        };
        let calls_running = !self.running.is_empty();
        if shared
            .short_of
            .is_some_and(|short| short.unhelped_by(why, calls_running))
        {
            return;
        }
        self.claim(ctx);
    }

    /// Claims tasks for the idle workers.
    pub(super) fn claim(&mut self, ctx: &mut Context<Self>) {
        let Some(shared) = self.shared.as_mut() else {
            return;
        };
        while let Some(task) = (!self.idle.is_empty() && !self.paused)
            .then(|| shared.claimed.pop_front())
            .flatten()
        {
            Self::start_claimed(&mut self.idle, &mut self.running, &mut shared.claimed, task);
        }
        if self.draining || self.paused || shared.claiming || self.idle.is_empty() {
            return;
        }
        shared.claiming = true;
        let wanted = self.idle.len();
        let (db, cluster, targets) = (
            self.db.clone(),
            shared.cluster.clone(),
            shared.targets.clone(),
        );
        let order = ClaimOrder {
            vip_share: shared.vip_share,
        };
        let room = Room::FreeSlots(wanted, targets);
        let claim =
            async move { shared::claim(&db, &cluster.node, room, cluster.lease, order).await };
        ctx.spawn(claim.into_actor(self).map(move |claimed, dispatcher, ctx| {
            let Some(shared) = dispatcher.shared.as_mut() else {
                return;
            };
            shared.claiming = false;
            let claimed = match claimed {
                Ok(claimed) => claimed,
                Err(e) => {
                    shared.short_of = None;
                    tracing::warn!(error = %e, "cannot claim tasks; trying again at the next poll");
                    return;
                }
            };
            shared.short_of = Shortfall::after(wanted, claimed.tasks.len(), claimed.room);
            let full = wanted > 0 && claimed.tasks.len() == wanted;
            for task in claimed.tasks {
                Self::start_claimed(
                    &mut dispatcher.idle,
                    &mut dispatcher.running,
                    &mut shared.claimed,
                    task,
                );
            }
            // A full claim says more may be waiting.
            if full {
                dispatcher.claim(ctx);
            }
        }));
    }

    fn start_claimed(
        idle: &mut Vec<WorkerHandle>,
        running: &mut std::collections::HashMap<TaskId, (WorkerHandle, crate::domain::UserId)>,
        claimed: &mut VecDeque<QueuedTask>,
        task: QueuedTask,
    ) {
        let Some(worker) = idle.pop() else {
            claimed.push_back(task);
            return;
        };
        let (task_id, user_id) = (task.task_id.clone(), task.user_id);
        match worker.run.try_send(Run(task, None)) {
            Ok(()) => {
                running.insert(task_id, (worker, user_id));
            }
            Err(SendError::Full(Run(task, _)) | SendError::Closed(Run(task, _))) => {
                claimed.push_front(task)
            }
        }
    }

    /// Claims the next task for a worker that kept the lease its last call ended on, and
    /// runs it on that lease. With nothing to claim the lease is dropped (its slot goes
    /// back) and the worker is idle like any other.
    pub(super) fn claim_next(
        &mut self,
        worker: WorkerHandle,
        lease: Lease,
        ctx: &mut Context<Self>,
    ) {
        let Some(shared) = self.shared.as_mut() else {
            drop(lease);
            self.idle.push(worker);
            return self.dispatch(ctx);
        };
        if self.draining || self.paused {
            drop(lease);
            self.idle.push(worker);
            return;
        }
        shared.kept.push((worker, lease));
        self.claim_kept(ctx);
    }

    /// One claim for every kept lease waiting, unless one is out: those that come while it
    /// is out ride on the next, as writes do on a group commit.
    fn claim_kept(&mut self, ctx: &mut Context<Self>) {
        let Some(shared) = self.shared.as_mut() else {
            return;
        };
        if shared.claiming_kept || shared.kept.is_empty() {
            return;
        }
        shared.claiming_kept = true;
        let kept = std::mem::take(&mut shared.kept);
        let (db, cluster) = (self.db.clone(), shared.cluster.clone());
        let order = ClaimOrder {
            vip_share: shared.vip_share,
        };
        let n = kept.len();
        let room = Room::Exactly(n);
        let claim =
            async move { shared::claim(&db, &cluster.node, room, cluster.lease, order).await };
        ctx.spawn(claim.into_actor(self).map(move |claimed, dispatcher, ctx| {
            let Some(shared) = dispatcher.shared.as_mut() else {
                return;
            };
            shared.claiming_kept = false;
            let tasks = match claimed {
                Ok(claimed) => {
                    if claimed.tasks.len() < n {
                        // No slot was short: the ready tasks ran out.
                        shared.short_of = Some(Shortfall::Tasks);
                    }
                    claimed.tasks
                }
                Err(e) => {
                    // What is short is not known: every wake-up claims again.
                    shared.short_of = None;
                    tracing::warn!(error = %e, "cannot claim tasks for kept slots; giving them back");
                    Vec::new()
                }
            };
            let mut tasks = tasks.into_iter();
            let mut all_claimed = true;
            for (worker, lease) in kept {
                let Some(task) = tasks.next() else {
                    // Nothing more to claim: the slot goes back, the worker idles.
                    drop(lease);
                    dispatcher.idle.push(worker);
                    all_claimed = false;
                    continue;
                };
                if dispatcher.draining {
                    // Claimed as the drain began: back to the others with the rest.
                    drop(lease);
                    dispatcher.idle.push(worker);
                    continue;
                }
                let (task_id, user_id) = (task.task_id.clone(), task.user_id);
                match worker.run.try_send(Run(task, Some(lease))) {
                    Ok(()) => {
                        dispatcher.running.insert(task_id, (worker, user_id));
                    }
                    // Not idle after all (its supervisor will announce it again): the
                    // task waits for another worker, and the lease goes back.
                    Err(SendError::Full(Run(task, _)) | SendError::Closed(Run(task, _))) => {
                        if let Some(shared) = dispatcher.shared.as_mut() {
                            shared.claimed.push_front(task);
                        }
                        all_claimed = false;
                    }
                }
            }
            if dispatcher.draining {
                return dispatcher.hand_back(ctx);
            }
            dispatcher.claim_kept(ctx);
            if !all_claimed {
                dispatcher.claim(ctx);
            }
        }));
    }

    /// Renews this gateway's claims (and says it is alive), then takes over the tasks of
    /// gateways that stopped renewing theirs, and forgets gateways long gone.
    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        let Some(shared) = self.shared.as_ref() else {
            return;
        };
        let mut live: Vec<TaskId> = self.running.keys().cloned().collect();
        live.extend(shared.claimed.iter().map(|t| t.task_id.clone()));
        let (db, cluster, max_attempts) =
            (self.db.clone(), shared.cluster.clone(), shared.max_attempts);
        let beat = async move {
            shared::heartbeat(&db, &cluster.node, &live, cluster.lease).await?;
            let rescued = shared::rescue(&db, max_attempts).await?;
            shared::forget_nodes(&db, cluster.lease * 20).await?;
            let paused = crate::store::meta::paused(&db).await?;
            Ok::<_, crate::store::StoreError>((rescued, paused))
        };
        ctx.spawn(
            beat.into_actor(self)
                .map(|beat, dispatcher, ctx| match beat {
                    Ok((rescued, paused)) => {
                        // An admin of any gateway may have paused or resumed.
                        if dispatcher.paused != paused {
                            dispatcher.paused = paused;
                            dispatcher.claim(ctx);
                        }
                        if rescued.is_empty() {
                            return;
                        }
                        let failed = rescued.iter().filter(|r| r.failed).count();
                        tracing::warn!(
                            requeued = rescued.len() - failed,
                            failed,
                            "took over the tasks of a gateway that stopped"
                        );
                        dispatcher.claim(ctx);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "heartbeat failed; claims renew at the next")
                    }
                }),
        );
    }

    /// On a drain: the tasks claimed and not started go back to the others at once.
    pub(super) fn hand_back(&mut self, ctx: &mut Context<Self>) {
        let Some(shared) = self.shared.as_mut() else {
            return;
        };
        shared.claimed.clear();
        let (db, cluster) = (self.db.clone(), shared.cluster.clone());
        ctx.spawn(
            async move {
                match shared::hand_back(&db, &cluster.node).await {
                    Ok(n) if n > 0 => tracing::info!(tasks = n, "handed claimed tasks back"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot hand claimed tasks back; their claims run out"),
                }
            }
            .into_actor(self),
        );
    }
}

/// This gateway, alone on its database, as the nodes listing shows it.
pub(super) fn this_node(started_at: &chrono::DateTime<Utc>, running: usize) -> entity::node::Model {
    entity::node::Model {
        id: "local".into(),
        host: hostname(),
        pid: std::process::id() as i32,
        started_at: *started_at,
        heartbeat_at: Utc::now(),
        running: running as i32,
    }
}

/// The instances a claim may count on.
impl Handler<ImageTargets> for Dispatcher {
    type Result = ();

    fn handle(&mut self, ImageTargets(targets): ImageTargets, ctx: &mut Context<Self>) {
        if let Some(shared) = self.shared.as_mut() {
            shared.targets = targets;
        }
        self.claim(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_says_what_it_ran_out_of() {
        // All it wanted: nothing.
        assert_eq!(Shortfall::after(4, 4, 4), None);
        // Fewer than the free slots: the ready tasks ran out.
        assert_eq!(Shortfall::after(4, 1, 3), Some(Shortfall::Tasks));
        assert_eq!(Shortfall::after(4, 0, 4), Some(Shortfall::Tasks));
        // As many as the free slots, fewer than wanted: the slots ran out.
        assert_eq!(Shortfall::after(4, 2, 2), Some(Shortfall::Slots));
        assert_eq!(Shortfall::after(4, 0, 0), Some(Shortfall::Slots));
    }

    #[test]
    fn only_a_wake_up_bringing_what_ran_out_calls_for_a_claim() {
        use WakeReason::*;
        for running in [false, true] {
            assert!(Shortfall::Tasks.unhelped_by(SlotFreed, running));
            assert!(!Shortfall::Tasks.unhelped_by(Queued, running));
            assert!(!Shortfall::Slots.unhelped_by(SlotFreed, running));
            // Wake-ups that may have been lost are always looked into.
            assert!(!Shortfall::Tasks.unhelped_by(Resync, running));
            assert!(!Shortfall::Slots.unhelped_by(Resync, running));
        }
        // Out of slots, calls running here claim again as they end.
        assert!(Shortfall::Slots.unhelped_by(Queued, true));
        // With none running, a slot may have come free unannounced.
        assert!(!Shortfall::Slots.unhelped_by(Queued, false));
    }
}
