//! The operators' task listing at 1,000,000 tasks: the time of each filter's exact
//! `total`.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::{start_sim, Rig, FAST_PINGS};

/// Tasks the admin scenario stores, spread over `ADMIN_USERS` users.
const ADMIN_TASKS: u64 = 1_000_000;
const ADMIN_USERS: u64 = 100;

/// One SQL statement on the rig's connection.
async fn execute(rig: &Rig, sql: &str) {
    use sea_orm::{ConnectionTrait, Statement};
    let backend = rig.db.get_database_backend();
    rig.db
        .execute(Statement::from_string(backend, sql))
        .await
        .unwrap();
}

/// The time of `GET /api/v1/admin/tasks?{query}` (median of 9) and its `total`.
async fn listing_time(rig: &Rig, token: &str, query: &str) -> (Duration, u64) {
    let mut times = Vec::new();
    let mut total = 0;
    for _ in 0..9 {
        let started = Instant::now();
        let page: Value = rig
            .client
            .get(format!("{}/api/v1/admin/tasks?{query}", rig.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        times.push(started.elapsed());
        total = page["total"].as_u64().expect("a page");
    }
    times.sort();
    (times[times.len() / 2], total)
}

/// A million finished tasks stored at once (one statement), then the listing's time
/// and exact `total` per filter.
pub async fn admin_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, url) = start_sim(dir.path(), 600_000, 1);
    // Retention off: the stored tasks are up to 11 days old.
    let extra = format!("{FAST_PINGS}[retention]\nfinished_days = 0\n");
    let rig = Rig::launch(dir, vec![sim], &[(url, 1)], &extra).await;
    rig.wait_healthy().await;
    let token = rig.token("bench_admin").await;
    execute(
        &rig,
        "UPDATE users SET role = 'admin' WHERE username = 'bench_admin'",
    )
    .await;
    execute(
        &rig,
        &format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ADMIN_USERS}) \
         INSERT INTO users (username, password_hash, role, disabled, created_at, event_seq) \
         SELECT 'bench_' || i, 'x', 'user', 0, '2026-01-01T00:00:00+00:00', 0 FROM n"
    ),
    )
    .await;
    let started = Instant::now();
    // Created over the last 1,000,000 seconds, a tenth FAILED, a tenth CANCELLED.
    execute(&rig, &format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ADMIN_TASKS}) \
         INSERT INTO tasks (task_id, user_id, prompt, steps, status, attempts, priority, fair_key, \
           instance, created_at, started_at, updated_at) \
         SELECT 'bench-' || i, (SELECT min(id) FROM users WHERE username LIKE 'bench\\_%' ESCAPE '\\') + i % {ADMIN_USERS}, \
           'a prompt numbered ' || i, 20, \
           CASE i % 10 WHEN 0 THEN 'FAILED' WHEN 1 THEN 'CANCELLED' ELSE 'DONE' END, 1, 'normal', 0, \
           'http://gpu-' || (i % 4) || ':8000', t, t, t \
         FROM (SELECT i, strftime('%Y-%m-%dT%H:%M:%S+00:00', 'now', '-' || ({ADMIN_TASKS} - i) || ' seconds') AS t FROM n)"
    ))
    .await;
    execute(&rig, "ANALYZE").await;
    println!(
        "admin: {ADMIN_TASKS} tasks of {ADMIN_USERS} users stored in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let hour_ago = (chrono::Utc::now() - chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for (label, query) in [
        ("no filter", String::new()),
        ("statuses=FAILED", "statuses=FAILED".into()),
        ("users=one user", "users=50".into()),
        (
            "statuses=FAILED&users=one",
            "statuses=FAILED&users=50".into(),
        ),
        ("instances=one of 4", "instances=http://gpu-1:8000".into()),
        (
            "finished in the last hour",
            format!("finished_after={hour_ago}"),
        ),
        (
            "created in the last hour, FAILED",
            format!("created_after={hour_ago}&statuses=FAILED"),
        ),
        ("q=numbered 99999 (no index)", "q=numbered%2099999".into()),
        ("page 1000 by cursor", "from=500000&limit=20".into()),
    ] {
        let (time, total) = listing_time(&rig, &token, &query).await;
        println!(
            "admin: GET /api/v1/admin/tasks {label}: total {total}, {:.1} ms (median of 9)",
            time.as_secs_f64() * 1e3
        );
    }
}
