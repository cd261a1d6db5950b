//! Fair to every user: rate limits, quotas, fair order, VIP priority and its bound.

use std::time::Duration;

use entity::user::Role;
use infergate::simulator::SimConfig;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_error, spawn_app_on, spawn_app_with, start_sims, TestApp, TestUser};

/// One simulated GPU taking `latency_ms` per image.
fn one_gpu(latency_ms: u64) -> Vec<SimConfig> {
    vec![SimConfig {
        latency_ms,
        ..SimConfig::default()
    }]
}

async fn vip_user(app: &TestApp, name: &str) -> TestUser {
    app.new_user(name).await;
    assert!(infergate::store::users::set_role(&app.db, name, Role::Vip)
        .await
        .unwrap());
    // The role travels in the token: log in again to get a VIP one.
    let body: Value = app.login(name, "password123").await.json().await.unwrap();
    TestUser {
        token: body["token"].as_str().unwrap().to_string(),
    }
}

/// Submits `count` prompts named `{prefix}{i}`, returning their task ids.
async fn submit_many(app: &TestApp, user: &TestUser, prefix: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..count {
        ids.push(app.submit_ok(&user.token, &format!("{prefix}{i}")).await);
    }
    ids
}

/// Where the simulated GPU started on the prompt (0 = first).
fn start_index(app: &TestApp, prompt: &str) -> usize {
    app.sims[0]
        .arrived_prompts()
        .iter()
        .position(|p| p == prompt)
        .unwrap_or_else(|| panic!("{prompt} never reached the backend"))
}

