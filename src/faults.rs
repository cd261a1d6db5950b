//! Fault injection for tests: a panic armed at a named site inside an actor. Compiled
//! only with the `fault-injection` feature, which the integration tests turn on; in a
//! normal build `hit` is an empty inline function.

/// Where a panic can be armed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Site {
    /// A Worker, in the middle of a task's attempt.
    WorkerAttempt,
    /// The TaskStore, in the middle of a group commit.
    StoreCommit,
    /// The Dispatcher, handing out a task.
    DispatcherDispatch,
    /// The InstanceRegistry, granting a lease.
    RegistryLease,
    /// The webhook Deliverer, starting an attempt it claimed.
    DelivererSend,
    /// A webhook attempt, on its own task, before it is sent.
    WebhookAttempt,
}

#[cfg(feature = "fault-injection")]
mod armed {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::Site;

    /// Panics still to fire, per site.
    static ARMED: Mutex<Option<HashMap<Site, u32>>> = Mutex::new(None);

    /// The next `times` passes through `site` panic.
    pub fn arm(site: Site, times: u32) {
        let mut armed = ARMED.lock().expect("fault table");
        *armed
            .get_or_insert_with(HashMap::new)
            .entry(site)
            .or_default() += times;
    }

    pub fn hit(site: Site) {
        let fire = {
            let mut armed = ARMED.lock().expect("fault table");
            match armed.as_mut().and_then(|a| a.get_mut(&site)) {
                Some(left) if *left > 0 => {
                    *left -= 1;
                    true
                }
                _ => false,
            }
        };
        if fire {
            panic!("injected fault at {site:?}");
        }
    }
}

#[cfg(feature = "fault-injection")]
pub use armed::{arm, hit};

/// A pass through `site`: panics when a test armed it.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn hit(_site: Site) {}
