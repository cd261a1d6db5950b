//! Passive health, after Envoy's outlier detection: real calls judge an instance. It is
//! ejected after `health.eject_after_failures` faults in a row, or when at least
//! `health.eject_failure_percent` of its last calls (of at least `MIN_CALLS`, out of the
//! last `WINDOW`) were faults. An ejection lasts `health.base_ejection_secs`, doubled for
//! each ejection since the instance last behaved for `health.max_ejection_secs`, at most
//! that long; then the instance takes one probe call, and is back (with a slow start)
//! when it succeeds, or ejected again, for longer, when it fails. The registry never
//! ejects more than `health.max_ejection_percent` of a kind's instances (but always
//! allows one), nor the last instance of a kind that still succeeds sometimes: a half-
//! failing GPU still does half its work rather than none.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::settings::HealthSettings;

/// Calls whose outcomes judge the failure rate.
const WINDOW: usize = 20;
/// Fewer calls than this in the window say nothing about the rate.
const MIN_CALLS: usize = 10;

/// What the registry knows of an instance's recent calls.
#[derive(Debug, Default)]
pub(super) struct Outlier {
    /// The last calls' outcomes (`true`: a fault), oldest first.
    recent: VecDeque<bool>,
    consecutive_faults: u32,
    /// Ejections in the current streak, for the growing ejection time.
    ejections: u32,
    /// Ejected until then; then one probe call decides.
    ejected_until: Option<Instant>,
    /// When the last ejection was over (its probe succeeded).
    last_cleared: Option<Instant>,
    /// The probe call is out.
    probing: bool,
}

/// Whether an instance may take calls, as far as its calls go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admission {
    Open,
    /// Ejected: no calls.
    Ejected,
    /// The ejection is over: one probe call, no more.
    Probe,
}

impl Outlier {
    pub fn admission(&self, now: Instant) -> Admission {
        match self.ejected_until {
            None => Admission::Open,
            Some(until) if now < until => Admission::Ejected,
            Some(_) if self.probing => Admission::Ejected,
            Some(_) => Admission::Probe,
        }
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected_until.is_some()
    }

    /// The probe call goes out now.
    pub fn start_probe(&mut self) {
        if self.ejected_until.is_some() {
            self.probing = true;
        }
    }

    /// A call succeeded. `true` when it was the probe that ends an ejection.
    pub fn succeeded(&mut self, now: Instant) -> bool {
        self.record(false);
        self.consecutive_faults = 0;
        if self.ejected_until.take().is_some() {
            self.probing = false;
            self.last_cleared = Some(now);
            return true;
        }
        false
    }

    /// A call failed through the instance's fault. Answers whether this calls for an
    /// ejection (the registry decides whether it may): always after a failed probe.
    pub fn failed(&mut self, health: &HealthSettings) -> bool {
        self.record(true);
        self.consecutive_faults += 1;
        if self.probing {
            return true;
        }
        if self.ejected_until.is_some() {
            return false;
        }
        let faults = self.recent.iter().filter(|f| **f).count();
        let by_rate = health.eject_failure_percent > 0
            && self.recent.len() >= MIN_CALLS
            && faults * 100 >= self.recent.len() * health.eject_failure_percent as usize;
        self.consecutive_faults >= health.eject_after_failures || by_rate
    }

    /// Whether any of its last calls succeeded.
    pub fn succeeds_sometimes(&self) -> bool {
        self.recent.iter().any(|fault| !fault)
    }

    /// Ejects it; answers for how long.
    pub fn eject(&mut self, now: Instant, health: &HealthSettings) -> Duration {
        let max = Duration::from_secs(health.max_ejection_secs);
        let behaved = self.last_cleared.is_some_and(|at| now - at >= max);
        self.ejections = if behaved { 1 } else { self.ejections + 1 };
        let duration = ejection_time(health, self.ejections);
        self.ejected_until = Some(now + duration);
        self.probing = false;
        duration
    }

