//! Webhooks under a burst: deliveries/s, commit to arrival, and the cost to tasks/s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{percentile, start_sim, Rig, FAST_PINGS, SCENARIO_LIMIT};

/// A webhook receiver on loopback, in a thread of its own: answers 204 and keeps, for
/// each delivery, the time from its event's commit (`at`) to its arrival here.
fn start_receiver() -> (String, Arc<std::sync::Mutex<Vec<Duration>>>) {
    use actix_web::{web, App, HttpResponse, HttpServer};
    let lags = Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let shared = web::Data::from(lags.clone());
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            HttpServer::new(move || {
                App::new().app_data(shared.clone()).default_service(web::to(
                    |body: String, lags: web::Data<std::sync::Mutex<Vec<Duration>>>| async move {
                        let arrived = chrono::Utc::now();
                        let event: Value = serde_json::from_str(&body).unwrap();
                        let at: chrono::DateTime<chrono::Utc> =
                            event["at"].as_str().unwrap().parse().unwrap();
                        lags.lock()
                            .unwrap()
                            .push((arrived - at).to_std().unwrap_or_default());
                        HttpResponse::NoContent().finish()
                    },
                ))
            })
            .workers(1)
            .disable_signals()
            .listen(listener)
            .unwrap()
            .run()
            .await
        })
    });
    (url, lags)
}

/// `total` tasks, 64 submissions at a time, each with a webhook to `url` when given, all
/// DONE: tasks/s, and (with a webhook) when the last delivery arrived, from the start.
async fn hooked_tasks(
    rig: &Rig,
    token: &str,
    total: usize,
    url: Option<&str>,
    lags: &std::sync::Mutex<Vec<Duration>>,
) -> (f64, Option<f64>) {
    use futures_util::StreamExt;
    let before = (rig.count("DONE").await, lags.lock().unwrap().len());
    let started = Instant::now();
    futures_util::stream::iter(0..total)
        .for_each_concurrent(64, |i| async move {
            let mut body = json!({"prompt": format!("webhook benchmark {i}")});
            if let Some(url) = url {
                body["webhook_url"] = url.into();
            }
            let response = rig
                .client
                .post(format!("{}/api/v1/image/async", rig.base))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .expect("submit");
            assert_eq!(response.status(), 202, "{:?}", response.text().await);
        })
        .await;
    while rig.count("DONE").await < before.0 + total as u64 {
        assert!(started.elapsed() < SCENARIO_LIMIT, "tasks did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done = started.elapsed().as_secs_f64();
    if url.is_none() {
        return (total as f64 / done, None);
    }
    while lags.lock().unwrap().len() < before.1 + total {
        assert!(
            started.elapsed() < SCENARIO_LIMIT,
            "deliveries did not finish"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (total as f64 / done, Some(started.elapsed().as_secs_f64()))
}

/// Every task with a webhook (`completed`), against a zero-latency simulator and a
/// receiver that answers at once: deliveries/s, commit-to-arrival latency, and
/// end-to-end tasks/s with and without webhooks.
pub async fn webhooks_scenario() {
    const TOTAL: usize = 10_000;
    let capacity = 64;
    let dir = tempfile::tempdir().unwrap();
    let (sim, sim_url) = start_sim(dir.path(), 0, capacity);
    let extra = format!("{FAST_PINGS}[webhooks]\nallow_private_networks = true\n");
    let rig = Rig::launch(dir, vec![sim], &[(sim_url, capacity)], &extra).await;
    rig.wait_healthy().await;
    let token = rig.token("hooked").await;
    let secret = rig
        .client
        .post(format!("{}/api/v1/webhook-secret", rig.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(secret.status(), 201);
    let (url, lags) = start_receiver();
    hooked_tasks(&rig, &token, TOTAL / 10, Some(&url), &lags).await;
    lags.lock().unwrap().clear();
    let (without, _) = hooked_tasks(&rig, &token, TOTAL, None, &lags).await;
    let (with, delivered) = hooked_tasks(&rig, &token, TOTAL, Some(&url), &lags).await;
    let delivered = delivered.unwrap();
    let mut lags = lags.lock().unwrap().clone();
    lags.sort();
    println!(
        "webhooks: {TOTAL} tasks DONE at {with:.0} tasks/s with a webhook each, {without:.0} without ({:+.1}%); the last delivery {delivered:.2}s after the first submission = {:.0} deliveries/s",
        (with / without - 1.0) * 100.0,
        TOTAL as f64 / delivered
    );
    println!(
        "webhooks: commit to arrival p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&lags, 0.50).as_secs_f64() * 1e3,
        percentile(&lags, 0.99).as_secs_f64() * 1e3,
        lags.last().unwrap().as_secs_f64() * 1e3,
    );
}
