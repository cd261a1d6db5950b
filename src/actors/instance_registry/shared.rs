//! The registry as one of several gateways on PostgreSQL: an instance's capacity is
//! shared by every gateway through its call slots in the database. A lease takes one
//! (trying the instances in the order the kind's strategy prefers them, skipping slots
//! others are taking), gives it back when the call ends, and renews it while the call
//! runs; a gateway that dies loses its slots when their leases run out. Health stays
//! each gateway's own judgement.
//!
//! Slots are taken one at a time; a waiter that found none is not tried again until a
//! slot may have come free: one given back here, a `NOTIFY` from another gateway, or
//! the poll.
//!
//! A slot whose call succeeded need not go back at once: it goes to this gateway's oldest
//! waiter that may use its instance, or else stays with the worker for its next task
//! (see the Dispatcher's `claim_next`), while the instance takes work and within its
//! usable capacity. A slot kept for `KEEP_SLOT_FOR` goes back, so that a task another
//! gateway claimed and holds, waiting for a slot, gets its turn.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use sea_orm::DatabaseConnection;

use super::InstanceRegistry;
use crate::actors::messages::{
    CallEnded, CallOutcome, ImageTargets, Lease, ReloadInstances, SlotFreed,
};
use crate::cluster::Cluster;
use crate::domain::{InstanceKind, NodeId};
use crate::store::{cluster as shared, instances};

/// Longest a lease is kept from one call to the next before its slot goes back.
const KEEP_SLOT_FOR: Duration = Duration::from_secs(1);

pub struct SharedSlots {
    pub cluster: Arc<Cluster>,
    /// The connections slots are taken and given back on (see `store::connect_leases`).
    leases: DatabaseConnection,
    /// A slot is being taken: one at a time.
    taking: bool,
    /// Bumped whenever a slot may have come free; a waiter is tried once per value.
    pub generation: u64,
    /// Told which image instances this gateway can call, to bound its claims.
    pub dispatcher: Recipient<ImageTargets>,
    /// What the dispatcher was last told.
    reported: Option<Vec<(String, u32)>>,
}

impl SharedSlots {
    pub fn new(
        cluster: Cluster,
        leases: DatabaseConnection,
        dispatcher: Recipient<ImageTargets>,
    ) -> SharedSlots {
        SharedSlots {
            cluster: Arc::new(cluster),
            leases,
            taking: false,
            generation: 0,
            dispatcher,
            reported: None,
        }
    }
}

impl InstanceRegistry {
    /// Renews this gateway's slots, and looks for free ones as a backstop to wake-ups.
    pub(super) fn start_shared(&mut self, ctx: &mut Context<Self>) {
        let Some(slots) = self.shared.as_ref() else {
            return;
        };
        let cluster = slots.cluster.clone();
        ctx.run_interval(cluster.heartbeat_every(), |registry, ctx| {
            let Some(slots) = registry.shared.as_ref() else {
                return;
            };
            let (db, cluster) = (slots.leases.clone(), slots.cluster.clone());
            ctx.spawn(
                async move {
                    if let Err(e) = shared::renew_slots(&db, &cluster.node, cluster.lease).await {
                        tracing::warn!(error = %e, "cannot renew call slots; they renew at the next beat");
                    }
                }
                .into_actor(registry),
            );
        });
        ctx.run_interval(cluster.poll, |registry, ctx| registry.slot_may_be_free(ctx));
    }

    /// Every instance has its slots in the database.
    pub(super) fn ensure_slots(&self, ctx: &mut Context<Self>) {
        if self.shared.is_none() {
            return;
        }
        let wanted: Vec<(String, u32)> = self
            .instances
            .iter()
            .map(|i| (i.spec.shared_key(), i.spec.capacity))
            .collect();
        let db = self.db.clone();
        ctx.spawn(
            async move {
                for (key, capacity) in wanted {
                    if let Err(e) = shared::ensure_slots(&db, &key, capacity).await {
                        tracing::warn!(error = %e, instance = %key, "cannot create call slots");
                    }
                }
            }
            .into_actor(self)
            .map(|_, registry, ctx| registry.slot_may_be_free(ctx)),
        );
    }

    pub(super) fn slot_may_be_free(&mut self, ctx: &mut Context<Self>) {
        if let Some(slots) = self.shared.as_mut() {
            slots.generation += 1;
        }
        self.serve_waiters(ctx);
    }

    /// Tries the oldest waiter not tried since a slot last came free.
    pub(super) fn serve_shared(&mut self, ctx: &mut Context<Self>) {
        self.waiters.retain(|w| !w.reply.is_closed());
        self.report_targets();
        let Some(slots) = self.shared.as_ref() else {
            return;
        };
        if slots.taking {
            return;
        }
        let generation = slots.generation;
        let Some(position) = self
            .waiters
            .iter()
            .position(|w| w.tried != Some(generation))
        else {
            return;
        };
        let (kind, user_id, avoid, waiter_id) = {
            let w = &self.waiters[position];
            (w.kind, w.user_id, w.avoid, w.id)
        };
        let ranked = self.rank(kind, user_id, avoid, true);
        let slow_start = std::time::Duration::from_secs(self.health.slow_start_secs);
        let now = std::time::Instant::now();
        let candidates: Vec<(String, u32)> = ranked
            .iter()
            .map(|&i| {
                let instance = &self.instances[i];
                (
                    instance.spec.shared_key(),
                    instance.usable_capacity(slow_start, now),
                )
            })
            .collect();
        self.waiters[position].tried = Some(generation);
        if candidates.is_empty() {
            return self.serve_shared(ctx);
        }
        let slots = self.shared.as_mut().expect("shared mode");
        slots.taking = true;
        let (db, cluster) = (slots.leases.clone(), slots.cluster.clone());
        let take =
            async move { shared::take_slot(&db, &cluster.node, &candidates, cluster.lease).await };
        ctx.spawn(take.into_actor(self).map(move |taken, registry, ctx| {
            if let Some(slots) = registry.shared.as_mut() {
                slots.taking = false;
            }
            match taken {
                Ok(Some((key, slot))) => registry.grant_slot(waiter_id, &key, slot, ctx),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot take a call slot; trying again soon"),
            }
            registry.serve_waiters(ctx);
        }));
    }

