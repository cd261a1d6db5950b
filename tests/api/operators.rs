//! The operators' API: every task listed with filters and a cursor, the bulk cancel,
//! retry and delete on a filter, the audit log, the queue's pause across a restart, the
//! queue's depth history, users with their task counts and disabling them, and the
//! retention job.

use std::time::Duration;

use entity::prelude::{Image, Task, TaskEvent};
use entity::task_event;
use infergate::simulator::SimConfig;
use reqwest::{Method, Response, StatusCode};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, Statement};
use serde_json::{json, Value};

use crate::helpers::{assert_error, fast_sim, restart, spawn_app, spawn_app_with, TestApp};
use crate::poll::eventually;

impl TestApp {
    async fn call(&self, method: Method, path: &str, token: &str) -> Response {
        self.client
            .request(method, self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("admin call")
    }

    /// An admin call answered 200, and its body.
    async fn call_ok(&self, method: Method, path: &str, token: &str) -> Value {
        let response = self.call(method, path, token).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        body
    }

    async fn admin_tasks(&self, token: &str, query: &str) -> Value {
        let path = format!("/api/v1/admin/tasks?{query}");
        self.call_ok(Method::GET, &path, token).await
    }

    async fn queue_history(&self, token: &str) -> Value {
        self.call_ok(Method::GET, "/api/v1/admin/queue/history", token)
            .await
    }

    async fn user_id(&self, token: &str, name: &str) -> i64 {
        let users = self
            .call_ok(Method::GET, "/api/v1/admin/users", token)
            .await;
        let found = users["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["username"] == name);
        found.expect("user listed")["id"].as_i64().unwrap()
    }
}

fn ids(page: &Value) -> Vec<String> {
    page["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_id"].as_str().unwrap().to_string())
        .collect()
}

#[actix_web::test]
async fn every_filter_narrows_the_listing_and_the_cursor_walks_it_newest_first() {
    let app = spawn_app().await;
    app.wait_for_healthy(1).await;
    let admin = app.new_admin("root").await.token;
    let (alice, bob) = (
        app.new_user("alice").await.token,
        app.new_user("bob").await.token,
    );
    // Paused, the tasks stay QUEUED while the QUEUED filters are checked.
    app.call_ok(Method::POST, "/api/v1/admin/queue/pause", &admin)
        .await;
    let before = chrono::Utc::now();
    let mut alice_tasks = Vec::new();
    for prompt in ["a red Apple", "an apple tree", "apple pie"] {
        alice_tasks.push(app.submit_ok(&alice, prompt).await);
    }
    let bob_tasks = [
        app.submit_ok(&bob, "blue sky").await,
        app.submit_ok(&bob, "100% blue").await,
    ];
    let alice_id = app.user_id(&admin, "alice").await;

    let all = app.admin_tasks(&admin, "").await;
    assert_eq!(all["total"], 5);
    assert_eq!(all["limit"], 20);
    assert_eq!(all["next"], Value::Null);
    let newest_first: Vec<String> = alice_tasks
        .iter()
        .chain(&bob_tasks)
        .rev()
        .cloned()
        .collect();
    assert_eq!(ids(&all), newest_first);

    let count = |query: &'static str| {
        let app = &app;
        let admin = &admin;
        async move {
            app.admin_tasks(admin, query).await["total"]
                .as_u64()
                .unwrap()
        }
    };
    let of_alice = app.admin_tasks(&admin, &format!("users={alice_id}")).await;
    assert_eq!(of_alice["total"], 3);
    assert!(ids(&of_alice).iter().all(|id| alice_tasks.contains(id)));
    assert_eq!(count("q=APPLE").await, 3);
    assert_eq!(
        count("q=100%25").await,
        1,
        "% is a character, not a wildcard"
    );
    assert_eq!(count("q=_").await, 0, "_ is a character, not a wildcard");
    assert_eq!(count("statuses=QUEUED").await, 5);
    assert_eq!(count("statuses=DONE,FAILED").await, 0);
    assert_eq!(count("kinds=speech").await, 0);
    assert_eq!(count("kinds=image").await, 5);
    let window = |name: &str, t: chrono::DateTime<chrono::Utc>| {
        format!(
            "{name}={}",
            t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .replace('+', "%2B")
        )
    };
    let future = chrono::Utc::now() + chrono::Duration::hours(1);
    assert_eq!(
        app.admin_tasks(&admin, &window("created_after", future))
            .await["total"],
        0
    );
    assert_eq!(
        app.admin_tasks(&admin, &window("created_before", future))
            .await["total"],
        5
    );
    assert_eq!(
        app.admin_tasks(&admin, &window("started_after", before))
            .await["total"],
        0
    );

