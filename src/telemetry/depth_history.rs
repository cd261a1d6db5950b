//! The queue's depth history: every `stats.depth_sample_secs` the shared queue is
//! counted and kept for a day, so a chart of the last hour is whole from the moment a
//! console opens, and a restart loses none of it.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sea_orm::DatabaseConnection;

use crate::store::queue_samples;

/// How long samples are kept; the console asks for the last hour.
pub const KEPT: chrono::Duration = chrono::Duration::hours(24);

/// Samples at the start of every interval, for good.
pub async fn run(db: DatabaseConnection, every: Duration) {
    let every_secs = every.as_secs().max(1) as i64;
    loop {
        let at = interval_start(Utc::now(), every_secs);
        if let Err(e) = queue_samples::record(&db, at).await {
            tracing::warn!(error = %e, "cannot record the queue's depth; trying again at the next interval");
        }
        if let Err(e) = queue_samples::prune(&db, at - KEPT).await {
            tracing::warn!(error = %e, "cannot prune old queue depth samples");
        }
        let next = at + chrono::Duration::seconds(every_secs);
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(wait).await;
    }
}

/// The start of the interval `now` falls in, counted from the epoch, so that gateways
/// sampling the same interval name it alike.
fn interval_start(now: DateTime<Utc>, every_secs: i64) -> DateTime<Utc> {
    let secs = now.timestamp().div_euclid(every_secs) * every_secs;
    Utc.timestamp_opt(secs, 0).single().unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_gateway_names_an_interval_by_its_start() {
        let at = |s| Utc.timestamp_opt(s, 0).unwrap();
        assert_eq!(interval_start(at(1_800_000_059), 60), at(1_800_000_000));
        assert_eq!(interval_start(at(1_800_000_060), 60), at(1_800_000_060));
        assert_eq!(interval_start(at(1_800_000_007), 1), at(1_800_000_007));
    }
}
