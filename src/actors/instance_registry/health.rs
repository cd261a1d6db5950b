//! Health: every instance is pinged on its own timer, at its protocol's health route.
//! The first ping is at once, so health is known before traffic comes; later ones are
//! jittered so that a gateway's instances (and several restarted gateways) never ping in
//! step. Passive health lives in `outlier`. An instance that comes back after being down
//! (or ejected) gets a slow start: the capacity it may use ramps from one call to its
//! full capacity over `health.slow_start_secs`, in ten steps.

use std::time::Duration;

use actix::prelude::*;
use actix_web::http::StatusCode;
use chrono::Utc;
use rand::Rng;

use super::instance::Pinged;
use super::InstanceRegistry;
use crate::backends;
use crate::domain::{InstanceId, Protocol};

/// Each interval is the configured one, give or take this fraction.
const INTERVAL_JITTER: f64 = 0.2;

/// When to ping again after a ping ended.
fn next_ping_delay(interval: Duration) -> Duration {
    let spread = 1.0 - INTERVAL_JITTER..=1.0 + INTERVAL_JITTER;
    interval.mul_f64(rand::thread_rng().gen_range(spread))
}

impl InstanceRegistry {
    pub(super) fn schedule_ping(&self, id: InstanceId, delay: Duration, ctx: &mut Context<Self>) {
        ctx.run_later(delay, move |registry, ctx| registry.ping(id, ctx));
    }

    /// One ping, timed out before the next is due; its answer schedules the next, so
    /// pings of one instance never overlap.
    fn ping(&mut self, id: InstanceId, ctx: &mut Context<Self>) {
        let Some(client) = self.client.clone() else {
            return;
        };
        // A removed instance's chain of pings ends here; a draining one needs no more.
        let Some(instance) = self.instances.iter().find(|i| i.id == id && !i.draining) else {
            return;
        };
        let timeout = Duration::from_secs(self.health.ping_timeout_secs);
        let (base, protocol) = (instance.spec.url.clone(), instance.spec.protocol());
        let probe = async move {
            let probe = probe(&client, &base, protocol, timeout);
            match tokio::time::timeout(timeout, probe).await {
                Ok(result) => result,
                Err(_) => Err(format!("ping timed out after {}s", timeout.as_secs())),
            }
        };
        ctx.spawn(
            fut::wrap_future::<_, Self>(probe)
                .map(move |result, registry, ctx| registry.on_ping(id, result, ctx)),
        );
    }

    fn on_ping(&mut self, id: InstanceId, result: Result<(), String>, ctx: &mut Context<Self>) {
        let interval = Duration::from_secs(self.health.interval_secs);
        if let Some(first) = self.first_round.as_mut() {
            first.remove(&id);
        }
        let Some(index) = self.instances.iter().position(|i| i.id == id) else {
            return;
        };
        let instance = &mut self.instances[index];
        instance.last_check = Some(Utc::now());
        match result {
            Ok(()) => {
                if instance.pinged != Pinged::Up {
                    // Not at its first ping: that is the gateway starting (or the instance
                    // being added), not the instance coming back.
                    let back = instance.seen_up;
                    tracing::info!(instance = %instance.shown_url(), slow_start = back, "instance is healthy");
                    instance.pinged = Pinged::Up;
                    instance.seen_up = true;
                    if back {
                        self.coming_back(index, ctx);
                    }
                }
                self.serve_waiters(ctx);
            }
            Err(error) => {
                if instance.pinged != Pinged::Down
                    || instance.last_error.as_deref() != Some(error.as_str())
                {
                    tracing::warn!(instance = %instance.shown_url(), %error, "instance is unhealthy");
                }
                instance.pinged = Pinged::Down;
                instance.last_error = Some(error);
                // Requests waiting for its first ping hear that there is none to wait for.
                self.serve_waiters(ctx);
            }
        }
        self.schedule_ping(id, next_ping_delay(interval), ctx);
    }
}

/// The protocol's health route: `GET /v1/models` for openai, `GET /sdapi/v1/options` for
/// a1111 (a 200 is up), `GET /ping` for the old protocols.
async fn probe(
    client: &awc::Client,
    base: &str,
    protocol: Protocol,
    timeout: Duration,
) -> Result<(), String> {
    match protocol {
        Protocol::Openai => backends::openai::probe(client, base, timeout).await,
        Protocol::A1111 => backends::a1111::probe(client, base, timeout).await,
        Protocol::Qwen | Protocol::Fastwhisper => {
            let url = format!("{}/ping", base.trim_end_matches('/'));
            probe_ping(client.get(url).timeout(timeout), protocol).await
        }
    }
}

/// `GET {base}/ping`: qwen backends must say `"status": "ready"`; the old speech backend
/// has no such route, so a 404/405 from it proves only that it is up, and passive health
/// judges the rest.
async fn probe_ping(request: awc::ClientRequest, protocol: Protocol) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_after_the_first_are_spread_around_the_interval() {
        let interval = Duration::from_secs(30);
        let nexts: Vec<Duration> = (0..200).map(|_| next_ping_delay(interval)).collect();
        assert!(nexts
            .iter()
            .all(|d| (24.0..=36.0).contains(&d.as_secs_f64())));
        // Spread, not in step: the delays differ from each other.
        assert!(nexts.iter().filter(|d| **d != nexts[0]).count() > 150);
    }
}
