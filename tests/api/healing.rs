//! Actors that heal: a panic inside each actor, armed under load, is contained, the
//! actor comes back with its state reconciled, every task still ends, and the gateway
//! keeps serving. And a gateway that never fights another over one database.

use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::future::join_all;
use infergate::faults::{self, Site};
use infergate::simulator::SimConfig;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{fast_sim, spawn_app_with, TestApp, TestUser};
use crate::process::{database_url, free_port, sign_up, submit, task, write_config, Gateway, BIN};

/// Submits `n` tasks at once; answers the ids of the 202s and the other statuses.
async fn flood(
    app: &TestApp,
    user: &TestUser,
    n: usize,
) -> (Vec<String>, Vec<(StatusCode, Value)>) {
    let answers = join_all((0..n).map(|i| {
        let body = json!({ "prompt": format!("prompt {i}") });
        async move {
            let response = app.submit_image(&user.token, &body).await;
            (response.status(), response.json::<Value>().await.unwrap())
        }
    }))
    .await;
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for (status, body) in answers {
        if status == StatusCode::ACCEPTED {
            accepted.push(body["task_id"].as_str().unwrap().to_string());
        } else {
            refused.push((status, body));
        }
    }
    (accepted, refused)
}

/// Every task ends DONE, with one image each.
async fn all_done(app: &TestApp, user: &TestUser, ids: &[String]) {
    for id in ids {
        let (_, task) = app.wait_for_end(&user.token, id).await;
        assert_eq!(task["status"], "DONE", "{task}");
    }
    assert_eq!(app.image_rows().await, ids.len() as u64);
}

fn two_sims() -> Vec<SimConfig> {
    vec![fast_sim(), fast_sim()]
}

#[actix_web::test]
async fn a_panicking_worker_puts_its_task_back_and_its_slot_is_replaced() {
    let app = spawn_app_with(two_sims(), |s| {
        s.workers.max_attempts = 3;
        s.limits.max_queued_per_user = 30;
    })
    .await;
    let user = app.new_user("alice").await;
    app.wait_for_healthy(2).await;
    // Two crashes: at worst one task meets both and still has an attempt left.
    faults::arm(Site::WorkerAttempt, 2);
    let (accepted, refused) = flood(&app, &user, 30).await;
    assert!(refused.is_empty(), "{refused:?}");
    all_done(&app, &user, &accepted).await;
    let tasks: Vec<Value> = app
        .get("/api/v1/tasks?limit=100", &user.token)
        .await
        .json()
        .await
        .unwrap();
    let attempts: u64 = tasks.iter().map(|t| t["attempts"].as_u64().unwrap()).sum();
    assert_eq!(attempts, 32, "each crash counted as an attempt");
    let crashed: Vec<&Value> = tasks
        .iter()
        .filter(|t| t["attempts"].as_u64() > Some(1))
        .collect();
    assert!(!crashed.is_empty());
    // Both slots came back, and the quota did not leak: 30 more are taken.
    app.wait_for_workers(2).await;
    let (again, refused) = flood(&app, &user, 30).await;
    assert!(refused.is_empty(), "the quota leaked: {refused:?}");
    for id in &again {
        let (_, task) = app.wait_for_end(&user.token, id).await;
        assert_eq!(task["status"], "DONE");
    }
}

#[actix_web::test]
async fn a_worker_crashing_on_the_last_attempt_fails_its_task_with_the_reason() {
    let app = spawn_app_with(vec![fast_sim()], |s| s.workers.max_attempts = 1).await;
    let user = app.new_user("alice").await;
    app.wait_for_healthy(1).await;
    faults::arm(Site::WorkerAttempt, 1);
    let id = app.submit_ok(&user.token, "doomed").await;
    let (_, task) = app.wait_for_end(&user.token, &id).await;
    assert_eq!(task["status"], "FAILED");
    assert!(
        task["error"].as_str().unwrap().contains("worker crashed"),
        "{task}"
    );
    // The gateway goes on: the next task runs.
    let next = app.submit_ok(&user.token, "fine").await;
    assert_eq!(
        app.wait_for_end(&user.token, &next).await.1["status"],
        "DONE"
    );
}

#[actix_web::test]
async fn a_panicking_task_store_refuses_that_commits_writers_and_loses_nothing() {
    let app = spawn_app_with(two_sims(), |_| {}).await;
    let user = app.new_user("alice").await;
    app.wait_for_healthy(2).await;
    faults::arm(Site::StoreCommit, 1);
    let (accepted, refused) = flood(&app, &user, 40).await;
    // The writers of the commit that panicked hear so, clearly; no other answer is bad.
    for (status, body) in &refused {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["code"], "busy", "{body}");
    }
    // Nothing refused was stored, and everything acknowledged ends DONE.
    assert_eq!(app.task_rows().await, accepted.len() as u64);
    all_done(&app, &user, &accepted).await;
    // The store serves on.
    let next = app.submit_ok(&user.token, "after the crash").await;
    assert_eq!(
        app.wait_for_end(&user.token, &next).await.1["status"],
        "DONE"
    );
}

