//! The real binary killed, signalled and restarted: no task lost, stuck or run twice.

use std::time::Duration;

use entity::prelude::{Image, Task};
use entity::task;
use infergate::simulator::SimConfig;
use reqwest::StatusCode;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::Value;

use crate::helpers::{open_database, start_sims};
use crate::poll::eventually;
use crate::process::{database_url, free_port, sign_up, submit, task, write_config, Gateway};

async fn login(base: &str) -> String {
    sign_up(base, "loader").await.1
}

async fn count(db: &sea_orm::DatabaseConnection, status: task::Status) -> u64 {
    Task::find()
        .filter(task::Column::Status.eq(status))
        .count(db)
        .await
        .unwrap()
}

#[actix_web::test]
async fn sigkill_under_load_then_restart_loses_nothing_and_runs_nothing_twice() {
    let sims = start_sims(vec![SimConfig {
        latency_ms: 20,
        capacity: 4,
        ..SimConfig::default()
    }]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &[(sims[0].url(), 4)],
        // A thousand submissions at once come from one address on as many connections.
        "[server]\nmax_connections_per_address = 0\n[queue]\ncapacity = 5000\n[health]\ninterval_secs = 1\n[limits]\nsubmit_per_minute = 0\nmax_queued_per_user = 0\n",
    );
    let port = free_port();
    let gateway = Gateway::start(dir.path(), Some(&config), port, &[]).await;
    let token = login(&gateway.base).await;

    let total = 1000;
    let submissions = (0..total).map(|i| submit(&gateway.base, &token, format!("prompt {i}")));
    for response in futures_util::future::join_all(submissions).await {
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    // Let some finish and some be running, then kill without warning.
    while sims[0].generated() < 20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gateway.kill();

    let db = open_database(&database_url(dir.path())).await;
    assert_eq!(
        Task::find().count(&db).await.unwrap(),
        total,
        "a 202'd task was lost"
    );
    let unfinished =
        count(&db, task::Status::Queued).await + count(&db, task::Status::Running).await;
    assert!(unfinished > 0, "the kill came too late to test recovery");

    let gateway = Gateway::start(dir.path(), Some(&config), port, &[]).await;
    eventually(
        "every task ending after the restart",
        Duration::from_secs(60),
        || async {
            let unfinished =
                count(&db, task::Status::Queued).await + count(&db, task::Status::Running).await;
            match unfinished {
                0 => Ok(()),
                stuck => Err(format!("{stuck} tasks unfinished")),
            }
        },
    )
    .await;
    drop(gateway);
    assert_eq!(
        count(&db, task::Status::Done).await,
        total,
        "every task should end DONE"
    );
    // Exactly one stored image per task: nothing ran twice to completion.
    assert_eq!(Image::find().count(&db).await.unwrap(), total);
}

#[actix_web::test]
async fn sigterm_drains_running_tasks_refuses_new_ones_and_keeps_the_queue() {
    let sims = start_sims(vec![SimConfig {
        latency_ms: 1500,
        ..SimConfig::default()
    }]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &[(sims[0].url(), 1)],
        "[server]\nshutdown_grace_secs = 20\n[health]\ninterval_secs = 1\n",
    );
    let port = free_port();
    let gateway = Gateway::start(dir.path(), Some(&config), port, &[]).await;
    let base = gateway.base.clone();
    let token = login(&base).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let body: Value = submit(&base, &token, format!("prompt {i}"))
            .await
            .json()
            .await
            .unwrap();
        ids.push(body["task_id"].as_str().unwrap().to_string());
    }
    while task(&base, &token, &ids[0]).await["status"] != "RUNNING" {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    gateway.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = submit(&base, &token, "too late").await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "shutting_down");

    let exit = gateway.wait(Duration::from_secs(15)).await;
    assert!(exit.success(), "exit status {exit}");

    let db = open_database(&database_url(dir.path())).await;
    let status = |id: &str| {
        let db = db.clone();
        let id = id.to_string();
        async move {
            Task::find()
                .filter(task::Column::TaskId.eq(id))
                .one(&db)
                .await
                .unwrap()
                .unwrap()
                .status
        }
    };
    assert_eq!(
        status(&ids[0]).await,
        task::Status::Done,
        "the running task finished"
    );
    assert_eq!(status(&ids[1]).await, task::Status::Queued);
    assert_eq!(status(&ids[2]).await, task::Status::Queued);
    assert_eq!(
        Task::find().count(&db).await.unwrap(),
        3,
        "the refused task was not stored"
    );
}

#[actix_web::test]
async fn sigterm_past_the_grace_requeues_the_running_task() {
    let sims = start_sims(vec![SimConfig {
        latency_ms: 60_000,
        ..SimConfig::default()
    }]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &[(sims[0].url(), 1)],
        "[server]\nshutdown_grace_secs = 1\n",
    );
    let gateway = Gateway::start(dir.path(), Some(&config), free_port(), &[]).await;
    let token = login(&gateway.base).await;
    submit(&gateway.base, &token, "long one").await;
    let db = open_database(&database_url(dir.path())).await;
    while count(&db, task::Status::Running).await == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gateway.signal("INT");
    let exit = gateway.wait(Duration::from_secs(15)).await;
    assert!(exit.success(), "exit status {exit}");
    assert_eq!(count(&db, task::Status::Queued).await, 1);
    assert_eq!(count(&db, task::Status::Running).await, 0);
}
