//! Integration tests: the real server on a random port, a temporary SQLite file, and
//! simulated backends on their own random ports, driven over HTTP.

mod auth;
mod bad_input;
mod balancing;
mod cli;
mod helpers;
mod image_flow;
mod keys;
mod queue;
mod speech;
