//! Load benchmark for infergate, on loopback only, bounded in count and time.
//!
//! Starts the simulated backend and the gateway as separate processes (the release
//! binary next to this example), drives the gateway over HTTP, prints numbers, and
//! stops everything it started.
//!
//!     cargo build --release --bins --examples
//!     target/release/examples/loadgen submit     # durable submissions/s, p50/p99 at 64 clients
//!     target/release/examples/loadgen e2e        # end-to-end tasks/s, zero-latency backend
//!     target/release/examples/loadgen recovery   # SIGKILL with 10,000 queued, time to resume
//!     target/release/examples/loadgen balance    # 3 GPUs of 20/40/80 ms: makespan per strategy
//!     target/release/examples/loadgen fairness   # one user flooding: the others' waits
//!     target/release/examples/loadgen halffail   # one GPU failing half its calls
//!     target/release/examples/loadgen register   # registration flood: peak RSS, RSS 30 s later
//!     target/release/examples/loadgen events     # 1,000 SSE subscribers: push latency, RSS, tasks/s
//!     target/release/examples/loadgen telemetry  # submit/s bare, scraped, scraped and traced
//!     target/release/examples/loadgen cluster    # PostgreSQL, 1–3 gateways: tasks/s, rescue, makespan
//!     target/release/examples/loadgen eta        # the pushed ETA against when tasks really end
//!     target/release/examples/loadgen admin      # 1,000,000 tasks: the admin listing's time per filter
//!     target/release/examples/loadgen webhooks   # every task with a webhook: delivery rate, latency, tasks/s
//!     target/release/examples/loadgen all

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[path = "loadgen/cluster.rs"]
mod cluster;
#[path = "loadgen/eta.rs"]
mod eta;

/// Pings every second, so the rigs find their simulators healthy soon.
const FAST_PINGS: &str = "[health]\ninterval_secs = 1\n";

/// Gives up on any scenario after this long.
const SCENARIO_LIMIT: Duration = Duration::from_secs(300);