#[actix_web::test]
async fn submissions_over_the_rate_get_429_with_headers_and_store_nothing() {
    let app = spawn_app_with(one_gpu(10), |s| {
        s.limits.submit_per_minute = 60;
        s.limits.submit_burst = 3;
    })
    .await;
    let alice = app.new_user("alice").await;
    for remaining in ["2", "1", "0"] {
        let response = app
            .submit_image(&alice.token, &json!({"prompt": "a cat"}))
            .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert_eq!(response.headers()["x-ratelimit-limit"], "3");
        assert_eq!(response.headers()["x-ratelimit-remaining"], remaining);
    }
    let refused = app
        .submit_image(&alice.token, &json!({"prompt": "a cat"}))
        .await;
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(refused.headers()["x-ratelimit-remaining"], "0");
    let reset: u64 = refused.headers()["x-ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=4).contains(&reset), "reset {reset}");
    assert_error(refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert_eq!(app.task_rows().await, 3);

    // Another user has a bucket of their own; the first gets a token back within a second.
    let bob = app.new_user("bob_1").await;
    app.submit_ok(&bob.token, "a dog").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.submit_ok(&alice.token, "a cat again").await;
}

#[actix_web::test]
async fn the_unfinished_task_quota_frees_as_tasks_end() {
    let app = spawn_app_with(one_gpu(60_000), |s| s.limits.max_queued_per_user = 2).await;
    let alice = app.new_user("alice").await;
    let ids = submit_many(&app, &alice, "mine ", 2).await;
    let over = app
        .submit_image(&alice.token, &json!({"prompt": "one too many"}))
        .await;
    let body = assert_error(over, StatusCode::TOO_MANY_REQUESTS, "quota_exceeded").await;
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("2 unfinished tasks"));
    assert_eq!(app.task_rows().await, 2);

    // Others are not affected; cancelling one (running or queued) frees a place.
    let bob = app.new_user("bob_1").await;
    app.submit_ok(&bob.token, "bob's").await;
    for id in &ids {
        let cancelled = app
            .client
            .post(app.url(&format!("/api/v1/tasks/{id}/cancel")))
            .bearer_auth(&alice.token)
            .send()
            .await
            .unwrap();
        assert_eq!(cancelled.status(), StatusCode::OK);
        app.submit_ok(&alice.token, &format!("after cancelling {id}"))
            .await;
    }
}

/// One simulated GPU that is down until the test has queued its work (the first task
/// waits on a worker for it), so the order is decided by the queue alone.
async fn paused_gpu(tweak: impl FnOnce(&mut infergate::settings::Settings)) -> TestApp {
    let sims = start_sims(one_gpu(20));
    sims[0].set_ready(false);
    spawn_app_on(sims, |s| {
        s.queue.capacity = 1000;
        tweak(s);
    })
    .await
}

#[actix_web::test]
async fn a_user_with_one_task_is_not_stuck_behind_a_flood() {
    let app = paused_gpu(|_| {}).await;
    let flooder = app.new_user("flooder").await;
    let patient = app.new_user("patient").await;
    let flood = submit_many(&app, &flooder, "flood ", 100).await;
    let mine = app.submit_ok(&patient.token, "just one").await;

    // flood 0 waits on the worker; flood 1 and then this one come next.
    let task: Value = app
        .get_task(&patient.token, &mine)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(task["queue_position"], 2, "{task}");
    let last: Value = app
        .get_task(&flooder.token, &flood[99])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(last["queue_position"], 100, "{last}");

    app.sims[0].set_ready(true);
    assert_eq!(
        app.wait_for_end(&patient.token, &mine).await.1["status"],
        "DONE"
    );
    assert_eq!(start_index(&app, "just one"), 2);
}

#[actix_web::test]
async fn without_fair_order_the_flood_goes_first() {
    let app = paused_gpu(|s| s.limits.fair_order = false).await;
    let flooder = app.new_user("flooder").await;
    let patient = app.new_user("patient").await;
    submit_many(&app, &flooder, "flood ", 20).await;
    let mine = app.submit_ok(&patient.token, "just one").await;
    let task: Value = app
        .get_task(&patient.token, &mine)
        .await
        .json()
        .await
        .unwrap();
    // 19 flood tasks wait ahead of it (the first one is on the worker).
    assert_eq!(task["queue_position"], 20, "{task}");
}

#[actix_web::test]
async fn vip_tasks_go_first_and_normal_tasks_still_start_within_the_share() {
    let app = paused_gpu(|s| s.limits.vip_share = 2).await;
    let normal = app.new_user("normal").await;
    let vip = vip_user(&app, "vip").await;
    let waiting = submit_many(&app, &normal, "normal ", 3).await;
    let vips = submit_many(&app, &vip, "vip ", 12).await;

    // normal 0 waits on the worker; then two VIP, one normal, two VIP, one normal...
    let position = |token: &str, id: &str| {
        let (app, token, id) = (&app, token.to_string(), id.to_string());
        async move {
            let task: Value = app.get_task(&token, &id).await.json().await.unwrap();
            task["queue_position"].clone()
        }
    };
    assert_eq!(position(&normal.token, &waiting[1]).await, 3);
    assert_eq!(position(&normal.token, &waiting[2]).await, 6);
    assert_eq!(position(&vip.token, &vips[0]).await, 1);
    assert_eq!(position(&vip.token, &vips[4]).await, 7);

    app.sims[0].set_ready(true);
    for id in &vips {
        app.wait_for_end(&vip.token, id).await;
    }
    for id in &waiting {
        app.wait_for_end(&normal.token, id).await;
    }
    let order = app.sims[0].arrived_prompts();
    assert_eq!(
        order[..8],
        ["normal 0", "vip 0", "vip 1", "normal 1", "vip 2", "vip 3", "normal 2", "vip 4"],
        "{order:?}"
    );
}

#[actix_web::test]
async fn password_guessing_is_throttled_per_name_and_per_address() {
    let app = spawn_app_with(vec![], |s| {
        s.limits.login_per_minute = 60;
        s.limits.login_burst = 3;
    })
    .await;
    app.register("alice", "password123").await;
    for _ in 0..3 {
        assert_eq!(
            app.login("alice", "wrong-guess").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let throttled = app.login("alice", "password123").await;
    assert!(throttled.headers().contains_key("retry-after"));
    assert_error(throttled, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;

    // After the window a correct login works again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        app.login("alice", "password123").await.status(),
        StatusCode::OK
    );

    // Spraying many names from one address hits the address's bucket.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let mut statuses = Vec::new();
    for i in 0..4 {
        statuses.push(
            app.login(&format!("nobody_{i}"), "password123")
                .await
                .status(),
        );
    }
    assert_eq!(statuses[..3], [StatusCode::UNAUTHORIZED; 3]);
    assert_eq!(statuses[3], StatusCode::TOO_MANY_REQUESTS);
}
