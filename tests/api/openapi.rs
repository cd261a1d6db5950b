//! The OpenAPI document says what the server does: the running server's limits, the
//! shapes it answers, the statuses it gives. `.ci/schemathesis` checks the rest against
//! a live gateway.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{spawn_app_with, TestApp};

async fn document(app: &TestApp) -> Value {
    let response = app
        .client
        .get(app.url("/api-docs/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

#[actix_web::test]
async fn the_document_states_the_running_servers_limits_and_the_server_keeps_them() {
    let app = spawn_app_with(vec![], |s| {
        s.image.max_side = 1024;
        s.image.max_steps = 60;
        s.image.max_prompt_chars = 100;
    })
    .await;
    let doc = document(&app).await;
    let image = &doc["components"]["schemas"]["ImageRequest"];
    let props = &image["properties"];
    assert_eq!(props["width"]["minimum"], 64);
    assert_eq!(props["width"]["maximum"], 1024);
    assert_eq!(props["height"]["maximum"], 1024);
    assert_eq!(props["steps"]["minimum"], 1);
    assert_eq!(props["steps"]["maximum"], 60);
    assert_eq!(props["prompt"]["maxLength"], 100);
    assert!(image["required"]
        .as_array()
        .unwrap()
        .contains(&json!("prompt")));

    // What the document allows at its edges is accepted; one past them is refused.
    let user = app.new_user("alice").await;
    let at_edge = json!({"prompt": "p".repeat(100), "width": 1024, "height": 64, "steps": 60});
    assert_eq!(
        app.submit_image(&user.token, &at_edge).await.status(),
        StatusCode::ACCEPTED
    );
    let as_float = json!({"prompt": "a cat", "width": 1024.0});
    assert_eq!(
        app.submit_image(&user.token, &as_float).await.status(),
        StatusCode::ACCEPTED
    );
    for past in [
        json!({"prompt": "a cat", "width": 1025}),
        json!({"prompt": "a cat", "steps": 61}),
        json!({"prompt": "p".repeat(101)}),
        json!({"prompt": " "}),
    ] {
        assert_eq!(
            app.submit_image(&user.token, &past).await.status(),
            StatusCode::BAD_REQUEST,
            "{past}"
        );
    }
}

#[actix_web::test]
async fn the_document_describes_the_answers_and_statuses() {
    let app = spawn_app_with(vec![], |_| {}).await;
    let doc = document(&app).await;
    let paths = &doc["paths"];
    // One task or a list of them.
    let tasks =
        &paths["/api/v1/tasks"]["get"]["responses"]["200"]["content"]["application/json"]["schema"];
    let answer =
        &doc["components"]["schemas"][tasks["$ref"].as_str().unwrap().rsplit('/').next().unwrap()];
    let shapes = answer["oneOf"].as_array().expect("oneOf");
    assert_eq!(shapes.len(), 2, "{answer}");
    assert!(shapes.iter().any(|s| s["type"] == "array"), "{answer}");
    // Every JSON operation says it may answer 415 (and 413).
    for (path, method) in [
        ("/register", "post"),
        ("/login", "post"),
        ("/api/v1/image/async", "post"),
        ("/api/v1/keys", "post"),
        ("/api/v1/admin/instances", "post"),
        ("/api/v1/admin/instances/{id}", "patch"),
    ] {
        let responses = &paths[path][method]["responses"];
        for status in ["413", "415"] {
            assert!(
                responses.get(status).is_some(),
                "{status} missing on {method} {path}"
            );
        }
    }
    assert!(paths["/login"]["post"]["responses"].get("400").is_some());
    let limit = paths["/api/v1/tasks"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .unwrap()
        .clone();
    assert_eq!(
        (
            limit["schema"]["minimum"].clone(),
            limit["schema"]["maximum"].clone()
        ),
        (json!(1), json!(100))
    );
    let capacity = &doc["components"]["schemas"]["NewInstanceRequest"]["properties"]["capacity"];
    assert_eq!(capacity["maximum"], 1024);
    let register = &doc["components"]["schemas"]["RegisterRequest"];
    for field in ["username", "password"] {
        assert!(register["required"]
            .as_array()
            .unwrap()
            .contains(&json!(field)));
    }
}

#[actix_web::test]
async fn a_parameter_the_document_refuses_is_refused_even_when_unused() {
    let app = spawn_app_with(vec![], |_| {}).await;
    let user = app.new_user("alice").await;
    let id = app.submit_ok(&user.token, "a cat").await;
    let path = format!("/api/v1/tasks?task_id={id}&limit=-5");
    let response = app.get(&path, &user.token).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let path = format!("/api/v1/tasks?task_id={id}&limit=5");
    assert_eq!(app.get(&path, &user.token).await.status(), StatusCode::OK);
}
