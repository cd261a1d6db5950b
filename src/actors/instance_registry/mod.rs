//! InstanceRegistry: the live set of backend instances and who may call them now.
//!
//! Owns every instance's configuration, health, in-flight count (never above its
//! capacity) and figures, the per-kind balancing strategy, and the first-come line of
//! `Acquire` requests that found no instance with room. Only this actor changes that
//! state: workers get a `Lease` and give it back with the call's outcome, and admins add,
//! change and remove instances through it (it writes their rows too). Whenever the
//! enabled image capacity changes it tells the WorkerPool, which sizes the workers to it.
//!
//! - `balancing`: the strategies, as pure functions over the instances that may take work;
//! - `health`: jittered pings, slow start;
//! - `admin`: add, change, drain and remove.

mod admin;
mod balancing;
mod health;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use entity::instance;
use sea_orm::DatabaseConnection;
use tokio::sync::oneshot;

use super::messages::*;
use crate::backends;
use crate::domain::{redact_url, InstanceId, InstanceKind, InstanceSpec, Strategy, UserId};
use crate::settings::HealthSettings;
use crate::store::instances;
use balancing::Candidate;

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

struct Instance {
    id: InstanceId,
    source: InstanceSource,
    spec: InstanceSpec,
    enabled: bool,
    draining: bool,
    /// Of the last change applied from its row (API instances), to apply changes that
    /// commit concurrently in commit order.
    revision: i64,
    /// Unhealthy until its first successful ping.
    healthy: bool,
    /// It has been healthy before in this process: turning healthy again is coming back.
    seen_healthy: bool,
    /// Start of its slow start, when it came back.
    back_since: Option<Instant>,
    in_flight: u32,
    completed: u64,
    failed: u64,
    consecutive_failures: u32,
    latency_ms: Option<f64>,
    /// The kind's lease count when this instance was last leased.
    last_lease: u64,
    last_error: Option<String>,
    last_check: Option<DateTime<Utc>>,
}

impl Instance {
    fn new(id: InstanceId, source: InstanceSource, spec: InstanceSpec) -> Instance {
        Instance {
            id,
            source,
            spec,
            enabled: true,
            draining: false,
            revision: 0,
            healthy: false,
            seen_healthy: false,
            back_since: None,
            in_flight: 0,
            completed: 0,
            failed: 0,
            consecutive_failures: 0,
            latency_ms: None,
            last_lease: 0,
            last_error: None,
            last_check: None,
        }
    }

    fn from_row(row: instance::Model) -> Instance {
        let mut instance = Instance::new(
            InstanceId(row.id as u64),
            InstanceSource::Api,
            instances::spec_of(&row),
        );
        instance.enabled = row.enabled;
        instance.revision = row.revision;
        instance
    }

    /// Its URL as logs and the admin listing show it: without userinfo.
    fn shown_url(&self) -> String {
        redact_url(&self.spec.url)
    }

    /// Healthy, enabled and not draining: the strategies may give it work.
    fn takes_work(&self) -> bool {
        self.healthy && self.enabled && !self.draining
    }

    fn state(&self) -> InstanceState {
        match (self.draining, self.enabled, self.healthy) {
            (true, _, _) => InstanceState::Draining,
            (false, false, _) => InstanceState::Disabled,
            (false, true, true) => InstanceState::Healthy,
            (false, true, false) => InstanceState::Unhealthy,
        }
    }

    fn view(&self) -> InstanceView {
        InstanceView {
            id: self.id,
            kind: self.spec.kind,
            url: self.shown_url(),
            protocol: self.spec.protocol(),
            capacity: self.spec.capacity,
            weight: self.spec.weight,
            state: self.state(),
            source: self.source,
            in_flight: self.in_flight,
            completed: self.completed,
            failed: self.failed,
            latency_ms: self.latency_ms,
            last_error: self.last_error.clone(),
            last_check: self.last_check,
        }
    }
}

struct Waiter {
    kind: InstanceKind,
    user_id: UserId,
    avoid: Option<InstanceId>,
    reply: oneshot::Sender<Lease>,
}

pub struct InstanceRegistry {
    instances: Vec<Instance>,
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
}

