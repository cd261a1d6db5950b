use std::time::Duration;

use infergate::simulator::SimConfig;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{assert_error, spawn_app_on, spawn_app_with, start_sims};

#[actix_web::test]
async fn a_full_queue_refuses_with_503_and_stores_nothing() {
    let slow = SimConfig {
        latency_ms: 30_000,
        ..SimConfig::default()
    };
    let app = spawn_app_with(vec![slow], |s| s.queue.capacity = 2).await;
    let user = app.new_user("alice").await;
    app.wait_for_healthy(1).await;

    // The first task goes to the only worker; two more fill the queue.
    let running = app.submit_ok(&user.token, "first").await;
    while app
        .get_task(&user.token, &running)
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap()["status"]
        != "RUNNING"
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.submit_ok(&user.token, "second").await;
    app.submit_ok(&user.token, "third").await;

    let refused = app
        .submit_image(&user.token, &json!({"prompt": "fourth"}))
        .await;
    assert_eq!(refused.headers()["retry-after"], "5");
    assert_error(refused, StatusCode::SERVICE_UNAVAILABLE, "queue_full").await;
    assert_eq!(app.task_rows().await, 3);

    let stats = app.stats().await;
    assert_eq!(stats["queue_length"], 2);
    assert_eq!(stats["queue_capacity"], 2);
    assert_eq!(stats["queue_usage"], 100.0);
    assert_eq!(stats["busy_workers"], 1);
}

#[actix_web::test]
async fn a_failing_backend_fails_the_task_with_its_message() {
    let failing = SimConfig {
        latency_ms: 1,
        failure_rate: 1.0,
        ..SimConfig::default()
    };
    let app = spawn_app_with(vec![failing], |_| {}).await;
    let user = app.new_user("alice").await;
    let id = app.submit_ok(&user.token, "a cat").await;
    let (_, task) = app.wait_for_end(&user.token, &id).await;
    assert_eq!(task["status"], "FAILED");
    let error = task["error"].as_str().unwrap();
    assert!(
        error.contains("500") && error.contains("CUDA out of memory"),
        "{error}"
    );
    assert!(task.get("result_url").is_none());
}

#[actix_web::test]
async fn a_hanging_backend_fails_the_task_at_the_timeout() {
    let hanging = SimConfig {
        latency_ms: 1,
        hang_rate: 1.0,
        ..SimConfig::default()
    };
    let app = spawn_app_with(vec![hanging], |s| {
        s.workers.task_timeout_secs = 1;
        s.workers.max_attempts = 1;
    })
    .await;
    let user = app.new_user("alice").await;
    let id = app.submit_ok(&user.token, "a cat").await;
    let (_, task) = app.wait_for_end(&user.token, &id).await;
    assert_eq!(task["status"], "FAILED");
    assert_eq!(task["error"], "backend did not answer within 1s");
}

#[actix_web::test]
async fn with_no_healthy_instance_a_task_fails_after_the_max_wait() {
    let sims = start_sims(vec![SimConfig::default()]);
    sims[0].set_ready(false);
    let app = spawn_app_on(sims, |s| s.queue.max_wait_secs = 1).await;
    let user = app.new_user("alice").await;
    let id = app.submit_ok(&user.token, "a cat").await;
    let (seen, task) = app.wait_for_end(&user.token, &id).await;
    assert_eq!(seen, vec!["QUEUED", "FAILED"]);
    assert_eq!(task["error"], "no healthy backend instance within 1s");
    assert_eq!(app.sims[0].generated(), 0);
}
