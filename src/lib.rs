//! infergate: an asynchronous task gateway for GPU inference backends.

pub mod actors;
pub mod auth;
pub mod backends;
pub mod cli;
pub mod cluster;
pub mod domain;
pub mod error;
pub mod events;
pub mod faults;
pub mod generation;
pub mod http;
pub mod limits;
pub mod retention;
pub mod settings;
pub mod simulator;
pub mod speech;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod webhooks;
