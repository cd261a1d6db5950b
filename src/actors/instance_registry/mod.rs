//! InstanceRegistry: the live set of backend instances and who may call them now.
//!
//! Owns every instance's configuration, health, in-flight count (never above its
//! capacity) and figures, the per-kind balancing strategy, and the first-come line of
//! `Acquire` requests that found no instance with room. Only this actor changes that
//! state: workers get a `Lease` and give it back with the call's outcome (with several
//! gateways, `CallEnded` may let them keep it for their next task), and admins add,
//! change and remove instances through it (it writes their rows too). Whenever the
//! enabled image capacity changes it tells the WorkerPool, which sizes the workers to it.
//!
//! A panic in one of its handlers is contained: the registry stops, its supervisor starts
//! it again, and it reloads the instances (from settings.toml and the database), keeping
//! what it knew of each (calls in flight above all), and pings them all at once.
//!
//! - `instance`: one instance's state;
//! - `balancing`: the strategies, as pure functions over the instances that may take work;
//! - `health`: pings (the first at once, then jittered), slow start;
//! - `outlier`: passive health, ejection by consecutive faults or failure rate;
//! - `admin`: add, change, drain and remove.

mod admin;
mod balancing;
mod health;
mod instance;
mod outlier;
mod shared;

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use actix::prelude::*;
use sea_orm::DatabaseConnection;
use tokio::sync::oneshot;

use super::messages::*;
use crate::backends;
use crate::domain::{InstanceId, InstanceKind, InstanceSpec, Strategy, UserId};
use crate::faults;
use crate::settings::HealthSettings;
use crate::store::instances;
use crate::telemetry::METRICS;
use balancing::Candidate;
use instance::{Instance, Pinged};
pub use shared::SharedSlots;

/// Ids of instances from settings.toml start above this (the first is `+ 1`, in file
/// order); API-added instances keep their database id, which never gets this far.
pub const SETTINGS_ID_BASE: u64 = 1_000_000_000_000;

/// Least-loaded trusts an instance's latency only while the instance keeps getting work:
/// after this many leases of its kind went elsewhere, its latency is forgotten and it is
/// tried again, so one slow call (a cold start, a stall) cannot keep it out of ties for
/// good. Costs at most about one call in this many per instance.
const LATENCY_TRUSTED_FOR_LEASES: u64 = 100;

/// The latency to rank by, or `None` when it is too old to trust.
fn trusted_latency(latency_ms: Option<f64>, last_lease: u64, leases: u64) -> Option<f64> {
    latency_ms.filter(|_| leases - last_lease <= LATENCY_TRUSTED_FOR_LEASES)
}

struct Waiter {
    /// Names it while a shared slot is being taken for it.
    id: u64,
    /// The shared-slot generation it was last tried at (several gateways).
    tried: Option<u64>,
    kind: InstanceKind,
    user_id: UserId,
    avoid: Option<InstanceId>,
    reply: oneshot::Sender<Lease>,
}

pub struct InstanceRegistry {
    /// The instances of settings.toml, the start of every (re)load.
    from_settings: Vec<InstanceSpec>,
    instances: Vec<Instance>,
    /// Instances of the first load not pinged yet: the gateway is ready once it is empty.
    first_round: Option<HashSet<InstanceId>>,
    strategies: HashMap<InstanceKind, Strategy>,
    /// Round-robin position per kind.
    cursors: HashMap<InstanceKind, usize>,
    /// Leases handed out per kind, to tell how stale an instance's latency is.
    leases: HashMap<InstanceKind, u64>,
    /// Acquire requests waiting for room, oldest first.
    waiters: VecDeque<Waiter>,
    health: HealthSettings,
    /// For pings; created in `started` because awc clients are bound to their thread.
    client: Option<awc::Client>,
    /// Where API instances' rows are written.
    db: DatabaseConnection,
    /// Told the enabled image capacity whenever it changes, to size the worker pool.
    pool: Recipient<ImageCapacity>,
    /// What the pool was last told.
    reported_capacity: Option<u32>,
    /// The next waiter's id.
    next_waiter: u64,
    /// With several gateways: capacity is shared, through call slots in the database.
    shared: Option<SharedSlots>,
}

