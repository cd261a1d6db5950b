//! The database refusing writes, injected with SQLite triggers on the gateway's own file:
//! submissions get a clear 503 and nothing acknowledged is lost, and an ending that
//! cannot be stored is tried again until the task really ends.

use std::time::Duration;

use reqwest::StatusCode;
use sea_orm::ConnectionTrait;
use serde_json::Value;

use crate::helpers::{assert_error, spawn_app_with, TestApp};
use infergate::simulator::SimConfig;

fn sim(latency_ms: u64) -> SimConfig {
    SimConfig {
        latency_ms,
        ..SimConfig::default()
    }
}

impl TestApp {
    async fn execute(&self, sql: &str) {
        self.db.execute_unprepared(sql).await.expect(sql);
    }

    async fn status(&self, token: &str, task_id: &str) -> String {
        let task: Value = self.get_task(token, task_id).await.json().await.unwrap();
        task["status"].as_str().unwrap().to_string()
    }
}

#[actix_web::test]
async fn a_database_error_answers_503_and_loses_no_acknowledged_task() {
    let app = spawn_app_with(vec![sim(300)], |_| {}).await;
    let user = app.new_user("alice").await;
    app.wait_for_healthy(1).await;
    let first = app.submit_ok(&user.token, "before the fault 1").await;
    let second = app.submit_ok(&user.token, "before the fault 2").await;

    app.execute(
        "CREATE TRIGGER refuse_tasks BEFORE INSERT ON tasks \
         BEGIN SELECT RAISE(ABORT, 'injected: disk trouble'); END",
    )
    .await;
    let response = app
        .submit_image(
            &user.token,
            &serde_json::json!({"prompt": "during the fault"}),
        )
        .await;
    assert!(response.headers().contains_key("retry-after"));
    assert_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
    )
    .await;
    assert_eq!(app.task_rows().await, 2, "a refused submission left a row");
    // Reads keep working meanwhile.
    assert_ne!(app.status(&user.token, &first).await, "");

    app.execute("DROP TRIGGER refuse_tasks").await;
    let third = app.submit_ok(&user.token, "after the fault").await;
    for id in [&first, &second, &third] {
        let (_, task) = app.wait_for_end(&user.token, id).await;
        assert_eq!(task["status"], "DONE", "{task}");
    }
    assert_eq!(app.task_rows().await, 3);
    assert_eq!(app.image_rows().await, 3);
}

#[actix_web::test]
async fn an_ending_the_database_refuses_for_a_while_is_stored_once_it_can_be() {
    let app = spawn_app_with(vec![sim(20)], |_| {}).await;
    let user = app.new_user("alice").await;
    app.wait_for_healthy(1).await;
    app.execute(
        "CREATE TRIGGER refuse_done BEFORE UPDATE OF status ON tasks WHEN NEW.status = 'DONE' \
         BEGIN SELECT RAISE(ABORT, 'injected: disk trouble'); END",
    )
    .await;
    let task_id = app.submit_ok(&user.token, "a red fox").await;
    while app.sims[0].generated() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Several tries fail (100, 200, 400 ms apart); the task stays RUNNING, not lost.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.status(&user.token, &task_id).await, "RUNNING");
    assert_eq!(app.image_rows().await, 0, "a failed commit left an image");

    app.execute("DROP TRIGGER refuse_done").await;
    let (_, task) = app.wait_for_end(&user.token, &task_id).await;
    assert_eq!(task["status"], "DONE", "{task}");
    assert_eq!(task["attempts"], 1, "the backend was asked again: {task}");
    assert_eq!(app.sims[0].generated(), 1);
    assert_eq!(app.image_rows().await, 1);
}

#[actix_web::test]
async fn an_image_the_database_never_takes_fails_its_task_and_no_other() {
    let app = spawn_app_with(vec![sim(200)], |s| s.database.hold_results_secs = 1).await;
    let user = app.new_user("alice").await;
    app.wait_for_healthy(1).await;
    let refused = app.submit_ok(&user.token, "the refused one").await;
    app.execute(&format!(
        "CREATE TRIGGER refuse_one BEFORE INSERT ON images WHEN NEW.task_id = '{refused}' \
         BEGIN SELECT RAISE(ABORT, 'injected: this image is refused'); END"
    ))
    .await;
    let mut others = Vec::new();
    for i in 0..4 {
        others.push(app.submit_ok(&user.token, &format!("prompt {i}")).await);
    }

    let (_, task) = app.wait_for_end(&user.token, &refused).await;
    assert_eq!(task["status"], "FAILED", "{task}");
    let error = task["error"].as_str().unwrap();
    assert!(
        error.contains("could not be stored") && error.contains("this image is refused"),
        "{error}"
    );
    for id in &others {
        let (_, task) = app.wait_for_end(&user.token, id).await;
        assert_eq!(task["status"], "DONE", "{task}");
    }
    assert_eq!(app.image_rows().await, 4);
}