    // Pages of two: 2, 2, 1, each `next` the `from` of the following page.
    let mut walked = Vec::new();
    let mut from: Option<i64> = None;
    let mut pages = 0;
    loop {
        let query = match from {
            Some(from) => format!("limit=2&from={from}"),
            None => "limit=2".to_string(),
        };
        let page = app.admin_tasks(&admin, &query).await;
        assert_eq!(page["total"], 5);
        walked.extend(ids(&page));
        pages += 1;
        match page["next"].as_i64() {
            Some(next) => from = Some(next),
            None => break,
        }
    }
    assert_eq!((pages, walked), (3, newest_first));

    // Once they ran: started, finished and on which instance.
    app.call_ok(Method::POST, "/api/v1/admin/queue/resume", &admin)
        .await;
    for task_id in &alice_tasks {
        app.wait_for_status(&alice, task_id, "DONE").await;
    }
    for task_id in &bob_tasks {
        app.wait_for_status(&bob, task_id, "DONE").await;
    }
    assert_eq!(count("statuses=done").await, 5);
    assert_eq!(
        app.admin_tasks(&admin, &window("started_after", before))
            .await["total"],
        5
    );
    assert_eq!(
        app.admin_tasks(&admin, &window("finished_after", before))
            .await["total"],
        5
    );
    assert_eq!(
        app.admin_tasks(&admin, &window("finished_before", before))
            .await["total"],
        0
    );
    let done = app.admin_tasks(&admin, "limit=1").await;
    let task = &done["results"][0];
    assert!(
        task["started_at"].is_string() && task["finished_at"].is_string(),
        "{task}"
    );
    let instance = task["instance"].as_str().unwrap().to_string();
    let on_it = app
        .admin_tasks(&admin, &format!("instances={instance}"))
        .await;
    assert_eq!(on_it["total"], 5);
    assert_eq!(count("instances=http://elsewhere:1").await, 0);

    // Any task in detail, with its events.
    let detail = app
        .call_ok(
            Method::GET,
            &format!("/api/v1/admin/tasks/{}", bob_tasks[0]),
            &admin,
        )
        .await;
    let kinds: Vec<&str> = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["queued", "running", "done"]);

    for bad in [
        "statuses=LOST",
        "users=alice",
        "kinds=video",
        "limit=0",
        "limit=1001",
        "from=-1",
        "unknown=1",
        "created_after=yesterday",
    ] {
        let response = app
            .call(Method::GET, &format!("/api/v1/admin/tasks?{bad}"), &admin)
            .await;
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    let reversed = format!(
        "{}&{}",
        window("created_after", future),
        window("created_before", before)
    );
    let response = app
        .call(
            Method::GET,
            &format!("/api/v1/admin/tasks?{reversed}"),
            &admin,
        )
        .await;
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    let response = app.call(Method::GET, "/api/v1/admin/tasks", &alice).await;
    assert_error(response, StatusCode::FORBIDDEN, "forbidden").await;
    let response = app
        .call(Method::GET, "/api/v1/admin/tasks/no-such-task", &admin)
        .await;
    assert_error(response, StatusCode::NOT_FOUND, "not_found").await;
}

#[actix_web::test]
async fn a_bulk_action_without_a_filter_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let admin = app.new_admin("root").await.token;
    let user = app.new_user("alice").await.token;
    let task_id = app.submit_ok(&user, "a cat").await;
    app.wait_for_end(&user, &task_id).await;
    for (method, path) in [
        (Method::POST, "/api/v1/admin/tasks/cancel"),
        (Method::POST, "/api/v1/admin/tasks/retry"),
        (Method::DELETE, "/api/v1/admin/tasks"),
    ] {
        for query in [
            "",
            "?q=",
            "?limit=5",
            "?statuses=DONE&limit=5",
            "?status=DONE",
        ] {
            let response = app
                .call(method.clone(), &format!("{path}{query}"), &admin)
                .await;
            assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
        }
    }
    assert_eq!(app.task_rows().await, 1);
    let audit = app
        .call_ok(Method::GET, "/api/v1/admin/audit", &admin)
        .await;
    assert_eq!(audit["total"], 0);
}

