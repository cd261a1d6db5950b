//! The admin API for backend instances: who may use it, adding, changing, draining and
//! removing instances while tasks run, persistence across a restart, and balancing as
//! instances come and go.

use std::time::Duration;

use entity::prelude::Instance;
use infergate::actors::instance_registry::SETTINGS_ID_BASE;
use infergate::domain::Strategy;
use infergate::settings::Settings;
use infergate::simulator::SimConfig;
use reqwest::StatusCode;
use sea_orm::{EntityTrait, PaginatorTrait};
use serde_json::{json, Value};

use crate::helpers::{
    assert_error, fast_sim, spawn_app, spawn_app_on, spawn_app_with, start, start_sims, Stopped,
    TestApp, TEST_SECRET,
};
use crate::poll::eventually;

fn slow_sim(latency_ms: u64) -> SimConfig {
    SimConfig {
        latency_ms,
        ..SimConfig::default()
    }
}

async fn instance_rows(app: &TestApp) -> u64 {
    Instance::find().count(&app.db).await.unwrap()
}

/// Checks that exactly one worker is alive (not only counted): of two slow tasks, one
/// runs and the other stays in the queue, where a second worker would have taken it to
/// wait for an instance.
async fn assert_one_live_worker(app: &TestApp, token: &str) {
    app.sims[0].set_latency(Duration::from_secs(3));
    app.submit_ok(token, "slow one").await;
    app.submit_ok(token, "slow two").await;
    let (queued, waiting) = eventually(
        "one call in flight, one task behind it",
        Duration::from_secs(10),
        || async {
            let stats = app.stats().await;
            let (queued, waiting) = (&stats["queue_length"], &stats["image_instances"]["waiting"]);
            let settled = stats["image_instances"]["in_flight"] == 1
                && queued.as_u64().unwrap() + waiting.as_u64().unwrap() == 1;
            if settled {
                Ok((queued.as_u64(), waiting.as_u64()))
            } else {
                Err(stats)
            }
        },
    )
    .await;
    assert_eq!((queued, waiting), (Some(1), Some(0)));
}