fn binary() -> PathBuf {
    let me = std::env::current_exe().expect("own path");
    let bin = me
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .join("infergate");
    assert!(
        bin.exists(),
        "build the gateway first: cargo build --release --bins --examples"
    );
    bin
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Rig {
    dir: tempfile::TempDir,
    /// The simulators this rig started (none when they are shared between rigs).
    _sims: Vec<Proc>,
    /// Image instances the gateway is configured with.
    instances: usize,
    /// For counting tasks: one connection for the rig, not one per poll, so polling
    /// takes little CPU from the gateway.
    db: sea_orm::DatabaseConnection,
    gateway: Option<Proc>,
    base: String,
    port: u16,
    client: reqwest::Client,
}

/// `infergate simulate` with this latency and capacity; answers its URL.
fn start_sim(dir: &Path, latency_ms: u64, capacity: u32) -> (Proc, String) {
    start_sim_with(dir, latency_ms, capacity, &[])
}

/// The same, with more of the simulator's flags.
fn start_sim_with(dir: &Path, latency_ms: u64, capacity: u32, flags: &[&str]) -> (Proc, String) {
    let port = free_port();
    let sim = Command::new(binary())
        .args(["simulate", "--port", &port.to_string()])
        .args(["--latency-ms", &latency_ms.to_string()])
        .args(["--capacity", &capacity.to_string()])
        .args(flags)
        .env("INFERGATE__LOG__LEVEL", "warn")
        .current_dir(dir)
        .spawn()
        .expect("start simulator");
    (Proc(sim), format!("http://127.0.0.1:{port}"))
}

impl Rig {
    /// A simulator (`latency_ms`, `capacity`) and a gateway using it.
    async fn start(latency_ms: u64, capacity: u32) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let (sim, url) = start_sim(dir.path(), latency_ms, capacity);
        Rig::launch(dir, vec![sim], &[(url, capacity)], FAST_PINGS).await
    }

    /// A gateway whose image instances are `instances` (url, capacity), with a large
    /// queue and `extra` settings.
    async fn launch(
        dir: tempfile::TempDir,
        sims: Vec<Proc>,
        instances: &[(String, u32)],
        extra: &str,
    ) -> Rig {
        let mut config = format!(
            "{extra}\n[queue]\ncapacity = 1000000\n[log]\nlevel = \"warn\"\n\
             [database]\nurl = \"sqlite://{}?mode=rwc\"\n",
            dir.path().join("bench.db").display()
        );
        for (url, capacity) in instances {
            config.push_str(&format!(
                "[[instances]]\nkind = \"image\"\nurl = \"{url}\"\ncapacity = {capacity}\n"
            ));
        }
        std::fs::write(dir.path().join("settings.toml"), config).unwrap();
        let database = infergate::settings::DatabaseSettings {
            url: format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("bench.db").display()
            ),
            max_connections: 1,
            ..Default::default()
        };
        let db = infergate::store::connect(&database).await.unwrap();
        let mut rig = Rig {
            dir,
            _sims: sims,
            instances: instances.len(),
            db,
            gateway: None,
            base: String::new(),
            port: free_port(),
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .build()
                .unwrap(),
        };
        rig.start_gateway().await;
        rig
    }

    async fn start_gateway(&mut self) {
        let child = Command::new(binary())
            .args(["serve", "--config", "settings.toml"])
            .env("INFERGATE__SERVER__HOST", "127.0.0.1")
            .env("INFERGATE__SERVER__PORT", self.port.to_string())
            // The load comes from a few users: per-user limits would only measure themselves.
            .env("INFERGATE__LIMITS__SUBMIT_PER_MINUTE", "0")
            .env("INFERGATE__LIMITS__LOGIN_PER_MINUTE", "0")
            .env("INFERGATE__LIMITS__MAX_QUEUED_PER_USER", "0")
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("start gateway");
        self.gateway = Some(Proc(child));
        self.base = format!("http://127.0.0.1:{}", self.port);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self
            .client
            .get(format!("{}/health", self.base))
            .send()
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "gateway did not start");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn kill_gateway(&mut self) {
        let mut gateway = self.gateway.take().expect("running");
        gateway.0.kill().unwrap();
        gateway.0.wait().unwrap();
    }

    async fn stats(&self) -> Value {
        self.client
            .get(format!("{}/api/v1/system/stats", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.stats().await["image_instances"]["healthy"] != self.instances {
            assert!(
                Instant::now() < deadline,
                "simulators never all healthy: {}",
                self.stats().await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn token(&self, name: &str) -> String {
        let credentials = json!({"username": name, "password": "benchmark-password"});
        self.client
            .post(format!("{}/register", self.base))
            .json(&credentials)
            .send()
            .await
            .unwrap();
        let login: Value = self
            .client
            .post(format!("{}/login", self.base))
            .json(&credentials)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        login["token"].as_str().expect("token").to_string()
    }

    /// `total` submissions from `clients` concurrent clients; returns each latency and
    /// the wall time.
    async fn submit_load(&self, clients: usize, total: usize) -> (Vec<Duration>, Duration) {
        let token = self.token("bench_user").await;
        submit_spread(
            &self.client,
            std::slice::from_ref(&self.base),
            &token,
            clients,
            total,
        )
        .await
    }

    /// One submission; its task id.
    async fn submit(&self, token: &str, prompt: String) -> String {
        let response = self
            .client
            .post(format!("{}/api/v1/image/async", self.base))
            .bearer_auth(token)
            .json(&json!({ "prompt": prompt }))
            .send()
            .await
            .expect("submit");
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        body["task_id"].as_str().unwrap().to_string()
    }

    async fn count(&self, status: &str) -> u64 {
        self.count_where("status = ?", [status.into()]).await
    }

    /// DONE tasks per instance, in the order of `urls`.
    async fn tasks_per_instance(&self, urls: &[String]) -> Vec<u64> {
        let mut counts = Vec::new();
        for url in urls {
            let filter = "status = 'DONE' AND instance = ?";
            counts.push(self.count_where(filter, [url.as_str().into()]).await);
        }
        counts
    }

    async fn count_where<const N: usize>(&self, filter: &str, values: [sea_orm::Value; N]) -> u64 {
        use sea_orm::{ConnectionTrait, Statement};
        let db = &self.db;
        let row = db
            .query_one(Statement::from_sql_and_values(
                db.get_database_backend(),
                format!("SELECT COUNT(*) AS n FROM tasks WHERE {filter}"),
                values,
            ))
            .await
            .unwrap()
            .unwrap();
        row.try_get::<i64>("", "n").unwrap() as u64
    }
}

/// `total` submissions from `clients` concurrent clients, in turn to each of `bases`;
/// returns each latency and the wall time.
async fn submit_spread(
    client: &reqwest::Client,
    bases: &[String],
    token: &str,
    clients: usize,
    total: usize,
) -> (Vec<Duration>, Duration) {
    let (bases, token) = (Arc::new(bases.to_vec()), Arc::new(token.to_string()));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (client, bases, token, next) =
                (client.clone(), bases.clone(), token.clone(), next.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total || started.elapsed() > SCENARIO_LIMIT {
                        return latencies;
                    }
                    let base = &bases[i % bases.len()];
                    let sent = Instant::now();
                    let response = client
                        .post(format!("{base}/api/v1/image/async"))
                        .bearer_auth(token.as_str())
                        .json(&json!({"prompt": format!("benchmark prompt {i}")}))
                        .send()
                        .await
                        .expect("submit");
                    assert_eq!(response.status(), 202, "{:?}", response.text().await);
                    latencies.push(sent.elapsed());
                }
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(total);
    for worker in workers {
        latencies.extend(worker.await.unwrap());
    }
    (latencies, started.elapsed())
}

/// A figure of `/proc/PID/status` (`VmRSS`, `VmHWM`), in MiB.
fn memory_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    kib / 1024.0
}

/// 32 clients each registering 50 new names in a loop, for at most 20 s, with `extra`
/// settings: the gateway's peak RSS (VmHWM) and its RSS 30 s after the flood.
async fn register_flood(label: &str, extra: &str) {
    let (clients, names, flood_for) = (32, 50, Duration::from_secs(20));
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::launch(dir, Vec::new(), &[], extra).await;
    let pid = rig.gateway.as_ref().expect("running").0.id();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = memory_mib(pid, "VmRSS");
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|c| {
            let (client, base) = (rig.client.clone(), rig.base.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for i in 0..names {
                    if started.elapsed() > flood_for {
                        break;
                    }
                    let body = json!({"username": format!("flood_{c}_{i}"), "password": "benchmark-password"});
                    let response = client
                        .post(format!("{base}/register"))
                        .json(&body)
                        .send()
                        .await
                        .expect("register");
                    statuses.push(response.status().as_u16());
                }
                statuses
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for worker in workers {
        statuses.extend(worker.await.unwrap());
    }
    let flooded = started.elapsed();
    let peak = memory_mib(pid, "VmHWM");
    let after_flood = memory_mib(pid, "VmRSS");
    tokio::time::sleep(Duration::from_secs(30)).await;
    let later = memory_mib(pid, "VmRSS");
    let count = |code: u16| statuses.iter().filter(|&&s| s == code).count();
    let other = statuses.len() - count(201) - count(429) - count(503);
    println!(
        "register ({label}): {} attempts in {:.1}s: {} created, {} 429, {} 503 hashing_busy, {other} other; \
         RSS idle {idle:.0} MiB, peak {peak:.0} MiB, {after_flood:.0} MiB at the end of the flood, \
         {later:.0} MiB 30 s later ({:+.0} MiB from idle)",
        statuses.len(),
        flooded.as_secs_f64(),
        count(201),
        count(429),
        count(503),
        later - idle,
    );
}

async fn register_scenario() {
    register_flood("default limits", "").await;
    // The worst case for hashing: no per-address limit, only the hashing pool bounds it.
    register_flood(
        "no registration limit",
        "[limits]\nregister_per_minute = 0\n",
    )
    .await;
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

async fn submit_scenario() {
    let (clients, total) = (64, 20_000);
    // A backend that never finishes in time: only the submission path is measured.
    let rig = Rig::start(600_000, 1).await;
    rig.wait_healthy().await;
    let (mut latencies, elapsed) = rig.submit_load(clients, total).await;
    latencies.sort();
    println!(
        "submit: {} durable submissions from {clients} clients in {:.2}s = {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
    );
}

async fn e2e_scenario() {
    let (clients, total, capacity) = (64, 10_000, 64);
    let rig = Rig::start(0, capacity).await;
    rig.wait_healthy().await;
    let started = Instant::now();
    let (_, submitted_in) = rig.submit_load(clients, total).await;
    while rig.count("DONE").await < total as u64 {
        assert!(started.elapsed() < SCENARIO_LIMIT, "e2e did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    println!(
        "e2e: {total} tasks submitted ({:.2}s) and DONE in {:.2}s = {:.0} tasks/s (zero-latency backend, {capacity} slots)",
        submitted_in.as_secs_f64(),
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
}

async fn recovery_scenario() {
    let total = 10_000;
    let mut rig = Rig::start(600_000, 1).await;
    rig.wait_healthy().await;
    rig.submit_load(64, total).await;
    let killed = Instant::now();
    rig.kill_gateway();
    rig.start_gateway().await;
    let answering = killed.elapsed();
    // All tasks back in the queue (or on the worker) and the worker running again.
    loop {
        let stats = rig.stats().await;
        let queued = stats["queue_length"].as_u64().unwrap();
        let busy = stats["busy_workers"].as_u64().unwrap();
        if queued + busy >= total as u64 && stats["image_instances"]["in_flight"] == 1 {
            break;
        }
        assert!(
            killed.elapsed() < SCENARIO_LIMIT,
            "recovery did not finish: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    println!(
        "recovery: {total} queued tasks, SIGKILL → gateway answering {:.0} ms → all re-queued and running again {:.0} ms",
        answering.as_secs_f64() * 1e3,
        killed.elapsed().as_secs_f64() * 1e3
    );
}

/// Simulated GPUs of different speed, capacity 1 each, for `balance`.
const BALANCE_LATENCIES_MS: [u64; 3] = [20, 40, 80];

/// Per strategy: 600 tasks submitted at once (30 users), makespan against the ideal
/// (total work over the GPUs' combined rate), both at the nominal latencies and at the
/// simulators' measured call time; then 2 clients submitting one task at a time (200
/// tasks), where the strategy decides which idle GPU serves.
async fn balance_scenario() {
    let (burst, users) = (600, 30);
    let sim_dir = tempfile::tempdir().unwrap();
    let (_sims, urls): (Vec<Proc>, Vec<String>) = BALANCE_LATENCIES_MS
        .iter()
        .map(|&ms| start_sim(sim_dir.path(), ms, 1))
        .unzip();
    let instances: Vec<(String, u32)> = urls.iter().map(|url| (url.clone(), 1)).collect();
    let rate: f64 = BALANCE_LATENCIES_MS
        .iter()
        .map(|&ms| 1000.0 / ms as f64)
        .sum();
    let ideal = burst as f64 / rate;
    let mut measured_rate = 0.0;
    for url in &urls {
        measured_rate += 1.0 / call_time(url).await;
    }
    let measured_ideal = burst as f64 / measured_rate;
    println!(
        "balance: ideal makespan {ideal:.2}s at the nominal 20/40/80 ms, {measured_ideal:.2}s at the simulators' measured call time"
    );
    for strategy in ["least-loaded", "round-robin", "user-hash"] {
        let extra = format!("[balancing]\nimage = \"{strategy}\"\n");
        let extra = format!("{extra}\n{FAST_PINGS}");
        let rig = Rig::launch(tempfile::tempdir().unwrap(), vec![], &instances, &extra).await;
        rig.wait_healthy().await;
        let mut tokens = Vec::new();
        for u in 0..users {
            tokens.push(rig.token(&format!("balance_user_{u}")).await);
        }

        let started = Instant::now();
        let submissions = (0..burst).map(|i| {
            let (client, base) = (rig.client.clone(), rig.base.clone());
            let token = tokens[i % users].clone();
            tokio::spawn(async move {
                let response = client
                    .post(format!("{base}/api/v1/image/async"))
                    .bearer_auth(token)
                    .json(&json!({"prompt": format!("balance prompt {i}")}))
                    .send()
                    .await
                    .expect("submit");
                assert_eq!(response.status(), 202);
            })
        });
        for submission in submissions.collect::<Vec<_>>() {
            submission.await.unwrap();
        }
        while rig.count("DONE").await < burst as u64 {
            assert!(started.elapsed() < SCENARIO_LIMIT, "balance did not finish");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let makespan = started.elapsed().as_secs_f64();
        let shares = rig.tasks_per_instance(&urls).await;
        println!(
            "balance {strategy}: {burst} tasks at once: makespan {makespan:.2}s ({:+.1}% of nominal ideal, {:+.1}% of measured); tasks on the 20/40/80 ms GPUs {shares:?}",
            (makespan / ideal - 1.0) * 100.0,
            (makespan / measured_ideal - 1.0) * 100.0
        );

        let before = rig.tasks_per_instance(&urls).await;
        let started = Instant::now();
        let clients: Vec<_> = tokens[..2]
            .iter()
            .map(|token| {
                let (client, base, token) = (rig.client.clone(), rig.base.clone(), token.clone());
                tokio::spawn(async move { one_at_a_time(&client, &base, &token, 100).await })
            })
            .collect();
        for client in clients {
            client.await.unwrap();
        }
        let elapsed = started.elapsed().as_secs_f64();
        let after = rig.tasks_per_instance(&urls).await;
        let shares: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        println!(
            "balance {strategy}: 2 clients x 100 tasks one at a time: {elapsed:.2}s ({:.1} ms a task); tasks on the 20/40/80 ms GPUs {shares:?}",
            elapsed * 1000.0 / 100.0
        );
    }
}

/// Mean seconds of one `/generate` call straight to a simulator (after it answers).
async fn call_time(url: &str) -> f64 {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(format!("{url}/ping")).send().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "simulator at {url} never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let calls = 50;
    let started = Instant::now();
    for i in 0..calls {
        let response = client
            .post(format!("{url}/generate"))
            .json(&json!({"prompt": format!("calibration {i}")}))
            .send()
            .await
            .expect("calibration call");
        response.bytes().await.expect("calibration answer");
    }
    started.elapsed().as_secs_f64() / calls as f64
}

/// Submits `n` tasks one after another, each once the previous is DONE.
async fn one_at_a_time(client: &reqwest::Client, base: &str, token: &str, n: usize) {
    for i in 0..n {
        let submitted: Value = client
            .post(format!("{base}/api/v1/image/async"))
            .bearer_auth(token)
            .json(&json!({"prompt": format!("one at a time {i}")}))
            .send()
            .await
            .expect("submit")
            .json()
            .await
            .unwrap();
        let task_id = submitted["task_id"].as_str().expect("task_id").to_string();
        loop {
            let task: Value = client
                .get(format!("{base}/api/v1/tasks"))
                .query(&[("task_id", &task_id)])
                .bearer_auth(token)
                .send()
                .await
                .expect("poll")
                .json()
                .await
                .unwrap();
            match task["status"].as_str() {
                Some("DONE") => break,
                Some("QUEUED" | "RUNNING") => tokio::time::sleep(Duration::from_millis(1)).await,
                other => panic!("task ended {other:?}: {task}"),
            }
        }
    }
}

/// One user floods the queue, nine others submit now and then: how long do the nine wait?
async fn fairness_scenario() {
    for fair in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let (sim, url) = start_sim(dir.path(), 20, 1);
        let extra = format!("[limits]\nfair_order = {fair}\n");
        let extra = format!("{extra}\n{FAST_PINGS}");
        let rig = Rig::launch(dir, vec![sim], &[(url, 1)], &extra).await;
        rig.wait_healthy().await;
        let flooder = rig.token("flooder").await;
        let mut others = Vec::new();
        for i in 0..9 {
            others.push(rig.token(&format!("user_{i}")).await);
        }
        let flood = (0..300).map(|i| rig.submit(&flooder, format!("flood {i}")));
        futures_util::future::join_all(flood).await;
        // Each of the nine submits one task every 400 ms, ten times, and times it to DONE.
        let mut timed = Vec::new();
        for round in 0..10 {
            for (i, token) in others.iter().enumerate() {
                let (client, base, token) = (rig.client.clone(), rig.base.clone(), token.clone());
                let sent = Instant::now();
                let task_id = rig.submit(&token, format!("user {i} round {round}")).await;
                timed.push(tokio::spawn(async move {
                    loop {
                        let task: Value = client
                            .get(format!("{base}/api/v1/tasks"))
                            .query(&[("task_id", &task_id)])
                            .bearer_auth(&token)
                            .send()
                            .await
                            .unwrap()
                            .json()
                            .await
                            .unwrap();
                        if task["status"] == "DONE" {
                            return sent.elapsed();
                        }
                        assert!(
                            sent.elapsed() < SCENARIO_LIMIT,
                            "task never finished: {task}"
                        );
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }));
            }
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        let mut waits = Vec::new();
        for handle in timed {
            waits.push(handle.await.unwrap());
        }
        waits.sort();
        println!(
            "fairness (fair_order = {fair}): 1 user floods 300 tasks, 9 users submit 90 over 4 s \
             (20 ms GPU): their submit-to-DONE p50 {:.0} ms, p99 {:.0} ms",
            percentile(&waits, 0.50).as_secs_f64() * 1e3,
            percentile(&waits, 0.99).as_secs_f64() * 1e3,
        );
    }
}

/// One GPU (5 ms a call, capacity 1) failing half its calls, under the default health
/// policy (pings every 30 s): how many successes a second it still gives, against the
/// most its success rate allows.
async fn halffail_scenario() {
    let total = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let (sim, url) = start_sim_with(dir.path(), 5, 1, &["--failure-rate", "0.5"]);
    let per_call = call_time(&url).await;
    let rig = Rig::launch(dir, vec![sim], &[(url, 1)], "").await;
    rig.wait_healthy().await;
    let token = rig.token("halffail").await;
    let started = Instant::now();
    for i in 0..total {
        rig.submit(&token, format!("half {i}")).await;
    }
    while rig.count("DONE").await + rig.count("FAILED").await < total as u64 {
        assert!(
            started.elapsed() < SCENARIO_LIMIT,
            "halffail did not finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (done, failed) = (rig.count("DONE").await, rig.count("FAILED").await);
    let allowed = 0.5 / per_call;
    let got = done as f64 / elapsed;
    println!(
        "halffail: {total} tasks on one GPU failing 50% ({:.1} ms a call): {done} DONE, {failed} FAILED in {elapsed:.1}s; {got:.0} successes/s against {allowed:.0}/s its success rate allows ({:.0}%)",
        per_call * 1e3,
        got * 100.0 / allowed
    );
}

/// SSE subscribers of the events scenario: 1,000, as users × streams per user.
const SUBSCRIBERS: usize = 1000;

/// Opens one user-wide SSE stream; answers once it is open, with the task that reads
/// it: for each of the next `dones` DONE events, the time from its commit (`at`) to
/// its arrival here.
async fn subscribe(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    dones: usize,
) -> tokio::task::JoinHandle<Vec<Duration>> {
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
        let (mut buffer, mut lags) = (String::new(), Vec::new());
        while lags.len() < dones {
            let Some(Ok(chunk)) = body.next().await else {
                panic!("a stream ended early after {} DONE events", lags.len());
            };
            let arrived = chrono::Utc::now();
            buffer.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = buffer.find("\n\n") {
                let frame: String = buffer.drain(..end + 2).collect();
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
        lags
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
/// load), and end-to-end tasks/s for the same users with and without the subscribers.
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
    let without = tasks_for(&rig, &tokens, tasks_per_user, "no subscribers").await;
    let mut streams = Vec::new();
    for token in &tokens {
        for _ in 0..per_user {
            streams.push(subscribe(&client, &rig.base, token, 1 + tasks_per_user).await);
        }
    }
    tasks_for(&rig, &tokens, 1, "1 task per user, with the subscribers").await;
    let with = tasks_for(&rig, &tokens, tasks_per_user, "with the subscribers").await;
    let (mut light, mut loaded) = (Vec::new(), Vec::new());
    for stream in streams {
        let lags = stream.await.unwrap();
        light.push(lags[0]);
        loaded.extend(&lags[1..]);
    }
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
    println!(
        "events ({shape}): end-to-end with {SUBSCRIBERS} subscribers {with:.0} tasks/s against {without:.0} without ({:+.1}%)",
        (with / without - 1.0) * 100.0
    );
}

/// Each client watching its own tasks (1,000 users, one stream each), then a fan-out
/// (100 users with 10 streams each, every event sent 10 times).
/// Tasks the admin scenario stores, spread over `ADMIN_USERS` users.
const ADMIN_TASKS: u64 = 1_000_000;
const ADMIN_USERS: u64 = 100;

/// One SQL statement on the rig's connection.
async fn execute(rig: &Rig, sql: &str) {
    use sea_orm::{ConnectionTrait, Statement};
    let backend = rig.db.get_database_backend();
    rig.db
        .execute(Statement::from_string(backend, sql))
        .await
        .unwrap();
}

/// The time of `GET /api/v1/admin/tasks?{query}` (median of 9) and its `total`.
async fn listing_time(rig: &Rig, token: &str, query: &str) -> (Duration, u64) {
    let mut times = Vec::new();
    let mut total = 0;
    for _ in 0..9 {
        let started = Instant::now();
        let page: Value = rig
            .client
            .get(format!("{}/api/v1/admin/tasks?{query}", rig.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        times.push(started.elapsed());
        total = page["total"].as_u64().expect("a page");
    }
    times.sort();
    (times[times.len() / 2], total)
}

/// A million finished tasks stored at once (one statement), then the listing's time
/// and exact `total` per filter.
async fn admin_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, url) = start_sim(dir.path(), 600_000, 1);
    // Retention off: the stored tasks are up to 11 days old.
    let extra = format!("{FAST_PINGS}[retention]\nfinished_days = 0\n");
    let rig = Rig::launch(dir, vec![sim], &[(url, 1)], &extra).await;
    rig.wait_healthy().await;
    let token = rig.token("bench_admin").await;
    execute(
        &rig,
        "UPDATE users SET role = 'admin' WHERE username = 'bench_admin'",
    )
    .await;
    execute(
        &rig,
        &format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ADMIN_USERS}) \
         INSERT INTO users (username, password_hash, role, disabled, created_at, event_seq) \
         SELECT 'bench_' || i, 'x', 'user', 0, '2026-01-01T00:00:00+00:00', 0 FROM n"
    ),
    )
    .await;
    let started = Instant::now();
    // Created over the last 1,000,000 seconds, a tenth FAILED, a tenth CANCELLED.
    execute(&rig, &format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ADMIN_TASKS}) \
         INSERT INTO tasks (task_id, user_id, prompt, steps, status, attempts, priority, fair_key, \
           instance, created_at, started_at, updated_at) \
         SELECT 'bench-' || i, (SELECT min(id) FROM users WHERE username LIKE 'bench\\_%' ESCAPE '\\') + i % {ADMIN_USERS}, \
           'a prompt numbered ' || i, 20, \
           CASE i % 10 WHEN 0 THEN 'FAILED' WHEN 1 THEN 'CANCELLED' ELSE 'DONE' END, 1, 'normal', 0, \
           'http://gpu-' || (i % 4) || ':8000', t, t, t \
         FROM (SELECT i, strftime('%Y-%m-%dT%H:%M:%S+00:00', 'now', '-' || ({ADMIN_TASKS} - i) || ' seconds') AS t FROM n)"
    ))
    .await;
    execute(&rig, "ANALYZE").await;
    println!(
        "admin: {ADMIN_TASKS} tasks of {ADMIN_USERS} users stored in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let hour_ago = (chrono::Utc::now() - chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for (label, query) in [
        ("no filter", String::new()),
        ("statuses=FAILED", "statuses=FAILED".into()),
        ("users=one user", "users=50".into()),
        (
            "statuses=FAILED&users=one",
            "statuses=FAILED&users=50".into(),
        ),
        ("instances=one of 4", "instances=http://gpu-1:8000".into()),
        (
            "finished in the last hour",
            format!("finished_after={hour_ago}"),
        ),
        (
            "created in the last hour, FAILED",
            format!("created_after={hour_ago}&statuses=FAILED"),
        ),
        ("q=numbered 99999 (no index)", "q=numbered%2099999".into()),
        ("page 1000 by cursor", "from=500000&limit=20".into()),
    ] {
        let (time, total) = listing_time(&rig, &token, &query).await;
        println!(
            "admin: GET /api/v1/admin/tasks {label}: total {total}, {:.1} ms (median of 9)",
            time.as_secs_f64() * 1e3
        );
    }
}

async fn events_scenario() {
    events_run(1000, 10).await;
    events_run(100, 100).await;
}

/// Telemetry's cost: submissions/s at 64 clients with nothing watching, with `/metrics`
/// scraped every second, and scraped with every span exported over OTLP to a receiver
/// that takes and drops them; rounds alternate (A, B, C, A, B, C…) on a shared machine
/// and the medians are printed. Metrics are always recorded: what recording costs per
/// submission is measured in-process, apart.
async fn telemetry_scenario() {
    let (clients, total, rounds) = (64, 6_000, 3);
    // Spans are made at info level: the same filter for all three, so that only the
    // export differs (the gateways inherit it; it overrides their `log.level`).
    std::env::set_var("RUST_LOG", "warn,infergate=info");
    let receiver = start_otlp_sink();
    let traced = format!("{FAST_PINGS}[telemetry]\notlp_endpoint = \"{receiver}\"\n");
    let sampled = format!("{traced}sample_ratio = 0.1\n");
    let setups = [
        ("bare", false, FAST_PINGS.to_string()),
        ("metrics", true, FAST_PINGS.to_string()),
        ("metrics+traces", true, traced),
        ("metrics+traces sampled 10%", true, sampled),
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    for round in 0..rounds {
        for (i, (label, scrape, extra)) in setups.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            // A backend that never finishes in time: only the submission path is measured.
            let (sim, url) = start_sim(dir.path(), 600_000, 1);
            let rig = Rig::launch(dir, vec![sim], &[(url, 1)], extra).await;
            rig.wait_healthy().await;
            let scraper = scrape
                .then(|| tokio::spawn(scrape_every_second(rig.client.clone(), rig.base.clone())));
            let (latencies, elapsed) = rig.submit_load(clients, total).await;
            if let Some(scraper) = scraper {
                scraper.abort();
            }
            let rate = latencies.len() as f64 / elapsed.as_secs_f64();
            println!("telemetry round {round} {label}: {rate:.0} submissions/s");
            rates[i].push(rate);
        }
    }
    let medians: Vec<f64> = rates
        .iter_mut()
        .map(|r| {
            r.sort_by(f64::total_cmp);
            r[r.len() / 2]
        })
        .collect();
    for ((label, _, _), median) in setups.iter().zip(&medians) {
        let cost = (1.0 - median / medians[0]) * 100.0;
        println!("telemetry {label}: median {median:.0} submissions/s at {clients} clients ({cost:+.1}% slower than bare)");
    }
    let per_submit = recording_cost_per_submission();
    println!(
        "telemetry: recording the metrics of one submission takes {per_submit:.0} ns ({:.2}% of a submission's share of the machine at the bare median)",
        per_submit * medians[0] / 1e9 * 100.0
    );
}

/// What the gateway records for one accepted submission: its HTTP request, the counter,
/// and its share of a group commit.
fn recording_cost_per_submission() -> f64 {
    use infergate::telemetry::METRICS;
    let n = 1_000_000;
    let started = Instant::now();
    for _ in 0..n {
        METRICS.http_request(
            "POST",
            Some("/api/v1/image/async".into()),
            202,
            Duration::from_micros(900),
        );
        METRICS.task_submitted();
        METRICS.db_commit(Duration::from_micros(500), 32);
    }
    started.elapsed().as_nanos() as f64 / n as f64
}

async fn scrape_every_second(client: reqwest::Client, base: String) {
    loop {
        let scrape = client.get(format!("{base}/metrics")).send().await;
        let _ = scrape.expect("scrape").bytes().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// An OTLP/HTTP receiver that drops what it is sent, on its own thread; its base URL.
fn start_otlp_sink() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let app = || {
                actix_web::App::new()
                    .app_data(actix_web::web::PayloadConfig::new(64 << 20))
                    .route(
                        "/v1/traces",
                        actix_web::web::post().to(|_: actix_web::web::Bytes| async {
                            actix_web::HttpResponse::Ok().finish()
                        }),
                    )
            };
            actix_web::HttpServer::new(app)
                .workers(1)
                .listen(listener)
                .unwrap()
                .run()
                .await
        })
    });
    url
}

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
async fn webhooks_scenario() {
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

#[tokio::main]
async fn main() {
    let scenario = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    match scenario.as_str() {
        "submit" => submit_scenario().await,
        "e2e" => e2e_scenario().await,
        "recovery" => recovery_scenario().await,
        "balance" => balance_scenario().await,
        "fairness" => fairness_scenario().await,
        "halffail" => halffail_scenario().await,
        "register" => register_scenario().await,
        "events" => events_scenario().await,
        "telemetry" => telemetry_scenario().await,
        "cluster" => cluster::cluster_scenario().await,
        "eta" => eta::eta_scenario().await,
        "admin" => admin_scenario().await,
        "webhooks" => webhooks_scenario().await,
        "all" => {
            submit_scenario().await;
            e2e_scenario().await;
            recovery_scenario().await;
            balance_scenario().await;
            fairness_scenario().await;
            halffail_scenario().await;
            register_scenario().await;
            events_scenario().await;
            telemetry_scenario().await;
            cluster::cluster_scenario().await;
            eta::eta_scenario().await;
            admin_scenario().await;
            webhooks_scenario().await;
        }
        other => {
            eprintln!(
                "unknown scenario {other}: submit | e2e | recovery | balance | fairness | halffail | register | events | telemetry | cluster | eta | admin | webhooks | all"
            );
            std::process::exit(2);
        }
    }
}
