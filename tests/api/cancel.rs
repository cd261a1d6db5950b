//! Cancelling tasks: queued, running, repeated, finished, foreign, and racing completion.

use std::time::Duration;

use infergate::simulator::SimConfig;
use reqwest::{Response, StatusCode};
use serde_json::Value;

use crate::helpers::{assert_error, fast_sim, spawn_app_with, TestApp};

async fn cancel(app: &TestApp, token: &str, task_id: &str) -> Response {
    app.client
        .post(app.url(&format!("/api/v1/tasks/{task_id}/cancel")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn wait_for_status(app: &TestApp, token: &str, task_id: &str, status: &str) {
    for _ in 0..1000 {
        let task: Value = app.get_task(token, task_id).await.json().await.unwrap();
        if task["status"] == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("task {task_id} never reached {status}");
}

#[actix_web::test]
async fn a_running_task_is_aborted_and_its_slot_freed_at_once() {
    let slow = SimConfig {
        latency_ms: 60_000,
        ..SimConfig::default()
    };
    let app = spawn_app_with(vec![slow], |_| {}).await;
    let user = app.new_user("alice").await;
    app.wait_for_healthy(1).await;
    let running = app.submit_ok(&user.token, "slow one").await;
    let queued = app.submit_ok(&user.token, "next one").await;
    wait_for_status(&app, &user.token, &running, "RUNNING").await;

    let response = cancel(&app, &user.token, &running).await;
    assert_eq!(response.status(), StatusCode::OK);
    let task: Value = response.json().await.unwrap();
    assert_eq!(task["status"], "CANCELLED");

    // The slot went to the next task well before the 60 s backend call could end.
    wait_for_status(&app, &user.token, &queued, "RUNNING").await;
    let stats = app.stats().await;
    assert_eq!(stats["image_instances"]["in_flight"], 1, "{stats}");
    assert_eq!(stats["busy_workers"], 1, "{stats}");

    // Repeating is harmless; the DELETE alias does the same.
    assert_eq!(
        cancel(&app, &user.token, &running).await.status(),
        StatusCode::OK
    );
    let deleted = app
        .client
        .delete(app.url(&format!("/api/v1/tasks/{queued}")))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    let task: Value = app
        .get_task(&user.token, &running)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(task["status"], "CANCELLED");
    assert!(task.get("result_url").is_none());
}

#[actix_web::test]
async fn a_queued_task_leaves_the_queue_and_never_runs() {
    let slow = SimConfig {
        latency_ms: 500,
        ..SimConfig::default()
    };
    let app = spawn_app_with(vec![slow], |_| {}).await;
    let user = app.new_user("alice").await;
    let first = app.submit_ok(&user.token, "first").await;
    let second = app.submit_ok(&user.token, "second").await;
    assert_eq!(
        cancel(&app, &user.token, &second).await.status(),
        StatusCode::OK
    );
    assert_eq!(app.stats().await["queue_length"], 0);
    assert_eq!(
        app.wait_for_end(&user.token, &first).await.1["status"],
        "DONE"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(app.sims[0].generated(), 1);
    let task: Value = app
        .get_task(&user.token, &second)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(task["status"], "CANCELLED");
    assert_eq!(task["attempts"], 0);
}

#[actix_web::test]
async fn finished_foreign_and_unknown_tasks_cannot_be_cancelled() {
    let app = spawn_app_with(vec![fast_sim()], |_| {}).await;
    let alice = app.new_user("alice").await;
    let bob = app.new_user("bob_1").await;
    let id = app.submit_ok(&alice.token, "a cat").await;
    app.wait_for_end(&alice.token, &id).await;

    assert_error(
        cancel(&app, &bob.token, &id).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        cancel(&app, &alice.token, "no-such-task").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let body = assert_error(
        cancel(&app, &alice.token, &id).await,
        StatusCode::CONFLICT,
        "task_finished",
    )
    .await;
    assert!(body["error"].as_str().unwrap().contains("DONE"));
    let unauthenticated = app
        .client
        .post(app.url(&format!("/api/v1/tasks/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_error(unauthenticated, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let task: Value = app.get_task(&alice.token, &id).await.json().await.unwrap();
    assert_eq!(task["status"], "DONE");
}

#[actix_web::test]
async fn cancel_racing_completion_has_exactly_one_winner() {
    let quick = SimConfig {
        latency_ms: 15,
        capacity: 4,
        ..SimConfig::default()
    };
    let app = spawn_app_with(vec![quick], |s| {
        s.instances[0].capacity = 4;
        s.queue.capacity = 1000;
    })
    .await;
    let user = app.new_user("alice").await;
    app.wait_for_healthy(1).await;
    let mut ids = Vec::new();
    for i in 0..60 {
        ids.push(app.submit_ok(&user.token, &format!("prompt {i}")).await);
    }
    // Cancel each at a different moment of its life.
    let mut answers = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis((i % 5) as u64 * 3)).await;
        answers.push(cancel(&app, &user.token, id).await.status());
    }
    for (id, answer) in ids.iter().zip(answers) {
        let (_, task) = app.wait_for_end(&user.token, id).await;
        match answer {
            StatusCode::OK => {
                assert_eq!(task["status"], "CANCELLED", "{task}");
                assert!(task.get("result_url").is_none(), "{task}");
            }
            StatusCode::CONFLICT => {
                assert_eq!(task["status"], "DONE", "{task}");
                let image = app
                    .get(task["result_url"].as_str().unwrap(), &user.token)
                    .await;
                assert_eq!(image.status(), StatusCode::OK);
            }
            other => panic!("cancel answered {other}"),
        }
    }
    // No image was stored for a cancelled task.
    let images = app.image_rows().await;
    let done = ids.len() as u64 - app.cancelled_count(&user.token).await;
    assert_eq!(images, done);
}