#[actix_web::test]
async fn only_admins_reach_the_admin_api() {
    let app = spawn_app().await;
    let admin = app.new_admin("root").await;
    let user = app.new_user("alice").await;
    let settings_id = SETTINGS_ID_BASE + 1;
    let body = json!({"kind": "image", "url": "http://127.0.0.1:9"});
    let change = json!({"enabled": false});

    let forbidden = [
        app.get("/api/v1/admin/instances", &user.token).await,
        app.add_instance(&user.token, &body).await,
        app.patch_instance(&user.token, settings_id, &change).await,
        app.delete_instance(&user.token, settings_id).await,
    ];
    for response in forbidden {
        assert_error(response, StatusCode::FORBIDDEN, "forbidden").await;
    }
    let anonymous = app
        .client
        .get(app.url("/api/v1/admin/instances"))
        .send()
        .await
        .unwrap();
    assert_error(anonymous, StatusCode::UNAUTHORIZED, "unauthorized").await;
    for credential in ["not.a.jwt", "igk_not_for_admin_routes"] {
        let response = app.get("/api/v1/admin/instances", credential).await;
        assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    // Nothing changed by the refused calls.
    let listed = app.instances(&admin.token).await;
    assert_eq!(listed.len(), 1);
    assert_ne!(listed[0]["state"], "disabled");
    assert_eq!(instance_rows(&app).await, 0);

    // The role is checked in the database: a demoted admin's token stops working at once.
    infergate::store::users::set_role(&app.db, "root", entity::user::Role::User)
        .await
        .unwrap();
    let demoted = app.get("/api/v1/admin/instances", &admin.token).await;
    assert_error(demoted, StatusCode::FORBIDDEN, "forbidden").await;
}

#[actix_web::test]
async fn the_list_shows_every_instance_with_its_figures() {
    let app = spawn_app().await;
    let admin = app.new_admin("root").await;
    app.wait_for_healthy(1).await;
    let id = app.submit_ok(&admin.token, "a cat").await;
    app.wait_for_end(&admin.token, &id).await;

    let listed = app.instances(&admin.token).await;
    assert_eq!(listed.len(), 1);
    let instance = &listed[0];
    assert_eq!(instance["id"], SETTINGS_ID_BASE + 1);
    assert_eq!(instance["kind"], "image");
    assert_eq!(instance["url"], app.sims[0].url());
    assert_eq!(instance["protocol"], "qwen");
    assert_eq!(instance["capacity"], 1);
    assert_eq!(instance["weight"], 1);
    assert_eq!(instance["state"], "healthy");
    assert_eq!(instance["source"], "settings");
    assert_eq!(instance["in_flight"], 0);
    assert_eq!(instance["completed"], 1);
    assert_eq!(instance["failed"], 0);
    assert!(
        instance["latency_ms"].as_f64().unwrap() >= 20.0,
        "{instance}"
    );
    assert!(instance["last_check"].is_string());
    assert!(instance["last_error"].is_null());
}

#[actix_web::test]
async fn an_instance_added_by_api_takes_work_and_adds_a_worker() {
    let extra = start_sims(vec![fast_sim()]);
    let app = spawn_app_with(vec![slow_sim(300)], |_| {}).await;
    let admin = app.new_admin("root").await;
    app.wait_for_workers(1).await;

    let response = app
        .add_instance(
            &admin.token,
            &json!({"kind": "image", "url": extra[0].url(), "capacity": 1}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let added: Value = response.json().await.unwrap();
    let id = added["id"].as_u64().unwrap();
    assert!(id < SETTINGS_ID_BASE, "{added}");
    assert_eq!(added["source"], "api");
    assert_eq!(added["protocol"], "qwen");
    assert_eq!(added["state"], "unknown", "no work before its first ping");
    assert_eq!(instance_rows(&app).await, 1);

    app.wait_for_healthy(2).await;
    app.wait_for_workers(2).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(app.submit_ok(&admin.token, &format!("prompt {i}")).await);
    }
    for id in &ids {
        assert_eq!(app.wait_for_end(&admin.token, id).await.1["status"], "DONE");
    }
    assert!(
        extra[0].generated() >= 3,
        "the added instance took little work"
    );
    assert_eq!(extra[0].generated() + app.sims[0].generated(), 6);
}

#[actix_web::test]
async fn deleting_an_instance_under_load_drains_it_then_removes_it() {
    let extra = start_sims(vec![slow_sim(1000)]);
    let app = spawn_app_with(vec![slow_sim(1000)], |_| {}).await;
    let admin = app.new_admin("root").await;
    let id = app.add_image_instance(&admin.token, &extra[0].url()).await;
    app.wait_for_healthy(2).await;
    app.wait_for_workers(2).await;

    let mut tasks = Vec::new();
    for i in 0..6 {
        tasks.push(app.submit_ok(&admin.token, &format!("prompt {i}")).await);
    }
    app.wait_for_instance(&admin.token, id, "busy", |i| {
        i.is_some_and(|i| i["in_flight"] == 1)
    })
    .await;
    let response = app.delete_instance(&admin.token, id).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let draining: Value = response.json().await.unwrap();
    assert_eq!(draining["state"], "draining");
    assert_eq!(draining["in_flight"], 1, "the drain had a call to wait for");
    // The row goes at once, so a restart during the drain would not bring it back.
    assert_eq!(instance_rows(&app).await, 0);
    let again = app.delete_instance(&admin.token, id).await;
    assert_eq!(
        again.status(),
        StatusCode::ACCEPTED,
        "deleting twice is harmless"
    );
    let change = app
        .patch_instance(&admin.token, id, &json!({"weight": 2}))
        .await;
    assert_error(change, StatusCode::CONFLICT, "instance_draining").await;

    app.wait_for_instance(&admin.token, id, "gone", |i| i.is_none())
        .await;
    let generated_by_removed = extra[0].generated();
    app.wait_for_workers(1).await;
    for task in &tasks {
        let (_, task) = app.wait_for_end(&admin.token, task).await;
        assert_eq!(task["status"], "DONE", "{task}");
        assert_eq!(task["attempts"], 1, "no call was cut off: {task}");
    }
    // The in-flight call finished there; nothing more went there.
    assert!(generated_by_removed >= 1);
    assert_eq!(extra[0].generated(), generated_by_removed);
    assert_eq!(
        app.sims[0].generated() + generated_by_removed,
        tasks.len() as u64
    );
    assert_error(
        app.delete_instance(&admin.token, id).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_one_live_worker(&app, &admin.token).await;
}

#[actix_web::test]
async fn a_disabled_instance_gets_no_work_and_capacity_sets_the_workers() {
    let app = spawn_app_with(vec![fast_sim(), fast_sim()], |_| {}).await;
    let admin = app.new_admin("root").await;
    app.wait_for_healthy(2).await;
    app.wait_for_workers(2).await;
    let second = SETTINGS_ID_BASE + 2;

    let response = app
        .patch_instance(&admin.token, second, &json!({"enabled": false}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let disabled: Value = response.json().await.unwrap();
    assert_eq!(disabled["state"], "disabled");
    app.wait_for_workers(1).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(app.submit_ok(&admin.token, &format!("prompt {i}")).await);
    }
    for id in &ids {
        assert_eq!(app.wait_for_end(&admin.token, id).await.1["status"], "DONE");
    }
    assert_eq!(app.sims[1].generated(), 0);

    let enabled: Value = app
        .patch_instance(
            &admin.token,
            second,
            &json!({"enabled": true, "capacity": 3}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(enabled["capacity"], 3);
    assert_eq!(enabled["state"], "healthy");
    app.wait_for_workers(4).await;
    let off = app
        .patch_instance(&admin.token, second, &json!({"enabled": false}))
        .await;
    assert_eq!(off.status(), StatusCode::OK);
    app.wait_for_workers(1).await;
    assert_one_live_worker(&app, &admin.token).await;
}

#[actix_web::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let admin = app.new_admin("root").await;
    let settings_url = app.sims[0].url();
    for body in [
        json!({"kind": "gpu", "url": "http://10.0.0.1:8000"}),
        json!({"kind": "image"}),
        json!({"kind": "image", "url": "ftp://10.0.0.1"}),
        json!({"kind": "image", "url": "not a url"}),
        json!({"kind": "image", "url": "http://10.0.0.1:8000/?x=1"}),
        json!({"kind": "image", "url": "http://10.0.0.1:8000", "protocol": "fastwhisper"}),
        json!({"kind": "image", "url": "http://10.0.0.1:8000", "protocol": "grpc"}),
        json!({"kind": "image", "url": "http://10.0.0.1:8000", "capacity": 0}),
        json!({"kind": "image", "url": "http://10.0.0.1:8000", "capacity": 5000}),
        json!({"kind": "image", "url": "http://10.0.0.1:8000", "capacity": -1}),
        json!({"kind": "image", "url": "http://10.0.0.1:8000", "weight": 0}),
        json!({"kind": "image", "url": "http://10.0.0.1:8000", "capcity": 2}),
    ] {
        let response = app.add_instance(&admin.token, &body).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    let malformed = app
        .client
        .post(app.url("/api/v1/admin/instances"))
        .bearer_auth(&admin.token)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_error(malformed, StatusCode::BAD_REQUEST, "malformed_body").await;

    // The same kind and url twice: also against settings.toml, and however it is written.
    for url in [settings_url.clone(), format!("{settings_url}/")] {
        let duplicate = app
            .add_instance(&admin.token, &json!({"kind": "image", "url": url}))
            .await;
        assert_error(duplicate, StatusCode::CONFLICT, "instance_exists").await;
    }
    let id = app
        .add_image_instance(&admin.token, "http://127.0.0.1:9/")
        .await;
    let duplicate = app
        .add_instance(
            &admin.token,
            &json!({"kind": "image", "url": "http://127.0.0.1:9"}),
        )
        .await;
    assert_error(duplicate, StatusCode::CONFLICT, "instance_exists").await;
    // Another kind at the same url is another instance.
    let speech = app
        .add_instance(
            &admin.token,
            &json!({"kind": "speech", "url": "http://127.0.0.1:9"}),
        )
        .await;
    assert_eq!(speech.status(), StatusCode::CREATED);
    let speech: Value = speech.json().await.unwrap();
    assert_eq!(speech["protocol"], "fastwhisper");

    for body in [
        json!({}),
        json!({"capacity": 0}),
        json!({"weight": 1001}),
        json!({"enabled": "no"}),
        json!({"enable": false}),
    ] {
        let response = app.patch_instance(&admin.token, id, &body).await;
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    for missing in ["12345", "abc", &(SETTINGS_ID_BASE + 9).to_string()] {
        let url = app.url(&format!("/api/v1/admin/instances/{missing}"));
        let patch = app
            .client
            .patch(&url)
            .bearer_auth(&admin.token)
            .json(&json!({"weight": 2}))
            .send()
            .await
            .unwrap();
        assert_error(patch, StatusCode::NOT_FOUND, "not_found").await;
        let delete = app
            .client
            .delete(&url)
            .bearer_auth(&admin.token)
            .send()
            .await
            .unwrap();
        assert_error(delete, StatusCode::NOT_FOUND, "not_found").await;
    }

    let listed = app.instances(&admin.token).await;
    assert_eq!(listed.len(), 3);
    let added = listed.iter().find(|i| i["id"] == id).unwrap();
    assert_eq!(
        (added["capacity"].as_u64(), added["weight"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(added["url"], "http://127.0.0.1:9", "stored normalised");
    assert_eq!(instance_rows(&app).await, 2);
}

#[actix_web::test]
async fn instances_added_by_api_survive_a_restart_and_settings_ones_come_back() {
    let extra = start_sims(vec![fast_sim()]);
    let first = spawn_app_with(vec![fast_sim()], |_| {}).await;
    let admin = first.new_admin("root").await;
    let id = first
        .add_image_instance(&admin.token, &extra[0].url())
        .await;
    let change = json!({"capacity": 2, "weight": 3, "enabled": false});
    let patched = first.patch_instance(&admin.token, id, &change).await;
    assert_eq!(patched.status(), StatusCode::OK);
    let settings_id = SETTINGS_ID_BASE + 1;
    let removed = first.delete_instance(&admin.token, settings_id).await;
    assert_eq!(removed.status(), StatusCode::ACCEPTED);
    first
        .wait_for_instance(&admin.token, settings_id, "gone", |i| i.is_none())
        .await;

    // A restart: the first gateway stops before the second starts on its database.
    let Stopped { db_url, dir, sims } = first.stop().await;
    let mut settings = Settings::default();
    settings.server.host = "127.0.0.1".into();
    settings.server.port = 0;
    settings.database.url = db_url;
    settings.auth.jwt_secret = TEST_SECRET.into();
    settings.health.interval_secs = 1;
    settings.instances[0].url = sims[0].url();
    let second = start(settings, sims, dir).await;

    let listed = second.instances(&admin.token).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    let kept = listed.iter().find(|i| i["id"] == id).expect("same id");
    assert_eq!(kept["source"], "api");
    assert_eq!(kept["url"], extra[0].url());
    assert_eq!(
        (kept["capacity"].as_u64(), kept["weight"].as_u64()),
        (Some(2), Some(3))
    );
    assert_eq!(kept["state"], "disabled");
    let back = listed.iter().find(|i| i["id"] == settings_id);
    assert_eq!(
        back.expect("settings instance is back")["source"],
        "settings"
    );

    // Enabled again, the kept instance takes work in the new process.
    let enabled = second
        .patch_instance(&admin.token, id, &json!({"enabled": true}))
        .await;
    assert_eq!(enabled.status(), StatusCode::OK);
    second.wait_for_healthy(2).await;
    second.wait_for_workers(3).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(second.submit_ok(&admin.token, &format!("prompt {i}")).await);
    }
    for task in &ids {
        assert_eq!(
            second.wait_for_end(&admin.token, task).await.1["status"],
            "DONE"
        );
    }
    assert!(extra[0].generated() > 0);
}

#[actix_web::test]
async fn user_hash_moves_few_users_when_an_instance_is_added() {
    let extra = start_sims(vec![fast_sim()]);
    let app = spawn_app_with(vec![fast_sim(), fast_sim(), fast_sim()], |s| {
        s.balancing.image = Strategy::UserHash
    })
    .await;
    let admin = app.new_admin("root").await;
    app.wait_for_healthy(3).await;
    let mut users = Vec::new();
    for u in 0..40 {
        users.push(app.new_user(&format!("user_{u}")).await);
    }
    // One task at a time, so each user's instance always has room.
    async fn home(app: &TestApp, token: &str) -> String {
        let task = app.submit_ok(token, "a cat").await;
        assert_eq!(app.wait_for_end(token, &task).await.1["status"], "DONE");
        app.task_instance(&task).await
    }
    let mut before = Vec::new();
    for user in &users {
        before.push(home(&app, &user.token).await);
    }
    app.add_image_instance(&admin.token, &extra[0].url()).await;
    app.wait_for_healthy(4).await;
    let mut moved = 0;
    for (user, old) in users.iter().zip(&before) {
        let new = home(&app, &user.token).await;
        if new != *old {
            assert_eq!(new, extra[0].url(), "users move only to the new instance");
            moved += 1;
        }
    }
    // About 1 in 4 (10 of 40); user id modulo the instance count would move 3 in 4.
    assert!((1..=18).contains(&moved), "{moved} of 40 users moved");
}

#[actix_web::test]
async fn least_loaded_prefers_the_faster_idle_instance() {
    let app = spawn_app_with(vec![slow_sim(200), fast_sim()], |_| {}).await;
    let admin = app.new_admin("root").await;
    app.wait_for_healthy(2).await;
    for i in 0..10 {
        let task = app.submit_ok(&admin.token, &format!("prompt {i}")).await;
        assert_eq!(
            app.wait_for_end(&admin.token, &task).await.1["status"],
            "DONE"
        );
    }
    // Each is tried once (an instance with no latency yet goes first), then the faster wins.
    assert_eq!((app.sims[0].generated(), app.sims[1].generated()), (1, 9));
}

#[actix_web::test]
async fn tasks_wait_while_every_instance_is_down_and_run_when_one_returns() {
    let sims = start_sims(vec![fast_sim()]);
    sims[0].set_ready(false);
    let app = spawn_app_on(sims, |_| {}).await;
    let user = app.new_user("alice").await;
    let task = app.submit_ok(&user.token, "a cat").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let waiting = app.stats().await;
    assert_eq!(waiting["image_instances"]["waiting"], 1, "{waiting}");
    app.sims[0].set_ready(true);
    assert_eq!(
        app.wait_for_end(&user.token, &task).await.1["status"],
        "DONE"
    );
}

#[actix_web::test]
async fn the_admin_api_is_in_the_openapi_document() {
    let app = spawn_app().await;
    let doc: Value = app
        .client
        .get(app.url("/api-docs/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = &doc["paths"];
    for (path, method) in [
        ("/api/v1/admin/instances", "get"),
        ("/api/v1/admin/instances", "post"),
        ("/api/v1/admin/instances/{id}", "patch"),
        ("/api/v1/admin/instances/{id}", "delete"),
    ] {
        let operation = &paths[path][method];
        assert!(operation.is_object(), "{method} {path} missing");
        assert!(
            operation["responses"]["403"].is_object(),
            "{method} {path}: no 403"
        );
    }
    let schemas = &doc["components"]["schemas"];
    for schema in [
        "InstanceView",
        "NewInstanceRequest",
        "InstanceChangeRequest",
        "InstanceState",
    ] {
        assert!(schemas[schema].is_object(), "schema {schema} missing");
    }
}

#[actix_web::test]
async fn least_loaded_tries_a_slow_starter_again_later() {
    // The first instance's first call is slow, as a GPU warming up: least-loaded then
    // prefers the other, but re-measures the first once enough work went elsewhere.
    let app = spawn_app_with(vec![slow_sim(300), fast_sim()], |_| {}).await;
    let user = app.new_user("alice").await;
    app.wait_for_healthy(2).await;
    let first = app.submit_ok(&user.token, "warm-up").await;
    app.wait_for_end(&user.token, &first).await;
    assert_eq!(app.sims[0].generated(), 1, "tried first: no latency yet");
    app.sims[0].set_latency(Duration::from_millis(20));
    for i in 0..110 {
        let task = app.submit_ok(&user.token, &format!("prompt {i}")).await;
        app.wait_for_end(&user.token, &task).await;
    }
    assert!(
        app.sims[0].generated() >= 2,
        "the warmed-up instance was never tried again"
    );
}

/// Requests to admin routes that a parser would refuse (bad bodies, bad ids, a missing
/// Content-Type, an unknown route), with what an admin gets for each.
fn unparsable_admin_requests(app: &TestApp) -> Vec<(reqwest::RequestBuilder, StatusCode)> {
    let c = &app.client;
    let url = |path: &str| app.url(&format!("/api/v1/admin{path}"));
    vec![
        (
            c.post(url("/instances"))
                .header("content-type", "application/json")
                .body("{"),
            StatusCode::BAD_REQUEST,
        ),
        (
            c.post(url("/instances")).body("kind=image"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            c.post(url("/instances"))
                .json(&json!({"kind": "image", "url": "http://127.0.0.1:9", "bogus": 1})),
            StatusCode::BAD_REQUEST,
        ),
        (
            c.patch(url("/instances/not-a-number"))
                .json(&json!({"enabled": false})),
            StatusCode::NOT_FOUND,
        ),
        (
            c.patch(url("/instances/42")).json(&json!({})),
            StatusCode::BAD_REQUEST,
        ),
        (c.delete(url("/instances/abc")), StatusCode::NOT_FOUND),
        (c.delete(url("/instances/4242")), StatusCode::NOT_FOUND),
        (c.get(url("/no-such-route")), StatusCode::NOT_FOUND),
    ]
}

#[actix_web::test]
async fn a_non_admin_gets_403_before_anything_of_the_request_is_parsed() {
    let app = spawn_app().await;
    let admin = app.new_admin("root").await;
    let user = app.new_user("alice").await;
    // Three rounds: the answer must not depend on timing.
    for _ in 0..3 {
        for (request, _) in unparsable_admin_requests(&app) {
            let response = request.bearer_auth(&user.token).send().await.unwrap();
            assert_error(response, StatusCode::FORBIDDEN, "forbidden").await;
        }
        for (request, _) in unparsable_admin_requests(&app) {
            let response = request.send().await.unwrap();
            assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
        }
    }
    // An admin gets the parser's answer for each.
    for (request, expected) in unparsable_admin_requests(&app) {
        let response = request.bearer_auth(&admin.token).send().await.unwrap();
        assert_eq!(response.status(), expected, "{:?}", response.url());
    }
    assert_eq!(instance_rows(&app).await, 0);
}

#[actix_web::test]
async fn an_instance_url_with_control_characters_is_refused() {
    let app = spawn_app().await;
    let admin = app.new_admin("root").await;
    for url in [
        "http://127.0.0.1:9/X\r\nX: y",
        "http://127.0.0.1:9/\nsecond",
        "http://127.0.0.1:9/\ttab",
        "http://127.0.0.1:9/\u{0}",
    ] {
        let response = app
            .add_instance(&admin.token, &json!({"kind": "image", "url": url}))
            .await;
        let body = assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
        assert!(
            body["error"].as_str().unwrap().contains("control"),
            "{body}"
        );
    }
    assert_eq!(instance_rows(&app).await, 0);
}

#[actix_web::test]
async fn credentials_in_an_instance_url_are_never_shown() {
    let sims = start_sims(vec![fast_sim()]);
    let with_secret = sims[0].url().replace("http://", "http://user:s3cret@");
    let app = spawn_app_on(sims, |s| {
        s.instances[0].url = with_secret.clone();
    })
    .await;
    let admin = app.new_admin("root").await;
    let added = app
        .add_instance(
            &admin.token,
            &json!({"kind": "speech", "url": "http://ops:hunter2@127.0.0.1:9"}),
        )
        .await;
    assert_eq!(added.status(), StatusCode::CREATED);
    let added: Value = added.json().await.unwrap();
    assert_eq!(added["url"], "http://127.0.0.1:9/");
    let listed = serde_json::to_string(&app.instances(&admin.token).await).unwrap();
    assert!(
        !listed.contains("s3cret") && !listed.contains("hunter2"),
        "{listed}"
    );
    assert!(
        !listed.contains("user:") && !listed.contains("ops:"),
        "{listed}"
    );

    app.wait_for_healthy(1).await;
    let id = app.submit_ok(&admin.token, "a cat").await;
    app.wait_for_end(&admin.token, &id).await;
    let stored = app.task_instance(&id).await;
    assert!(
        !stored.contains("s3cret") && !stored.contains("user"),
        "{stored}"
    );
}
