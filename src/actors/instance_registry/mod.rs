//! InstanceRegistry: the live set of backend instances and who may call them now.
//!
//! Owns each instance's health, in-flight count (never above its capacity) and figures,
//! the per-kind balancing strategy, and the first-come line of `Acquire` requests that
//! found no free healthy instance. Only this actor changes that state: workers get a
//! `Lease` and give it back with the call's outcome. Health is judged actively (a ping
//! every `health.interval_secs`) and passively (`health.eject_after_failures`
//! consecutive faulty calls take an instance out until a ping succeeds again).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use actix::prelude::*;
use actix_web::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::oneshot;

use super::messages::*;
use crate::settings::{HealthSettings, InstanceKind, InstanceSettings, Protocol, Strategy};

/// A claim on one call's worth of an instance's capacity. Give it back with
/// [`Lease::release`]; dropping it releases it as `Neutral`, so a cancelled or panicking
/// caller never leaks capacity.
pub struct Lease {
    instance_id: u64,
    pub url: String,
    pub protocol: Protocol,
    registry: Addr<InstanceRegistry>,
    released: bool,
}

impl Lease {
    pub fn instance_id(&self) -> u64 {
        self.instance_id
    }

    pub fn release(mut self, outcome: CallOutcome) {
        self.released = true;
        self.registry.do_send(Release {
            instance_id: self.instance_id,
            outcome,
        });
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.released {
            self.registry.do_send(Release {
                instance_id: self.instance_id,
                outcome: CallOutcome::Neutral,
            });
        }
    }
}

/// One instance as operators and stats see it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct InstanceView {
    pub id: u64,
    pub kind: InstanceKind,
    pub url: String,
    pub protocol: Protocol,
    pub capacity: u32,
    pub weight: u32,
    /// `healthy` or `unhealthy`.
    pub state: &'static str,
    pub in_flight: u32,
    pub completed: u64,
    pub failed: u64,
    /// Moving average of successful call latency, in milliseconds.
    pub latency_ms: Option<f64>,
    pub last_error: Option<String>,
    pub last_check: Option<DateTime<Utc>>,
}

struct Instance {
    id: u64,
    config: InstanceSettings,
    /// Unhealthy until its first successful ping.
    healthy: bool,
    in_flight: u32,
    completed: u64,
    failed: u64,
    consecutive_failures: u32,
    latency_ms: Option<f64>,
    last_error: Option<String>,
    last_check: Option<DateTime<Utc>>,
    /// A ping is outstanding; the next tick skips this instance rather than pile up pings.
    pinging: bool,
}

impl Instance {
    fn has_room(&self) -> bool {
        self.healthy && self.in_flight < self.config.capacity
    }

    fn load(&self) -> f64 {
        self.in_flight as f64 / self.config.capacity as f64
    }
}

struct Waiter {
    kind: InstanceKind,
    user_id: i64,
    avoid: Option<u64>,
    reply: oneshot::Sender<Lease>,
}

pub struct InstanceRegistry {
    instances: Vec<Instance>,
    strategies: HashMap<InstanceKind, Strategy>,
    /// Round-robin position per kind.
    cursors: HashMap<InstanceKind, usize>,
    /// Acquire requests waiting for room, oldest first.
    waiters: VecDeque<Waiter>,
    health: HealthSettings,
    /// For pings; created in `started` because awc clients are bound to their thread.
    client: Option<awc::Client>,
}

impl InstanceRegistry {
    pub fn new(
        instances: &[InstanceSettings],
        strategies: HashMap<InstanceKind, Strategy>,
        health: HealthSettings,
    ) -> InstanceRegistry {
        let instances = instances
            .iter()
            .enumerate()
            .map(|(i, config)| Instance {
                id: i as u64 + 1,
                config: config.clone(),
                healthy: false,
                in_flight: 0,
                completed: 0,
                failed: 0,
                consecutive_failures: 0,
                latency_ms: None,
                last_error: None,
                last_check: None,
                pinging: false,
            })
            .collect();
        InstanceRegistry {
            instances,
            strategies,
            cursors: HashMap::new(),
            waiters: VecDeque::new(),
            health,
            client: None,
        }
    }

    fn any_healthy(&self, kind: InstanceKind, except: Option<u64>) -> bool {
        self.instances
            .iter()
            .any(|i| i.config.kind == kind && i.healthy && Some(i.id) != except)
    }