#[actix_web::test]
async fn a_panicking_dispatcher_reloads_its_queue_and_every_task_ends() {
    let slow = SimConfig {
        latency_ms: 50,
        ..SimConfig::default()
    };
    let app = spawn_app_with(vec![slow], |_| {}).await;
    let user = app.new_user("alice").await;
    app.wait_for_healthy(1).await;
    let (first, refused) = flood(&app, &user, 10).await;
    assert!(refused.is_empty(), "{refused:?}");
    faults::arm(Site::DispatcherDispatch, 1);
    let (second, _) = flood(&app, &user, 10).await;
    // Every task the database holds ends, those acknowledged DONE; a submission caught in
    // the restart may have been refused although it committed, and it runs all the same.
    let mut ids = first;
    ids.extend(second);
    all_done(&app, &user, &ids).await;
    let tasks: Vec<Value> = app
        .get("/api/v1/tasks?limit=100", &user.token)
        .await
        .json()
        .await
        .unwrap();
    for task in &tasks {
        let (_, ended) = app
            .wait_for_end(&user.token, task["task_id"].as_str().unwrap())
            .await;
        assert_eq!(ended["status"], "DONE", "{ended}");
    }
    let next = app.submit_ok(&user.token, "after the restart").await;
    assert_eq!(
        app.wait_for_end(&user.token, &next).await.1["status"],
        "DONE"
    );
}

#[actix_web::test]
async fn a_panicking_registry_reloads_its_instances_and_every_task_ends() {
    let app = spawn_app_with(two_sims(), |_| {}).await;
    let user = app.new_user("alice").await;
    let admin = app.new_admin("root").await;
    app.wait_for_healthy(2).await;
    faults::arm(Site::RegistryLease, 1);
    let (accepted, refused) = flood(&app, &user, 20).await;
    assert!(refused.is_empty(), "{refused:?}");
    all_done(&app, &user, &accepted).await;
    // Both instances are back, healthy, with no call left counted in flight.
    app.wait_for_healthy(2).await;
    let instances = app.instances(&admin.token).await;
    assert_eq!(instances.len(), 2);
    app.wait_for_stats("no call in flight", |s| {
        s["image_instances"]["in_flight"] == 0
    })
    .await;
}

#[actix_web::test]
async fn a_second_gateway_on_one_sqlite_file_is_refused_and_the_first_is_untouched() {
    let sims = crate::helpers::start_sims(vec![SimConfig {
        latency_ms: 1500,
        ..SimConfig::default()
    }]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &[(sims[0].url(), 1)], "");
    let first = Gateway::start(dir.path(), Some(&config), free_port(), &[]).await;
    let (_, token) = sign_up(&first.base, "alice").await;
    let body: Value = submit(&first.base, &token, "slow one")
        .await
        .json()
        .await
        .unwrap();
    let id = body["task_id"].as_str().unwrap().to_string();
    crate::poll::eventually("the task RUNNING", Duration::from_secs(10), || async {
        let task = task(&first.base, &token, &id).await;
        if task["status"] == "RUNNING" {
            Ok(())
        } else {
            Err(task)
        }
    })
    .await;

    let second = Command::new(BIN)
        .current_dir(dir.path())
        .env("INFERGATE__DATABASE__URL", database_url(dir.path()))
        .env("INFERGATE__SERVER__HOST", "127.0.0.1")
        .env("INFERGATE__SERVER__PORT", free_port().to_string())
        .args(["serve", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&second.stderr);
    let message: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("infergate:"))
        .collect();
    assert_eq!(message.len(), 1, "{stderr}");
    assert!(
        message[0].contains("gateway.db") && message[0].contains("in use"),
        "{stderr}"
    );
    assert!(
        message[0].contains(&format!("pid {}", first.pid())),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // The first gateway's running task was not touched: it ends DONE.
    crate::poll::eventually("the task DONE", Duration::from_secs(20), || async {
        let task = task(&first.base, &token, &id).await;
        match task["status"].as_str() {
            Some("DONE") => Ok(()),
            Some("RUNNING") => Err(task),
            _ => panic!("the running task was disturbed: {task}"),
        }
    })
    .await;
}

#[actix_web::test]
async fn a_port_in_use_exits_1_with_one_line_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .current_dir(dir.path())
        .env("INFERGATE__DATABASE__URL", database_url(dir.path()))
        .env("INFERGATE__SERVER__HOST", "127.0.0.1")
        .env("INFERGATE__SERVER__PORT", port.to_string())
        .env("INFERGATE__LOG__LEVEL", "warn")
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
    // Nothing was done to the database: the lock came first, the port second, and the
    // database after both.
    assert!(!dir.path().join("gateway.db").exists());
}
