//! Several gateways on one PostgreSQL database (`INFERGATE_BENCH_POSTGRES_URL`, default
//! the local test server): end-to-end tasks/s with 1, 2 and 3 processes, durable
//! submissions/s at 64 clients, the time from a SIGKILL to the killed process's tasks
//! running elsewhere, and the makespan of 600 tasks on three 50 ms GPUs of capacity 1.
//! Each run gets a database of its own, dropped at the end.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use serde_json::Value;

use super::{
    binary, free_port, median, percentile, start_sim, submit_spread, Proc, FAST_PINGS,
    SCENARIO_LIMIT,
};

const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A database of its own on the benchmark's PostgreSQL server.
struct BenchDatabase {
    server: DatabaseConnection,
    name: String,
    url: String,
    db: DatabaseConnection,
}

impl BenchDatabase {
    async fn create() -> BenchDatabase {
        let server_url =
            std::env::var("INFERGATE_BENCH_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_SERVER.into());
        let server = Database::connect(&server_url)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {server_url}: {e}"));
        let name = format!(
            "infergate_bench_{}_{}",
            std::process::id(),
            free_port() // unique enough for runs one after another
        );
        server
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let base = server_url
            .rsplit_once('/')
            .expect("a database in the URL")
            .0;
        let url = format!("{base}/{name}");
        let db = Database::connect(&url).await.unwrap();
        BenchDatabase {
            server,
            name,
            url,
            db,
        }
    }

    async fn drop_it(self) {
        self.db.close().await.unwrap();
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        self.server.execute_unprepared(&drop).await.unwrap();
    }

    async fn count(&self, filter: &str) -> u64 {
        let row = self
            .db
            .query_one(Statement::from_string(
                self.db.get_database_backend(),
                format!("SELECT COUNT(*) AS n FROM tasks WHERE {filter}"),
            ))
            .await
            .unwrap()
            .unwrap();
        row.try_get::<i64>("", "n").unwrap() as u64
    }
}

/// `n` gateway processes on one database, sharing image instances `instances`.
struct Cluster {
    dir: tempfile::TempDir,
    _sims: Vec<Proc>,
    sim_urls: Vec<String>,
    database: BenchDatabase,
    gateways: Vec<Option<Proc>>,
    bases: Vec<String>,
    client: reqwest::Client,
}

impl Cluster {
    async fn start(n: usize, latency_ms: u64, capacities: &[u32]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let (sims, sim_urls): (Vec<_>, Vec<_>) = capacities
            .iter()
            .map(|&capacity| start_sim(dir.path(), latency_ms, capacity))
            .unzip();
        let database = BenchDatabase::create().await;
        let mut config = format!(
            "{FAST_PINGS}\n[queue]\ncapacity = 1000000\n[log]\nlevel = \"warn\"\n\
             [database]\nurl = \"{}\"\n",
            database.url
        );
        for (url, capacity) in sim_urls.iter().zip(capacities) {
            config.push_str(&format!(
                "[[instances]]\nkind = \"image\"\nurl = \"{url}\"\ncapacity = {capacity}\n"
            ));
        }
        std::fs::write(dir.path().join("settings.toml"), config).unwrap();
        let mut cluster = Cluster {
            dir,
            _sims: sims,
            sim_urls,
            database,
            gateways: vec![],
            bases: vec![],
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .build()
                .unwrap(),
        };
        // One at a time: the first applies the migrations.
        for _ in 0..n {
            let port = free_port();
            let gateway = start_gateway(cluster.dir.path(), port);
            let base = format!("http://127.0.0.1:{port}");
            cluster.wait_ready(&base).await;
            cluster.gateways.push(Some(gateway));
            cluster.bases.push(base);
        }
        cluster
    }

