//! Push: 1,000 SSE subscribers' memory, the time from a DONE's commit to its arrival,
//! and what the subscribers cost end to end.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::{median, memory_mib, percentile, start_sim, Rig, FAST_PINGS, SCENARIO_LIMIT};

/// SSE subscribers of the events scenario: 1,000, as users × streams per user.
const SUBSCRIBERS: usize = 1000;
/// End-to-end rounds without and with the subscribers, alternating.
const ROUNDS: usize = 3;

/// What one stream saw: for each DONE event, the time from its commit (`at`) to its
/// arrival; its frames (events, progress included); and how many reads brought them
/// (the gateway's writes, give or take how TCP cut them).
struct Seen {
    lags: Vec<Duration>,
    frames: usize,
    reads: usize,
}

/// Opens one user-wide SSE stream; answers once it is open, with the task that reads
/// it for the next `dones` DONE events.
async fn subscribe(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    dones: usize,
) -> tokio::task::JoinHandle<Seen> {
    use futures_util::StreamExt;
    let response = client
        .get(format!("{base}/api/v1/events"))
        .bearer_auth(token)
        .send()
        .await
        .expect("open the stream");
    assert_eq!(response.status(), 200, "stream refused");
    let mut body = response.bytes_stream();
    tokio::spawn(async move {
        let (mut buffer, mut lags, mut frames, mut reads) = (String::new(), Vec::new(), 0, 0);
        while lags.len() < dones {
            let Some(Ok(chunk)) = body.next().await else {
                panic!("a stream ended early after {} DONE events", lags.len());
            };
            // The stream's opening `retry:` line is its own write, not an event's.
            if !chunk.starts_with(b"retry:") {
                reads += 1;
            }
            let arrived = chrono::Utc::now();
            buffer.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = buffer.find("\n\n") {
                let frame: String = buffer.drain(..end + 2).collect();
                if !frame.starts_with("retry:") {
                    frames += 1;
                }
                // Only DONE events are read; the rest are skipped unparsed, so the
                // client takes as little CPU from the gateway as it can.
                if !frame.contains("\"type\":\"done\"") {
                    continue;
                }
                let data = frame
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .unwrap();
                let event: Value = serde_json::from_str(data).unwrap();
                let at: chrono::DateTime<chrono::Utc> =
                    event["at"].as_str().unwrap().parse().unwrap();
                lags.push((arrived - at).to_std().unwrap_or_default());
            }
        }
        Seen {
            lags,
            frames,
            reads,
        }
    })
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`.
fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("process stat");
    // The fields after the command (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// `per_user` tasks for each token, 64 submissions at a time, all DONE; tasks/s. Also
/// prints the CPU the gateway and this client used per task.
async fn tasks_for(rig: &Rig, tokens: &[String], per_user: usize, label: &str) -> f64 {
    use futures_util::StreamExt;
    let gateway = rig.gateway.as_ref().unwrap().0.id().to_string();
    let (gateway_cpu, client_cpu) = (cpu_secs(&gateway), cpu_secs("self"));
    let before = rig.count("DONE").await;
    let total = (per_user * tokens.len()) as u64;
    let started = Instant::now();
    let jobs = (0..per_user).flat_map(|i| tokens.iter().map(move |t| (i, t)));
    futures_util::stream::iter(jobs)
        .for_each_concurrent(64, |(i, token)| async move {
            rig.submit(token, format!("event benchmark {i}")).await;
        })
        .await;
    while rig.count("DONE").await < before + total {
        assert!(started.elapsed() < SCENARIO_LIMIT, "tasks did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rate = total as f64 / elapsed;
    let per_task = |cpu: f64| cpu * 1e6 / total as f64;
    println!(
        "events: {label}: {total} tasks DONE in {elapsed:.2}s = {rate:.0} tasks/s; CPU per task: gateway {:.0} µs, client {:.0} µs",
        per_task(cpu_secs(&gateway) - gateway_cpu),
        per_task(cpu_secs("self") - client_cpu),
    );
    rate
}

/// A gateway on a zero-latency simulator for the events scenario, and `users` users'
/// tokens.
async fn events_rig(users: usize) -> (Rig, Vec<String>) {
    use futures_util::StreamExt;
    let capacity = 64;
    let dir = tempfile::tempdir().unwrap();
    let (sim, url) = start_sim(dir.path(), 0, capacity);
    let extra = format!(
        "{FAST_PINGS}[server]\nmax_connections_per_address = 0\n[limits]\nregister_per_minute = 0\n"
    );
    let rig = Rig::launch(dir, vec![sim], &[(url, capacity)], &extra).await;
    rig.wait_healthy().await;
    // As many at once as there are hashing threads.
    let tokens = futures_util::stream::iter(0..users)
        .map(|i| {
            let rig = &rig;
            async move { rig.token(&format!("watcher_{i}")).await }
        })
        .buffered(2)
        .collect()
        .await;
    (rig, tokens)
}

/// 1,000 SSE subscribers on a zero-latency simulator, as `users` users with
/// `SUBSCRIBERS / users` streams each, every stream seeing all its user's tasks: the
/// gateway's RSS per idle subscriber (on a gateway that has run nothing else), the time
/// from a DONE's commit to its event at the subscriber (one task per user, then under
/// load), and end-to-end tasks/s for the same users without and with the subscribers,
/// in alternating rounds.
async fn events_run(users: usize, tasks_per_user: usize) {
    let per_user = SUBSCRIBERS / users;
    let shape = format!("{users} users × {per_user} streams");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    {
        let (rig, tokens) = events_rig(users).await;
        let pid = rig.gateway.as_ref().unwrap().0.id();
        // The password hashing threads give their memory back after 10 s idle.
        tokio::time::sleep(Duration::from_secs(12)).await;
        let idle = memory_mib(pid, "VmRSS");
        let mut streams = Vec::new();
        for token in &tokens {
            for _ in 0..per_user {
                streams.push(subscribe(&client, &rig.base, token, 1).await);
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let subscribed = memory_mib(pid, "VmRSS");
        println!(
            "events ({shape}): {SUBSCRIBERS} idle subscribers: gateway RSS {idle:.1} -> {subscribed:.1} MiB = {:.1} KiB each",
            (subscribed - idle) * 1024.0 / SUBSCRIBERS as f64
        );
        for stream in streams {
            stream.abort();
        }
    }
    let (rig, tokens) = events_rig(users).await;
    tasks_for(
        &rig,
        &tokens,
        (tasks_per_user / 10).max(1),
        "warm-up, no subscribers",
    )
    .await;
    // Rounds without and with the subscribers, alternating, so that a slow spell of a
    // shared machine does not fall on one side only; the medians are compared.
    let (mut withouts, mut withs) = (Vec::new(), Vec::new());
    let (mut light, mut loaded, mut frames, mut reads) = (Vec::new(), Vec::new(), 0, 0);
    for _ in 0..ROUNDS {
        withouts.push(tasks_for(&rig, &tokens, tasks_per_user, "no subscribers").await);
        let mut streams = Vec::new();
        for token in &tokens {
            for _ in 0..per_user {
                streams.push(subscribe(&client, &rig.base, token, 1 + tasks_per_user).await);
            }
        }
        tasks_for(&rig, &tokens, 1, "1 task per user, with the subscribers").await;
        withs.push(tasks_for(&rig, &tokens, tasks_per_user, "with the subscribers").await);
        // Each stream ends (and its connection closes) with its last DONE.
        for stream in streams {
            let seen = stream.await.unwrap();
            light.push(seen.lags[0]);
            loaded.extend(&seen.lags[1..]);
            frames += seen.frames;
            reads += seen.reads;
        }
    }
    let per_task = |n: usize| n as f64 / (ROUNDS * SUBSCRIBERS * (1 + tasks_per_user)) as f64;
    println!(
        "events ({shape}): per task and stream, {:.2} frames (3 stored events, the rest progress) in {:.2} reads",
        per_task(frames),
        per_task(reads)
    );
    for (label, lags) in [("1 task per user", &mut light), ("under load", &mut loaded)] {
        lags.sort();
        println!(
            "events ({shape}): {label}: {} DONE events, commit to arrival p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            lags.len(),
            percentile(lags, 0.50).as_secs_f64() * 1e3,
            percentile(lags, 0.99).as_secs_f64() * 1e3,
            lags.last().unwrap().as_secs_f64() * 1e3,
        );
    }
    let rounds = |rates: &[f64]| {
        rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let (without_rounds, with_rounds) = (rounds(&withouts), rounds(&withs));
    let (without, with) = (median(&mut withouts), median(&mut withs));
    println!(
        "events ({shape}): end-to-end with {SUBSCRIBERS} subscribers {with_rounds} tasks/s against {without_rounds} without; medians {with:.0} against {without:.0} ({:+.1}%)",
        (with / without - 1.0) * 100.0
    );
}

/// Each client watching its own tasks (1,000 users, one stream each), then a fan-out
/// (100 users with 10 streams each, every event sent 10 times).
pub async fn events_scenario() {
    events_run(1000, 10).await;
    events_run(100, 100).await;
}