#[actix_web::test]
async fn bulk_cancel_stops_running_and_queued_tasks_as_their_owners_cancel_would() {
    // Room for more calls in the simulator, which cannot tell a dropped call (nor one
    // started for a task cancelled meanwhile) from a live one: the gateway gives its
    // instance one, so a later call shows the first's slot was freed.
    let slow = SimConfig {
        latency_ms: 30_000,
        capacity: 8,
        ..SimConfig::default()
    };
    let app = spawn_app_with(vec![slow], |_| {}).await;
    app.wait_for_healthy(1).await;
    let admin = app.new_admin("root").await.token;
    let (alice, bob) = (
        app.new_user("alice").await.token,
        app.new_user("bob").await.token,
    );
    let alice_tasks = [
        app.submit_ok(&alice, "one").await,
        app.submit_ok(&alice, "two").await,
        app.submit_ok(&alice, "three").await,
    ];
    app.wait_for_status(&alice, &alice_tasks[0], "RUNNING")
        .await;
    let alice_id = app.user_id(&admin, "alice").await;

    let path = format!("/api/v1/admin/tasks/cancel?users={alice_id}");
    let cancelled = app.call_ok(Method::POST, &path, &admin).await;
    assert_eq!(cancelled, json!({"count": 3}));
    for task_id in &alice_tasks {
        app.wait_for_status(&alice, task_id, "CANCELLED").await;
    }
    // The running call was dropped and its slot freed: bob's task runs at once, not
    // after the 30 s the simulator takes.
    app.wait_for_stats("no call in flight", |s| {
        s["image_instances"]["in_flight"] == 0
    })
    .await;
    app.sims[0].set_latency(Duration::from_millis(20));
    let bobs = app.submit_ok(&bob, "four").await;
    app.wait_for_status(&bob, &bobs, "DONE").await;
    let running = app
        .call_ok(
            Method::GET,
            &format!("/api/v1/admin/tasks/{}", alice_tasks[0]),
            &admin,
        )
        .await;
    assert_eq!(running["task"]["status"], "CANCELLED");
    let last = running["events"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["type"], "cancelled");

    // Again: nothing left to cancel.
    assert_eq!(app.call_ok(Method::POST, &path, &admin).await["count"], 0);
}

#[actix_web::test]
async fn bulk_retry_requeues_failed_tasks_with_attempts_reset_as_far_as_the_queue_has_room() {
    let failing = SimConfig {
        latency_ms: 20,
        failure_rate: 1.0,
        ..SimConfig::default()
    };
    let app = spawn_app_with(vec![failing], |s| {
        s.workers.max_attempts = 1;
        s.queue.capacity = 2;
    })
    .await;
    app.wait_for_healthy(1).await;
    let admin = app.new_admin("root").await.token;
    let user = app.new_user("alice").await.token;
    let mut tasks = Vec::new();
    for prompt in ["one", "two", "three"] {
        let task_id = app.submit_ok(&user, prompt).await;
        app.wait_for_status(&user, &task_id, "FAILED").await;
        tasks.push(task_id);
    }
    app.sims[0].set_failure_rate(0.0);
    app.call_ok(Method::POST, "/api/v1/admin/queue/pause", &admin)
        .await;

    let retried = app
        .call_ok(
            Method::POST,
            "/api/v1/admin/tasks/retry?statuses=FAILED",
            &admin,
        )
        .await;
    assert_eq!(
        retried,
        json!({"count": 2, "skipped": 1}),
        "a queue of 2 takes 2"
    );
    let stats = app.stats().await;
    assert_eq!(stats["queue_length"], 2);
    let queued = app.admin_tasks(&admin, "statuses=QUEUED").await;
    for task in queued["results"].as_array().unwrap() {
        assert_eq!(task["attempts"], 0);
        assert!(task.get("error").is_none(), "{task}");
    }
    // Full: a submission is refused, and so is more retrying.
    let refused = app.submit_image(&user, &json!({"prompt": "four"})).await;
    assert_error(refused, StatusCode::SERVICE_UNAVAILABLE, "queue_full").await;
    let again = app
        .call_ok(
            Method::POST,
            "/api/v1/admin/tasks/retry?statuses=FAILED",
            &admin,
        )
        .await;
    assert_eq!(again, json!({"count": 0, "skipped": 1}));

    app.call_ok(Method::POST, "/api/v1/admin/queue/resume", &admin)
        .await;
    app.wait_for_stats("the retried tasks ran", |s| s["queue_length"] == 0)
        .await;
    let last = app
        .call_ok(Method::POST, "/api/v1/admin/tasks/retry?q=three", &admin)
        .await;
    assert_eq!(
        last["count"].as_u64().unwrap() + last["skipped"].as_u64().unwrap(),
        1
    );
    app.call_ok(
        Method::POST,
        "/api/v1/admin/tasks/retry?statuses=FAILED",
        &admin,
    )
    .await;
    for task_id in &tasks {
        let task = app.wait_for_status(&user, task_id, "DONE").await;
        assert_eq!(task["attempts"], 1);
    }
    let detail = app
        .call_ok(
            Method::GET,
            &format!("/api/v1/admin/tasks/{}", tasks[0]),
            &admin,
        )
        .await;
    let kinds: Vec<&str> = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["queued", "running", "failed", "queued", "running", "done"]
    );
}