impl InstanceRegistry {
    /// The instances of settings.toml, then those added through the API (`rows`).
    pub fn new(
        settings: &[InstanceSpec],
        rows: Vec<instance::Model>,
        strategies: HashMap<InstanceKind, Strategy>,
        health: HealthSettings,
        db: DatabaseConnection,
        pool: Recipient<ImageCapacity>,
    ) -> InstanceRegistry {
        let from_settings = settings.iter().enumerate().map(|(i, spec)| {
            let id = InstanceId(SETTINGS_ID_BASE + i as u64 + 1);
            Instance::new(id, InstanceSource::Settings, spec.clone())
        });
        InstanceRegistry {
            instances: from_settings
                .chain(rows.into_iter().map(Instance::from_row))
                .collect(),
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
        self.instances
            .iter()
            .any(|i| i.spec.kind == kind && i.takes_work() && Some(i.id) != except)
    }

    /// The instance index the kind's strategy picks for this user, among those that take
    /// work and have room (and other than `avoid` while another one takes work).
    fn pick(
        &mut self,
        kind: InstanceKind,
        user_id: UserId,
        avoid: Option<InstanceId>,
    ) -> Option<usize> {
        let avoid = avoid.filter(|&id| self.any_takes_work(kind, Some(id)));
        let slow_start = Duration::from_secs(self.health.slow_start_secs);
        let leases = self.leases.get(&kind).copied().unwrap_or(0);
        let indices: Vec<usize> = (0..self.instances.len())
            .filter(|&i| {
                let instance = &self.instances[i];
                instance.spec.kind == kind && instance.takes_work() && Some(instance.id) != avoid
            })
            .collect();
        let candidates: Vec<Candidate> = indices
            .iter()
            .map(|&i| {
                let instance = &self.instances[i];
                Candidate {
                    key: &instance.spec.url,
                    in_flight: instance.in_flight,
                    capacity: instance.usable_capacity(slow_start),
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
        balancing::choose(strategy, &candidates, user_id, cursor).map(|c| indices[c])
    }

    fn lease(&mut self, index: usize, ctx: &Context<Self>) -> Lease {
        let instance = &mut self.instances[index];
        let leases = self.leases.entry(instance.spec.kind).or_insert(0);
        *leases += 1;
        if trusted_latency(instance.latency_ms, instance.last_lease, *leases - 1).is_none() {
            // Measured afresh from this call, not blended into a stale average.
            instance.latency_ms = None;
        }
        instance.last_lease = *leases;
        instance.in_flight += 1;
        Lease::new(
            instance.id,
            instance.spec.url.clone(),
            instance.spec.protocol(),
            ctx.address().recipient(),
        )
    }

    /// Hands free capacity to waiting requests, oldest first.
    fn serve_waiters(&mut self, ctx: &Context<Self>) {
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
            self.instances.remove(index);
        }
    }
}

impl Actor for InstanceRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.client = Some(backends::client());
        let interval = Duration::from_secs(self.health.interval_secs);
        for id in self.instances.iter().map(|i| i.id).collect::<Vec<_>>() {
            self.schedule_ping(id, health::first_ping_delay(interval), ctx);
        }
        self.report_capacity();
    }
}

impl Supervised for InstanceRegistry {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // Pings in flight and their timers died with the old context (`started` schedules
        // them again); waiters see their request dropped.
        self.waiters.clear();
    }
}

/// Answers at once when an instance has room, else queues the request.
impl Handler<Acquire> for InstanceRegistry {
    type Result = ResponseFuture<Result<Lease, AcquireError>>;

    fn handle(&mut self, msg: Acquire, ctx: &mut Context<Self>) -> Self::Result {
        if msg.fail_fast && !self.any_takes_work(msg.kind, None) {
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
        self.waiters.push_back(Waiter {
            kind: msg.kind,
            user_id: msg.user_id,
            avoid: msg.avoid,
            reply,
        });
        self.serve_waiters(ctx);
        Box::pin(async move { lease.await.map_err(|_| AcquireError::RegistryStopped) })
    }
}

/// Frees the capacity and records the outcome; ejects an instance after too many faults,
/// and removes a draining one after its last call.
impl Handler<Release> for InstanceRegistry {
    type Result = ();

    fn handle(&mut self, msg: Release, ctx: &mut Context<Self>) {
        let eject_after = self.health.eject_after_failures;
        if let Some(index) = self.instances.iter().position(|i| i.id == msg.instance_id) {
            let instance = &mut self.instances[index];
            instance.in_flight = instance.in_flight.saturating_sub(1);
            match msg.outcome {
                CallOutcome::Success { latency } => {
                    let ms = latency.as_secs_f64() * 1000.0;
                    instance.latency_ms =
                        Some(instance.latency_ms.map_or(ms, |avg| avg * 0.8 + ms * 0.2));
                    instance.completed += 1;
                    instance.consecutive_failures = 0;
                }
                CallOutcome::InstanceFault { error } => {
                    instance.failed += 1;
                    instance.consecutive_failures += 1;
                    if instance.healthy && instance.consecutive_failures >= eject_after {
                        tracing::warn!(instance = %instance.shown_url(), %error, failures = instance.consecutive_failures, "instance ejected after consecutive failures");
                        instance.healthy = false;
                    }
                    instance.last_error = Some(error);
                }
                CallOutcome::Neutral => {}
            }
            self.remove_if_drained(index);
        }
        self.serve_waiters(ctx);
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
