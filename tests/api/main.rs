//! Integration tests: the real server on a random port, a temporary SQLite file, and
//! simulated backends on their own random ports, driven over HTTP.

mod admin;
mod auth;
mod backend_protocols;
mod bad_input;
mod balancing;
mod cancel;
mod cli;
mod cluster;
mod database_faults;
mod disk_full;
mod events;
mod fairness;
mod fake_backend;
mod faults;
mod healing;
mod helpers;
mod idempotency;
mod image_flow;
mod keys;
mod migrations;
mod openai_front;
mod openai_sdk;
mod openapi;
mod poll;
mod postgres;
mod process;
mod queue;
mod readiness;
mod recovery;
mod slow_clients;
mod speech;
mod sse;
mod users;
mod webhooks;
mod ws;
