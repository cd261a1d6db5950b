//! One gateway among several on one PostgreSQL database: which node this process is,
//! and the rhythm of its claims (see `store::cluster` for the SQL and README for the
//! whole picture). On SQLite there is none: one file, one gateway.

use std::time::Duration;

use crate::domain::NodeId;
use crate::settings::Settings;

/// Shared admission limits, checked in the inserting transaction.
#[derive(Clone, Debug)]
pub struct Admission {
    pub capacity: usize,
    /// Unfinished tasks per user; 0: no quota.
    pub quota: u32,
    /// Users in turn (false: submission order).
    pub fair: bool,
}

#[derive(Clone, Debug)]
pub struct Cluster {
    pub node: NodeId,
    /// How long a claim (on a task, on a call slot) holds unless renewed.
    pub lease: Duration,
    /// How often to look for work nobody announced.
    pub poll: Duration,
    pub admission: Admission,
}

impl Cluster {
    /// Several gateways share the database when it is PostgreSQL.
    pub fn of(settings: &Settings) -> Option<Cluster> {
        if !settings.database.url.starts_with("postgres") {
            return None;
        }
        let host = hostname();
        Some(Cluster {
            node: NodeId::generate(&host),
            lease: Duration::from_secs(settings.cluster.lease_secs),
            poll: Duration::from_millis(settings.cluster.poll_ms),
            admission: Admission {
                capacity: settings.queue.capacity,
                quota: settings.limits.max_queued_per_user,
                fair: settings.limits.fair_order,
            },
        })
    }

    /// Leases are renewed three times per lease.
    pub fn heartbeat_every(&self) -> Duration {
        self.lease / 3
    }
}

/// This machine's name, for the nodes table.
pub fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}
