//! Users who are removed or disabled, the reference from tasks to users, and usernames
//! that differ only in case.

use entity::prelude::{ApiKey, Image, Task, User};
use infergate::settings::Settings;
use infergate::simulator::SimConfig;
use infergate::store::{users, StoreError};
use reqwest::{RequestBuilder, StatusCode};
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, Set};
use serde_json::{json, Value};

use crate::helpers::{
    assert_error, pcm, spawn_app_with_speech, start_sims, Auth, TestApp, TestUser,
};

async fn app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let sim = SimConfig {
        latency_ms: 20,
        ..SimConfig::default()
    };
    let app = spawn_app_with_speech(start_sims(vec![sim]), tweak).await;
    app.wait_for_healthy_speech(1).await;
    app.wait_for_healthy(1).await;
    app
}

/// Every kind of authenticated request a user can make, each with a token or a key.
fn every_route(app: &TestApp, token: &str, key: &str) -> Vec<(&'static str, RequestBuilder)> {
    let c = &app.client;
    let prompt = json!({"prompt": "a cat"});
    let name = json!({"name": "x"});
    let form = || {
        reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(pcm(1.0)).file_name("a.wav"),
        )
    };
    vec![
        (
            "submit",
            c.post(app.url("/api/v1/image/async"))
                .bearer_auth(token)
                .json(&prompt),
        ),
        (
            "list tasks",
            c.get(app.url("/api/v1/tasks")).bearer_auth(token),
        ),
        (
            "one task",
            c.get(app.url("/api/v1/tasks?task_id=x")).bearer_auth(token),
        ),
        (
            "cancel",
            c.post(app.url("/api/v1/tasks/x/cancel")).bearer_auth(token),
        ),
        ("image", c.get(app.url("/api/images/1")).bearer_auth(token)),
        (
            "create key",
            c.post(app.url("/api/v1/keys"))
                .bearer_auth(token)
                .json(&name),
        ),
        (
            "list keys",
            c.get(app.url("/api/v1/keys")).bearer_auth(token),
        ),
        (
            "revoke key",
            c.delete(app.url("/api/v1/keys/1")).bearer_auth(token),
        ),
        (
            "pcm with token",
            c.post(app.url("/api/v1/speech/pcm"))
                .bearer_auth(token)
                .body(pcm(1.0)),
        ),
        (
            "pcm with key",
            c.post(app.url("/api/v1/speech/pcm"))
                .header("X-API-Key", key)
                .body(pcm(1.0)),
        ),
        (
            "pcm with key as bearer",
            c.post(app.url("/api/v1/speech/pcm"))
                .bearer_auth(key)
                .body(pcm(1.0)),
        ),
        (
            "upload with key",
            c.post(app.url("/api/v1/speech/transcribe"))
                .header("X-API-Key", key)
                .multipart(form()),
        ),
    ]
}