impl InstanceRegistry {
    /// The instances of settings.toml, and at start those added through the API.
    pub fn new(
        from_settings: Vec<InstanceSpec>,
        strategies: HashMap<InstanceKind, Strategy>,
        health: HealthSettings,
        db: DatabaseConnection,
        pool: Recipient<ImageCapacity>,
        shared: Option<SharedSlots>,
    ) -> InstanceRegistry {
        InstanceRegistry {
            next_waiter: 0,
            shared,
            from_settings,
            instances: Vec::new(),
            first_round: None,
            strategies,
            cursors: HashMap::new(),
            leases: HashMap::new(),
            waiters: VecDeque::new(),
            health,
            client: None,
            db,
            pool,
            reported_capacity: None,
        }
    }

    fn any_takes_work(&self, kind: InstanceKind, except: Option<InstanceId>) -> bool {
        let now = Instant::now();
        self.instances
            .iter()
            .any(|i| i.spec.kind == kind && i.takes_work(now) && Some(i.id) != except)
    }

    /// The settings' instances and the API's rows, each with what this process knew of
    /// it before (after a restart of the registry).
    fn load(&mut self, rows: Vec<entity::instance::Model>) {
        let mut known: HashMap<InstanceId, Instance> =
            self.instances.drain(..).map(|i| (i.id, i)).collect();
        let from_settings = self.from_settings.iter().enumerate().map(|(i, spec)| {
            let id = InstanceId(SETTINGS_ID_BASE + i as u64 + 1);
            Instance::new(id, InstanceSource::Settings, spec.clone())
        });
        let loaded: Vec<Instance> = from_settings
            .chain(rows.into_iter().map(Instance::from_row))
            .collect();
        for mut instance in loaded {
            if let Some(old) = known.remove(&instance.id) {
                instance.carry_over(old);
            }
            self.instances.push(instance);
        }
        // Gone from the database while calls were in flight: they drain.
        for (_, mut gone) in known {
            if gone.in_flight > 0 {
                gone.draining = true;
                self.instances.push(gone);
            } else {
                METRICS.instance_removed(gone.spec.kind, gone.id);
            }
        }
    }

    /// Whether the first ping of every instance of the first load has been answered.
    fn probed(&self) -> bool {
        self.first_round.as_ref().is_some_and(HashSet::is_empty)
    }

    /// The instance index the kind's strategy picks for this user, among those that take
    /// work and have room (and other than `avoid` while another one takes work).
    fn pick(
        &mut self,
        kind: InstanceKind,
        user_id: UserId,
        avoid: Option<InstanceId>,
    ) -> Option<usize> {
        self.rank(kind, user_id, avoid, false).first().copied()
    }

    /// The instances the kind's strategy would pick, best first (only the first unless
    /// `all`), among those that take work and have room (and other than `avoid` while
    /// another one takes work).
    fn rank(
        &mut self,
        kind: InstanceKind,
        user_id: UserId,
        avoid: Option<InstanceId>,
        all: bool,
    ) -> Vec<usize> {
        let avoid = avoid.filter(|&id| self.any_takes_work(kind, Some(id)));
        let slow_start = Duration::from_secs(self.health.slow_start_secs);
        let now = Instant::now();
        let leases = self.leases.get(&kind).copied().unwrap_or(0);
        let indices: Vec<usize> = (0..self.instances.len())
            .filter(|&i| {
                let instance = &self.instances[i];
                instance.spec.kind == kind && instance.takes_work(now) && Some(instance.id) != avoid
            })
            .collect();
        let candidates: Vec<Candidate> = indices
            .iter()
            .map(|&i| {
                let instance = &self.instances[i];
                Candidate {
                    key: &instance.spec.url,
                    in_flight: instance.in_flight,
                    capacity: instance.usable_capacity(slow_start, now),
                    weight: instance.spec.weight,
                    latency_ms: trusted_latency(instance.latency_ms, instance.last_lease, leases),
                }
            })
            .collect();
        let strategy = self
            .strategies
            .get(&kind)
            .copied()
            .unwrap_or(Strategy::LeastLoaded);
        let cursor = self.cursors.entry(kind).or_insert(0);
        let ranked = if all {
            balancing::order(strategy, &candidates, user_id, cursor)
        } else {
            balancing::choose(strategy, &candidates, user_id, cursor)
                .into_iter()
                .collect()
        };
        ranked.into_iter().map(|c| indices[c]).collect()
    }