#[actix_web::test]
async fn bulk_delete_removes_finished_tasks_with_their_images_and_events_only() {
    let app = spawn_app().await;
    app.wait_for_healthy(1).await;
    let admin = app.new_admin("root").await.token;
    let (alice, bob) = (
        app.new_user("alice").await.token,
        app.new_user("bob").await.token,
    );
    let done = [
        app.submit_ok(&alice, "one").await,
        app.submit_ok(&alice, "two").await,
    ];
    for task_id in &done {
        app.wait_for_status(&alice, task_id, "DONE").await;
    }
    let bobs = app.submit_ok(&bob, "bob's").await;
    app.wait_for_status(&bob, &bobs, "DONE").await;
    app.call_ok(Method::POST, "/api/v1/admin/queue/pause", &admin)
        .await;
    let waiting = app.submit_ok(&alice, "three").await;
    let alice_id = app.user_id(&admin, "alice").await;

    let path = format!("/api/v1/admin/tasks?users={alice_id}");
    assert_eq!(
        app.call_ok(Method::DELETE, &path, &admin).await,
        json!({"count": 2})
    );
    assert_eq!(
        app.task_rows().await,
        2,
        "bob's task and the queued one stay"
    );
    assert_eq!(app.image_rows().await, 1);
    let events = TaskEvent::find()
        .filter(task_event::Column::TaskId.is_in(done.iter().cloned()))
        .count(&app.db)
        .await
        .unwrap();
    assert_eq!(events, 0);
    assert_eq!(
        app.get_task(&alice, &done[0]).await.status(),
        StatusCode::NOT_FOUND
    );
    app.wait_for_status(&alice, &waiting, "QUEUED").await;
    app.wait_for_status(&bob, &bobs, "DONE").await;
}

