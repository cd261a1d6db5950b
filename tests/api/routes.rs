//! The routes as a client meets them: every route the server registers is in the OpenAPI
//! document, a wrong method on a known path is 405 with `Allow`, HEAD works where GET
//! does for images, and a device key can do what an image client needs.

use std::collections::BTreeSet;
use std::path::Path;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{assert_error, spawn_app, TestApp};

/// `METHOD path` for every operation in the served document.
async fn documented(app: &TestApp) -> BTreeSet<String> {
    let doc: Value = app
        .client
        .get(app.url("/api-docs/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "head", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                routes.insert(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    routes
}

/// `METHOD path` for every `.route("path", web::method()` under src/http, with the
/// prefix of the scope its file registers routes under (`web::scope("/x")` in the file,
/// or in its folder's mod.rs).
fn registered() -> BTreeSet<String> {
    let mut routes = BTreeSet::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut files = vec![];
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            for inner in std::fs::read_dir(&path).unwrap() {
                files.push((inner.unwrap().path(), Some(path.join("mod.rs"))));
            }
        } else {
            files.push((path, None));
        }
    }
    let scope_of = |source: &str| {
        source
            .split("web::scope(\"")
            .nth(1)
            .map(|rest| rest[..rest.find('"').unwrap()].to_string())
    };
    for (file, folder_mod) in files {
        let source = std::fs::read_to_string(&file).unwrap();
        let folder_scope = folder_mod
            .filter(|m| *m != file)
            .and_then(|m| scope_of(&std::fs::read_to_string(m).unwrap()));
        let prefix = scope_of(&source).or(folder_scope).unwrap_or_default();
        for call in source.split(".route(").skip(1) {
            let Some(rest) = call.trim_start().strip_prefix('"') else {
                continue;
            };
            let path = &rest[..rest.find('"').unwrap()];
            let after = &rest[path.len()..];
            let method = after
                .split("web::")
                .nth(1)
                .and_then(|m| m.split("()").next())
                .unwrap_or_default();
            // The document, Swagger UI and the web console's pages are not operations of
            // the API.
            if ["/api-docs", "/docs", "/console"]
                .iter()
                .any(|page| path.starts_with(page))
            {
                continue;
            }
            routes.insert(format!("{} {prefix}{path}", method.to_uppercase()));
        }
    }
    assert!(routes.len() > 20, "the source scan found {routes:?}");
    routes
}

#[actix_web::test]
async fn every_registered_route_is_in_the_document() {
    let app = spawn_app().await;
    let documented = documented(&app).await;
    let missing: Vec<_> = registered().difference(&documented).cloned().collect();
    assert!(
        missing.is_empty(),
        "routes missing from the document: {missing:?}"
    );
    assert!(documented.contains("DELETE /api/v1/tasks/{task_id}"));
}

#[actix_web::test]
async fn a_wrong_method_on_a_known_path_is_405_with_allow() {
    let app = spawn_app().await;
    let cases = [
        (Method::PUT, "/api/v1/tasks", "GET"),
        (Method::POST, "/health", "GET"),
        (Method::GET, "/login", "POST"),
        (Method::PATCH, "/api/v1/keys", "GET, POST"),
        (Method::GET, "/api/v1/tasks/abc", "DELETE"),
        (Method::DELETE, "/api/images/7", "GET, HEAD"),
    ];
    for (method, path, allow) in cases {
        let response = app
            .client
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.headers().get("allow").map(|v| v.to_str().unwrap()),
            Some(allow),
            "{method} {path}"
        );
        assert_error(
            response,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        )
        .await;
    }
    // Under /v1 the error has OpenAI's shape.
    let response = app
        .client
        .get(app.url("/v1/images/generations"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "POST");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
    // An unknown path stays a 404.
    let response = app
        .client
        .put(app.url("/api/v1/nothing"))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "not_found").await;
}

#[actix_web::test]
async fn head_on_an_image_answers_its_headers_without_the_body() {
    let app = spawn_app().await;
    let alice = app.new_user("alice").await;
    let task_id = app.submit_ok(&alice.token, "a lighthouse").await;
    let (_, task) = app.wait_for_end(&alice.token, &task_id).await;
    assert_eq!(task["status"], "DONE");
    let url = app.url(task["result_url"].as_str().unwrap());

    let get = app
        .client
        .get(&url)
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::OK);
    let length = get.headers()["content-length"].clone();
    let body = get.bytes().await.unwrap();
    assert_eq!(length.to_str().unwrap(), body.len().to_string());

    let head = app
        .client
        .head(&url)
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["content-type"], "image/png");
    assert_eq!(head.headers()["content-length"], length);
    assert!(head.bytes().await.unwrap().is_empty());

    // Another user's image is 404 by HEAD as by GET.
    let bob = app.new_user("bob").await;
    let head = app
        .client
        .head(&url)
        .bearer_auth(&bob.token)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::NOT_FOUND);
}

#[actix_web::test]
async fn a_device_key_submits_an_image_task_follows_it_and_cancels_one() {
    let app = spawn_app().await;
    let alice = app.new_user("alice").await;
    let key = app.create_key(&alice.token, "camera").await["key"]
        .as_str()
        .unwrap()
        .to_string();

    let submitted = app
        .client
        .post(app.url("/api/v1/image/async"))
        .header("X-API-Key", &key)
        .json(&json!({ "prompt": "a red door" }))
        .send()
        .await
        .unwrap();
    assert_eq!(submitted.status(), StatusCode::ACCEPTED);
    let task_id = submitted.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    // The key acts as its owner: the owner's token sees the task, and so does the key.
    let (_, task) = app.wait_for_end(&alice.token, &task_id).await;
    assert_eq!(task["status"], "DONE");
    let by_key: Value = app.get_task(&key, &task_id).await.json().await.unwrap();
    assert_eq!(by_key["task_id"], task_id.as_str());
    let image = app.get(task["result_url"].as_str().unwrap(), &key).await;
    assert_eq!(image.status(), StatusCode::OK);

    // Its cancel of an ended task is the owner's: 409, not 401.
    let cancel = app
        .client
        .delete(app.url(&format!("/api/v1/tasks/{task_id}")))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_error(cancel, StatusCode::CONFLICT, "task_finished").await;

    // Another user's key sees nothing of it.
    let bob = app.new_user("bob").await;
    let bobs_key = app.create_key(&bob.token, "other").await["key"]
        .as_str()
        .unwrap()
        .to_string();
    let response = app.get_task(&bobs_key, &task_id).await;
    assert_error(response, StatusCode::NOT_FOUND, "not_found").await;
    // A revoked or made-up key is refused.
    let response = app
        .client
        .post(app.url("/api/v1/image/async"))
        .header("X-API-Key", "igk_not-a-key")
        .json(&json!({ "prompt": "a red door" }))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
}
