//! One backend instance as the registry holds it: its configuration, what its pings and
//! its calls say about it, its in-flight count and its figures.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use entity::instance;

use super::outlier::{Admission, Outlier};
use crate::actors::messages::{InstanceSource, InstanceState, InstanceView};
use crate::domain::{redact_url, InstanceId, InstanceSpec};
use crate::store::instances;

/// What the instance's pings say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pinged {
    /// Not answered yet: neither given work nor counted as down.
    Unknown,
    Up,
    Down,
}

pub(super) struct Instance {
    pub id: InstanceId,
    pub source: InstanceSource,
    pub spec: InstanceSpec,
    pub enabled: bool,
    pub draining: bool,
    /// Of the last change applied from its row (API instances), to apply changes that
    /// commit concurrently in commit order.
    pub revision: i64,
    pub pinged: Pinged,
    /// It has been up before in this process: coming up again is coming back.
    pub seen_up: bool,
    /// Start of its slow start, when it came back.
    pub back_since: Option<Instant>,
    /// Passive health: its recent calls, and an ejection.
    pub outlier: Outlier,
    pub in_flight: u32,
    pub completed: u64,
    pub failed: u64,
    pub latency_ms: Option<f64>,
    /// The kind's lease count when this instance was last leased.
    pub last_lease: u64,
    pub last_error: Option<String>,
    pub last_check: Option<DateTime<Utc>>,
}

impl Instance {
    pub fn new(id: InstanceId, source: InstanceSource, spec: InstanceSpec) -> Instance {
        Instance {
            id,
            source,
            spec,
            enabled: true,
            draining: false,
            revision: 0,
            pinged: Pinged::Unknown,
            seen_up: false,
            back_since: None,
            outlier: Outlier::default(),
            in_flight: 0,
            completed: 0,
            failed: 0,
            latency_ms: None,
            last_lease: 0,
            last_error: None,
            last_check: None,
        }
    }

    pub fn from_row(row: instance::Model) -> Instance {
        let mut instance = Instance::new(
            InstanceId(row.id as u64),
            InstanceSource::Api,
            instances::spec_of(&row),
        );
        instance.enabled = row.enabled;
        instance.revision = row.revision;
        instance
    }

    /// Takes over what this process learnt about the same instance before a restart of
    /// the registry: its calls in flight above all, so capacity stays honoured.
    pub fn carry_over(&mut self, old: Instance) {
        self.draining = old.draining;
        self.pinged = old.pinged;
        self.seen_up = old.seen_up;
        self.back_since = old.back_since;
        self.outlier = old.outlier;
        self.in_flight = old.in_flight;
        self.completed = old.completed;
        self.failed = old.failed;
        self.latency_ms = old.latency_ms;
        self.last_lease = old.last_lease;
        self.last_error = old.last_error;
        self.last_check = old.last_check;
    }

    /// Up, enabled, not draining and not ejected: the strategies may give it work.
    pub fn takes_work(&self, now: Instant) -> bool {
        self.pinged == Pinged::Up
            && self.enabled
            && !self.draining
            && self.outlier.admission(now) != Admission::Ejected
    }

    /// Not probed yet, but enabled: it may take work soon.
    pub fn awaits_first_ping(&self) -> bool {
        self.pinged == Pinged::Unknown && self.enabled && !self.draining
    }

    /// The capacity the strategies may fill now: one call while a probe decides after an
    /// ejection, less than all during a slow start.
    pub fn usable_capacity(&self, slow_start: Duration, now: Instant) -> u32 {
        if self.outlier.admission(now) == Admission::Probe {
            return 1;
        }
        match self.back_since {
            Some(since) => ramp(self.spec.capacity, since.elapsed(), slow_start),
            None => self.spec.capacity,
        }
    }

    pub fn state(&self) -> InstanceState {
        if self.draining {
            InstanceState::Draining
        } else if !self.enabled {
            InstanceState::Disabled
        } else {
            match self.pinged {
                Pinged::Unknown => InstanceState::Unknown,
                Pinged::Down => InstanceState::Unhealthy,
                Pinged::Up if self.outlier.is_ejected() => InstanceState::Ejected,
                Pinged::Up => InstanceState::Healthy,
            }
        }
    }

    /// The URL without its userinfo, for logs and the listing.
    pub fn shown_url(&self) -> String {
        redact_url(&self.spec.url)
    }

    pub fn view(&self) -> InstanceView {
        InstanceView {
            id: self.id,
            kind: self.spec.kind,
            url: self.shown_url(),
            protocol: self.spec.protocol(),
            model: self.spec.model().map(str::to_string),
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

/// A slow start raises the usable capacity in this many steps.
pub(super) const SLOW_START_STEPS: u32 = 10;

/// Capacity usable `elapsed` into a slow start of length `window`: one call at first,
/// then a tenth more of `full` at each step.
fn ramp(full: u32, elapsed: Duration, window: Duration) -> u32 {
    if elapsed >= window {
        return full;
    }
    let steps = (elapsed.as_secs_f64() / window.as_secs_f64() * SLOW_START_STEPS as f64) as u32;
    (full * steps).div_ceil(SLOW_START_STEPS).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_start_ramps_from_one_call_to_full_capacity() {
        let window = Duration::from_secs(10);
        let at = |secs: f64| ramp(8, Duration::from_secs_f64(secs), window);
        assert_eq!(at(0.0), 1);
        assert_eq!(at(0.9), 1);
        assert_eq!(at(5.0), 4);
        assert_eq!(at(9.9), 8, "the last step rounds up to full");
        assert_eq!(at(10.0), 8);
        let mut last = 0;
        for tenth in 0..=100 {
            let now = at(tenth as f64 / 10.0);
            assert!(now >= last && now >= 1, "never down, never zero");
            last = now;
        }
        assert_eq!(ramp(1, Duration::ZERO, window), 1);
    }
}