    fn lease(&mut self, index: usize, ctx: &Context<Self>) -> Lease {
        faults::hit(faults::Site::RegistryLease);
        self.count_lease(index);
        let instance = &mut self.instances[index];
        instance.in_flight += 1;
        Lease::new(instance.id, &instance.spec, ctx.address().recipient())
    }

    /// One more call on the instance, for its latency's freshness and its probe.
    fn count_lease(&mut self, index: usize) {
        let instance = &mut self.instances[index];
        // After an ejection, this is the one call that decides.
        instance.outlier.start_probe();
        let leases = self.leases.entry(instance.spec.kind).or_insert(0);
        *leases += 1;
        if trusted_latency(instance.latency_ms, instance.last_lease, *leases - 1).is_none() {
            // Measured afresh from this call, not blended into a stale average.
            instance.latency_ms = None;
        }
        instance.last_lease = *leases;
    }

    /// Hands free capacity to waiting requests, oldest first. A panic in here is
    /// contained: the registry stops and its supervisor starts it again.
    fn serve_waiters(&mut self, ctx: &mut Context<Self>) {
        if self.shared.is_some() {
            return self.serve_shared(ctx);
        }
        let served = std::panic::catch_unwind(AssertUnwindSafe(|| self.serve_waiters_now(ctx)));
        if served.is_err() {
            tracing::error!(
                "the instance registry failed; restarting it with the instances reloaded"
            );
            ctx.stop();
        }
    }

    fn serve_waiters_now(&mut self, ctx: &Context<Self>) {
        let mut i = 0;
        while i < self.waiters.len() {
            if self.waiters[i].reply.is_closed() {
                self.waiters.remove(i);
                continue;
            }
            let waiter = &self.waiters[i];
            let Some(index) = self.pick(waiter.kind, waiter.user_id, waiter.avoid) else {
                i += 1;
                continue;
            };
            let waiter = self.waiters.remove(i).expect("index checked above");
            let lease = self.lease(index, ctx);
            if let Err(unwanted) = waiter.reply.send(lease) {
                // The requester gave up between our check and the send.
                unwanted.unused();
                self.instances[index].in_flight -= 1;
            }
        }
    }

    /// Tells the pool the enabled image capacity, when it changed.
    fn report_capacity(&mut self) {
        let total = self
            .instances
            .iter()
            .filter(|i| i.spec.kind == InstanceKind::Image && i.enabled && !i.draining)
            .map(|i| i.spec.capacity)
            .sum();
        if self.reported_capacity != Some(total) {
            self.reported_capacity = Some(total);
            self.pool.do_send(ImageCapacity(total));
        }
    }

    /// A draining instance leaves once its last call has ended.
    fn remove_if_drained(&mut self, index: usize) {
        let instance = &self.instances[index];
        if instance.draining && instance.in_flight == 0 {
            tracing::info!(instance = %instance.shown_url(), id = %instance.id, "instance drained and removed");
            METRICS.instance_removed(instance.spec.kind, instance.id);
            self.instances.remove(index);
        }
    }
}

