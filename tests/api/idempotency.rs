//! `Idempotency-Key`: a retried submission answers the same task and creates nothing.

use infergate::simulator::SimConfig;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{assert_error, spawn_app, spawn_app_with, TestApp};

async fn submit_with_key(app: &TestApp, token: &str, key: &str, prompt: &str) -> Response {
    app.client
        .post(app.url("/api/v1/image/async"))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(&json!({ "prompt": prompt }))
        .send()
        .await
        .unwrap()
}

async fn task_id(response: Response) -> String {
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    body["task_id"].as_str().unwrap().to_string()
}

#[actix_web::test]
async fn a_repeated_request_answers_the_same_task_and_creates_nothing() {
    let app = spawn_app().await;
    let user = app.new_user("alice").await;
    let first = submit_with_key(&app, &user.token, "req-1", "a cat").await;
    assert!(first.headers().get("idempotent-replayed").is_none());
    let id = task_id(first).await;
    let again = submit_with_key(&app, &user.token, "req-1", "a cat").await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(task_id(again).await, id);
    // Still the same after it has run.
    app.wait_for_end(&user.token, &id).await;
    assert_eq!(
        task_id(submit_with_key(&app, &user.token, "req-1", "a cat").await).await,
        id
    );
    assert_eq!(app.task_rows().await, 1);

    // Another key is another task; the same key with another body is refused.
    let other = task_id(submit_with_key(&app, &user.token, "req-2", "a cat").await).await;
    assert_ne!(other, id);
    let reused = submit_with_key(&app, &user.token, "req-1", "a dog").await;
    assert_error(
        reused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(app.task_rows().await, 2);
}

#[actix_web::test]
async fn keys_belong_to_their_user() {
    let app = spawn_app().await;
    let alice = app.new_user("alice").await;
    let bob = app.new_user("bob_1").await;
    let a = task_id(submit_with_key(&app, &alice.token, "same-key", "a cat").await).await;
    let b = task_id(submit_with_key(&app, &bob.token, "same-key", "a cat").await).await;
    assert_ne!(a, b);
    assert_error(
        app.get_task(&bob.token, &a).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[actix_web::test]
async fn concurrent_retries_with_one_key_make_one_task() {
    let app = spawn_app_with(vec![SimConfig::default()], |s| s.queue.capacity = 1000).await;
    let user = app.new_user("alice").await;
    let retries = (0..20).map(|_| submit_with_key(&app, &user.token, "flaky-network", "a cat"));
    let mut ids = Vec::new();
    for response in futures_util::future::join_all(retries).await {
        ids.push(task_id(response).await);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(app.task_rows().await, 1);
}

#[actix_web::test]
async fn a_replay_is_answered_even_when_the_queue_is_full() {
    let slow = SimConfig {
        latency_ms: 30_000,
        ..SimConfig::default()
    };
    let app = spawn_app_with(vec![slow], |s| s.queue.capacity = 1).await;
    let user = app.new_user("alice").await;
    app.wait_for_healthy(1).await;
    app.submit_ok(&user.token, "occupies the worker").await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let id = task_id(submit_with_key(&app, &user.token, "k", "fills the queue").await).await;
    let full = app
        .submit_image(&user.token, &json!({"prompt": "no room"}))
        .await;
    assert_error(full, StatusCode::SERVICE_UNAVAILABLE, "queue_full").await;
    assert_eq!(
        task_id(submit_with_key(&app, &user.token, "k", "fills the queue").await).await,
        id
    );
}

#[actix_web::test]
async fn malformed_keys_are_refused() {
    let app = spawn_app().await;
    let user = app.new_user("alice").await;
    for key in ["has space", &"k".repeat(256)] {
        let response = submit_with_key(&app, &user.token, key, "a cat").await;
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    assert_eq!(app.task_rows().await, 0);
}
