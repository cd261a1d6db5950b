//! Push over Server-Sent Events: every change in order, replay after a reconnect with
//! no gap and no duplicate, a snapshot first, tickets, isolation and limits.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{assert_error, fast_sim, spawn_app_with, TestApp};
use crate::sse::{types, Frame, Sse};
use infergate::simulator::SimConfig;

const WAIT: Duration = Duration::from_secs(10);

fn sim(latency_ms: u64) -> SimConfig {
    SimConfig {
        latency_ms,
        ..SimConfig::default()
    }
}

impl TestApp {
    async fn stream(&self, path: &str, token: &str) -> Sse {
        Sse::open(self.client.get(self.url(path)).bearer_auth(token)).await
    }

    async fn stream_after(&self, path: &str, token: &str, last_event_id: i64) -> Sse {
        let request = self
            .client
            .get(self.url(path))
            .bearer_auth(token)
            .header("Last-Event-ID", last_event_id.to_string());
        Sse::open(request).await
    }
}

fn is_end(frame: &Frame) -> bool {
    matches!(
        frame.data["type"].as_str(),
        Some("done" | "failed" | "cancelled")
    )
}

/// Every stored change carries its seq as the SSE id, one more than the last.
fn assert_numbered(frames: &[Frame]) {
    for pair in frames.windows(2) {
        assert_eq!(pair[1].id.unwrap(), pair[0].id.unwrap() + 1, "{frames:?}");
    }
    for frame in frames {
        assert_eq!(frame.id, frame.data["seq"].as_i64(), "{frame:?}");
    }
}

#[actix_web::test]
async fn the_user_stream_sees_queued_running_done_in_order() {
    let app = spawn_app_with(vec![sim(150)], |_| {}).await;
    let user = app.new_user("watcher").await;
    let mut stream = app.stream("/api/v1/events", &user.token).await;
    assert_eq!(stream.status, StatusCode::OK);
    let task_id = app.submit_ok(&user.token, "a lighthouse").await;
    let frames = stream.changes_until(WAIT, is_end).await;
    assert_eq!(types(&frames), ["queued", "running", "done"]);
    assert_numbered(&frames);
    for frame in &frames {
        assert_eq!(frame.data["task_id"], task_id.as_str());
    }
    assert_eq!(frames[1].data["status"], "RUNNING");
    assert_eq!(frames[1].data["attempt"], 1);
    assert!(frames[1].data["instance"].is_u64(), "{:?}", frames[1]);
    let done = &frames[2].data;
    assert_eq!(done["status"], "DONE");
    let image = app
        .get(done["result_url"].as_str().unwrap(), &user.token)
        .await;
    assert_eq!(image.status(), StatusCode::OK);
    // Small: no image inline.
    assert!(serde_json::to_string(done).unwrap().len() < 400, "{done}");
}

#[actix_web::test]
async fn a_change_lingers_for_what_follows_and_the_ending_takes_it_along() {
    // The task takes 300 ms; its queued and running are held for up to a second, and
    // go out with the done, which is not held.
    let app = spawn_app_with(vec![sim(300)], |s| s.events.linger_ms = 1000).await;
    let user = app.new_user("lingerer").await;
    let mut stream = app.stream("/api/v1/events", &user.token).await;
    let submitted = std::time::Instant::now();
    app.submit_ok(&user.token, "a slow lighthouse").await;
    let mut arrivals = Vec::new();
    loop {
        let frame = stream.next_within(WAIT).await.expect("the stream goes on");
        if frame.id.is_none() {
            continue; // progress
        }
        arrivals.push((
            frame.data["type"].as_str().unwrap().to_string(),
            submitted.elapsed(),
        ));
        if is_end(&frame) {
            break;
        }
    }
    let types: Vec<&str> = arrivals.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, ["queued", "running", "done"]);
    let (queued, done) = (arrivals[0].1, arrivals[2].1);
    assert!(
        queued >= Duration::from_millis(250),
        "queued came at {queued:?}, not held"
    );
    assert!(
        done - queued < Duration::from_millis(100),
        "queued at {queued:?}, done at {done:?}: not in one write"
    );
    // The done itself was not held to the end of the second.
    assert!(
        done < Duration::from_millis(900),
        "done came at {done:?}: held"
    );
}