impl Actor for InstanceRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.client = Some(backends::client());
        // Hold every other message until the instances are loaded.
        let db = self.db.clone();
        let rows = async move { instances::load(&db).await };
        ctx.wait(rows.into_actor(self).map(|rows, registry, ctx| {
            let rows = rows.unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot load the instances added through the API; starting with those of settings.toml");
                Vec::new()
            });
            registry.load(rows);
            if registry.first_round.is_none() {
                registry.first_round = Some(registry.instances.iter().map(|i| i.id).collect());
            }
            tracing::info!(
                from_settings = registry.from_settings.len(),
                all = registry.instances.len(),
                "instances"
            );
            // The first ping at once: health is known before traffic comes.
            for id in registry.instances.iter().map(|i| i.id).collect::<Vec<_>>() {
                registry.schedule_ping(id, Duration::ZERO, ctx);
            }
            registry.report_capacity();
            registry.ensure_slots(ctx);
        }));
        self.start_shared(ctx);
    }
}

impl Supervised for InstanceRegistry {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // Pings in flight and their timers died with the old context (`started` reloads
        // and pings again); waiters see their request dropped, and ask again.
        self.waiters.clear();
    }
}

/// Answers at once when an instance has room, else queues the request.
impl Handler<Acquire> for InstanceRegistry {
    type Result = ResponseFuture<Result<Lease, AcquireError>>;

    fn handle(&mut self, msg: Acquire, ctx: &mut Context<Self>) -> Self::Result {
        // An instance whose first ping is still out is worth waiting for.
        let soon = self
            .instances
            .iter()
            .any(|i| i.spec.kind == msg.kind && i.awaits_first_ping());
        if msg.fail_fast && !soon && !self.any_takes_work(msg.kind, None) {
            return Box::pin(async { Err(AcquireError::NoHealthyInstance) });
        }
        if let Some(max) = msg.max_waiting {
            let waiting = self
                .waiters
                .iter()
                .filter(|w| w.kind == msg.kind && !w.reply.is_closed())
                .count();
            // Requests of this kind only wait while no instance has room for them.
            if waiting >= max {
                return Box::pin(async { Err(AcquireError::TooManyWaiting) });
            }
        }
        let (reply, lease) = oneshot::channel();
        self.next_waiter += 1;
        self.waiters.push_back(Waiter {
            id: self.next_waiter,
            tried: None,
            kind: msg.kind,
            user_id: msg.user_id,
            avoid: msg.avoid,
            reply,
        });
        self.serve_waiters(ctx);
        Box::pin(async move { lease.await.map_err(|_| AcquireError::RegistryStopped) })
    }
}

/// Frees the capacity and records the outcome (passive health, see `outlier`), and
/// removes a draining instance after its last call.
impl Handler<Release> for InstanceRegistry {
    type Result = ();

    fn handle(&mut self, msg: Release, ctx: &mut Context<Self>) {
        // Known before a drained instance goes.
        let slot_key = self
            .instances
            .iter()
            .find(|i| i.id == msg.instance_id)
            .map(|i| i.spec.shared_key());
        if let Some(index) = self.instances.iter().position(|i| i.id == msg.instance_id) {
            let instance = &mut self.instances[index];
            instance.in_flight = instance.in_flight.saturating_sub(1);
            self.record_outcome(index, msg.outcome, ctx);
            self.remove_if_drained(index);
        }
        if let (Some(slot), Some(key)) = (msg.slot, slot_key) {
            return self.give_back_slot(key, slot, ctx);
        }
        self.serve_waiters(ctx);
    }
}

impl InstanceRegistry {
    /// What a call's outcome tells of the instance: its figures, and passive health.
    fn record_outcome(&mut self, index: usize, outcome: CallOutcome, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let instance = &mut self.instances[index];
        match outcome {
            CallOutcome::Success { latency } => {
                let ms = latency.as_secs_f64() * 1000.0;
                instance.latency_ms =
                    Some(instance.latency_ms.map_or(ms, |avg| avg * 0.8 + ms * 0.2));
                instance.completed += 1;
                if instance.outlier.succeeded(now) {
                    tracing::info!(instance = %instance.shown_url(), "instance back after its ejection");
                    self.coming_back(index, ctx);
                }
            }
            CallOutcome::InstanceFault { error } => {
                instance.failed += 1;
                instance.last_error = Some(error.clone());
                if instance.outlier.failed(&self.health) {
                    self.eject(index, &error, ctx);
                }
            }
            CallOutcome::Neutral => {}
        }
    }

