use entity::prelude::ApiKey;
use infergate::simulator::SimConfig;
use reqwest::StatusCode;
use sea_orm::{EntityTrait, PaginatorTrait};
use serde_json::Value;

use crate::helpers::{assert_error, pcm, spawn_app_with_speech, start_sims, Auth, TestApp};

async fn app_with_speech() -> TestApp {
    let sim = SimConfig {
        latency_ms: 20,
        ..SimConfig::default()
    };
    let app = spawn_app_with_speech(start_sims(vec![sim]), |_| {}).await;
    app.wait_for_healthy_speech(1).await;
    app
}

async fn list(app: &TestApp, token: &str) -> Vec<Value> {
    let response = app.get("/api/v1/keys", token).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

async fn revoke(app: &TestApp, token: &str, id: &Value) -> reqwest::Response {
    app.client
        .delete(app.url(&format!("/api/v1/keys/{id}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[actix_web::test]
async fn a_key_is_shown_once_works_for_speech_and_stops_when_revoked() {
    let app = app_with_speech().await;
    let alice = app.new_user("alice").await;
    let created = app.create_key(&alice.token, "kitchen-esp32").await;
    let key = created["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("igk_") && key.len() > 40, "{key}");
    assert_eq!(created["name"], "kitchen-esp32");
    assert!(key.starts_with(created["prefix"].as_str().unwrap()));

    let listed = list(&app, &alice.token).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], created["id"]);
    assert_eq!(listed[0]["prefix"], created["prefix"]);
    assert!(listed[0].get("key").is_none() && listed[0].get("key_hash").is_none());
    assert!(listed[0]["last_used_at"].is_null());
    // Only a hash is stored.
    let rows = ApiKey::find().all(&app.db).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_ne!(rows[0].key_hash, key);
    assert!(!rows[0].key_hash.contains(&key[4..]));

    for auth in [Auth::ApiKey(&key), Auth::Bearer(&key)] {
        let response = app.send_pcm(auth, pcm(1.0)).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], 0);
    }
    assert!(!list(&app, &alice.token).await[0]["last_used_at"].is_null());

    // A device key cannot manage keys.
    assert_error(
        app.get("/api/v1/keys", &key).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;

    assert_eq!(
        revoke(&app, &alice.token, &created["id"]).await.status(),
        StatusCode::NO_CONTENT
    );
    for auth in [Auth::ApiKey(&key), Auth::Bearer(&key)] {
        assert_error(
            app.send_pcm(auth, pcm(1.0)).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
    }
    assert!(list(&app, &alice.token).await.is_empty());
    assert_error(
        revoke(&app, &alice.token, &created["id"]).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[actix_web::test]
async fn another_users_key_cannot_be_listed_or_revoked() {
    let app = app_with_speech().await;
    let alice = app.new_user("alice").await;
    let bob = app.new_user("bob_1").await;
    let alices = app.create_key(&alice.token, "alice's device").await;

    assert!(list(&app, &bob.token).await.is_empty());
    assert_error(
        revoke(&app, &bob.token, &alices["id"]).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_eq!(list(&app, &alice.token).await.len(), 1);
    let key = alices["key"].as_str().unwrap();
    let response = app.send_pcm(Auth::ApiKey(key), pcm(1.0)).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[actix_web::test]
async fn bad_keys_and_names_are_refused() {
    let app = app_with_speech().await;
    let alice = app.new_user("alice").await;
    let made_up = format!("igk_{}", "A".repeat(43));
    for auth in [
        Auth::ApiKey(&made_up),
        Auth::Bearer(&made_up),
        Auth::ApiKey("not-a-key"),
    ] {
        assert_error(
            app.send_pcm(auth, pcm(1.0)).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
    }
    // The JWT still works on the speech endpoints.
    let response = app.send_pcm(Auth::Bearer(&alice.token), pcm(1.0)).await;
    assert_eq!(response.status(), StatusCode::OK);

    let long_name = app
        .client
        .post(app.url("/api/v1/keys"))
        .bearer_auth(&alice.token)
        .json(&serde_json::json!({"name": "x".repeat(65)}))
        .send()
        .await
        .unwrap();
    assert_error(long_name, StatusCode::BAD_REQUEST, "invalid_request").await;
    let unnamed = app
        .client
        .post(app.url("/api/v1/keys"))
        .bearer_auth(&alice.token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(unnamed.status(), StatusCode::CREATED);
    let anonymous = app
        .client
        .post(app.url("/api/v1/keys"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_error(anonymous, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

/// 95 keys stored, then 20 creations at once: exactly 5 get through.
async fn assert_the_key_cap_holds_under_concurrent_creations(app: &TestApp) {
    let alice = app.new_user("alice").await;
    for i in 0..95 {
        app.create_key(&alice.token, &format!("device {i}")).await;
    }
    let create = || {
        app.client
            .post(app.url("/api/v1/keys"))
            .bearer_auth(&alice.token)
            .json(&serde_json::json!({"name": "racer"}))
            .send()
    };
    let responses = futures_util::future::join_all((0..20).map(|_| create())).await;
    let mut created = 0;
    for response in responses {
        let response = response.unwrap();
        if response.status() == StatusCode::CREATED {
            created += 1;
        } else {
            assert_error(response, StatusCode::CONFLICT, "too_many_keys").await;
        }
    }
    assert_eq!(created, 5);
    assert_eq!(list(app, &alice.token).await.len(), 100);
    assert_eq!(ApiKey::find().count(&app.db).await.unwrap(), 100);
}

#[actix_web::test]
async fn the_key_cap_holds_under_concurrent_creations() {
    let app = crate::helpers::spawn_app().await;
    assert_the_key_cap_holds_under_concurrent_creations(&app).await;
}

#[actix_web::test]
async fn the_key_cap_holds_under_concurrent_creations_on_postgresql() {
    let Some(database) = crate::postgres::TempDatabase::create().await else {
        return;
    };
    let url = database.url.clone();
    let app = crate::helpers::spawn_app_with(vec![], |s| s.database.url = url).await;
    assert_the_key_cap_holds_under_concurrent_creations(&app).await;
    drop(app);
    database.drop().await;
}