#[actix_web::test]
async fn a_task_stream_opens_with_a_snapshot_shows_progress_and_ends_after_the_last_change() {
    let app = spawn_app_with(vec![sim(1500)], |_| {}).await;
    let user = app.new_user("patient").await;
    // The only GPU is busy with the first; the second waits.
    let first = app.submit_ok(&user.token, "first").await;
    let second = app.submit_ok(&user.token, "second").await;
    let path = format!("/api/v1/tasks/{second}/events");
    let mut stream = app.stream(&path, &user.token).await;
    let snapshot = stream.next_within(WAIT).await.unwrap();
    assert_eq!(snapshot.event.as_deref(), Some("snapshot"));
    assert_eq!(snapshot.data["task_id"], second.as_str());
    assert_eq!(snapshot.data["status"], "QUEUED");
    assert_eq!(snapshot.data["queue_position"], 1);
    let mut frames = Vec::new();
    while let Some(frame) = stream.next_within(WAIT).await {
        assert_eq!(frame.data["task_id"], second.as_str(), "only its own task");
        frames.push(frame);
    }
    let changes: Vec<Frame> = frames
        .iter()
        .filter(|f| f.data["type"] != "progress")
        .cloned()
        .collect();
    assert_eq!(types(&changes), ["running", "done"]);
    let progress: Vec<&Frame> = frames
        .iter()
        .filter(|f| f.data["type"] == "progress")
        .collect();
    assert!(
        !progress.is_empty(),
        "a queued task gets progress: {frames:?}"
    );
    for p in progress {
        assert_eq!(p.id, None, "progress has no id");
        assert_eq!(p.data["queue_position"], 1);
        assert_eq!(p.data["status"], "QUEUED");
    }
    let (_, task) = app.wait_for_end(&user.token, &first).await;
    assert_eq!(task["status"], "DONE");
}

#[actix_web::test]
async fn a_reconnect_with_last_event_id_gets_exactly_the_missed_events() {
    let app = spawn_app_with(vec![sim(400)], |_| {}).await;
    let user = app.new_user("flaky_wifi").await;
    let mut stream = app.stream("/api/v1/events", &user.token).await;
    let task_id = app.submit_ok(&user.token, "a cat").await;
    let before = stream
        .changes_until(WAIT, |f| f.data["type"] == "running")
        .await;
    let last = before.last().unwrap().id.unwrap();
    drop(stream);
    // Another task's whole life, and the rest of this one's, while disconnected.
    let other = app.submit_ok(&user.token, "a dog").await;
    for id in [&task_id, &other] {
        assert_eq!(app.wait_for_end(&user.token, id).await.1["status"], "DONE");
    }
    let mut resumed = app.stream_after("/api/v1/events", &user.token, last).await;
    let missed = resumed
        .changes_until(WAIT, |f| is_end(f) && f.data["task_id"] == other.as_str())
        .await;
    assert_eq!(missed[0].id, Some(last + 1), "no gap: {missed:?}");
    assert_numbered(&missed);
    let of = |id: &str| -> Vec<String> {
        let frames: Vec<Frame> = missed
            .iter()
            .filter(|f| f.data["task_id"] == id)
            .cloned()
            .collect();
        types(&frames)
    };
    assert_eq!(of(&task_id), ["done"]);
    assert_eq!(of(&other), ["queued", "running", "done"]);
    // And then it is live: nothing more until something happens.
    let third = app.submit_ok(&user.token, "a fish").await;
    let live = resumed.changes_until(WAIT, |_| true).await;
    assert_eq!(live[0].data["task_id"], third.as_str());
    assert_eq!(live[0].id, Some(missed.last().unwrap().id.unwrap() + 1));

    // `?after=` is the same as the header, for clients that cannot set it.
    let mut by_query = Sse::open(
        app.client
            .get(app.url(&format!("/api/v1/events?after={last}")))
            .bearer_auth(&user.token),
    )
    .await;
    let first = by_query.changes_until(WAIT, |_| true).await;
    assert_eq!(first[0].id, Some(last + 1));
}

