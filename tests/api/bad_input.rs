use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_error, spawn_app};

#[actix_web::test]
async fn invalid_submissions_get_400_and_store_nothing() {
    let app = spawn_app().await;
    let user = app.new_user("alice").await;
    let long = "x".repeat(4001);
    let cases = [
        json!({}),
        json!({"prompt": ""}),
        json!({"prompt": "   \n "}),
        json!({"prompt": long}),
        json!({"prompt": "a", "negative_prompt": long}),
        json!({"prompt": 42}),
        json!({"prompt": "a", "width": 10}),
        json!({"prompt": "a", "height": 100000}),
        json!({"prompt": "a", "width": "wide"}),
        json!({"prompt": "a", "steps": 0}),
        json!({"prompt": "a", "steps": 100000}),
        json!({"prompt": "a", "steps": 2.5}),
        json!({"prompt": "a", "seed": -1}),
        json!({"prompt": "a\u{0000}b"}),
        json!([1, 2, 3]),
    ];
    for body in &cases {
        let body = assert_error(
            app.submit_image(&user.token, body).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
        assert!(!body["error"].as_str().unwrap().is_empty());
    }
    assert_eq!(app.task_rows().await, 0);
}

#[actix_web::test]
async fn malformed_oversized_and_non_json_bodies_are_refused() {
    let app = spawn_app().await;
    let user = app.new_user("alice").await;
    let url = app.url("/api/v1/image/async");
    let send = |content_type: &'static str, body: Vec<u8>| {
        app.client
            .post(&url)
            .bearer_auth(&user.token)
            .header("content-type", content_type)
            .body(body)
            .send()
    };

    assert_error(
        send("application/json", b"{\"prompt\": ".to_vec())
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "malformed_body",
    )
    .await;
    assert_error(
        send("application/json", b"".to_vec()).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "malformed_body",
    )
    .await;
    assert_error(
        send("text/plain", b"a cat".to_vec()).await.unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    let huge = serde_json::to_vec(&json!({"prompt": "x".repeat(200_000)})).unwrap();
    assert_error(
        send("application/json", huge).await.unwrap(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    assert_eq!(app.task_rows().await, 0);
}

#[actix_web::test]
async fn unknown_and_foreign_tasks_and_images_are_404() {
    let app = spawn_app().await;
    let alice = app.new_user("alice").await;
    let bob = app.new_user("bob_1").await;
    let id = app.submit_ok(&alice.token, "alice's cat").await;
    let (_, task) = app.wait_for_end(&alice.token, &id).await;
    let image_url = task["result_url"].as_str().unwrap();

    assert_error(
        app.get_task(&bob.token, &id).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.get(image_url, &bob.token).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let bobs: Vec<Value> = app
        .get("/api/v1/tasks", &bob.token)
        .await
        .json()
        .await
        .unwrap();
    assert!(bobs.is_empty());

    assert_error(
        app.get_task(&alice.token, "00000000-0000-0000-0000-000000000000")
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.get_task(&alice.token, "not-a-uuid").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.get("/api/images/999999", &alice.token).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.get("/api/images/abc", &alice.token).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.get("/no/such/route", &alice.token).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[actix_web::test]
async fn list_limits_are_checked() {
    let app = spawn_app().await;
    let user = app.new_user("alice").await;
    for limit in ["-1", "0", "101", "99999999999999999999", "abc"] {
        let response = app
            .get(&format!("/api/v1/tasks?limit={limit}"), &user.token)
            .await;
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    let response = app.get("/api/v1/tasks?limit=100", &user.token).await;
    assert_eq!(response.status(), StatusCode::OK);
}
