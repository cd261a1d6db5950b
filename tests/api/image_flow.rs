use infergate::simulator::SimConfig;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with};

#[actix_web::test]
async fn a_task_goes_from_queued_through_running_to_done_with_a_png() {
    let app = spawn_app_with(
        vec![SimConfig {
            latency_ms: 300,
            ..SimConfig::default()
        }],
        |_| {},
    )
    .await;
    let user = app.new_user("alice").await;

    let response = app
        .submit_image(
            &user.token,
            &json!({"prompt": "A futuristic city", "negative_prompt": "blurry"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "QUEUED");
    assert_eq!(body["message"], "task submitted successfully");
    let task_id = body["task_id"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(task_id).is_ok());

    let (seen, task) = app.wait_for_end(&user.token, task_id).await;
    assert!(
        seen.contains(&"RUNNING".to_string()),
        "never saw RUNNING: {seen:?}"
    );
    assert_eq!(seen.last().unwrap(), "DONE");
    assert_eq!(task["task_id"], task_id);
    assert_eq!(task["prompt"], "A futuristic city");
    assert!(task.get("error").is_none());
    assert!(chrono::DateTime::parse_from_rfc3339(task["created_at"].as_str().unwrap()).is_ok());
    let result_url = task["result_url"].as_str().unwrap();
    assert!(result_url.starts_with("/api/images/"));

    let image = app.get(result_url, &user.token).await;
    assert_eq!(image.status(), StatusCode::OK);
    assert_eq!(image.headers()["content-type"], "image/png");
    let bytes = image.bytes().await.unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(app.sims[0].generated(), 1);
}

#[actix_web::test]
async fn different_prompts_give_different_images() {
    let app = spawn_app().await;
    let user = app.new_user("alice").await;
    let mut images = Vec::new();
    for prompt in ["a red fox", "a blue whale"] {
        let id = app.submit_ok(&user.token, prompt).await;
        let (_, task) = app.wait_for_end(&user.token, &id).await;
        let url = task["result_url"].as_str().unwrap().to_string();
        images.push(app.get(&url, &user.token).await.bytes().await.unwrap());
    }
    assert_ne!(images[0], images[1]);
}

#[actix_web::test]
async fn the_list_shows_the_users_own_tasks_newest_first() {
    let app = spawn_app().await;
    let alice = app.new_user("alice").await;
    let bob = app.new_user("bob_2").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(app.submit_ok(&alice.token, &format!("prompt {i}")).await);
    }
    app.submit_ok(&bob.token, "bob's prompt").await;

    let list: Vec<Value> = app
        .get("/api/v1/tasks?limit=2", &alice.token)
        .await
        .json()
        .await
        .unwrap();
    let listed: Vec<&str> = list
        .iter()
        .map(|t| t["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![ids[2].as_str(), ids[1].as_str()]);

    let all: Vec<Value> = app
        .get("/api/v1/tasks", &alice.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|t| t["user_id"] == all[0]["user_id"]));
}

#[actix_web::test]
async fn concurrent_submissions_are_all_committed() {
    let app = spawn_app_with(
        vec![SimConfig {
            latency_ms: 1,
            ..SimConfig::default()
        }],
        |s| s.queue.capacity = 1000,
    )
    .await;
    let user = app.new_user("alice").await;
    let submissions = (0..200).map(|i| {
        let body = json!({ "prompt": format!("prompt {i}") });
        let (app, token) = (&app, &user.token);
        async move { app.submit_image(token, &body).await.status() }
    });
    let statuses = futures_util::future::join_all(submissions).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::ACCEPTED),
        "{statuses:?}"
    );
    // Every 202 is a row already in the database.
    assert_eq!(app.task_rows().await, 200);
}

#[actix_web::test]
async fn health_stats_and_docs_answer_without_auth() {
    let app = spawn_app().await;
    let health: Value = app
        .client
        .get(app.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health, json!({"status": "ok"}));

    app.wait_for_healthy(1).await;
    let stats = app.stats().await;
    assert_eq!(stats["queue_length"], 0);
    assert_eq!(stats["queue_capacity"], 100);
    assert_eq!(stats["queue_usage"], 0.0);

    let doc: Value = app
        .client
        .get(app.url("/api-docs/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/register",
        "/login",
        "/api/v1/image/async",
        "/api/v1/tasks",
        "/api/images/{id}",
        "/api/v1/system/stats",
        "/health",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
    let ui = app.client.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(ui.status(), StatusCode::OK);
    assert!(ui.text().await.unwrap().contains("swagger"));
}
