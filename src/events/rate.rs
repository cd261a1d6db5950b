//! The ETA of a queued task: its place in the queue divided by the recent rate at which
//! tasks end (DONE or FAILED), counted over the last minute from the first ending in
//! it. Only image tasks are queued (speech is answered in the call), so this is their
//! rate. With several gateways every gateway hears every ending, so each counts the
//! whole cluster's rate.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::domain::EventType;

/// How far back endings count.
const WINDOW: Duration = Duration::from_secs(60);
/// Endings remembered; at high rates the oldest of them is still recent enough.
const MAX_ENDINGS: usize = 4096;
/// The shortest span a rate is taken over, so two endings a microsecond apart do not
/// promise a million tasks a second.
const MIN_SPAN: Duration = Duration::from_millis(250);

#[derive(Debug, Default)]
pub struct CompletionRate {
    ends: VecDeque<Instant>,
}

impl CompletionRate {
    pub fn observe(&mut self, kind: EventType) {
        self.observe_at(kind, Instant::now());
    }

    fn observe_at(&mut self, kind: EventType, now: Instant) {
        if matches!(kind, EventType::Done | EventType::Failed) {
            if self.ends.len() == MAX_ENDINGS {
                self.ends.pop_front();
            }
            self.ends.push_back(now);
        }
    }

    /// Tasks ending per second lately, if any ended within the window.
    fn per_sec(&self, now: Instant) -> Option<f64> {
        let recent = self
            .ends
            .iter()
            .skip_while(|t| now.duration_since(**t) > WINDOW);
        let (count, oldest) =
            recent.fold((0usize, None), |(n, first), t| (n + 1, first.or(Some(*t))));
        let span = now.duration_since(oldest?).max(MIN_SPAN);
        Some(count as f64 / span.as_secs_f64())
    }

    /// Seconds until `position` more tasks have ended at the recent rate.
    pub fn eta_secs(&self, position: usize) -> Option<u64> {
        self.eta_secs_at(position, Instant::now())
    }

    fn eta_secs_at(&self, position: usize, now: Instant) -> Option<u64> {
        let rate = self.per_sec(now)?;
        Some((position as f64 / rate).ceil() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_recent_endings_no_estimate() {
        let rate = CompletionRate::default();
        assert_eq!(rate.eta_secs(3), None);
    }

    #[test]
    fn ten_a_second_puts_the_twentieth_two_seconds_away() {
        let start = Instant::now();
        let mut rate = CompletionRate::default();
        for i in 0..50 {
            rate.observe_at(EventType::Done, start + Duration::from_millis(100 * i));
        }
        // Other events do not count.
        rate.observe_at(EventType::Running, start);
        let now = start + Duration::from_secs(5);
        assert_eq!(rate.eta_secs_at(20, now), Some(2));
    }

    #[test]
    fn endings_older_than_the_window_are_forgotten() {
        let start = Instant::now();
        let mut rate = CompletionRate::default();
        rate.observe_at(EventType::Failed, start);
        assert!(rate
            .eta_secs_at(1, start + Duration::from_secs(30))
            .is_some());
        assert_eq!(rate.eta_secs_at(1, start + Duration::from_secs(61)), None);
    }
}