    /// The instance index the kind's strategy picks for this user, among those with room
    /// (and other than `avoid` while another healthy instance exists).
    fn pick(&mut self, kind: InstanceKind, user_id: i64, avoid: Option<u64>) -> Option<usize> {
        let avoid = avoid.filter(|&id| self.any_healthy(kind, Some(id)));
        let of_kind: Vec<usize> = (0..self.instances.len())
            .filter(|&i| {
                self.instances[i].config.kind == kind && Some(self.instances[i].id) != avoid
            })
            .collect();
        if !of_kind.iter().any(|&i| self.instances[i].has_room()) {
            return None;
        }
        match self
            .strategies
            .get(&kind)
            .copied()
            .unwrap_or(Strategy::RoundRobin)
        {
            Strategy::RoundRobin => {
                let cursor = self.cursors.entry(kind).or_insert(0);
                for step in 0..of_kind.len() {
                    let i = of_kind[(*cursor + step) % of_kind.len()];
                    if self.instances[i].has_room() {
                        *cursor = (*cursor + step + 1) % of_kind.len();
                        return Some(i);
                    }
                }
                None
            }
            Strategy::UserHash => {
                // Rendezvous hashing: the user's instance stays theirs while it is healthy,
                // and adding an instance moves only the users it wins.
                let home = of_kind
                    .iter()
                    .copied()
                    .filter(|&i| self.instances[i].healthy)
                    .max_by(|&a, &b| {
                        let score = |i: usize| {
                            rendezvous_score(
                                user_id,
                                &self.instances[i].config.url,
                                self.instances[i].config.weight,
                            )
                        };
                        score(a).total_cmp(&score(b))
                    })?;
                if self.instances[home].has_room() {
                    return Some(home);
                }
                of_kind
                    .into_iter()
                    .filter(|&i| self.instances[i].has_room())
                    .min_by(|&a, &b| {
                        self.instances[a]
                            .load()
                            .total_cmp(&self.instances[b].load())
                    })
            }
        }
    }

    fn lease(&mut self, index: usize, ctx: &Context<Self>) -> Lease {
        let instance = &mut self.instances[index];
        instance.in_flight += 1;
        Lease {
            instance_id: instance.id,
            url: instance.config.url.clone(),
            protocol: instance.config.protocol(),
            registry: ctx.address(),
            released: false,
        }
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
            if let Err(mut unwanted) = waiter.reply.send(lease) {
                // The requester gave up between our check and the send.
                unwanted.released = true;
                self.instances[index].in_flight -= 1;
            }
        }
    }

    fn ping_all(&mut self, ctx: &mut Context<Self>) {
        let Some(client) = self.client.clone() else {
            return;
        };
        let timeout = Duration::from_secs(self.health.ping_timeout_secs);
        for instance in self.instances.iter_mut().filter(|i| !i.pinging) {
            instance.pinging = true;
            let id = instance.id;
            let protocol = instance.config.protocol();
            let request = client
                .get(format!(
                    "{}/ping",
                    instance.config.url.trim_end_matches('/')
                ))
                .timeout(timeout);
            let probe = async move {
                match tokio::time::timeout(timeout, probe(request, protocol)).await {
                    Ok(result) => result,
                    Err(_) => Err(format!("ping timed out after {}s", timeout.as_secs())),
                }
            };
            ctx.spawn(
                fut::wrap_future::<_, Self>(probe)
                    .map(move |result, registry, ctx| registry.on_ping(id, result, ctx)),
            );
        }
    }

    fn on_ping(&mut self, id: u64, result: Result<(), String>, ctx: &mut Context<Self>) {
        let Some(instance) = self.instances.iter_mut().find(|i| i.id == id) else {
            return;
        };
        instance.pinging = false;
        instance.last_check = Some(Utc::now());
        match result {
            Ok(()) => {
                if !instance.healthy {
                    tracing::info!(instance = %instance.config.url, "instance is healthy");
                }
                instance.healthy = true;
                instance.consecutive_failures = 0;
                self.serve_waiters(ctx);
            }
            Err(error) => {
                if instance.healthy || instance.last_error.as_deref() != Some(error.as_str()) {
                    tracing::warn!(instance = %instance.config.url, %error, "instance is unhealthy");
                }
                instance.healthy = false;
                instance.last_error = Some(error);
            }
        }
    }
}