    fn record(&mut self, fault: bool) {
        if self.recent.len() == WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(fault);
    }
}

/// The base time, doubled for each earlier ejection of the streak, at most the maximum.
fn ejection_time(health: &HealthSettings, ejections: u32) -> Duration {
    let base = Duration::from_secs(health.base_ejection_secs);
    base.saturating_mul(1 << ejections.saturating_sub(1).min(16))
        .min(Duration::from_secs(health.max_ejection_secs))
}

/// How many of a kind's `instances` may be ejected at once: the percentage, but one at
/// least.
pub(super) fn max_ejected(instances: usize, percent: u32) -> usize {
    (instances * percent as usize / 100).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> HealthSettings {
        HealthSettings {
            eject_after_failures: 3,
            eject_failure_percent: 80,
            base_ejection_secs: 5,
            max_ejection_secs: 60,
            ..HealthSettings::default()
        }
    }

    #[test]
    fn consecutive_faults_call_for_an_ejection() {
        let (mut outlier, health) = (Outlier::default(), health());
        assert!(!outlier.failed(&health));
        assert!(!outlier.failed(&health));
        outlier.succeeded(Instant::now());
        assert!(!outlier.failed(&health));
        assert!(!outlier.failed(&health));
        assert!(outlier.failed(&health), "the third in a row");
    }

    #[test]
    fn a_high_failure_rate_calls_for_an_ejection_without_a_streak() {
        let (mut outlier, mut health) = (Outlier::default(), health());
        health.eject_after_failures = 100;
        // Four faults in every five calls, with ejection by streak out of reach.
        let mut ejected = false;
        for i in 0..20 {
            ejected = if i % 5 == 4 {
                outlier.succeeded(Instant::now());
                false
            } else {
                outlier.failed(&health)
            };
            if ejected {
                assert!(i >= MIN_CALLS - 1, "not before {MIN_CALLS} calls");
                break;
            }
        }
        assert!(ejected);
        // Half failing stays in.
        let mut half = Outlier::default();
        for i in 0..40 {
            if i % 2 == 0 {
                assert!(!half.failed(&health));
            } else {
                half.succeeded(Instant::now());
            }
        }
    }

    #[test]
    fn ejections_grow_then_a_probe_decides() {
        let (mut outlier, health) = (Outlier::default(), health());
        let now = Instant::now();
        assert_eq!(outlier.eject(now, &health), Duration::from_secs(5));
        assert_eq!(outlier.admission(now), Admission::Ejected);
        let later = now + Duration::from_secs(6);
        assert_eq!(outlier.admission(later), Admission::Probe);
        outlier.start_probe();
        assert_eq!(
            outlier.admission(later),
            Admission::Ejected,
            "one probe only"
        );
        assert!(outlier.failed(&health), "a failed probe ejects again");
        assert_eq!(outlier.eject(later, &health), Duration::from_secs(10));
        assert_eq!(outlier.eject(later, &health), Duration::from_secs(20));
        for _ in 0..10 {
            outlier.eject(later, &health);
        }
        assert_eq!(
            outlier.eject(later, &health),
            Duration::from_secs(60),
            "capped"
        );
        let much_later = later + Duration::from_secs(120);
        outlier.start_probe();
        assert!(outlier.succeeded(much_later), "the probe ends the ejection");
        assert_eq!(outlier.admission(much_later), Admission::Open);
        // Behaved for the maximum since: a new streak starts at the base time.
        let after = much_later + Duration::from_secs(61);
        assert_eq!(outlier.eject(after, &health), Duration::from_secs(5));
    }

    #[test]
    fn one_instance_may_always_be_ejected_never_more_than_the_share() {
        assert_eq!(max_ejected(1, 10), 1);
        assert_eq!(max_ejected(4, 50), 2);
        assert_eq!(max_ejected(10, 10), 1);
        assert_eq!(max_ejected(20, 10), 2);
    }
}
