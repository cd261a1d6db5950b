//! WorkerPool: how many Worker actors there are. The InstanceRegistry tells it the
//! enabled image capacity whenever that changes; it starts workers up to
//! `workers.slots` (or, when that is 0, that capacity), and asks the Dispatcher to retire
//! the surplus as workers become idle. It is the only one that starts workers.

use actix::prelude::*;

use super::messages::{ImageCapacity, ResizeWorkers};
use super::worker::{Worker, WorkerDeps};
use crate::settings::WorkerSettings;

pub struct WorkerPool {
    deps: WorkerDeps,
    settings: WorkerSettings,
    /// Workers started and not asked to retire.
    live: usize,
    /// Slot number of the next worker started, for its logs.
    next_slot: usize,
}

impl WorkerPool {
    /// Empty: the registry's first report of the capacity starts the workers.
    pub fn new(deps: WorkerDeps, settings: WorkerSettings) -> WorkerPool {
        WorkerPool {
            deps,
            settings,
            live: 0,
            next_slot: 0,
        }
    }
}

impl Actor for WorkerPool {
    type Context = Context<Self>;
}

/// Starts or retires workers to match the capacity.
impl Handler<ImageCapacity> for WorkerPool {
    type Result = ();

    fn handle(&mut self, ImageCapacity(capacity): ImageCapacity, _: &mut Context<Self>) {
        let wanted = self.settings.slots_for(capacity);
        if wanted == self.live {
            return;
        }
        let added = wanted.saturating_sub(self.live);
        let retire = self.live.saturating_sub(wanted);
        self.deps
            .dispatcher
            .do_send(ResizeWorkers { added, retire });
        for _ in 0..added {
            let (slot, deps) = (self.next_slot, self.deps.clone());
            self.next_slot += 1;
            Supervisor::start(move |_| Worker::new(slot, deps));
        }
        tracing::info!(
            workers = wanted,
            image_capacity = capacity,
            "worker slots follow the image capacity"
        );
        self.live = wanted;
    }
}
