use infergate::auth::Claims;
use jsonwebtoken::{encode, EncodingKey, Header};
use reqwest::StatusCode;
use sea_orm::{EntityTrait, PaginatorTrait};
use serde_json::{json, Value};

use crate::helpers::{assert_error, spawn_app, start, Stopped, TestApp, TEST_SECRET};

#[actix_web::test]
async fn register_and_login() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url("/register"))
        .json(&json!({"username": "user_1", "password": "pass12345", "email": "u@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["username"], "user_1");
    assert_eq!(user["email"], "u@example.com");
    assert_eq!(user["role"], "user");
    assert!(user.get("password").is_none() && user.get("password_hash").is_none());

    let login: Value = app.login("user_1", "pass12345").await.json().await.unwrap();
    assert!(login["token"].as_str().unwrap().split('.').count() == 3);
    assert_eq!(login["user"]["id"], user["id"]);

    assert_error(
        app.register("user_1", "another123").await,
        StatusCode::CONFLICT,
        "username_taken",
    )
    .await;
    assert_error(
        app.login("user_1", "wrong-password").await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    assert_error(
        app.login("nobody", "pass12345").await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
}

#[actix_web::test]
async fn registration_input_is_checked() {
    let app = spawn_app().await;
    for (username, password) in [
        ("ab", "pass12345"),
        (&*"a".repeat(21), "pass12345"),
        ("bad-name", "pass12345"),
        ("good_name", "short"),
    ] {
        assert_error(
            app.register(username, password).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
    }
    let response = app
        .client
        .post(app.url("/register"))
        .json(&json!({"username": 5}))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    let response = app
        .client
        .post(app.url("/register"))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::BAD_REQUEST, "malformed_body").await;
    let response = app
        .client
        .post(app.url("/register"))
        .json(&json!({"username": "good_name", "password": "pass12345", "email": "not-an-address"}))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
}

#[actix_web::test]
async fn two_registrations_of_one_name_race_to_one_account() {
    let app = spawn_app().await;
    let (a, b) = tokio::join!(
        app.register("racer", "pass12345"),
        app.register("racer", "pass12345")
    );
    let mut statuses = [a.status(), b.status()];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::CREATED, StatusCode::CONFLICT]);
}

fn token_with(secret: &str, exp: u64) -> String {
    let now = chrono::Utc::now().timestamp() as u64;
    let claims = Claims {
        sub: "1".into(),
        name: "alice".into(),
        role: entity::user::Role::User,
        iat: now,
        exp,
    };
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[actix_web::test]
async fn protected_routes_reject_bad_tokens() {
    let app = spawn_app().await;
    app.new_user("alice").await;
    let body = json!({"prompt": "a cat"});
    let url = app.url("/api/v1/image/async");
    let now = chrono::Utc::now().timestamp() as u64;

    let missing = app.client.post(&url).json(&body).send().await.unwrap();
    assert_error(missing, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let wrong_scheme = app
        .client
        .post(&url)
        .header("Authorization", "Token abc")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_error(wrong_scheme, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let garbage = app
        .client
        .post(&url)
        .bearer_auth("not.a.jwt")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_error(garbage, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let forged = app
        .client
        .post(&url)
        .bearer_auth(token_with(
            "some-other-secret-that-is-long-enough!!",
            now + 3600,
        ))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_error(forged, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let expired = app
        .client
        .post(&url)
        .bearer_auth(token_with(TEST_SECRET, now - 3600))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_error(expired, StatusCode::UNAUTHORIZED, "token_expired").await;

    let valid = app
        .client
        .post(&url)
        .bearer_auth(token_with(TEST_SECRET, now + 3600))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(valid.status(), StatusCode::ACCEPTED);
    for path in ["/api/v1/tasks", "/api/images/1"] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    // Nothing was stored by the refused submissions.
    assert_eq!(app.task_rows().await, 1);
}

#[actix_web::test]
async fn a_generated_secret_survives_a_restart() {
    let first = crate::helpers::spawn_app_with(vec![], |s| s.auth.jwt_secret = String::new()).await;
    let user = first.new_user("alice").await;
    let Stopped { db_url, dir, .. } = first.stop().await;
    let mut settings = infergate::settings::Settings::default();
    settings.server.host = "127.0.0.1".into();
    settings.server.port = 0;
    settings.database.url = db_url;
    settings.instances.clear();
    let second = start(settings, vec![], dir).await;
    let response = second.get("/api/v1/tasks", &user.token).await;
    assert_eq!(response.status(), StatusCode::OK);
}

async fn register_from(app: &TestApp, forwarded_for: &str, username: &str) -> reqwest::Response {
    app.client
        .post(app.url("/register"))
        .header("X-Forwarded-For", forwarded_for)
        .json(&json!({"username": username, "password": "pass12345"}))
        .send()
        .await
        .unwrap()
}

#[actix_web::test]
async fn registrations_are_limited_per_client_address_with_retry_after() {
    let app = crate::helpers::spawn_app_with(vec![], |s| {
        s.limits.register_per_minute = 6;
        s.limits.register_burst = 3;
        s.limits.trust_forwarded_for = true;
    })
    .await;
    for i in 0..3 {
        let response = register_from(&app, "192.0.2.1", &format!("flood_{i}")).await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let refused = register_from(&app, "192.0.2.1", "flood_3").await;
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=10).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(refused.headers()["x-ratelimit-remaining"], "0");
    assert_error(refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Another address has its own bucket; the refused name was not created.
    let other = register_from(&app, "198.51.100.7", "flood_3").await;
    assert_eq!(other.status(), StatusCode::CREATED);
    let users = entity::prelude::User::find().count(&app.db).await.unwrap();
    assert_eq!(users, 4);
}

#[actix_web::test]
async fn a_registration_flood_beyond_the_hashing_line_gets_503_hashing_busy() {
    let app = crate::helpers::spawn_app_with(vec![], |s| {
        s.auth.max_concurrent_hashes = 1;
        s.auth.max_queued_hashes = 0;
    })
    .await;
    let names: Vec<String> = (0..16).map(|i| format!("burst_{i}")).collect();
    let attempts = names.iter().map(|name| app.register(name, "pass12345"));
    let responses = futures_util::future::join_all(attempts).await;
    let mut created = 0;
    let mut busy = 0;
    for response in responses {
        match response.status() {
            StatusCode::CREATED => created += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(response.headers()["retry-after"], "1");
                assert_error(response, StatusCode::SERVICE_UNAVAILABLE, "hashing_busy").await;
                busy += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(created >= 1 && busy >= 1, "{created} created, {busy} busy");
    // Refused registrations stored nothing, and the pool takes work again afterwards.
    let users = entity::prelude::User::find().count(&app.db).await.unwrap();
    assert_eq!(users, created);
    assert_eq!(
        app.register("after_burst", "pass12345").await.status(),
        StatusCode::CREATED
    );
}

#[actix_web::test]
async fn a_login_with_a_username_no_account_can_have_is_refused_before_any_limit() {
    let app = crate::helpers::spawn_app_with(vec![], |s| {
        s.limits.login_per_minute = 1;
        s.limits.login_burst = 2;
    })
    .await;
    app.new_user("alice").await;
    let huge = "u".repeat(48 * 1024);
    for _ in 0..5 {
        let response = app.login(&huge, "whatever1").await;
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
        let response = app.login("bad name!", "whatever1").await;
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    // Neither the address's bucket nor any name's was touched by them.
    assert_eq!(
        app.login("alice", "password123").await.status(),
        StatusCode::OK
    );
}
