//! The supervised actors that move a task from submission to its end.
//!
//! HTTP handler ──Submit──▶ Dispatcher ──InsertTask──▶ TaskStore (group commit)
//!                              │ bounded queue
//!                              ▼
//!               Worker[slot] ◀─Run─ Dispatcher
//!                   │ Acquire ─▶ InstanceRegistry ─▶ Lease
//!                   │ backend call (awc, timeout)
//!                   │ FinishTask ─▶ TaskStore
//!                   │ Lease::release ─▶ InstanceRegistry (several gateways: CallEnded,
//!                   │                   which may answer the lease kept)
//!                   └ WorkerIdle (with a kept lease) ─▶ Dispatcher
//!
//! InstanceRegistry ──ImageCapacity──▶ WorkerPool (starts Workers) ──ResizeWorkers──▶ Dispatcher
//!
//! TaskStore commit ─▶ EventHub ─(wake)─▶ Deliverer ─▶ webhook_deliveries ─▶ receivers

pub mod dispatcher;
pub mod instance_registry;
pub mod listener;
pub mod messages;
pub mod progress;
pub mod task_store;
pub mod webhooks;
pub mod worker;
pub mod worker_pool;

pub use dispatcher::Dispatcher;
pub use instance_registry::InstanceRegistry;
pub use listener::Listener;
pub use task_store::TaskStore;
pub use webhooks::Deliverer;
pub use worker::Worker;
pub use worker_pool::WorkerPool;