#[actix_web::test]
async fn the_audit_log_names_who_did_what_on_which_filter_and_how_many() {
    let app = spawn_app().await;
    app.wait_for_healthy(1).await;
    let admin = app.new_admin("root").await.token;
    let user = app.new_user("alice").await.token;
    let alice_id = app.user_id(&admin, "alice").await;
    let task_id = app.submit_ok(&user, "a cat").await;
    app.wait_for_end(&user, &task_id).await;

    let other = crate::helpers::start_sims(vec![fast_sim()]);
    let id = app.add_image_instance(&admin, &other[0].url()).await;
    app.patch_instance(&admin, id, &json!({"enabled": false}))
        .await;
    app.delete_instance(&admin, id).await;
    let change = app
        .client
        .patch(app.url(&format!("/api/v1/admin/users/{alice_id}")))
        .bearer_auth(&admin)
        .json(&json!({"role": "vip"}))
        .send()
        .await
        .unwrap();
    assert_eq!(change.status(), StatusCode::OK);
    app.call_ok(Method::POST, "/api/v1/admin/queue/pause", &admin)
        .await;
    app.call_ok(Method::POST, "/api/v1/admin/queue/resume", &admin)
        .await;
    let path = format!("/api/v1/admin/tasks?users={alice_id}&statuses=DONE");
    app.call_ok(Method::DELETE, &path, &admin).await;

    let audit = app
        .call_ok(Method::GET, "/api/v1/admin/audit", &admin)
        .await;
    let entries = audit["results"].as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "tasks.delete",
            "queue.resume",
            "queue.pause",
            "user.update",
            "instance.remove",
            "instance.update",
            "instance.add"
        ]
    );
    assert!(entries
        .iter()
        .all(|e| e["actor"] == "root" && e["at"].is_string()));
    assert_eq!(
        entries[0]["filter"],
        json!({"statuses": ["DONE"], "users": [alice_id]})
    );
    assert_eq!(entries[0]["count"], 1);
    assert_eq!(entries[3]["target"], "alice");
    assert_eq!(
        entries[3]["filter"],
        json!({"role": "vip", "disabled": null})
    );
    assert_eq!(entries[5]["target"], id.to_string());
    assert_eq!(entries[5]["filter"]["enabled"], false);
    // Paged like the tasks.
    let first = app
        .call_ok(Method::GET, "/api/v1/admin/audit?limit=4", &admin)
        .await;
    assert_eq!(first["results"].as_array().unwrap().len(), 4);
    let next = first["next"].as_i64().unwrap();
    let rest = app
        .call_ok(
            Method::GET,
            &format!("/api/v1/admin/audit?limit=4&from={next}"),
            &admin,
        )
        .await;
    assert_eq!(
        (
            rest["results"].as_array().unwrap().len(),
            rest["total"].clone()
        ),
        (3, json!(7))
    );
    let response = app.call(Method::GET, "/api/v1/admin/audit", &user).await;
    assert_error(response, StatusCode::FORBIDDEN, "forbidden").await;
}

#[actix_web::test]
async fn while_paused_running_tasks_finish_new_ones_wait_up_to_capacity_and_a_restart_keeps_the_pause(
) {
    let slow = SimConfig {
        latency_ms: 1_000,
        ..SimConfig::default()
    };
    let app = spawn_app_with(vec![slow], |s| s.queue.capacity = 2).await;
    app.wait_for_healthy(1).await;
    let admin = app.new_admin("root").await.token;
    let user = app.new_user("alice").await.token;
    let running = app.submit_ok(&user, "running").await;
    app.wait_for_status(&user, &running, "RUNNING").await;

    let paused = app
        .call_ok(Method::POST, "/api/v1/admin/queue/pause", &admin)
        .await;
    assert_eq!(paused, json!({"paused": true}));
    assert_eq!(app.stats().await["paused"], true);
    let waiting = [
        app.submit_ok(&user, "first").await,
        app.submit_ok(&user, "second").await,
    ];
    let full = app.submit_image(&user, &json!({"prompt": "third"})).await;
    assert_error(full, StatusCode::SERVICE_UNAVAILABLE, "queue_full").await;
    app.wait_for_status(&user, &running, "DONE").await;
    // Its worker is idle again, and still the two wait.
    app.wait_for_stats("an idle worker", |s| s["busy_workers"] == 0)
        .await;
    let stats = app.stats().await;
    assert_eq!(
        (stats["queue_length"].clone(), stats["paused"].clone()),
        (json!(2), json!(true))
    );
    for task_id in &waiting {
        app.wait_for_status(&user, task_id, "QUEUED").await;
    }

    let app = restart(app.stop().await, |_| {}).await;
    app.wait_for_healthy(1).await;
    app.wait_for_workers(1).await;
    let stats = app.stats().await;
    assert_eq!(
        (stats["queue_length"].clone(), stats["paused"].clone()),
        (json!(2), json!(true))
    );
    assert_eq!(stats["busy_workers"], 0);

    app.sims[0].set_latency(Duration::from_millis(20));
    let resumed = app
        .call_ok(Method::POST, "/api/v1/admin/queue/resume", &admin)
        .await;
    assert_eq!(resumed, json!({"paused": false}));
    for task_id in &waiting {
        app.wait_for_status(&user, task_id, "DONE").await;
    }
    assert_eq!(app.stats().await["paused"], false);
}

