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

#[path = "loadgen/admin.rs"]
mod admin;
#[path = "loadgen/cluster.rs"]
mod cluster;
#[path = "loadgen/eta.rs"]
mod eta;
#[path = "loadgen/events.rs"]
mod events;
#[path = "loadgen/telemetry.rs"]
mod telemetry;
#[path = "loadgen/webhooks.rs"]
mod webhooks;

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
        sign_up(&self.client, &self.base, name).await
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

/// Registers `name` (a second time is refused, which is fine) and logs in: the token.
async fn sign_up(client: &reqwest::Client, base: &str, name: &str) -> String {
    let credentials = json!({"username": name, "password": "benchmark-password"});
    client
        .post(format!("{base}/register"))
        .json(&credentials)
        .send()
        .await
        .unwrap();
    let login: Value = client
        .post(format!("{base}/login"))
        .json(&credentials)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    login["token"].as_str().expect("token").to_string()
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

/// The whole machine's CPU time so far, from `/proc/stat`: seconds busy (user, nice,
/// system, interrupts) and seconds stolen by the host.
fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .expect("a cpu line")
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().expect("ticks"))
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6];
    (busy / 100.0, ticks[7] / 100.0)
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

/// The middle of some figures (rounds of one setup), sorting them.
fn median(figures: &mut [f64]) -> f64 {
    figures.sort_by(f64::total_cmp);
    figures[figures.len() / 2]
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
        "events" => events::events_scenario().await,
        "telemetry" => telemetry::telemetry_scenario().await,
        "cluster" => cluster::cluster_scenario().await,
        "cluster-e2e" => cluster::cluster_e2e_scenario().await,
        "cluster-makespan" => cluster::makespan().await,
        "eta" => eta::eta_scenario().await,
        "admin" => admin::admin_scenario().await,
        "webhooks" => webhooks::webhooks_scenario().await,
        "all" => {
            submit_scenario().await;
            e2e_scenario().await;
            recovery_scenario().await;
            balance_scenario().await;
            fairness_scenario().await;
            halffail_scenario().await;
            register_scenario().await;
            events::events_scenario().await;
            telemetry::telemetry_scenario().await;
            cluster::cluster_scenario().await;
            eta::eta_scenario().await;
            admin::admin_scenario().await;
            webhooks::webhooks_scenario().await;
        }
        other => {
            eprintln!(
                "unknown scenario {other}: submit | e2e | recovery | balance | fairness | halffail | register | events | telemetry | cluster | cluster-e2e | cluster-makespan | eta | admin | webhooks | all"
            );
            std::process::exit(2);
        }
    }
}