    async fn wait_ready(&self, base: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = self.client.get(format!("{base}/ready")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(Instant::now() < deadline, "gateway at {base} never ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn token(&self) -> String {
        super::sign_up(&self.client, &self.bases[0], "bench_user").await
    }

    /// `total` submissions from `clients` clients, round-robin over the gateways.
    async fn submit_load(
        &self,
        token: &str,
        clients: usize,
        total: usize,
    ) -> (Vec<Duration>, Duration) {
        submit_spread(&self.client, &self.bases, token, clients, total).await
    }

    async fn wait_done(&self, total: u64, started: Instant, what: &str) -> Duration {
        while self.database.count("status = 'DONE'").await < total {
            assert!(started.elapsed() < SCENARIO_LIMIT, "{what} did not finish");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        started.elapsed()
    }

    /// Each simulator's counters (`/sim/stats`).
    async fn sims_stats(&self) -> Vec<Value> {
        let mut figures = vec![];
        for url in &self.sim_urls {
            let stats: Value = self
                .client
                .get(format!("{url}/sim/stats"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            figures.push(stats);
        }
        figures
    }

    async fn stop(mut self) {
        self.gateways.clear();
        self.database.drop_it().await;
    }
}

fn start_gateway(dir: &Path, port: u16) -> Proc {
    let child = Command::new(binary())
        .args(["serve", "--config", "settings.toml"])
        .env("INFERGATE__SERVER__HOST", "127.0.0.1")
        .env("INFERGATE__SERVER__PORT", port.to_string())
        // One user makes the load: per-user limits would only measure themselves.
        .env("INFERGATE__LIMITS__SUBMIT_PER_MINUTE", "0")
        .env("INFERGATE__LIMITS__LOGIN_PER_MINUTE", "0")
        .env("INFERGATE__LIMITS__MAX_QUEUED_PER_USER", "0")
        .current_dir(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("start gateway");
    Proc(child)
}

/// End-to-end tasks/s through `n` processes, zero-latency GPU of capacity 64, and the
/// machine's CPU time per task (every process on it: gateways, PostgreSQL, simulator and
/// this client), which the host's steal and neighbours disturb less than the rate.
async fn e2e(n: usize) -> E2e {
    let total = 5_000;
    let cluster = Cluster::start(n, 0, &[64]).await;
    // Signing up (a password hash) is not part of the tasks' time.
    let token = cluster.token().await;
    let (busy_before, stolen_before) = super::machine_cpu();
    let started = Instant::now();
    cluster.submit_load(&token, 64, total).await;
    let elapsed = cluster
        .wait_done(total as u64, started, "cluster e2e")
        .await;
    let (busy_after, stolen_after) = super::machine_cpu();
    let rate = total as f64 / elapsed.as_secs_f64();
    let cpu_ms = (busy_after - busy_before) * 1000.0 / total as f64;
    let stolen = stolen_after - stolen_before;
    println!(
        "cluster e2e: {n} process(es), {total} tasks DONE in {:.2}s = {rate:.0} tasks/s; machine CPU {cpu_ms:.2} ms per task, {:.0}% of the run's CPU time stolen",
        elapsed.as_secs_f64(),
        stolen / (busy_after - busy_before + stolen) * 100.0,
    );
    cluster.stop().await;
    E2e { rate, cpu_ms }
}

struct E2e {
    rate: f64,
    cpu_ms: f64,
}

/// Durable submissions/s from 64 clients through `n` processes (nothing finishes).
async fn submissions(n: usize) {
    let cluster = Cluster::start(n, 600_000, &[1]).await;
    let token = cluster.token().await;
    let (mut latencies, elapsed) = cluster.submit_load(&token, 64, 10_000).await;
    latencies.sort();
    println!(
        "cluster submit: {n} process(es), {} durable submissions in {:.2}s = {:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
    );
    cluster.stop().await;
}

/// SIGKILL one of three processes while it runs tasks; how long until every one of
/// them runs on a survivor (default lease, 15 s).
async fn rescue() {
    let mut cluster = Cluster::start(3, 30_000, &[12]).await;
    let token = cluster.token().await;
    cluster.submit_load(&token, 12, 12).await;
    let db = &cluster.database;
    let started = Instant::now();
    while db.count("status = 'RUNNING'").await < 12 {
        assert!(
            started.elapsed() < SCENARIO_LIMIT,
            "the tasks never all ran"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The victim: the process running the most of them.
    let row = db
        .db
        .query_one(Statement::from_string(
            db.db.get_database_backend(),
            "SELECT n.id, n.pid, COUNT(*) AS held FROM tasks t JOIN nodes n ON n.id = t.holder \
             WHERE t.status = 'RUNNING' GROUP BY n.id, n.pid ORDER BY held DESC LIMIT 1",
        ))
        .await
        .unwrap()
        .expect("a process running tasks");
    let node: String = row.try_get("", "id").unwrap();
    let pid: i32 = row.try_get("", "pid").unwrap();
    let held: i64 = row.try_get("", "held").unwrap();
    let victim = cluster
        .gateways
        .iter()
        .position(|g| g.as_ref().is_some_and(|g| g.0.id() == pid as u32))
        .expect("the victim is one of ours");
    let mut gateway = cluster.gateways[victim].take().unwrap();
    gateway.0.kill().unwrap();
    gateway.0.wait().unwrap();
    let killed = Instant::now();
    // Rescued: back to QUEUED, then claimed and RUNNING on another process.
    let ids = format!("SELECT task_id FROM tasks WHERE holder = '{node}' AND status = 'RUNNING'");
    let rows = db
        .db
        .query_all(Statement::from_string(db.db.get_database_backend(), ids))
        .await
        .unwrap();
    let list: Vec<String> = rows
        .iter()
        .map(|r| format!("'{}'", r.try_get::<String>("", "task_id").unwrap()))
        .collect();
    let list = list.join(",");
    let elsewhere = format!(
        "task_id IN ({list}) AND status = 'RUNNING' AND holder IS NOT NULL AND holder <> '{node}'"
    );
    while db.count(&elsewhere).await < rows.len() as u64 {
        assert!(
            killed.elapsed() < SCENARIO_LIMIT,
            "the killed process's tasks never ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "cluster rescue: {held} tasks running on the killed process; all running elsewhere {:.2}s after SIGKILL (lease 15 s, heartbeat 5 s)",
        killed.elapsed().as_secs_f64()
    );
    cluster.stop().await;
}

/// 600 tasks through 3 processes on three 50 ms GPUs of capacity 1; then where each
/// GPU's time went: its calls, the gaps between them (the gateways' share), and the time
/// before its first call and after its last.
pub async fn makespan() {
    let total = 600;
    let cluster = Cluster::start(3, 50, &[1, 1, 1]).await;
    let token = cluster.token().await;
    let started = Instant::now();
    cluster.submit_load(&token, 16, total).await;
    let elapsed = cluster
        .wait_done(total as u64, started, "cluster makespan")
        .await
        .as_secs_f64();
    let ideal = total as f64 * 0.050 / 3.0;
    let stats = cluster.sims_stats().await;
    let field = |s: &Value, name: &str| s[name].as_u64().unwrap_or(0);
    println!(
        "cluster makespan: {total} tasks, 3 processes, 3 GPUs of 50 ms capacity 1: {elapsed:.2}s, ideal {ideal:.2}s ({:+.1}%), max in flight per GPU {:?}",
        (elapsed / ideal - 1.0) * 100.0,
        stats.iter().map(|s| field(s, "max_in_flight")).collect::<Vec<_>>(),
    );
    for (gpu, s) in stats.iter().enumerate() {
        let calls = field(s, "generated") as f64;
        // A simulator of an older version keeps no GPU clock.
        let (Some(span), Some(busy)) = (s["gpu_span_ms"].as_f64(), s["gpu_busy_ms"].as_f64())
        else {
            continue;
        };
        println!(
            "cluster makespan: GPU {gpu}: {calls} calls of {:.2} ms on average, {:.2} ms between calls on average, {:.0} ms before the first and after the last",
            busy / calls,
            (span - busy) / (calls - 1.0).max(1.0),
            elapsed * 1000.0 - span,
        );
    }
    cluster.stop().await;
}

/// End-to-end tasks/s through 1, 2 and 3 processes, and what 2 and 3 keep of 1.
/// Rounds of 1, 2 and 3 processes: this machine's speed drifts by a third from one
/// minute to the next, so each round's figures are compared with each other, and the
/// rounds' medians reported.
const E2E_ROUNDS: usize = 3;

pub async fn cluster_e2e_scenario() {
    let (mut twos, mut threes) = (vec![], vec![]);
    let mut cpu: [Vec<f64>; 3] = Default::default();
    for round in 1..=E2E_ROUNDS {
        let one = e2e(1).await;
        let two = e2e(2).await;
        let three = e2e(3).await;
        println!(
            "cluster e2e, round {round}: 2 processes keep {:.0}%, 3 keep {:.0}% of 1 process",
            two.rate / one.rate * 100.0,
            three.rate / one.rate * 100.0
        );
        twos.push(two.rate / one.rate);
        threes.push(three.rate / one.rate);
        for (figures, run) in cpu.iter_mut().zip([one, two, three]) {
            figures.push(run.cpu_ms);
        }
    }
    println!(
        "cluster e2e: 2 processes keep {:.0}%, 3 keep {:.0}% of 1 process (medians of {E2E_ROUNDS} rounds)",
        median(&mut twos) * 100.0,
        median(&mut threes) * 100.0
    );
    let [one, two, three] = cpu.map(|mut figures| median(&mut figures));
    println!(
        "cluster e2e: machine CPU per task {one:.2} / {two:.2} / {three:.2} ms with 1 / 2 / 3 processes (medians of {E2E_ROUNDS} rounds)"
    );
}

pub async fn cluster_scenario() {
    cluster_e2e_scenario().await;
    submissions(1).await;
    submissions(3).await;
    makespan().await;
    rescue().await;
}