#[actix_web::test]
async fn a_task_that_ended_before_the_stream_gives_its_snapshot_and_ends() {
    let app = spawn_app_with(vec![fast_sim()], |_| {}).await;
    let user = app.new_user("late").await;
    let task_id = app.submit_ok(&user.token, "quick").await;
    app.wait_for_end(&user.token, &task_id).await;
    let path = format!("/api/v1/tasks/{task_id}/events");
    let mut stream = app.stream(&path, &user.token).await;
    let snapshot = stream.next_within(WAIT).await.unwrap();
    assert_eq!(snapshot.event.as_deref(), Some("snapshot"));
    assert_eq!(snapshot.data["status"], "DONE");
    assert!(snapshot.data["result_url"].is_string());
    let last = snapshot
        .id
        .expect("the snapshot's id is the last stored seq");
    assert!(
        stream.next_within(WAIT).await.is_none(),
        "and the stream ends"
    );

    // Resumed after its end: 204, which stops EventSource from reconnecting.
    let resumed = app.stream_after(&path, &user.token, last).await;
    assert_eq!(resumed.status, StatusCode::NO_CONTENT);
    // Resumed before its end: what it missed, up to the end.
    let mut replay = app.stream_after(&path, &user.token, 0).await;
    let mut seen = Vec::new();
    while let Some(frame) = replay.next_within(WAIT).await {
        seen.push(frame);
    }
    assert_eq!(types(&seen), ["queued", "running", "done"]);
}

#[actix_web::test]
async fn the_user_stream_interleaves_two_tasks_each_in_order() {
    let app = spawn_app_with(vec![sim(300), sim(300)], |_| {}).await;
    app.wait_for_healthy(2).await;
    let user = app.new_user("twice").await;
    let mut stream = app.stream("/api/v1/events", &user.token).await;
    let a = app.submit_ok(&user.token, "a").await;
    let b = app.submit_ok(&user.token, "b").await;
    let mut ended = 0;
    let frames = stream
        .changes_until(WAIT, |f| {
            ended += usize::from(is_end(f));
            ended == 2
        })
        .await;
    assert_numbered(&frames);
    for id in [&a, &b] {
        let own: Vec<Frame> = frames
            .iter()
            .filter(|f| f.data["task_id"] == id.as_str())
            .cloned()
            .collect();
        assert_eq!(types(&own), ["queued", "running", "done"], "{id}");
    }
    // Interleaved: both ran at once, so b's events are not all after a's.
    let position = |id: &str, kind: &str| {
        frames
            .iter()
            .position(|f| f.data["task_id"] == id && f.data["type"] == kind)
            .unwrap()
    };
    assert!(position(&b, "running") < position(&a, "done"), "{frames:?}");
}

#[actix_web::test]
async fn a_retry_and_a_failure_are_events_with_their_errors() {
    // Every call fails: the first attempt is retried, the second is the last.
    let failing = SimConfig {
        latency_ms: 10,
        failure_rate: 1.0,
        ..SimConfig::default()
    };
    let app = spawn_app_with(vec![failing], |s| s.workers.max_attempts = 2).await;
    let user = app.new_user("unlucky").await;
    let mut stream = app.stream("/api/v1/events", &user.token).await;
    app.submit_ok(&user.token, "doomed").await;
    let frames = stream.changes_until(WAIT, is_end).await;
    assert_eq!(
        types(&frames),
        ["queued", "running", "retrying", "running", "failed"]
    );
    let retry = &frames[2].data;
    assert_eq!(retry["status"], "QUEUED");
    assert_eq!(retry["attempt"], 1);
    assert!(retry["error"].as_str().is_some_and(|e| !e.is_empty()));
    assert!(retry["retry_at"].is_string());
    assert_eq!(frames[3].data["attempt"], 2);
    let failed = &frames[4].data;
    assert_eq!(
        (failed["status"].as_str(), failed["attempt"].as_i64()),
        (Some("FAILED"), Some(2))
    );
    assert!(failed["error"].is_string());
}

