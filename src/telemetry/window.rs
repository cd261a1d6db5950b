//! The tasks this process ended lately, a slot per minute, for the alert figures
//! (failure rate, mean processing time, throughput) of `/api/v1/system/stats` and
//! `/metrics`. Recording is a few atomic adds; a slot is reset by the first task of
//! its minute, so a count racing that reset may be lost: the figures are for alerts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use entity::task::Status as TaskStatus;

/// The longest window `stats.window_minutes` may ask for.
pub const MAX_WINDOW_MINUTES: u32 = 60;

pub struct Window {
    slots: [Slot; MAX_WINDOW_MINUTES as usize],
}

impl Default for Window {
    fn default() -> Self {
        Window {
            slots: std::array::from_fn(|_| Slot::default()),
        }
    }
}

#[derive(Default)]
struct Slot {
    /// The minute (since the epoch) the counts are of.
    minute: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    /// Tasks whose last attempt reached a backend, and their backend time.
    ran: AtomicU64,
    ran_micros: AtomicU64,
}

/// The window's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Figures {
    /// Percent of the ended tasks (DONE or FAILED) that failed; 0 when none ended.
    pub failure_rate: f64,
    /// Mean backend time of the last attempts, in seconds; 0 when none ran.
    pub avg_processing_secs: f64,
    /// DONE and FAILED tasks per minute.
    pub throughput_per_min: f64,
}

fn this_minute() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        / 60
}

impl Window {
    /// A task ended now; cancelled ones do not count.
    pub fn record(&self, status: TaskStatus, ran: Option<Duration>) {
        self.record_at(this_minute(), status, ran);
    }

    fn record_at(&self, minute: u64, status: TaskStatus, ran: Option<Duration>) {
        if !matches!(status, TaskStatus::Done | TaskStatus::Failed) {
            return;
        }
        let slot = &self.slots[(minute % u64::from(MAX_WINDOW_MINUTES)) as usize];
        let seen = slot.minute.load(Ordering::Acquire);
        if seen != minute
            && slot
                .minute
                .compare_exchange(seen, minute, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            for count in [&slot.done, &slot.failed, &slot.ran, &slot.ran_micros] {
                count.store(0, Ordering::Relaxed);
            }
        }
        let ended = if status == TaskStatus::Done {
            &slot.done
        } else {
            &slot.failed
        };
        ended.fetch_add(1, Ordering::Relaxed);
        if let Some(ran) = ran {
            slot.ran.fetch_add(1, Ordering::Relaxed);
            slot.ran_micros
                .fetch_add(ran.as_micros() as u64, Ordering::Relaxed);
        }
    }

    /// Over the last `minutes` (this one included).
    pub fn figures(&self, minutes: u32) -> Figures {
        self.figures_at(this_minute(), minutes)
    }

    fn figures_at(&self, now: u64, minutes: u32) -> Figures {
        let minutes = minutes.clamp(1, MAX_WINDOW_MINUTES);
        let oldest = now.saturating_sub(u64::from(minutes) - 1);
        let (mut done, mut failed, mut ran, mut micros) = (0u64, 0u64, 0u64, 0u64);
        for slot in &self.slots {
            let minute = slot.minute.load(Ordering::Acquire);
            if (oldest..=now).contains(&minute) {
                done += slot.done.load(Ordering::Relaxed);
                failed += slot.failed.load(Ordering::Relaxed);
                ran += slot.ran.load(Ordering::Relaxed);
                micros += slot.ran_micros.load(Ordering::Relaxed);
            }
        }
        let ended = done + failed;
        let ratio = |a: f64, b: u64| if b == 0 { 0.0 } else { a / b as f64 };
        Figures {
            failure_rate: round2(ratio(failed as f64 * 100.0, ended)),
            avg_processing_secs: round2(ratio(micros as f64 / 1e6, ran)),
            throughput_per_min: round2(ended as f64 / f64::from(minutes)),
        }
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_count_only_the_window_and_not_cancelled_tasks() {
        let window = Window::default();
        let secs = |s| Some(Duration::from_secs(s));
        window.record_at(100, TaskStatus::Done, secs(10));
        window.record_at(109, TaskStatus::Done, secs(30));
        window.record_at(109, TaskStatus::Failed, None);
        window.record_at(109, TaskStatus::Cancelled, None);
        // Ten minutes back from 109 is 100 on: all three ended tasks.
        let figures = window.figures_at(109, 10);
        assert_eq!(figures.failure_rate, 33.33);
        assert_eq!(figures.avg_processing_secs, 20.0);
        assert_eq!(figures.throughput_per_min, 0.3);
        // One minute later, the first has left the window.
        let figures = window.figures_at(110, 10);
        assert_eq!(figures.failure_rate, 50.0);
        assert_eq!(figures.avg_processing_secs, 30.0);
    }

    #[test]
    fn a_slot_reused_an_hour_later_starts_from_zero() {
        let window = Window::default();
        window.record_at(5, TaskStatus::Failed, None);
        window.record_at(65, TaskStatus::Done, None);
        assert_eq!(window.figures_at(65, 60).failure_rate, 0.0);
    }

    #[test]
    fn no_tasks_no_figures() {
        assert_eq!(Window::default().figures_at(7, 10), Figures::default());
    }
}