#[actix_web::test]
async fn the_queue_depth_is_sampled_every_interval_and_its_history_outlives_a_restart() {
    let app = spawn_app_with(vec![fast_sim()], |s| s.stats.depth_sample_secs = 1).await;
    app.wait_for_healthy(1).await;
    let admin = app.new_admin("root").await.token;
    let user = app.new_user("alice").await.token;
    app.call_ok(Method::POST, "/api/v1/admin/queue/pause", &admin)
        .await;
    for prompt in ["one", "two", "three"] {
        app.submit_ok(&user, prompt).await;
    }
    let depths = |page: &Value| -> Vec<(i64, i64)> {
        let samples = page["samples"].as_array().unwrap();
        samples
            .iter()
            .map(|s| {
                (
                    s["queued"].as_i64().unwrap(),
                    s["running"].as_i64().unwrap(),
                )
            })
            .collect()
    };
    let within = Duration::from_secs(10);
    eventually("a sample of the three queued tasks", within, || async {
        let depths = depths(&app.queue_history(&admin).await);
        if depths.contains(&(3, 0)) {
            Ok(())
        } else {
            Err(depths)
        }
    })
    .await;
    let page = app.queue_history(&admin).await;
    assert_eq!(page["sample_secs"], 1);
    let times: Vec<&str> = page["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["at"].as_str().unwrap())
        .collect();
    let mut ordered = times.clone();
    ordered.sort();
    ordered.dedup();
    assert_eq!(times, ordered, "one sample per interval, oldest first");

    let app = restart(app.stop().await, |s| s.stats.depth_sample_secs = 1).await;
    app.wait_for_healthy(1).await;
    app.call_ok(Method::POST, "/api/v1/admin/queue/resume", &admin)
        .await;
    eventually(
        "a sample of the drained queue after the restart",
        within,
        || async {
            let depths = depths(&app.queue_history(&admin).await);
            let queued = depths.iter().position(|d| *d == (3, 0));
            let drained = depths.iter().rposition(|d| *d == (0, 0));
            match (queued, drained) {
                (Some(q), Some(d)) if q < d => Ok(()),
                _ => Err(depths),
            }
        },
    )
    .await;

    for bad in ["minutes=0", "minutes=1441", "minutes=x", "minuets=5"] {
        let path = format!("/api/v1/admin/queue/history?{bad}");
        assert_error(
            app.call(Method::GET, &path, &admin).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
    }
    assert_error(
        app.call(Method::GET, "/api/v1/admin/queue/history", &user)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    // Asked for the last minute only, older samples stay out: one from two hours ago
    // is in the last three hours, not in the default hour nor the last minute.
    let old = entity::queue_sample::ActiveModel {
        at: sea_orm::Set(chrono::Utc::now() - chrono::Duration::hours(2)),
        queued: sea_orm::Set(77),
        running: sea_orm::Set(0),
    };
    sea_orm::ActiveModelTrait::insert(old, &app.db)
        .await
        .unwrap();
    let has_old = |page: &Value| depths(page).contains(&(77, 0));
    let page = |minutes: &str| {
        let path = format!("/api/v1/admin/queue/history{minutes}");
        let (app, admin) = (&app, &admin);
        async move { app.call_ok(Method::GET, &path, admin).await }
    };
    assert!(has_old(&page("?minutes=180").await));
    assert!(!has_old(&page("").await));
    let last_minute = page("?minutes=1").await;
    assert!(!has_old(&last_minute));
    assert!(depths(&last_minute).len() <= 61, "{last_minute}");
}

#[actix_web::test]
async fn admins_see_users_with_task_counts_and_a_disabled_users_tokens_and_keys_stop_at_once() {
    let app = spawn_app().await;
    app.wait_for_healthy(1).await;
    let admin = app.new_admin("root").await.token;
    let user = app.new_user("alice").await.token;
    let key = app.create_key(&user, "device").await["key"]
        .as_str()
        .unwrap()
        .to_string();
    let task_id = app.submit_ok(&user, "a cat").await;
    app.wait_for_status(&user, &task_id, "DONE").await;

    let users = app
        .call_ok(Method::GET, "/api/v1/admin/users", &admin)
        .await;
    assert_eq!(users["total"], 2);
    let alice = users["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "alice")
        .unwrap()
        .clone();
    assert_eq!(
        alice["tasks"],
        json!({"queued": 0, "running": 0, "done": 1, "failed": 0, "cancelled": 0})
    );
    assert_eq!(
        (alice["role"].clone(), alice["disabled"].clone()),
        (json!("user"), json!(false))
    );
    let alice_id = alice["id"].as_i64().unwrap();

    let patch = |body: Value, id: i64| {
        let app = &app;
        let admin = &admin;
        async move {
            app.client
                .patch(app.url(&format!("/api/v1/admin/users/{id}")))
                .bearer_auth(admin)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let disabled = patch(json!({"disabled": true}), alice_id).await;
    assert_eq!(disabled.status(), StatusCode::OK);
    assert_eq!(disabled.json::<Value>().await.unwrap()["disabled"], true);
    // At once, with no wait for any cache: the token, the key and a login.
    let response = app.get("/api/v1/tasks", &user).await;
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let response = app
        .client
        .get(app.url("/v1/models"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.login("alice", "password123").await.status(),
        StatusCode::UNAUTHORIZED
    );

    let enabled = patch(json!({"disabled": false, "role": "vip"}), alice_id).await;
    assert_eq!(enabled.json::<Value>().await.unwrap()["role"], "vip");
    assert_eq!(
        app.get("/api/v1/tasks", &user).await.status(),
        StatusCode::OK
    );
    let response = app
        .client
        .get(app.url("/v1/models"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let root_id = app.user_id(&admin, "root").await;
    assert_error(
        patch(json!({"disabled": true}), root_id).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    assert_error(
        patch(json!({}), alice_id).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    assert_error(
        patch(json!({"role": "owner"}), alice_id).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    assert_error(
        patch(json!({"banned": true}), alice_id).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    assert_error(
        patch(json!({"disabled": true}), 999_999).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[actix_web::test]
async fn retention_deletes_finished_tasks_past_their_days_with_images_and_events_and_gives_the_space_back(
) {
    // Large images, so deleting them frees whole pages.
    let padded = SimConfig {
        latency_ms: 20,
        answer_bytes: 400_000,
        ..SimConfig::default()
    };
    let app = spawn_app_with(vec![padded], |s| s.retention.interval_secs = 1).await;
    app.wait_for_healthy(1).await;
    let admin = app.new_admin("root").await.token;
    let user = app.new_user("alice").await.token;
    let mut done = Vec::new();
    for prompt in ["one", "two", "three"] {
        let task_id = app.submit_ok(&user, prompt).await;
        app.wait_for_status(&user, &task_id, "DONE").await;
        done.push(task_id);
    }
    app.call_ok(Method::POST, "/api/v1/admin/queue/pause", &admin)
        .await;
    let queued = app.submit_ok(&user, "waiting").await;
    let auto_vacuum = app
        .db
        .query_one(Statement::from_string(
            app.db.get_database_backend(),
            "PRAGMA auto_vacuum",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index::<i32>(0)
        .unwrap();
    assert_eq!(
        auto_vacuum, 2,
        "a new database is made with incremental auto-vacuum"
    );
    let size_before = app.stats().await["database"]["bytes"].as_u64().unwrap();
    assert!(size_before > 3 * 400_000, "{size_before}");

    // Eight days on, past `retention.finished_days` (7).
    app.clock.advance(Duration::from_secs(8 * 86_400));
    eventually(
        "finished tasks deleted",
        Duration::from_secs(20),
        || async {
            let rows = app.task_rows().await;
            if rows == 1 {
                Ok(())
            } else {
                Err(rows)
            }
        },
    )
    .await;
    assert_eq!(app.image_rows().await, 0);
    let events = TaskEvent::find()
        .filter(task_event::Column::TaskId.is_in(done.iter().cloned()))
        .count(&app.db)
        .await
        .unwrap();
    assert_eq!(events, 0);
    app.wait_for_status(&user, &queued, "QUEUED").await;
    let stats = eventually(
        "freed pages given back",
        Duration::from_secs(20),
        || async {
            let stats = app.stats().await;
            if stats["database"]["free_bytes"] == 0 {
                Ok(stats)
            } else {
                Err(stats)
            }
        },
    )
    .await;
    let size_after = stats["database"]["bytes"].as_u64().unwrap();
    assert!(
        size_after + 3 * 300_000 < size_before,
        "{size_before} → {size_after}"
    );
    assert_eq!(Image::find().count(&app.db).await.unwrap(), 0);
    assert_eq!(Task::find().count(&app.db).await.unwrap(), 1);
}