async fn assert_shut_out(app: &TestApp, user: &TestUser, key: &str) {
    for (what, request) in every_route(app, &user.token, key) {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
}

async fn key_of(app: &TestApp, user: &TestUser) -> String {
    app.create_key(&user.token, "device").await["key"]
        .as_str()
        .unwrap()
        .to_string()
}

#[actix_web::test]
async fn a_removed_users_token_and_key_get_401_everywhere_and_their_data_is_gone() {
    let app = app_with(|s| s.auth.user_cache_secs = 0).await;
    let alice = app.new_user("alice").await;
    let bob = app.new_user("bob_1").await;
    let key = key_of(&app, &alice).await;
    let bobs_key = key_of(&app, &bob).await;
    for user in [&alice, &bob] {
        let id = app.submit_ok(&user.token, "a cat").await;
        assert_eq!(app.wait_for_end(&user.token, &id).await.1["status"], "DONE");
    }
    let queued_behind = app.submit_ok(&alice.token, "one more").await;

    let removed = users::remove(&app.db, "ALICE").await.unwrap().unwrap();
    // `queued_behind` may or may not have finished by now: its image counts either way.
    assert_eq!(removed.keys, 1);
    assert!((1..=2).contains(&removed.images), "{removed:?}");
    assert_eq!(removed.tasks, 2);
    assert_shut_out(&app, &alice, &key).await;
    assert_error(
        app.login("alice", "password123").await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;

    // Everything of alice's is gone, nothing of bob's; her last task is not run for no one.
    let alices = |id: i64| {
        let db = app.db.clone();
        async move {
            let tasks = Task::find()
                .filter(entity::task::Column::UserId.eq(id))
                .count(&db)
                .await
                .unwrap();
            let images = Image::find()
                .filter(entity::image::Column::UserId.eq(id))
                .count(&db)
                .await
                .unwrap();
            let keys = ApiKey::find()
                .filter(entity::api_key::Column::UserId.eq(id))
                .count(&db)
                .await
                .unwrap();
            (tasks, images, keys)
        }
    };
    assert_eq!(alices(removed.user_id).await, (0, 0, 0));
    assert_eq!(app.task_rows().await, 1);
    assert_eq!(app.image_rows().await, 1);
    assert_eq!(
        app.get_task(&alice.token, &queued_behind).await.status(),
        401
    );
    let bobs = app.send_pcm(Auth::ApiKey(&bobs_key), pcm(1.0)).await;
    assert_eq!(bobs.status(), StatusCode::OK);
    let listed: Vec<Value> = app
        .get("/api/v1/tasks", &bob.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
}

#[actix_web::test]
async fn a_disabled_user_is_shut_out_until_enabled_and_keeps_their_data() {
    let app = app_with(|s| s.auth.user_cache_secs = 0).await;
    let alice = app.new_user("alice").await;
    let key = key_of(&app, &alice).await;
    let id = app.submit_ok(&alice.token, "a cat").await;
    app.wait_for_end(&alice.token, &id).await;

    users::set_disabled(&app.db, "alice", true)
        .await
        .unwrap()
        .unwrap();
    assert_shut_out(&app, &alice, &key).await;
    let login = app.login("alice", "password123").await;
    let body = assert_error(login, StatusCode::UNAUTHORIZED, "unauthorized").await;
    assert!(
        body["error"].as_str().unwrap().contains("disabled"),
        "{body}"
    );
    // A wrong password does not learn that the account exists and is disabled.
    assert_error(
        app.login("alice", "wrong-password").await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;

    users::set_disabled(&app.db, "alice", false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        app.get_task(&alice.token, &id).await.status(),
        StatusCode::OK
    );
    let spoken = app.send_pcm(Auth::ApiKey(&key), pcm(1.0)).await;
    assert_eq!(spoken.status(), StatusCode::OK);
    assert_eq!(
        app.login("alice", "password123").await.status(),
        StatusCode::OK
    );
}

#[actix_web::test]
async fn with_the_standing_cached_a_removal_still_shuts_the_token_out_within_its_time() {
    let app = app_with(|s| s.auth.user_cache_secs = 1).await;
    let alice = app.new_user("alice").await;
    assert_eq!(
        app.get("/api/v1/tasks", &alice.token).await.status(),
        StatusCode::OK
    );
    users::remove(&app.db, "alice").await.unwrap().unwrap();
    crate::poll::eventually(
        "the removed user's token refused",
        std::time::Duration::from_secs(5),
        || async {
            match app.get("/api/v1/tasks", &alice.token).await.status() {
                StatusCode::UNAUTHORIZED => Ok(()),
                other => Err(other),
            }
        },
    )
    .await;
}

#[actix_web::test]
async fn writes_for_a_user_removed_since_their_token_was_checked_store_nothing_and_say_401() {
    // The standing is remembered long enough for the writes to pass the token check.
    let app = app_with(|s| s.auth.user_cache_secs = 600).await;
    let alice = app.new_user("alice").await;
    let bob = app.new_user("bob_1").await;
    assert_eq!(
        app.get("/api/v1/tasks", &alice.token).await.status(),
        StatusCode::OK
    );
    users::remove(&app.db, "alice").await.unwrap().unwrap();

    // Each alongside another user's submission, which must not fail with it.
    let (cat, dog) = (json!({"prompt": "a cat"}), json!({"prompt": "a dog"}));
    let (alices, bobs) = tokio::join!(
        app.submit_image(&alice.token, &cat),
        app.submit_image(&bob.token, &dog)
    );
    assert_error(alices, StatusCode::UNAUTHORIZED, "unauthorized").await;
    assert_eq!(bobs.status(), StatusCode::ACCEPTED);
    let key = app
        .client
        .post(app.url("/api/v1/keys"))
        .bearer_auth(&alice.token)
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_error(key, StatusCode::UNAUTHORIZED, "unauthorized").await;
    assert_eq!(app.task_rows().await, 1);
    assert_eq!(ApiKey::find().count(&app.db).await.unwrap(), 0);
}

#[actix_web::test]
async fn the_database_refuses_a_task_of_a_user_who_does_not_exist() {
    let app = crate::helpers::spawn_app().await;
    let now = chrono::Utc::now();
    let orphan = entity::task::ActiveModel {
        task_id: Set(uuid::Uuid::new_v4().to_string()),
        user_id: Set(424242),
        prompt: Set("nobody's".into()),
        steps: Set(20),
        status: Set(entity::task::Status::Queued),
        attempts: Set(0),
        priority: Set(entity::task::Priority::Normal),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    };
    let refused = orphan.insert(&app.db).await.unwrap_err();
    assert!(
        matches!(StoreError::from(refused), StoreError::Constraint(_)),
        "a foreign-key violation is a constraint, not an outage"
    );
}

#[actix_web::test]
async fn usernames_are_unique_whatever_their_case_and_keep_their_spelling() {
    let app = crate::helpers::spawn_app().await;
    let created = app.register("Eve_1", "password123").await;
    assert_eq!(created.status(), StatusCode::CREATED);
    for twin in ["eve_1", "EVE_1", "eVe_1"] {
        assert_error(
            app.register(twin, "password123").await,
            StatusCode::CONFLICT,
            "username_taken",
        )
        .await;
    }
    // Two racing registrations that differ only in case make one account.
    let (a, b) = tokio::join!(
        app.register("Racer", "password123"),
        app.register("rACER", "password123")
    );
    let mut statuses = [a.status(), b.status()];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::CREATED, StatusCode::CONFLICT]);

    for spelling in ["eve_1", "EVE_1"] {
        let login: Value = app
            .login(spelling, "password123")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(login["user"]["username"], "Eve_1", "{login}");
    }
    assert_eq!(User::find().count(&app.db).await.unwrap(), 2);
}