/// `GET {base}/ping`: qwen backends must say `"status": "ready"`; the old speech backend
/// has no such route, so a 404/405 from it proves only that it is up, and passive health
/// judges the rest.
async fn probe(request: awc::ClientRequest, protocol: Protocol) -> Result<(), String> {
    #[derive(serde::Deserialize)]
    struct Ping {
        status: Option<String>,
    }
    let mut response = request
        .send()
        .await
        .map_err(|e| format!("ping failed: {e}"))?;
    match (response.status(), protocol) {
        (StatusCode::OK, Protocol::Qwen) => {
            let ping: Ping = response
                .json()
                .limit(64 * 1024)
                .await
                .map_err(|e| format!("ping answer unreadable: {e}"))?;
            match ping.status.as_deref() {
                Some("ready") => Ok(()),
                other => Err(format!("ping says not ready (status {other:?})")),
            }
        }
        (StatusCode::OK, Protocol::Fastwhisper) => Ok(()),
        (StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED, Protocol::Fastwhisper) => Ok(()),
        (status, _) => Err(format!("ping answered {status}")),
    }
}

/// Weighted rendezvous score of (user, instance); the highest score wins.
fn rendezvous_score(user_id: i64, url: &str, weight: u32) -> f64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325; // FNV-1a, stable across builds and processes
    for byte in url.bytes().chain(user_id.to_le_bytes()) {
        hash = (hash ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64 finaliser spreads FNV's weak low bits over the whole word.
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    let unit = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64; // in (0, 1)
    weight as f64 / -unit.ln()
}

impl Actor for InstanceRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.client = Some(awc::Client::builder().disable_redirects().finish());
        self.ping_all(ctx);
        ctx.run_interval(
            Duration::from_secs(self.health.interval_secs),
            |registry, ctx| registry.ping_all(ctx),
        );
    }
}

impl Supervised for InstanceRegistry {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // Outstanding pings died with the old context; waiters see their request dropped.
        self.waiters.clear();
        for instance in &mut self.instances {
            instance.pinging = false;
        }
    }
}

/// Answers at once when an instance has room, else queues the request.
impl Handler<Acquire> for InstanceRegistry {
    type Result = ResponseFuture<Result<Lease, AcquireError>>;

    fn handle(&mut self, msg: Acquire, ctx: &mut Context<Self>) -> Self::Result {
        if msg.fail_fast && !self.any_healthy(msg.kind, None) {
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

/// Frees the capacity and records the outcome; ejects an instance after too many faults.
impl Handler<Release> for InstanceRegistry {
    type Result = ();

    fn handle(&mut self, msg: Release, ctx: &mut Context<Self>) {
        let eject_after = self.health.eject_after_failures;
        if let Some(instance) = self.instances.iter_mut().find(|i| i.id == msg.instance_id) {
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
                        tracing::warn!(instance = %instance.config.url, %error, failures = instance.consecutive_failures, "instance ejected after consecutive failures");
                        instance.healthy = false;
                    }
                    instance.last_error = Some(error);
                }
                CallOutcome::Neutral => {}
            }
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
        MessageResult(
            self.instances
                .iter()
                .map(|i| InstanceView {
                    id: i.id,
                    kind: i.config.kind,
                    url: i.config.url.clone(),
                    protocol: i.config.protocol(),
                    capacity: i.config.capacity,
                    weight: i.config.weight,
                    state: if i.healthy { "healthy" } else { "unhealthy" },
                    in_flight: i.in_flight,
                    completed: i.completed,
                    failed: i.failed,
                    latency_ms: i.latency_ms,
                    last_error: i.last_error.clone(),
                    last_check: i.last_check,
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::rendezvous_score;

    #[test]
    fn adding_an_instance_moves_few_users() {
        let urls: Vec<String> = (0..5).map(|i| format!("http://10.0.0.{i}:8000")).collect();
        let home = |n: usize, user: i64| {
            (0..n)
                .max_by(|&a, &b| {
                    rendezvous_score(user, &urls[a], 1)
                        .total_cmp(&rendezvous_score(user, &urls[b], 1))
                })
                .unwrap()
        };
        let users = 10_000;
        let moved = (0..users).filter(|&u| home(4, u) != home(5, u)).count();
        let fraction = moved as f64 / users as f64;
        // Ideal is 1/5; modulo hashing would move about 4/5.
        assert!((0.15..0.25).contains(&fraction), "moved {fraction}");
    }
}