    /// Hands a slot just taken to its waiter, or gives it back when the waiter has gone
    /// (or the instance meanwhile).
    fn grant_slot(&mut self, waiter_id: u64, key: &str, slot: u32, ctx: &mut Context<Self>) {
        let instance = self
            .instances
            .iter()
            .position(|i| i.spec.shared_key() == key);
        let waiter = self.waiters.iter().position(|w| w.id == waiter_id);
        let (Some(index), Some(waiter)) = (instance, waiter) else {
            return self.give_back_slot(key.to_string(), slot, ctx);
        };
        let waiter = self.waiters.remove(waiter).expect("index found above");
        let lease = self.lease(index, ctx).in_slot(slot);
        // A requester that gave up meanwhile drops the lease, whose Release frees it all.
        let _ = waiter.reply.send(lease);
    }

    /// A slot goes back to the others.
    pub(super) fn give_back_slot(&mut self, key: String, slot: u32, ctx: &mut Context<Self>) {
        let Some(slots) = self.shared.as_ref() else {
            return;
        };
        let (db, node): (_, NodeId) = (slots.leases.clone(), slots.cluster.node.clone());
        ctx.spawn(
            async move {
                if let Err(e) = shared::release_slot(&db, &node, &key, slot).await {
                    tracing::warn!(error = %e, instance = %key, "cannot give a call slot back; it frees when its lease runs out");
                }
            }
            .into_actor(self)
            .map(|_, registry, ctx| registry.slot_may_be_free(ctx)),
        );
    }

    /// Tells the dispatcher which image instances this gateway can call, when that
    /// changed.
    fn report_targets(&mut self) {
        let now = std::time::Instant::now();
        let slow_start = std::time::Duration::from_secs(self.health.slow_start_secs);
        let targets: Vec<(String, u32)> = self
            .instances
            .iter()
            .filter(|i| i.spec.kind == InstanceKind::Image && i.takes_work(now))
            .map(|i| (i.spec.shared_key(), i.usable_capacity(slow_start, now)))
            .collect();
        let Some(slots) = self.shared.as_mut() else {
            return;
        };
        if slots.reported.as_ref() != Some(&targets) {
            slots.dispatcher.do_send(ImageTargets(targets.clone()));
            slots.reported = Some(targets);
        }
    }
}

/// Records the call's outcome, then passes the lease on to a waiter of this gateway, or
/// answers it kept, or gives it back.
impl Handler<CallEnded> for InstanceRegistry {
    type Result = Option<Lease>;

    fn handle(
        &mut self,
        CallEnded { mut lease, outcome }: CallEnded,
        ctx: &mut Context<Self>,
    ) -> Option<Lease> {
        let Some(index) = self
            .instances
            .iter()
            .position(|i| i.id == lease.instance_id())
        else {
            lease.release(outcome);
            return None;
        };
        self.record_outcome(index, outcome, ctx);
        let now = Instant::now();
        let slow_start = Duration::from_secs(self.health.slow_start_secs);
        let instance = &self.instances[index];
        let keep = self.shared.is_some()
            && instance.takes_work(now)
            && lease
                .slot()
                .is_some_and(|slot| slot < instance.usable_capacity(slow_start, now))
            && lease.granted_at().elapsed() < KEEP_SLOT_FOR;
        if !keep {
            lease.release(CallOutcome::Neutral);
            return None;
        }
        let (kind, id) = (instance.spec.kind, instance.id);
        self.count_lease(index);
        // A waiter was here first: its task was claimed before the next one would be.
        while let Some(waiter) = self
            .waiters
            .iter()
            .position(|w| w.kind == kind && w.avoid != Some(id) && !w.reply.is_closed())
        {
            let waiter = self.waiters.remove(waiter).expect("index found above");
            match waiter.reply.send(lease) {
                Ok(()) => return None,
                Err(unwanted) => lease = unwanted,
            }
        }
        Some(lease)
    }
}

/// Another gateway gave a slot back.
impl Handler<SlotFreed> for InstanceRegistry {
    type Result = ();

    fn handle(&mut self, _: SlotFreed, ctx: &mut Context<Self>) {
        self.slot_may_be_free(ctx);
    }
}

/// Another gateway changed the instances: read them again, keeping what is known.
impl Handler<ReloadInstances> for InstanceRegistry {
    type Result = ();

    fn handle(&mut self, _: ReloadInstances, ctx: &mut Context<Self>) {
        let db = self.db.clone();
        let rows = async move { instances::load(&db).await };
        ctx.spawn(rows.into_actor(self).map(|rows, registry, ctx| match rows {
            Ok(rows) => {
                let known: Vec<_> = registry.instances.iter().map(|i| i.id).collect();
                registry.load(rows);
                for id in registry.instances.iter().map(|i| i.id).collect::<Vec<_>>() {
                    if !known.contains(&id) {
                        registry.schedule_ping(id, std::time::Duration::ZERO, ctx);
                    }
                }
                registry.ensure_slots(ctx);
                registry.report_capacity();
                registry.serve_waiters(ctx);
            }
            Err(e) => tracing::warn!(error = %e, "cannot reload the instances"),
        }));
    }
}
