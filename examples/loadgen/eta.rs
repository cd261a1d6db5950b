//! How far off the pushed `eta_secs` is: one GPU of steady latency, a warm-up so the
//! ending rate has a history, then 20 tasks at once (the most a user gets progress for)
//! watched on the user's stream. For each, the ETA of its first progress event against
//! the time from that event to its `done`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;

use super::{percentile, Rig, SCENARIO_LIMIT};

const LATENCY_MS: u64 = 250;
const WARM_UP: usize = 10;
const WATCHED: usize = 20;

pub async fn eta_scenario() {
    let rig = Rig::start(LATENCY_MS, 1).await;
    rig.wait_healthy().await;
    let token = rig.token("eta").await;
    let started = Instant::now();
    for i in 0..WARM_UP {
        rig.submit(&token, format!("warm-up {i}")).await;
    }
    while rig.count("DONE").await < WARM_UP as u64 {
        assert!(
            started.elapsed() < SCENARIO_LIMIT,
            "the warm-up did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = rig
        .client
        .get(format!("{}/api/v1/events", rig.base))
        .bearer_auth(&token)
        .send()
        .await
        .expect("open the stream");
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    for i in 0..WATCHED {
        rig.submit(&token, format!("watched {i}")).await;
    }
    // Per task: when its first progress arrived and the ETA it said; when DONE arrived.
    let mut first: HashMap<String, (Instant, f64)> = HashMap::new();
    let mut done: HashMap<String, Instant> = HashMap::new();
    let mut buffer = String::new();
    while done.len() < WATCHED {
        assert!(
            started.elapsed() < SCENARIO_LIMIT,
            "the watched tasks did not finish"
        );
        let Some(Ok(chunk)) = body.next().await else {
            panic!("the stream ended early");
        };
        let arrived = Instant::now();
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue; // a keep-alive
            };
            let event: Value = serde_json::from_str(data).unwrap();
            let task = event["task_id"].as_str().unwrap().to_string();
            match event["type"].as_str().unwrap() {
                "progress" => {
                    if let Some(eta) = event["eta_secs"].as_f64() {
                        first.entry(task).or_insert((arrived, eta));
                    }
                }
                "done" => {
                    done.insert(task, arrived);
                }
                _ => {}
            }
        }
    }
    let mut errors: Vec<Duration> = vec![];
    let mut signed = 0.0;
    for (task, (seen, eta)) in &first {
        let Some(ended) = done.get(task) else {
            continue;
        };
        let actual = ended.duration_since(*seen).as_secs_f64();
        signed += eta - actual;
        errors.push(Duration::from_secs_f64((eta - actual).abs()));
    }
    assert!(!errors.is_empty(), "no task had an ETA");
    errors.sort();
    println!(
        "eta: {} tasks on one {LATENCY_MS} ms GPU, ETA of the first progress vs its DONE: |error| p50 {:.2}s, p90 {:.2}s, max {:.2}s, mean signed {:+.2}s (ETAs are whole seconds)",
        errors.len(),
        percentile(&errors, 0.50).as_secs_f64(),
        percentile(&errors, 0.90).as_secs_f64(),
        errors.last().unwrap().as_secs_f64(),
        signed / errors.len() as f64,
    );
}
