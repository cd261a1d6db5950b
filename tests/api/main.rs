//! Integration tests: the real server on a random port, a temporary SQLite file, and
//! simulated backends on their own random ports, driven over HTTP.

mod admin;
mod auth;
mod bad_input;
mod balancing;
mod cancel;
mod cli;
mod database_faults;
mod fairness;
mod fake_backend;
mod faults;
mod helpers;
mod idempotency;
mod image_flow;
mod keys;
mod migrations;
mod openapi;
mod poll;
mod postgres;
mod process;
mod queue;
mod recovery;
mod slow_clients;
mod speech;
mod users;
