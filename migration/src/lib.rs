//! Database migrations, applied at every start and by `infergate migrate`.
pub use sea_orm_migration::prelude::*;

mod m20261128_000001_initial;
mod m20261128_000002_api_keys;
mod m20261128_000003_idempotency_keys;
mod m20261128_000004_instances;
mod m20261128_000005_task_priority;
mod m20261201_000006_task_trace;
mod m20261202_000101_user_disabled;
mod m20261202_000102_tasks_reference_users;
mod m20261202_000103_username_nocase;
mod m20261203_000201_instance_model;
mod m20261204_000301_cluster;
mod m20261205_000401_task_events;
mod m20261206_000501_operators;
mod m20261207_000601_queue_samples;
mod m20261208_000701_vip_queue_index;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261128_000001_initial::Migration),
            Box::new(m20261128_000002_api_keys::Migration),
            Box::new(m20261128_000003_idempotency_keys::Migration),
            Box::new(m20261128_000004_instances::Migration),
            Box::new(m20261128_000005_task_priority::Migration),
            Box::new(m20261201_000006_task_trace::Migration),
            Box::new(m20261202_000101_user_disabled::Migration),
            Box::new(m20261202_000102_tasks_reference_users::Migration),
            Box::new(m20261202_000103_username_nocase::Migration),
            Box::new(m20261203_000201_instance_model::Migration),
            Box::new(m20261204_000301_cluster::Migration),
            Box::new(m20261205_000401_task_events::Migration),
            Box::new(m20261206_000501_operators::Migration),
            Box::new(m20261207_000601_queue_samples::Migration),
            Box::new(m20261208_000701_vip_queue_index::Migration),
        ]
    }
}
