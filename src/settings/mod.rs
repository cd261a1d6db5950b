//! Every setting and its built-in default.
//!
//! Sources, later ones winning: built-in defaults, `settings.toml` (or `--config PATH`),
//! environment variables `INFERGATE__SECTION__KEY` (`load.rs`, with the checks that stop
//! a bad start). Backend instance entries are the domain's `InstanceSpec`.

mod load;

use std::time::Duration;

use serde::Deserialize;

use crate::domain::{ImageLimits, InstanceKind, InstanceSpec, Protocol, Strategy};

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot load settings: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid setting `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub auth: AuthSettings,
    pub queue: QueueSettings,
    pub workers: WorkerSettings,
    pub health: HealthSettings,
    pub balancing: BalancingSettings,
    pub image: ImageLimits,
    pub speech: SpeechSettings,
    pub limits: LimitSettings,
    pub log: LogSettings,
    pub telemetry: TelemetrySettings,
    pub stats: StatsSettings,
    pub openai: OpenAiSettings,
    pub cluster: ClusterSettings,
    pub events: EventSettings,
    pub webhooks: WebhookSettings,
    pub retention: RetentionSettings,
    pub instances: Vec<InstanceSpec>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Empty: 0.0.0.0, or 127.0.0.1 in demo mode.
    pub host: String,
    pub port: u16,
    /// Largest JSON request body accepted.
    pub max_json_bytes: usize,
    /// On SIGTERM/SIGINT, how long running tasks may take to finish.
    pub shutdown_grace_secs: u64,
    /// Longest a request body (other than a streamed speech upload) may take to arrive.
    pub body_timeout_secs: u64,
    /// Open connections at once, split evenly among the HTTP worker threads.
    pub max_connections: usize,
    /// Open connections from one client address (IPv6: one /64); 0 = no cap.
    pub max_connections_per_address: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
    /// How long a finished image is held while the database refuses its DONE; after
    /// that the task is stored as FAILED instead.
    pub hold_results_secs: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Empty: generate a strong secret once and keep it in the database.
    pub jwt_secret: String,
    pub token_ttl_hours: u64,
    /// Passwords hashed at once (each takes about 19 MiB and a core); 0: one per core.
    pub max_concurrent_hashes: usize,
    /// Hashes that may wait for a hashing thread; more are refused at once (503).
    pub max_queued_hashes: usize,
    /// How long a user's standing (exists, not disabled) is remembered between database
    /// lookups; 0: looked up on every request.
    pub user_cache_secs: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSettings {
    pub capacity: usize,
    pub max_wait_secs: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// 0: one slot per unit of enabled image capacity, following instances as they change.
    pub slots: usize,
    pub task_timeout_secs: u64,
    /// Largest backend answer (image bytes) accepted.
    pub max_response_bytes: usize,
    /// Attempts per task, counting the first.
    pub max_attempts: u32,
    /// Pause before the first retry; doubles with each further attempt (with jitter).
    pub retry_base_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthSettings {
    pub interval_secs: u64,
    pub ping_timeout_secs: u64,
    /// Consecutive failed calls that eject an instance (see `outlier.rs`).
    pub eject_after_failures: u32,
    /// A failure rate (in percent, of its recent calls) that ejects an instance; 0: off.
    pub eject_failure_percent: u32,
    /// The first ejection's length; each further one in a streak doubles it.
    pub base_ejection_secs: u64,
    /// The longest ejection, and how long an instance must behave to start afresh.
    pub max_ejection_secs: u64,
    /// The most of a kind's instances ejected at once (one is always allowed).
    pub max_ejection_percent: u32,
    /// An instance that comes back healthy ramps up to its capacity over this long; 0: at once.
    pub slow_start_secs: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BalancingSettings {
    pub image: Strategy,
    pub speech: Strategy,
}

/// Limits of the synchronous speech endpoints.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpeechSettings {
    /// Largest form data (the file plus any other fields) of one upload.
    pub max_upload_bytes: usize,
    /// Longest PCM stream, in seconds of 16 kHz 16-bit mono audio.
    pub max_pcm_seconds: u64,
    /// A client that sends nothing for this long mid-upload (or before its first byte)
    /// is cut off.
    pub read_timeout_secs: u64,
    /// From its first byte on, an upload must arrive at least this fast on average (after
    /// a 2 s grace); 0 = no minimum. 16000 is half of real-time 16 kHz 16-bit audio.
    pub min_bytes_per_sec: u64,
    /// Longest a whole upload may take, so a trickling client cannot hold an instance.
    pub max_upload_secs: u64,
    /// Longest wait for a free healthy speech instance.
    pub max_wait_secs: u64,
    /// Requests that may wait for a free instance at once; more are refused at once.
    pub max_waiting: usize,
    /// The backend's time to answer once it has the whole upload.
    pub timeout_secs: u64,
}

impl SpeechSettings {
    /// `max_pcm_seconds` in bytes of 16 kHz 16-bit mono PCM.
    pub fn max_pcm_bytes(&self) -> u64 {
        self.max_pcm_seconds * PCM_BYTES_PER_SEC
    }
}

/// Bytes per second of 16 kHz 16-bit mono PCM, the only format the PCM endpoint takes.
pub const PCM_BYTES_PER_SEC: u64 = 32_000;

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum LogFormat {
    Text,
    Json,
}

impl TryFrom<String> for LogFormat {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, String> {
        match raw.as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("`{raw}` is not one of `text`, `json`")),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `infergate=debug,actix_web=info`.
    pub level: String,
}

/// Traces: exported over OTLP/HTTP when an endpoint is set, not made at all otherwise.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// The collector's OTLP/HTTP base URL (`/v1/traces` is added); empty: no traces.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// The share of traces begun here that are recorded and exported (0 to 1); a
    /// request that brings a `traceparent` keeps its caller's decision.
    pub sample_ratio: f64,
    /// When set, `GET /metrics` wants `Authorization: Bearer <token>`; empty: open.
    pub metrics_token: String,
}

/// The alert figures of `/api/v1/system/stats` and `/metrics`: over which window, and
/// above which thresholds an alert is named.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatsSettings {
    /// Failure rate, processing time and throughput count tasks ended this recently.
    pub window_minutes: u32,
    /// Queue usage (percent of its capacity) above which `queue_usage` alerts.
    pub alert_queue_usage: f64,
    /// Failed tasks (percent of those ended in the window) above which `failure_rate` alerts.
    pub alert_failure_rate: f64,
    /// Mean backend time of the window's tasks above which `avg_processing_secs` alerts.
    pub alert_avg_processing_secs: f64,
    /// The queue's depth is kept every this many seconds (for a day), for its chart.
    pub depth_sample_secs: u64,
}

impl Default for StatsSettings {
    fn default() -> Self {
        StatsSettings {
            window_minutes: 10,
            alert_queue_usage: 80.0,
            alert_failure_rate: 10.0,
            alert_avg_processing_secs: 20.0,
            depth_sample_secs: 60,
        }
    }
}

/// The OpenAI-compatible routes under `/v1`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenAiSettings {
    /// How long `POST /v1/images/generations` waits for its tasks; they keep running after.
    pub wait_secs: u64,
}

impl Default for OpenAiSettings {
    fn default() -> Self {
        OpenAiSettings { wait_secs: 120 }
    }
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            otlp_endpoint: String::new(),
            service_name: "infergate".into(),
            sample_ratio: 1.0,
            metrics_token: String::new(),
        }
    }
}

/// Task events and the streams that push them (SSE, WebSocket).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventSettings {
    /// How long stored events are kept for replay.
    pub retention_hours: u64,
    /// Open streams per user on one gateway; more get 429 (0: no limit).
    pub max_streams_per_user: usize,
    /// Events a stream may have waiting for a slow client before it is closed (the
    /// client resumes from its last `seq`).
    pub buffer: usize,
    /// Seconds between keep-alive comments on an idle SSE stream (and WebSocket pings).
    pub keepalive_secs: u64,
    /// How long an SSE stream holds a change that does not end its task, so that what
    /// follows within it goes out in the same write (0: each at once). An ending is
    /// never held, and takes what is held with it.
    pub linger_ms: u64,
}

impl Default for EventSettings {
    fn default() -> Self {
        EventSettings {
            retention_hours: 24,
            max_streams_per_user: 16,
            buffer: 256,
            keepalive_secs: 15,
            linger_ms: 25,
        }
    }
}

/// Webhook deliveries, from their durable outbox.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// A delivery that has no 2xx answer within this is a failed attempt.
    pub timeout_secs: u64,
    /// The first retry's pause; it doubles with each attempt, with jitter.
    pub retry_base_ms: u64,
    /// Attempts per delivery, the first included.
    pub max_attempts: u32,
    /// Deliver to private, loopback and link-local addresses too (tests, a LAN).
    pub allow_private_networks: bool,
    /// Deliveries in flight at once, per gateway.
    pub concurrency: usize,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            timeout_secs: 10,
            retry_base_ms: 1000,
            max_attempts: 8,
            allow_private_networks: false,
            concurrency: 16,
        }
    }
}

/// Finished tasks are deleted after a while, with their images and events.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// Days a finished task is kept after it ended (0: kept for good).
    pub finished_days: u64,
    /// How often the job looks for tasks past it.
    pub interval_secs: u64,
    /// Tasks deleted per transaction, so no write lock is held long.
    pub batch: u64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings {
            finished_days: 7,
            interval_secs: 60,
            batch: 200,
        }
    }
}

/// Several gateways on one PostgreSQL database (a SQLite file has one gateway).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// How long a process's claim on a task (and on a backend's call slot) holds unless
    /// renewed; it renews every third of it, and a dead process's tasks are taken over
    /// once theirs run out.
    pub lease_secs: u64,
    /// The backstop to wake-ups: how often a process looks for work it was not told of.
    pub poll_ms: u64,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            lease_secs: 15,
            poll_ms: 500,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            server: ServerSettings::default(),
            database: DatabaseSettings::default(),
            auth: AuthSettings::default(),
            queue: QueueSettings::default(),
            workers: WorkerSettings::default(),
            health: HealthSettings::default(),
            balancing: BalancingSettings::default(),
            image: ImageLimits::default(),
            speech: SpeechSettings::default(),
            limits: LimitSettings::default(),
            log: LogSettings::default(),
            telemetry: TelemetrySettings::default(),
            stats: StatsSettings::default(),
            openai: OpenAiSettings::default(),
            events: EventSettings::default(),
            webhooks: WebhookSettings::default(),
            retention: RetentionSettings::default(),
            cluster: ClusterSettings::default(),
            instances: vec![InstanceSpec {
                protocol: Some(Protocol::Qwen),
                ..InstanceSpec::new(InstanceKind::Image, "http://localhost:8000")
            }],
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            host: String::new(),
            port: 8080,
            max_json_bytes: 64 * 1024,
            shutdown_grace_secs: 30,
            body_timeout_secs: 10,
            max_connections: 10_000,
            max_connections_per_address: 256,
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: "sqlite://infergate.db?mode=rwc".into(),
            max_connections: 8,
            hold_results_secs: 60,
        }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            jwt_secret: String::new(),
            token_ttl_hours: 24,
            max_concurrent_hashes: 0,
            max_queued_hashes: 16,
            user_cache_secs: 2,
        }
    }
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            capacity: 100,
            max_wait_secs: 600,
        }
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            slots: 0,
            task_timeout_secs: 120,
            max_response_bytes: 32 * 1024 * 1024,
            max_attempts: 3,
            retry_base_ms: 500,
        }
    }
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            interval_secs: 30,
            ping_timeout_secs: 5,
            eject_after_failures: 3,
            eject_failure_percent: 80,
            base_ejection_secs: 5,
            max_ejection_secs: 300,
            max_ejection_percent: 50,
            slow_start_secs: 10,
        }
    }
}

impl Default for BalancingSettings {
    fn default() -> Self {
        BalancingSettings {
            image: Strategy::LeastLoaded,
            speech: Strategy::LeastLoaded,
        }
    }
}

impl Default for SpeechSettings {
    fn default() -> Self {
        SpeechSettings {
            max_upload_bytes: 10 * 1024 * 1024,
            max_pcm_seconds: 60,
            read_timeout_secs: 10,
            min_bytes_per_sec: 16_000,
            max_upload_secs: 120,
            max_wait_secs: 5,
            max_waiting: 32,
            timeout_secs: 30,
        }
    }
}

/// Fairness between users: rate limits, quotas, fair order and VIP priority.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Image submissions per user per minute (token bucket refill); 0 = no limit.
    pub submit_per_minute: u32,
    /// Submissions a user may make at once before the per-minute rate applies.
    pub submit_burst: u32,
    /// Speech requests per user per minute; 0 = no limit.
    pub speech_per_minute: u32,
    pub speech_burst: u32,
    /// Login attempts per username and per client address per minute; 0 = no limit.
    pub login_per_minute: u32,
    pub login_burst: u32,
    /// Registrations per client address per minute; 0 = no limit.
    pub register_per_minute: u32,
    pub register_burst: u32,
    /// Unfinished (queued or running) image tasks per user; 0 = no quota.
    pub max_queued_per_user: u32,
    /// Serve users with queued tasks in turn; false: strict submission order.
    pub fair_order: bool,
    /// While normal tasks wait, VIP tasks get at most this many dispatches in a row
    /// before a normal task gets one (the aging bound); 0 = no VIP priority.
    pub vip_share: u32,
    /// Take the client address for login and registration limits from X-Forwarded-For /
    /// Forwarded (only behind a trusted proxy).
    pub trust_forwarded_for: bool,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            submit_per_minute: 60,
            submit_burst: 20,
            speech_per_minute: 60,
            speech_burst: 10,
            login_per_minute: 10,
            login_burst: 5,
            register_per_minute: 10,
            register_burst: 5,
            max_queued_per_user: 20,
            fair_order: true,
            vip_share: 4,
            trust_forwarded_for: false,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl Settings {
    pub fn task_timeout(&self) -> Duration {
        Duration::from_secs(self.workers.task_timeout_secs)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.server.shutdown_grace_secs)
    }

    pub fn hold_results(&self) -> Duration {
        Duration::from_secs(self.database.hold_results_secs)
    }

    pub fn queue_max_wait(&self) -> Duration {
        Duration::from_secs(self.queue.max_wait_secs)
    }

    pub fn openai_wait(&self) -> Duration {
        Duration::from_secs(self.openai.wait_secs)
    }
}

impl ServerSettings {
    /// Where to listen: `host`, or every address when it is empty.
    pub fn listen_host(&self) -> &str {
        match self.host.as_str() {
            "" => "0.0.0.0",
            host => host,
        }
    }
}

impl WorkerSettings {
    /// Worker slots: `workers.slots` when set, else the enabled image instances' total
    /// capacity; at least one, so a task with no instance still fails after the max wait.
    pub fn slots_for(&self, image_capacity: u32) -> usize {
        if self.slots > 0 {
            return self.slots;
        }
        image_capacity.max(1) as usize
    }
}
