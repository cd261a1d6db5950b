//! `GET /metrics`: exact deltas over a known run, bounded series, the token, promtool's
//! check, and the alert figures of the stats.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{
    assert_error, fast_sim, pcm, spawn_app_with, spawn_app_with_speech, start_sims, Auth, TestApp,
};
use crate::poll::eventually;
use crate::sse::Sse;
use crate::webhooks::{hooked_user, submit_hooked, test_settings, wait_for_webhook, Receiver};

/// One scrape: each series (name and labels, as written) and its value.
struct Scrape(HashMap<String, f64>);

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let series = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("series and value");
                (series.to_string(), value.parse().expect("a number"))
            })
            .collect();
        Scrape(series)
    }

    fn get(&self, series: &str) -> f64 {
        *self
            .0
            .get(series)
            .unwrap_or_else(|| panic!("{series} not in the scrape"))
    }

    fn names(&self) -> BTreeSet<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

impl TestApp {
    async fn scrape_text(&self) -> String {
        let response = self.client.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        response.text().await.unwrap()
    }

    async fn scrape(&self) -> Scrape {
        Scrape::parse(&self.scrape_text().await)
    }
}

#[actix_web::test]
async fn every_counter_and_histogram_count_moves_by_exactly_what_happened() {
    let app = spawn_app_with(vec![fast_sim()], |s| {
        s.queue.capacity = 1;
        s.workers.max_attempts = 1;
    })
    .await;
    let user = app.new_user("alice").await;
    app.wait_for_healthy(1).await;
    let instance = app.stats().await;
    assert_eq!(instance["image_instances"]["total"], 1);
    let id = 1_000_000_000_001u64;
    let before = app.scrape().await;

    // Three done, one failed.
    for n in 0..3 {
        let task = app.submit_ok(&user.token, &format!("done {n}")).await;
        assert_eq!(
            app.wait_for_end(&user.token, &task).await.1["status"],
            "DONE"
        );
    }
    app.sims[0].set_failure_rate(1.0);
    let task = app.submit_ok(&user.token, "failed").await;
    assert_eq!(
        app.wait_for_end(&user.token, &task).await.1["status"],
        "FAILED"
    );
    app.sims[0].set_failure_rate(0.0);
    // One running, one queued behind it and cancelled, one refused: the queue is full.
    app.sims[0].set_latency(Duration::from_millis(1500));
    let running = app.submit_ok(&user.token, "running").await;
    app.wait_for_status(&user.token, &running, "RUNNING").await;
    let queued = app.submit_ok(&user.token, "queued").await;
    let refused = app
        .submit_image(&user.token, &serde_json::json!({"prompt": "refused"}))
        .await;
    assert_error(refused, StatusCode::SERVICE_UNAVAILABLE, "queue_full").await;
    let cancel = app
        .client
        .post(app.url(&format!("/api/v1/tasks/{queued}/cancel")))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), StatusCode::OK);
    assert_eq!(
        app.wait_for_end(&user.token, &running).await.1["status"],
        "DONE"
    );

    let after = app.scrape().await;
    let delta = |series: &str| after.get(series) - before.get(series);
    let image = r#"kind="image""#;
    let expected = [
        (format!("infergate_tasks_submitted_total{{{image}}}"), 6.0),
        (
            format!(r#"infergate_tasks_finished_total{{{image},status="DONE"}}"#),
            4.0,
        ),
        (
            format!(r#"infergate_tasks_finished_total{{{image},status="FAILED"}}"#),
            1.0,
        ),
        (
            format!(r#"infergate_tasks_finished_total{{{image},status="CANCELLED"}}"#),
            1.0,
        ),
        (
            format!(r#"infergate_task_attempts_total{{{image},outcome="done"}}"#),
            4.0,
        ),
        (
            format!(r#"infergate_task_attempts_total{{{image},outcome="failed"}}"#),
            1.0,
        ),
        (
            format!(r#"infergate_task_attempts_total{{{image},outcome="retried"}}"#),
            0.0,
        ),
        (
            format!("infergate_task_queue_wait_seconds_count{{{image}}}"),
            5.0,
        ),
        (format!("infergate_task_run_seconds_count{{{image}}}"), 5.0),
        (
            format!(r#"infergate_task_total_seconds_count{{{image},status="DONE"}}"#),
            4.0,
        ),
        (
            format!(r#"infergate_task_total_seconds_count{{{image},status="FAILED"}}"#),
            1.0,
        ),
        (
            format!(r#"infergate_task_total_seconds_count{{{image},status="CANCELLED"}}"#),
            1.0,
        ),
        (
            r#"infergate_rejections_total{reason="queue_full"}"#.into(),
            1.0,
        ),
        (
            r#"infergate_rejections_total{reason="quota_exceeded"}"#.into(),
            0.0,
        ),
    ];
    for (series, n) in &expected {
        assert_eq!(delta(series), *n, "{series}");
    }
    // Backend calls and HTTP requests have series only once seen.
    let backend = format!(r#"{image},instance="{id}""#);
    assert_eq!(
        after.get(&format!(
            r#"infergate_backend_requests_total{{{backend},outcome="ok"}}"#
        )),
        4.0
    );
    assert_eq!(
        after.get(&format!(
            r#"infergate_backend_requests_total{{{backend},outcome="status"}}"#
        )),
        1.0
    );
    assert_eq!(
        after.get(&format!(
            "infergate_backend_request_seconds_count{{{backend}}}"
        )),
        5.0
    );
    let submit = r#"method="POST",route="/api/v1/image/async""#;
    assert_eq!(
        after.get(&format!(
            r#"infergate_http_requests_total{{{submit},status="202"}}"#
        )),
        6.0
    );
    assert_eq!(
        after.get(&format!(
            r#"infergate_http_requests_total{{{submit},status="503"}}"#
        )),
        1.0
    );
    assert_eq!(
        after.get(&format!(
            "infergate_http_request_duration_seconds_count{{{submit}}}"
        )),
        7.0
    );
    // The route template, never the task id.
    let cancel = r#"method="POST",route="/api/v1/tasks/{task_id}/cancel""#;
    assert_eq!(
        after.get(&format!(
            r#"infergate_http_requests_total{{{cancel},status="200"}}"#
        )),
        1.0
    );
    assert!(!after.names().iter().any(|s| s.contains(&queued)));
    // Group commits batch as load comes; that they are counted is what holds.
    assert!(delta("infergate_db_commit_seconds_count") >= 1.0);
    assert_eq!(
        delta("infergate_db_commit_seconds_count"),
        delta("infergate_db_commit_batch_size_count")
    );
    assert_eq!(after.get("infergate_queue_capacity"), 1.0);
    assert_eq!(
        after.get(&format!("infergate_instance_up{{{backend}}}")),
        1.0
    );
    assert_eq!(
        after.get(&format!("infergate_instance_capacity{{{backend}}}")),
        1.0
    );
}

#[actix_web::test]
async fn the_scrape_does_not_grow_with_users_or_tasks() {
    let app = spawn_app_with(vec![fast_sim()], |_| {}).await;
    app.wait_for_healthy(1).await;
    let flow = |name: String| {
        let app = &app;
        async move {
            let user = app.new_user(&name).await;
            for n in 0..3 {
                let task = app.submit_ok(&user.token, &format!("{name} {n}")).await;
                app.wait_for_end(&user.token, &task).await;
                assert_eq!(
                    app.get_task(&user.token, "no-such-task").await.status(),
                    StatusCode::NOT_FOUND
                );
            }
        }
    };
    // The first run and scrape make the series of every route and status used.
    flow("first".into()).await;
    app.scrape().await;
    let once = app.scrape().await;
    for n in 0..5 {
        flow(format!("user{n}")).await;
    }
    let again = app.scrape().await;
    let (once, again) = (once.names(), again.names());
    let new: Vec<_> = again.difference(&once).collect();
    assert!(new.is_empty(), "new series: {new:?}");
    assert_eq!(once.len(), again.len());
}

#[actix_web::test]
async fn the_metrics_token_is_asked_for_when_set() {
    let app = spawn_app_with(vec![fast_sim()], |s| {
        s.telemetry.metrics_token = "scrape-me".into();
    })
    .await;
    let bare = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_error(bare, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let wrong = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_error(wrong, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let right = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("scrape-me")
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), StatusCode::OK);
    assert!(right.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    assert!(right.text().await.unwrap().ends_with("# EOF\n"));
}

#[actix_web::test]
async fn promtool_accepts_a_real_scrape() {
    let Ok(promtool) = std::env::var("INFERGATE_TEST_PROMTOOL") else {
        eprintln!(
            "skipped: INFERGATE_TEST_PROMTOOL is not set, so promtool did not check a scrape"
        );
        return;
    };
    let app = spawn_app_with_speech(start_sims(vec![fast_sim()]), |_| {}).await;
    let user = app.new_user("alice").await;
    app.wait_for_healthy(1).await;
    app.wait_for_healthy_speech(1).await;
    let task = app.submit_ok(&user.token, "a cat").await;
    app.wait_for_end(&user.token, &task).await;
    let speech = app.send_pcm(Auth::Bearer(&user.token), pcm(2.0)).await;
    assert_eq!(speech.status(), StatusCode::OK);
    let text = app.scrape_text().await;
    assert_eq!(
        Scrape::parse(&text).get(r#"infergate_speech_audio_seconds_total{endpoint="pcm"}"#),
        2.0
    );

    let mut promtool = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&checked.stdout) + String::from_utf8_lossy(&checked.stderr);
    assert!(checked.status.success(), "promtool: {said}");
    assert_eq!(said.trim(), "", "promtool has remarks");
}

#[actix_web::test]
async fn a_failing_backend_raises_the_failure_rate_alert() {
    let app = spawn_app_with(vec![fast_sim()], |s| s.workers.max_attempts = 1).await;
    let user = app.new_user("alice").await;
    app.wait_for_healthy(1).await;
    for n in 0..8 {
        let task = app.submit_ok(&user.token, &format!("fine {n}")).await;
        app.wait_for_end(&user.token, &task).await;
    }
    assert_eq!(app.stats().await["alerts"], serde_json::json!([]));
    // One failure in nine is under 10%; two in ten is over.
    app.sims[0].set_failure_rate(1.0);
    for n in 0..2 {
        let task = app.submit_ok(&user.token, &format!("failing {n}")).await;
        assert_eq!(
            app.wait_for_end(&user.token, &task).await.1["status"],
            "FAILED"
        );
    }
    let stats = app.stats().await;
    assert_eq!(stats["failure_rate"], 20.0, "{stats}");
    assert_eq!(stats["throughput_per_min"], 1.0, "{stats}");
    assert_eq!(
        stats["alerts"],
        serde_json::json!([{"name": "failure_rate", "value": 20.0, "threshold": 10.0}])
    );
    let avg = stats["avg_processing_secs"].as_f64().unwrap();
    assert!(avg > 0.0 && avg < 20.0, "{stats}");
    let scrape = app.scrape().await;
    assert_eq!(scrape.get("infergate_failure_rate_percent"), 20.0);
    assert_eq!(scrape.get("infergate_avg_processing_seconds"), avg);
}

#[actix_web::test]
async fn event_streams_and_their_events_are_counted() {
    let app = spawn_app_with(vec![fast_sim()], |_| {}).await;
    let user = app.new_user("alice").await;
    app.wait_for_healthy(1).await;
    let before = app.scrape().await;
    assert_eq!(before.get("infergate_event_streams"), 0.0);
    let mut stream = Sse::open(
        app.client
            .get(app.url("/api/v1/events"))
            .bearer_auth(&user.token),
    )
    .await;
    assert_eq!(stream.status, StatusCode::OK);
    eventually("the stream counted", Duration::from_secs(10), || async {
        let streams = app.scrape().await.get("infergate_event_streams");
        if streams == 1.0 {
            Ok(())
        } else {
            Err(streams)
        }
    })
    .await;
    let task = app.submit_ok(&user.token, "a streamed cat").await;
    let mut frames = 0;
    loop {
        let frame = stream
            .next_within(Duration::from_secs(10))
            .await
            .expect("a frame");
        frames += 1;
        if frame.data["task_id"] == task.as_str() && frame.data["type"] == "done" {
            break;
        }
    }
    let after = app.scrape().await;
    let pushed =
        after.get("infergate_stream_events_total") - before.get("infergate_stream_events_total");
    assert_eq!(pushed, f64::from(frames));
    assert_eq!(after.get("infergate_streams_fell_behind_total"), 0.0);
}

#[actix_web::test]
async fn webhook_attempts_are_counted_by_outcome_and_timed_and_the_outbox_shown() {
    let app = spawn_app_with(vec![fast_sim()], |s| {
        test_settings(s);
        s.webhooks.max_attempts = 3;
    })
    .await;
    app.wait_for_healthy(1).await;
    let (token, _) = hooked_user(&app, "hooked").await;
    let before = app.scrape().await;
    // One delivered on its second attempt, one stopped by a 410, one out of attempts.
    for (answers, settled) in [
        (
            vec![500],
            json!({"delivered": true, "attempts": 2, "last_status": 204}),
        ),
        (
            vec![410],
            json!({"delivered": false, "attempts": 1, "last_status": 410}),
        ),
        (
            vec![500, 502, 503],
            json!({"delivered": false, "attempts": 3, "last_status": 503}),
        ),
    ] {
        let receiver = Receiver::start(&answers);
        let body = json!({"prompt": "hooked", "webhook_url": receiver.url});
        let task_id = submit_hooked(&app, &token, body).await;
        let webhook = wait_for_webhook(&app, &token, &task_id, |w| *w == settled).await;
        assert_eq!(webhook, settled);
    }
    let after = app.scrape().await;
    let delta = |series: &str| after.get(series) - before.get(series);
    for (outcome, n) in [("delivered", 1.0), ("retrying", 3.0), ("gave_up", 2.0)] {
        let series = format!(r#"infergate_webhook_deliveries_total{{outcome="{outcome}"}}"#);
        assert_eq!(delta(&series), n, "{series}");
    }
    assert_eq!(delta("infergate_webhook_delivery_seconds_count"), 6.0);
    assert!(delta("infergate_webhook_delivery_seconds_sum") > 0.0);
    assert_eq!(after.get("infergate_webhook_outbox_pending"), 0.0);

    // A receiver that takes the connection and never answers: the delivery waits.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", silent.local_addr().unwrap());
    submit_hooked(
        &app,
        &token,
        json!({"prompt": "waiting", "webhook_url": url}),
    )
    .await;
    eventually("the delivery pending", Duration::from_secs(10), || async {
        match app.scrape().await.get("infergate_webhook_outbox_pending") {
            1.0 => Ok(()),
            other => Err(other),
        }
    })
    .await;
}

#[actix_web::test]
async fn a_removed_instances_series_leave_the_scrape() {
    let app = spawn_app_with(vec![fast_sim()], |s| s.workers.max_attempts = 1).await;
    let admin = app.new_admin("root").await;
    let user = app.new_user("alice").await;
    app.wait_for_healthy(1).await;
    let removed = 1_000_000_000_001u64;
    // Calls of both outcomes on the instance to be removed.
    let task = app.submit_ok(&user.token, "fine").await;
    assert_eq!(
        app.wait_for_end(&user.token, &task).await.1["status"],
        "DONE"
    );
    app.sims[0].set_failure_rate(1.0);
    let task = app.submit_ok(&user.token, "failing").await;
    assert_eq!(
        app.wait_for_end(&user.token, &task).await.1["status"],
        "FAILED"
    );
    let other = start_sims(vec![fast_sim()]);
    let kept = app.add_image_instance(&admin.token, &other[0].url()).await;
    let label = |id: u64| format!(r#"instance="{id}""#);
    let scrape = app.scrape_text().await;
    for series in [
        "infergate_backend_requests_total",
        "infergate_backend_request_seconds_count",
        "infergate_instance_up",
        "infergate_instance_in_flight",
        "infergate_instance_capacity",
    ] {
        let found = scrape
            .lines()
            .any(|l| l.starts_with(series) && l.contains(&label(removed)));
        assert!(found, "{series} of the instance before its removal");
    }

    let deleted = app.delete_instance(&admin.token, removed).await;
    assert_eq!(deleted.status(), StatusCode::ACCEPTED);
    eventually("the instance gone", Duration::from_secs(10), || async {
        match app.instance(&admin.token, removed).await {
            None => Ok(()),
            Some(still) => Err(still),
        }
    })
    .await;
    let scrape = app.scrape_text().await;
    let left: Vec<&str> = scrape
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(&label(removed)))
        .collect();
    assert!(left.is_empty(), "series of the removed instance: {left:?}");
    assert_eq!(
        Scrape::parse(&scrape).get(&format!(
            r#"infergate_instance_capacity{{kind="image",{}}}"#,
            label(kept)
        )),
        1.0
    );
}
