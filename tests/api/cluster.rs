//! Several gateway processes on one PostgreSQL database share the work: each task runs
//! once, no backend ever gets more calls than its capacity, a killed gateway loses
//! nothing, and a cancel, an instance change or a queued task reaches every gateway.
//! Spawned binaries on a per-test database; skipped without `INFERGATE_TEST_POSTGRES_URL`.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::future::join_all;
use infergate::simulator::{SimBackend, SimConfig};
use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement, TransactionTrait};
use serde_json::{json, Value};

use crate::helpers::start_sims;
use crate::poll::eventually;
use crate::postgres::TempDatabase;
use crate::process::{free_port, sign_up, submit, task, Gateway};

/// A settings file for one of several gateways on `database`.
fn cluster_config(dir: &Path, sims: &[&SimBackend], extra: &str) -> std::path::PathBuf {
    // No `[[instances]]` would mean the default one; none means none.
    let none = if sims.is_empty() {
        "instances = []\n"
    } else {
        ""
    };
    let mut text = format!(
        "{none}[cluster]\nlease_secs = 3\npoll_ms = 100\n[health]\ninterval_secs = 1\n\
         [limits]\nsubmit_per_minute = 0\nlogin_per_minute = 0\nmax_queued_per_user = 0\n\
         [queue]\ncapacity = 10000\n{extra}\n"
    );
    for sim in sims {
        text.push_str(&format!(
            "[[instances]]\nkind = \"image\"\nurl = \"{}\"\ncapacity = 1\n",
            sim.url()
        ));
    }
    let path = dir.join(format!("settings-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, text).unwrap();
    path
}

async fn gateway(dir: &Path, config: &Path, database: &TempDatabase) -> Gateway {
    let env = [
        ("INFERGATE__DATABASE__URL", database.url.clone()),
        (
            "INFERGATE__AUTH__JWT_SECRET",
            crate::helpers::TEST_SECRET.to_string(),
        ),
    ];
    Gateway::start_with(dir, Some(config), free_port(), &[], &env).await
}

/// Signs up `root` through `base` and makes them an admin in the database: the
/// connection, and root's token.
async fn sign_up_admin(base: &str, database: &TempDatabase) -> (DatabaseConnection, String) {
    let (_, admin) = sign_up(base, "root").await;
    let db = Database::connect(&database.url).await.unwrap();
    db.execute(Statement::from_string(
        db.get_database_backend(),
        "UPDATE users SET role = 'admin' WHERE username = 'root'",
    ))
    .await
    .unwrap();
    (db, admin)
}

async fn count(db: &DatabaseConnection, sql: &str) -> i64 {
    let row = db
        .query_one(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index::<i64>(0).unwrap()
}

/// Waits until every task in the database has ended; answers how many are DONE.
async fn all_end(db: &DatabaseConnection, total: i64) -> i64 {
    eventually("every task ending", Duration::from_secs(60), || async {
        let open = count(
            db,
            "SELECT count(*) FROM tasks WHERE status IN ('QUEUED', 'RUNNING')",
        )
        .await;
        let all = count(db, "SELECT count(*) FROM tasks").await;
        if open == 0 && all == total {
            Ok(())
        } else {
            Err(format!("{open} unfinished of {all}"))
        }
    })
    .await;
    count(db, "SELECT count(*) FROM tasks WHERE status = 'DONE'").await
}

fn gpu(latency_ms: u64) -> SimConfig {
    SimConfig {
        latency_ms,
        ..SimConfig::default()
    }
}

/// Submits `n` tasks spread round-robin over the gateways, 16 at a time.
async fn spread(gateways: &[&Gateway], token: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for round in (0..n).collect::<Vec<_>>().chunks(16) {
        let answers = join_all(round.iter().map(|&i| {
            let base = gateways[i % gateways.len()].base.clone();
            async move {
                let response = submit(&base, token, format!("prompt {i}")).await;
                assert_eq!(response.status(), StatusCode::ACCEPTED);
                let body: Value = response.json().await.unwrap();
                body["task_id"].as_str().unwrap().to_string()
            }
        }))
        .await;
        ids.extend(answers);
    }
    ids
}

#[actix_web::test]
async fn three_gateways_share_two_gpus_and_run_every_task_once() {
    let Some(database) = TempDatabase::create().await else {
        return;
    };
    let sims = start_sims(vec![gpu(5), gpu(5)]);
    let dir = tempfile::tempdir().unwrap();
    let config = cluster_config(dir.path(), &[&sims[0], &sims[1]], "");
    let a = gateway(dir.path(), &config, &database).await;
    let b = gateway(dir.path(), &config, &database).await;
    let c = gateway(dir.path(), &config, &database).await;
    let (_, token) = sign_up(&a.base, "alice").await;
    spread(&[&a, &b, &c], &token, 400).await;

    let db = Database::connect(&database.url).await.unwrap();
    assert_eq!(all_end(&db, 400).await, 400);
    assert_eq!(count(&db, "SELECT count(*) FROM images").await, 400);
    assert_eq!(
        count(&db, "SELECT count(*) FROM tasks WHERE attempts <> 1").await,
        0
    );
    let generated: u64 = sims.iter().map(SimBackend::generated).sum();
    assert_eq!(generated, 400, "each task ran once");
    for sim in &sims {
        assert_eq!(
            sim.state.max_in_flight.load(Ordering::SeqCst),
            1,
            "capacity 1 held"
        );
    }
    // Each is listed among the live gateways.
    assert_eq!(count(&db, "SELECT count(*) FROM nodes").await, 3);
    drop((a, b, c));
    database.drop().await;
}

#[actix_web::test]
async fn a_gateway_killed_mid_run_loses_nothing_and_its_tasks_run_elsewhere() {
    let Some(database) = TempDatabase::create().await else {
        return;
    };
    let sims = start_sims(vec![gpu(100), gpu(100)]);
    let dir = tempfile::tempdir().unwrap();
    let config = cluster_config(dir.path(), &[&sims[0], &sims[1]], "");
    let a = gateway(dir.path(), &config, &database).await;
    let b = gateway(dir.path(), &config, &database).await;
    let c = gateway(dir.path(), &config, &database).await;
    let (_, token) = sign_up(&a.base, "alice").await;
    spread(&[&a, &b, &c], &token, 60).await;

    // Kill B while it runs something, and never bring it back.
    let db = Database::connect(&database.url).await.unwrap();
    let b_node: String = eventually("B running a task", Duration::from_secs(30), || async {
        let row = db
            .query_one(Statement::from_string(
                db.get_database_backend(),
                format!(
                    "SELECT n.id FROM nodes n JOIN tasks t ON t.holder = n.id \
                     WHERE n.pid = {} AND t.status = 'RUNNING' LIMIT 1",
                    b.pid()
                ),
            ))
            .await
            .unwrap();
        row.map(|r| r.try_get_by_index::<String>(0).unwrap())
            .ok_or("not yet")
    })
    .await;
    let generated_before: u64 = sims.iter().map(SimBackend::generated).sum();
    b.kill();
    // What it held: RUNNING, or claimed with its call started while RUNNING committed.
    let held = count(
        &db,
        &format!(
            "SELECT count(*) FROM tasks WHERE holder = '{b_node}' \
             AND status IN ('QUEUED', 'RUNNING')"
        ),
    )
    .await;
    assert!(held >= 1);

    assert_eq!(
        all_end(&db, 60).await,
        60,
        "every task DONE, the killed one's too"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM images").await, 60);
    // The GPUs ran each task once, plus at most the calls the killed gateway had out.
    let generated: u64 = sims.iter().map(SimBackend::generated).sum();
    assert!(
        generated >= 60 && generated <= 60 + held as u64,
        "{generated} calls, {held} held"
    );
    assert!(generated_before <= generated);
    for sim in &sims {
        assert_eq!(
            sim.state.max_in_flight.load(Ordering::SeqCst),
            1,
            "capacity 1 held"
        );
    }
    drop((a, c));
    database.drop().await;
}

#[actix_web::test]
async fn running_tasks_end_while_another_gateways_admission_holds_the_lock() {
    let Some(database) = TempDatabase::create().await else {
        return;
    };
    let sims = start_sims(vec![gpu(300)]);
    let dir = tempfile::tempdir().unwrap();
    let config = cluster_config(dir.path(), &[&sims[0]], "");
    let a = gateway(dir.path(), &config, &database).await;
    let (_, token) = sign_up(&a.base, "alice").await;
    let body: Value = submit(&a.base, &token, "running")
        .await
        .json()
        .await
        .unwrap();
    let first = body["task_id"].as_str().unwrap().to_string();
    eventually(
        "the first task running",
        Duration::from_secs(20),
        || async {
            let task = task(&a.base, &token, &first).await;
            (task["status"] == "RUNNING").then_some(()).ok_or(task)
        },
    )
    .await;

    // Another gateway admitting, as this one sees it: the admission lock, held.
    let db = Database::connect(&database.url).await.unwrap();
    let admission = db.begin().await.unwrap();
    admission
        .execute(Statement::from_sql_and_values(
            db.get_database_backend(),
            "SELECT pg_advisory_xact_lock($1)",
            [infergate::store::cluster::ADMISSION_LOCK.into()],
        ))
        .await
        .unwrap();
    let (base, waiting_token) = (a.base.clone(), token.clone());
    let second = actix_web::rt::spawn(async move {
        let response = submit(&base, &waiting_token, "waits for the lock").await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        (status, body["task_id"].as_str().map(str::to_string))
    });
    // The running task's DONE commits meanwhile: it does not wait for the lock, even
    // though a new task is waiting for it in the same gateway.
    eventually("the first task DONE", Duration::from_secs(10), || async {
        let task = task(&a.base, &token, &first).await;
        (task["status"] == "DONE").then_some(()).ok_or(task)
    })
    .await;
    assert!(!second.is_finished(), "a task was admitted past the lock");
    admission.rollback().await.unwrap();
    let (status, second) = second.await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);
    let second = second.unwrap();
    eventually("the second task DONE", Duration::from_secs(20), || async {
        let task = task(&a.base, &token, &second).await;
        (task["status"] == "DONE").then_some(()).ok_or(task)
    })
    .await;
    drop(a);
    database.drop().await;
}

#[actix_web::test]
async fn a_slot_kept_from_task_to_task_goes_back_within_a_second_for_the_others() {
    let Some(database) = TempDatabase::create().await else {
        return;
    };
    let sims = start_sims(vec![gpu(10)]);
    let dir = tempfile::tempdir().unwrap();
    let config = cluster_config(dir.path(), &[&sims[0]], "");
    let a = gateway(dir.path(), &config, &database).await;
    let (_, token) = sign_up(&a.base, "alice").await;
    // Seconds of work: A keeps the slot from one task to the next all along.
    let total = 300;
    spread(&[&a], &token, total).await;
    let db = Database::connect(&database.url).await.unwrap();

    // The test is another gateway, whose claimed task waits for a slot: it takes the
    // one A gives back before A takes it again.
    let channel = infergate::store::CHANNEL;
    let waiting = std::time::Instant::now();
    loop {
        assert!(
            waiting.elapsed() < Duration::from_secs(8),
            "the slot never came back while the queue was long"
        );
        let taken = count(
            &db,
            "WITH taken AS (UPDATE slots SET holder = 'the-test', \
               held_until = now() + interval '1 hour' \
             WHERE holder IS NULL OR held_until < now() RETURNING 1) SELECT count(*) FROM taken",
        )
        .await;
        if taken == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let queued = count(&db, "SELECT count(*) FROM tasks WHERE status = 'QUEUED'").await;
    assert!(queued > 0, "given back only because the queue ran dry");
    // While the test holds it, A calls nothing.
    let generated = sims[0].generated();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sims[0].generated(), generated, "a call without a slot");
    // Given back as a gateway does it, the slot goes on serving A.
    count(
        &db,
        &format!(
            "WITH freed AS (UPDATE slots SET holder = NULL, held_until = NULL \
               WHERE holder = 'the-test' RETURNING 1) \
             SELECT count(pg_notify('{channel}', 's')) FROM freed"
        ),
    )
    .await;
    assert_eq!(all_end(&db, total as i64).await, total as i64);
    assert_eq!(sims[0].state.max_in_flight.load(Ordering::SeqCst), 1);
    drop(a);
    database.drop().await;
}

#[actix_web::test]
async fn a_cancel_through_one_gateway_stops_the_call_another_runs() {
    let Some(database) = TempDatabase::create().await else {
        return;
    };
    let sims = start_sims(vec![gpu(20_000)]);
    let dir = tempfile::tempdir().unwrap();
    // A has no instance: it cannot run anything, so B runs what A is asked to.
    let none = cluster_config(dir.path(), &[], "");
    let with_gpu = cluster_config(dir.path(), &[&sims[0]], "");
    let a = gateway(dir.path(), &none, &database).await;
    let b = gateway(dir.path(), &with_gpu, &database).await;
    let (_, token) = sign_up(&a.base, "alice").await;
    let body: Value = submit(&a.base, &token, "long one")
        .await
        .json()
        .await
        .unwrap();
    let id = body["task_id"].as_str().unwrap().to_string();
    eventually("the task running on B", Duration::from_secs(20), || async {
        let task = task(&a.base, &token, &id).await;
        let calling = sims[0].state.in_flight.load(Ordering::SeqCst);
        if task["status"] == "RUNNING" && calling == 1 {
            Ok(())
        } else {
            Err(task)
        }
    })
    .await;

    let client = reqwest::Client::new();
    let cancelled = client
        .post(format!("{}/api/v1/tasks/{id}/cancel", a.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), StatusCode::OK);
    // B hears of it and drops the backend call: its lease, and the shared slot, are free.
    let db = Database::connect(&database.url).await.unwrap();
    eventually("the call dropped", Duration::from_secs(5), || async {
        let stats: Value = client
            .get(format!("{}/api/v1/system/stats", b.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let held = count(&db, "SELECT count(*) FROM slots WHERE holder IS NOT NULL").await;
        if stats["image_instances"]["in_flight"] == 0 && held == 0 {
            Ok(())
        } else {
            Err((stats, held))
        }
    })
    .await;
    let task = task(&b.base, &token, &id).await;
    assert_eq!(task["status"], "CANCELLED");
    drop((a, b));
    database.drop().await;
}

#[actix_web::test]
async fn an_instance_added_through_one_gateway_takes_work_submitted_through_another() {
    let Some(database) = TempDatabase::create().await else {
        return;
    };
    let sims = start_sims(vec![gpu(5)]);
    let dir = tempfile::tempdir().unwrap();
    let none = cluster_config(dir.path(), &[], "");
    let a = gateway(dir.path(), &none, &database).await;
    let c = gateway(dir.path(), &none, &database).await;
    let (_, token) = sign_up(&a.base, "alice").await;
    let (_, admin) = sign_up_admin(&a.base, &database).await;
    let added = reqwest::Client::new()
        .post(format!("{}/api/v1/admin/instances", a.base))
        .bearer_auth(&admin)
        .json(&json!({"kind": "image", "url": sims[0].url()}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), StatusCode::CREATED);
    // C, which was told nothing but through the database, runs work submitted to it.
    let body: Value = submit(&c.base, &token, "through C")
        .await
        .json()
        .await
        .unwrap();
    let id = body["task_id"].as_str().unwrap().to_string();
    eventually("the task DONE", Duration::from_secs(20), || async {
        let task = task(&c.base, &token, &id).await;
        if task["status"] == "DONE" {
            Ok(())
        } else {
            Err(task)
        }
    })
    .await;
    assert_eq!(sims[0].generated(), 1);
    drop((a, c));
    database.drop().await;
}

/// One submission through each (gateway, token) in turn: its status and error code.
async fn submit_each(through: &[(&Gateway, &String)]) -> Vec<(StatusCode, String)> {
    let mut out = Vec::new();
    for (gateway, token) in through {
        let response = submit(&gateway.base, token, "waiting").await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        out.push((status, body["code"].as_str().unwrap_or("").to_string()));
    }
    out
}

#[actix_web::test]
async fn the_quota_and_the_queue_capacity_hold_across_gateways() {
    let Some(database) = TempDatabase::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // No instance: everything stays queued.
    let config = cluster_config(dir.path(), &[], "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("max_queued_per_user = 0", "max_queued_per_user = 3")
        .replace("capacity = 10000", "capacity = 5");
    std::fs::write(&config, text).unwrap();
    let a = gateway(dir.path(), &config, &database).await;
    let b = gateway(dir.path(), &config, &database).await;
    let (_, alice) = sign_up(&a.base, "alice").await;
    let (_, bob) = sign_up(&b.base, "bobby").await;

    // Alice: 3 unfinished at most, whichever gateway she asks.
    let alices = submit_each(&[(&a, &alice), (&b, &alice), (&a, &alice), (&b, &alice)]).await;
    assert_eq!(
        alices[..3]
            .iter()
            .filter(|(s, _)| *s == StatusCode::ACCEPTED)
            .count(),
        3
    );
    assert_eq!(
        alices[3],
        (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded".to_string())
    );
    // The queue: 5 in all.
    let bobs = submit_each(&[(&b, &bob), (&a, &bob), (&b, &bob)]).await;
    assert_eq!(bobs[0].0, StatusCode::ACCEPTED);
    assert_eq!(bobs[1].0, StatusCode::ACCEPTED);
    assert_eq!(
        bobs[2],
        (StatusCode::SERVICE_UNAVAILABLE, "queue_full".to_string())
    );
    let db = Database::connect(&database.url).await.unwrap();
    assert_eq!(
        count(&db, "SELECT count(*) FROM tasks").await,
        5,
        "refusals wrote nothing"
    );
    drop((a, b));
    database.drop().await;
}

#[actix_web::test]
async fn a_listening_connection_killed_by_the_server_does_not_strand_work() {
    let Some(database) = TempDatabase::create().await else {
        return;
    };
    let sims = start_sims(vec![gpu(5)]);
    let dir = tempfile::tempdir().unwrap();
    // No poll to fall back on: only the wake-ups, and the resync after a reconnect.
    let slow_poll = "[workers]\nmax_attempts = 3\n";
    let none = cluster_config(dir.path(), &[], slow_poll).to_owned();
    let with_gpu = cluster_config(dir.path(), &[&sims[0]], slow_poll);
    for path in [&none, &with_gpu] {
        let text = std::fs::read_to_string(path)
            .unwrap()
            .replace("poll_ms = 100", "poll_ms = 60000");
        std::fs::write(path, text).unwrap();
    }
    let a = gateway(dir.path(), &none, &database).await;
    let b = gateway(dir.path(), &with_gpu, &database).await;
    let (_, token) = sign_up(&a.base, "alice").await;
    let first: Value = submit(&a.base, &token, "before")
        .await
        .json()
        .await
        .unwrap();
    let wait_done = |id: String| {
        let (base, token) = (a.base.clone(), token.clone());
        async move {
            eventually("the task DONE", Duration::from_secs(20), || async {
                let task = task(&base, &token, &id).await;
                if task["status"] == "DONE" {
                    Ok(())
                } else {
                    Err(task)
                }
            })
            .await
        }
    };
    wait_done(first["task_id"].as_str().unwrap().to_string()).await;

    let admin = Database::connect(&database.url).await.unwrap();
    let killed = count(
        &admin,
        &format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = '{}' AND query ILIKE 'LISTEN%'",
            database.name
        ),
    )
    .await;
    assert!(killed >= 2, "both gateways' listeners were cut ({killed})");
    // Submitted through A, run by B: B must hear of it on a new connection.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after: Value = submit(&a.base, &token, "after").await.json().await.unwrap();
    wait_done(after["task_id"].as_str().unwrap().to_string()).await;
    drop((a, b));
    database.drop().await;
}

#[actix_web::test]
async fn a_stream_on_one_gateway_sees_the_events_of_work_another_runs_even_across_a_lost_listener()
{
    let Some(database) = TempDatabase::create().await else {
        return;
    };
    let sims = start_sims(vec![gpu(200)]);
    let dir = tempfile::tempdir().unwrap();
    // A has no instance: everything submitted runs on B.
    let none = cluster_config(dir.path(), &[], "");
    let with_gpu = cluster_config(dir.path(), &[&sims[0]], "");
    let a = gateway(dir.path(), &none, &database).await;
    let b = gateway(dir.path(), &with_gpu, &database).await;
    let (_, token) = sign_up(&a.base, "watcher").await;
    let client = reqwest::Client::new();
    let open = |base: &str, after: Option<i64>| {
        let mut request = client
            .get(format!("{base}/api/v1/events"))
            .bearer_auth(&token);
        if let Some(after) = after {
            request = request.header("Last-Event-ID", after.to_string());
        }
        crate::sse::Sse::open(request)
    };
    let wait = Duration::from_secs(20);
    let mut on_a = open(&a.base, None).await;
    let first: Value = submit(&b.base, &token, "run on B")
        .await
        .json()
        .await
        .unwrap();
    let first = first["task_id"].as_str().unwrap().to_string();
    let frames = on_a.changes_until(wait, |f| f.data["type"] == "done").await;
    assert_eq!(crate::sse::types(&frames), ["queued", "running", "done"]);
    assert!(frames.iter().all(|f| f.data["task_id"] == first.as_str()));
    let ids: Vec<i64> = frames.iter().map(|f| f.id.unwrap()).collect();
    assert_eq!(ids, [ids[0], ids[0] + 1, ids[0] + 2]);

    // A's listening connection is cut: what it missed comes from the log.
    let admin = Database::connect(&database.url).await.unwrap();
    count(
        &admin,
        &format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = '{}' AND query ILIKE 'LISTEN%'",
            database.name
        ),
    )
    .await;
    let second: Value = submit(&a.base, &token, "after the cut")
        .await
        .json()
        .await
        .unwrap();
    let second = second["task_id"].as_str().unwrap().to_string();
    let frames = on_a.changes_until(wait, |f| f.data["type"] == "done").await;
    assert_eq!(crate::sse::types(&frames), ["queued", "running", "done"]);
    assert!(frames.iter().all(|f| f.data["task_id"] == second.as_str()));
    assert_eq!(frames[0].id, Some(ids[2] + 1), "no gap, no duplicate");

    // Any gateway replays the same log.
    let mut on_b = open(&b.base, Some(ids[0])).await;
    let replayed = on_b.changes_until(wait, |f| f.id == frames[2].id).await;
    assert_eq!(replayed.len(), 5);
    assert_eq!(replayed[0].id, Some(ids[0] + 1));
    drop((on_a, on_b, a, b));
    database.drop().await;
}

#[actix_web::test]
async fn a_pause_and_a_retry_through_one_gateway_hold_and_then_feed_another() {
    let Some(database) = TempDatabase::create().await else {
        return;
    };
    let failing = SimConfig {
        latency_ms: 20,
        failure_rate: 1.0,
        ..SimConfig::default()
    };
    let sims = start_sims(vec![failing]);
    let dir = tempfile::tempdir().unwrap();
    let extra = "[workers]\nmax_attempts = 1\n";
    // A has no instance: what it retries, B runs.
    let none = cluster_config(dir.path(), &[], extra);
    let with_gpu = cluster_config(dir.path(), &[&sims[0]], extra);
    let a = gateway(dir.path(), &none, &database).await;
    let b = gateway(dir.path(), &with_gpu, &database).await;
    let (_, token) = sign_up(&a.base, "alice").await;
    let (db, admin) = sign_up_admin(&a.base, &database).await;
    let mut ids = Vec::new();
    for prompt in ["one", "two"] {
        let body: Value = submit(&a.base, &token, prompt).await.json().await.unwrap();
        ids.push(body["task_id"].as_str().unwrap().to_string());
    }
    all_end(&db, 2).await;
    sims[0].set_failure_rate(0.0);

    let client = reqwest::Client::new();
    let admin_post = |path: &'static str| {
        let (client, base, admin) = (&client, &a.base, &admin);
        async move {
            let response = client
                .post(format!("{base}{path}"))
                .bearer_auth(admin)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            response.json::<Value>().await.unwrap()
        }
    };
    admin_post("/api/v1/admin/queue/pause").await;
    // B follows the pause at its next heartbeat.
    eventually("B paused", Duration::from_secs(10), || async {
        let stats: Value = client
            .get(format!("{}/api/v1/system/stats", b.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if stats["paused"] == true {
            Ok(())
        } else {
            Err(stats)
        }
    })
    .await;
    let retried = admin_post("/api/v1/admin/tasks/retry?statuses=FAILED").await;
    assert_eq!(retried, json!({"count": 2, "skipped": 0}));
    let queued = count(
        &db,
        "SELECT count(*) FROM tasks WHERE status = 'QUEUED' AND attempts = 0",
    )
    .await;
    assert_eq!(queued, 2);

    admin_post("/api/v1/admin/queue/resume").await;
    for id in &ids {
        eventually(
            "the retried task DONE on B",
            Duration::from_secs(20),
            || async {
                let task = task(&a.base, &token, id).await;
                if task["status"] == "DONE" {
                    Ok(())
                } else {
                    Err(task)
                }
            },
        )
        .await;
    }
    drop((a, b));
    database.drop().await;
}

#[actix_web::test]
async fn a_user_disabled_through_one_gateway_loses_their_streams_on_another_at_once() {
    let Some(database) = TempDatabase::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let none = cluster_config(dir.path(), &[], "");
    let a = gateway(dir.path(), &none, &database).await;
    let b = gateway(dir.path(), &none, &database).await;
    let (_, token) = sign_up(&a.base, "alice").await;
    let (db, admin) = sign_up_admin(&a.base, &database).await;
    let alice = count(&db, "SELECT id FROM users WHERE username = 'alice'").await;
    // On B: an SSE stream and a WebSocket, and B remembers that alice may act.
    let events = reqwest::Client::new()
        .get(format!("{}/api/v1/events", b.base))
        .bearer_auth(&token);
    let mut stream = crate::sse::Sse::open(events).await;
    assert_eq!(stream.status, StatusCode::OK);
    let ws = format!("{}/api/v1/ws", b.base).replace("http://", "ws://");
    let (_, mut socket) = awc::Client::new()
        .ws(ws)
        .bearer_auth(&token)
        .connect()
        .await
        .expect("websocket handshake");

    let disabled = reqwest::Client::new()
        .patch(format!("{}/api/v1/admin/users/{alice}", a.base))
        .bearer_auth(&admin)
        .json(&json!({"disabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(disabled.status(), StatusCode::OK);
    let within = Duration::from_secs(1);
    assert!(stream.ends_within(within).await, "B's stream is still open");
    let closed = tokio::time::timeout(within, async {
        use futures_util::StreamExt;
        loop {
            match socket.next().await {
                Some(Ok(awc::ws::Frame::Close(reason))) => return reason,
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("B's socket closed within a second");
    assert_eq!(closed.map(|r| r.code), Some(awc::ws::CloseCode::Policy));
    // B forgot what it remembered of alice: her token is refused there too, at once.
    let refused = reqwest::Client::new()
        .get(format!("{}/api/v1/tasks", b.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    drop((a, b));
    database.drop().await;
}

#[actix_web::test]
async fn claims_keep_the_vip_share_while_normal_tasks_wait() {
    let Some(database) = TempDatabase::create().await else {
        return;
    };
    // Not answering its pings yet: everything is queued before anything is claimed.
    let sims = start_sims(vec![gpu(5)]);
    sims[0].set_ready(false);
    let dir = tempfile::tempdir().unwrap();
    let config = cluster_config(dir.path(), &[&sims[0]], "");
    let env = [
        ("INFERGATE__DATABASE__URL", database.url.clone()),
        (
            "INFERGATE__AUTH__JWT_SECRET",
            crate::helpers::TEST_SECRET.to_string(),
        ),
        ("INFERGATE__LIMITS__VIP_SHARE", "2".to_string()),
    ];
    let a = Gateway::start_with(dir.path(), Some(&config), free_port(), &[], &env).await;
    let (_, normal) = sign_up(&a.base, "normal").await;
    sign_up(&a.base, "vip").await;
    let db = Database::connect(&database.url).await.unwrap();
    db.execute(Statement::from_string(
        db.get_database_backend(),
        "UPDATE users SET role = 'vip' WHERE username = 'vip'",
    ))
    .await
    .unwrap();
    // The role travels in the token: a new sign-in carries it.
    let (_, vip) = sign_up(&a.base, "vip").await;
    for (token, prompt) in [(&normal, "normal"), (&vip, "vip")] {
        let n = if prompt == "vip" { 6 } else { 3 };
        for i in 0..n {
            let response = submit(&a.base, token, format!("{prompt} {i}")).await;
            assert_eq!(response.status(), StatusCode::ACCEPTED);
        }
    }
    sims[0].set_ready(true);

    assert_eq!(all_end(&db, 9).await, 9);
    // Two VIP tasks, then the normal one waiting longest, and so on: the streak lives in
    // the database, counted by each claim of one task.
    assert_eq!(
        sims[0].arrived_prompts(),
        [
            "vip 0", "vip 1", "normal 0", "vip 2", "vip 3", "normal 1", "vip 4", "vip 5",
            "normal 2"
        ]
    );
    drop(a);
    database.drop().await;
}