#[actix_web::test]
async fn a_cancel_is_an_event() {
    let app = spawn_app_with(vec![sim(5000)], |_| {}).await;
    let user = app.new_user("impatient").await;
    let mut stream = app.stream("/api/v1/events", &user.token).await;
    let task_id = app.submit_ok(&user.token, "too slow").await;
    stream
        .changes_until(WAIT, |f| f.data["type"] == "running")
        .await;
    let cancel = app
        .client
        .post(app.url(&format!("/api/v1/tasks/{task_id}/cancel")))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), StatusCode::OK);
    let end = stream.changes_until(WAIT, |_| true).await;
    assert_eq!(types(&end), ["cancelled"]);
    assert_eq!(end[0].data["status"], "CANCELLED");
}

#[actix_web::test]
async fn another_users_task_stream_is_404_and_bad_resume_points_are_400() {
    let app = spawn_app_with(vec![fast_sim()], |_| {}).await;
    let alice = app.new_user("alice").await;
    let mallory = app.new_user("mallory").await;
    let task_id = app.submit_ok(&alice.token, "mine").await;
    let path = format!("/api/v1/tasks/{task_id}/events");
    let theirs = app.get(&path, &mallory.token).await;
    assert_error(theirs, StatusCode::NOT_FOUND, "not_found").await;
    let nobody = app.client.get(app.url(&path)).send().await.unwrap();
    assert_error(nobody, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let bad = app
        .client
        .get(app.url("/api/v1/events"))
        .bearer_auth(&alice.token)
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_error(bad, StatusCode::BAD_REQUEST, "invalid_request").await;
    let negative = app.get("/api/v1/events?after=-1", &alice.token).await;
    assert_error(negative, StatusCode::BAD_REQUEST, "invalid_request").await;
    // Mallory's own stream never shows alice's events.
    let mut stream = app.stream("/api/v1/events", &mallory.token).await;
    app.submit_ok(&alice.token, "still mine").await;
    let own = app.submit_ok(&mallory.token, "mallory's").await;
    let frames = stream.changes_until(WAIT, |_| true).await;
    assert_eq!(frames[0].data["task_id"], own.as_str());
}

#[actix_web::test]
async fn a_ticket_opens_one_stream_once() {
    let app = spawn_app_with(vec![fast_sim()], |_| {}).await;
    let user = app.new_user("browser").await;
    let issued = app
        .client
        .post(app.url("/api/v1/events/ticket"))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(issued.status(), StatusCode::CREATED);
    let body: Value = issued.json().await.unwrap();
    assert_eq!(body["expires_in"], 60);
    let ticket = body["ticket"].as_str().unwrap().to_string();
    assert!(ticket.starts_with("igt_"));
    let url = app.url(&format!("/api/v1/events?ticket={ticket}"));
    let mut stream = Sse::open(app.client.get(&url)).await;
    assert_eq!(stream.status, StatusCode::OK);
    let task_id = app
        .submit_ok(&user.token, "seen by the ticket's stream")
        .await;
    let frames = stream.changes_until(WAIT, |_| true).await;
    assert_eq!(frames[0].data["task_id"], task_id.as_str());
    // Used: refused the second time, and a made-up one too.
    let again = app.client.get(&url).send().await.unwrap();
    assert_error(again, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let forged = app
        .client
        .get(app.url("/api/v1/events?ticket=igt_forged"))
        .send()
        .await
        .unwrap();
    assert_error(forged, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // A ticket needs credentials to get.
    let anonymous = app
        .client
        .post(app.url("/api/v1/events/ticket"))
        .send()
        .await
        .unwrap();
    assert_error(anonymous, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[actix_web::test]
async fn device_keys_open_streams_and_the_per_user_limit_holds() {
    let app = spawn_app_with(vec![fast_sim()], |s| {
        s.events.max_streams_per_user = 2;
        // A client that left is noticed at the next write: the keep-alive.
        s.events.keepalive_secs = 1;
    })
    .await;
    let user = app.new_user("gadgets").await;
    let key = app.create_key(&user.token, "esp32").await["key"]
        .as_str()
        .unwrap()
        .to_string();
    let by_key = Sse::open(
        app.client
            .get(app.url("/api/v1/events"))
            .header("X-API-Key", &key),
    )
    .await;
    assert_eq!(by_key.status, StatusCode::OK);
    let second = app.stream("/api/v1/events", &user.token).await;
    assert_eq!(second.status, StatusCode::OK);
    let third = app.get("/api/v1/events", &user.token).await;
    assert_error(third, StatusCode::TOO_MANY_REQUESTS, "too_many_streams").await;
    // Others are not held back by this user's streams.
    let other = app.new_user("other").await;
    assert_eq!(
        app.stream("/api/v1/events", &other.token).await.status,
        StatusCode::OK
    );
    // A closed stream frees its place.
    drop(second);
    crate::poll::eventually("a closed stream's place freed", WAIT, || async {
        let response = app.get("/api/v1/events", &user.token).await;
        if response.status() == StatusCode::OK {
            Ok(())
        } else {
            Err(response.status())
        }
    })
    .await;
    drop(by_key);
}

#[actix_web::test]
async fn events_survive_a_restart_for_replay() {
    let app = spawn_app_with(vec![fast_sim()], |_| {}).await;
    let user = app.new_user("durable").await;
    let task_id = app.submit_ok(&user.token, "remember me").await;
    app.wait_for_end(&user.token, &task_id).await;
    let app = crate::helpers::restart(app.stop().await, |_| {}).await;
    let mut replay = app.stream_after("/api/v1/events", &user.token, 0).await;
    let frames = replay.changes_until(WAIT, is_end).await;
    assert_eq!(types(&frames), ["queued", "running", "done"]);
    assert_eq!(frames[0].id, Some(1));
}

#[actix_web::test]
async fn disabling_a_user_ends_their_open_streams_at_once_and_no_one_elses() {
    // A slow GPU: the task is still running when its owner is disabled.
    let app = spawn_app_with(vec![sim(5_000)], |_| {}).await;
    let admin = app.new_admin("root").await;
    let user = app.new_user("banned").await;
    let other = app.new_user("bystander").await;
    let mut all = app.stream("/api/v1/events", &user.token).await;
    let task_id = app.submit_ok(&user.token, "a long one").await;
    let path = format!("/api/v1/tasks/{task_id}/events");
    let mut one = app.stream(&path, &user.token).await;
    let mut others = app.stream("/api/v1/events", &other.token).await;
    assert_eq!(
        one.next_within(WAIT).await.unwrap().event.as_deref(),
        Some("snapshot")
    );
    all.changes_until(WAIT, |f| f.data["type"] == "running")
        .await;

    app.disable_user(&admin.token, "banned").await;
    let within = Duration::from_secs(1);
    assert!(
        all.ends_within(within).await,
        "the user stream is still open"
    );
    assert!(
        one.ends_within(within).await,
        "the task stream is still open"
    );
    assert!(!others.ends_within(Duration::from_millis(200)).await);
    // And it cannot be opened again.
    let again = app.get("/api/v1/events", &user.token).await;
    assert_error(again, StatusCode::UNAUTHORIZED, "unauthorized").await;
    assert_eq!(
        app.stream("/api/v1/events", &other.token).await.status,
        StatusCode::OK
    );
}