    /// Ejects the instance, if the policy allows; otherwise it keeps taking work (a
    /// failed probe included).
    fn eject(&mut self, index: usize, error: &str, ctx: &mut Context<Self>) {
        let instance = &self.instances[index];
        let now = Instant::now();
        let kind = instance.spec.kind;
        let live: Vec<&Instance> = self
            .instances
            .iter()
            .filter(|i| i.spec.kind == kind && i.enabled && !i.draining)
            .collect();
        let ejected_others = live
            .iter()
            .filter(|i| i.id != instance.id && i.outlier.is_ejected())
            .count();
        let others_take_work = live
            .iter()
            .any(|i| i.id != instance.id && i.pinged == Pinged::Up && !i.outlier.is_ejected());
        let allowed = ejected_others < outlier::max_ejected(live.len(), self.health.max_ejection_percent)
            // Never the last one of its kind that still does some of the work.
            && (others_take_work || !instance.outlier.succeeds_sometimes());
        let instance = &mut self.instances[index];
        if !allowed {
            if instance.outlier.is_ejected() {
                // A failed probe the policy will not eject for: it is back.
                instance.outlier.succeeded(now);
            }
            tracing::debug!(instance = %instance.shown_url(), "not ejected: too many of its kind are out, or it is the last that works");
            return;
        }
        let duration = instance.outlier.eject(now, &self.health);
        tracing::warn!(instance = %instance.shown_url(), %error, ejected_for_secs = duration.as_secs(), "instance ejected after failed calls");
        // Its probe call may go out then.
        ctx.run_later(duration, |registry, ctx| registry.serve_waiters(ctx));
    }

    /// The instance ramps up again, over the slow start, serving waiters at each step.
    fn coming_back(&mut self, index: usize, ctx: &mut Context<Self>) {
        let slow_start = Duration::from_secs(self.health.slow_start_secs);
        if slow_start.is_zero() {
            return;
        }
        self.instances[index].back_since = Some(Instant::now());
        for step in 1..=instance::SLOW_START_STEPS {
            let at = slow_start * step / instance::SLOW_START_STEPS;
            ctx.run_later(at, |registry, ctx| registry.serve_waiters(ctx));
        }
    }
}

/// Ready once every instance of the first load has answered its first ping.
impl Handler<Ping> for InstanceRegistry {
    type Result = bool;

    fn handle(&mut self, _: Ping, _: &mut Context<Self>) -> bool {
        self.probed()
    }
}

/// Requests of the kind waiting for room.
impl Handler<CountWaiting> for InstanceRegistry {
    type Result = usize;

    fn handle(&mut self, CountWaiting(kind): CountWaiting, _: &mut Context<Self>) -> usize {
        self.waiters
            .iter()
            .filter(|w| w.kind == kind && !w.reply.is_closed())
            .count()
    }
}

/// Every instance's current state.
impl Handler<ListInstances> for InstanceRegistry {
    type Result = MessageResult<ListInstances>;

    fn handle(&mut self, _: ListInstances, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.instances.iter().map(Instance::view).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_latency_is_trusted_only_while_the_instance_gets_work() {
        let limit = LATENCY_TRUSTED_FOR_LEASES;
        assert_eq!(trusted_latency(Some(80.0), 10, 10 + limit), Some(80.0));
        assert_eq!(trusted_latency(Some(80.0), 10, 11 + limit), None);
        assert_eq!(trusted_latency(None, 10, 10), None);
    }
}
