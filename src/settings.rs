//! Every setting, its built-in default, and the checks that stop a bad start.
//!
//! Sources, later ones winning: built-in defaults, `settings.toml` (or `--config PATH`),
//! environment variables `INFERGATE__SECTION__KEY`.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

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
    pub image: ImageSettings,
    pub speech: SpeechSettings,
    pub limits: LimitSettings,
    pub log: LogSettings,
    pub instances: Vec<InstanceSettings>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    /// Largest JSON request body accepted.
    pub max_json_bytes: usize,
    /// On SIGTERM/SIGINT, how long running tasks may take to finish.
    pub shutdown_grace_secs: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Empty: generate a strong secret once and keep it in the database.
    pub jwt_secret: String,
    pub token_ttl_hours: u64,
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
    /// Consecutive failed calls that take an instance out of rotation before its next ping.
    pub eject_after_failures: u32,
    /// An instance that comes back healthy ramps up to its capacity over this long; 0: at once.
    pub slow_start_secs: u64,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    RoundRobin,
    UserHash,
    LeastLoaded,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BalancingSettings {
    pub image: Strategy,
    pub speech: Strategy,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageSettings {
    pub max_prompt_chars: usize,
    pub default_steps: u32,
    pub max_steps: u32,
    pub max_side: u32,
}

/// Limits of the synchronous speech endpoints.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpeechSettings {
    /// Largest form data (the file plus any other fields) of one upload.
    pub max_upload_bytes: usize,
    /// Longest PCM stream, in seconds of 16 kHz 16-bit mono audio.
    pub max_pcm_seconds: u64,
    /// A client that sends nothing for this long mid-upload is cut off.
    pub read_timeout_secs: u64,
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
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `infergate=debug,actix_web=info`.
    pub level: String,
}

#[derive(
    Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash, serde::Serialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum InstanceKind {
    Image,
    Speech,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Qwen,
    Fastwhisper,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InstanceSettings {
    pub kind: InstanceKind,
    pub url: String,
    pub protocol: Option<Protocol>,
    #[serde(default = "one")]
    pub capacity: u32,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// Largest capacity of one instance: each unit of image capacity is a worker actor.
pub const MAX_INSTANCE_CAPACITY: u32 = 1024;
pub const MAX_INSTANCE_WEIGHT: u32 = 1000;

impl InstanceSettings {
    pub fn protocol(&self) -> Protocol {
        self.protocol.unwrap_or(match self.kind {
            InstanceKind::Image => Protocol::Qwen,
            InstanceKind::Speech => Protocol::Fastwhisper,
        })
    }

    /// The first field that is invalid, with the reason.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        check_instance_url(&self.url).map_err(|reason| ("url", reason))?;
        if !(1..=MAX_INSTANCE_CAPACITY).contains(&self.capacity) {
            let reason = format!("must be between 1 and {MAX_INSTANCE_CAPACITY}");
            return Err(("capacity", reason));
        }
        if !(1..=MAX_INSTANCE_WEIGHT).contains(&self.weight) {
            let reason = format!("must be between 1 and {MAX_INSTANCE_WEIGHT}");
            return Err(("weight", reason));
        }
        let expected = match self.kind {
            InstanceKind::Image => Protocol::Qwen,
            InstanceKind::Speech => Protocol::Fastwhisper,
        };
        if self.protocol() != expected {
            let reason = "image instances speak qwen, speech instances fastwhisper".to_string();
            return Err(("protocol", reason));
        }
        Ok(())
    }

    /// Whether both name the same backend: same kind, and URLs equal once normalised.
    pub fn same_backend(&self, other: &InstanceSettings) -> bool {
        self.kind == other.kind && url_key(&self.url) == url_key(&other.url)
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
            image: ImageSettings::default(),
            speech: SpeechSettings::default(),
            limits: LimitSettings::default(),
            log: LogSettings::default(),
            instances: vec![InstanceSettings {
                kind: InstanceKind::Image,
                url: "http://localhost:8000".into(),
                protocol: Some(Protocol::Qwen),
                capacity: 1,
                weight: 1,
            }],
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            host: "0.0.0.0".into(),
            port: 8080,
            max_json_bytes: 64 * 1024,
            shutdown_grace_secs: 30,
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: "sqlite://infergate.db?mode=rwc".into(),
            max_connections: 8,
        }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            jwt_secret: String::new(),
            token_ttl_hours: 24,
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

impl Default for ImageSettings {
    fn default() -> Self {
        ImageSettings {
            max_prompt_chars: 4000,
            default_steps: 20,
            max_steps: 150,
            max_side: 2048,
        }
    }
}

impl Default for SpeechSettings {
    fn default() -> Self {
        SpeechSettings {
            max_upload_bytes: 10 * 1024 * 1024,
            max_pcm_seconds: 60,
            read_timeout_secs: 10,
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
    /// Unfinished (queued or running) image tasks per user; 0 = no quota.
    pub max_queued_per_user: u32,
    /// Serve users with queued tasks in turn; false: strict submission order.
    pub fair_order: bool,
    /// While normal tasks wait, VIP tasks get at most this many dispatches in a row
    /// before a normal task gets one (the aging bound); 0 = no VIP priority.
    pub vip_share: u32,
    /// Take the client address for login limits from X-Forwarded-For / Forwarded (only
    /// behind a trusted proxy).
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
    /// Loads `path` (required when given, else `settings.toml` when present) and the
    /// environment over the built-in defaults, then validates.
    pub fn load(path: Option<&Path>) -> Result<Settings, SettingsError> {
        let file = match path {
            Some(path) => config::File::from(path).required(true),
            None => config::File::with_name("settings.toml").required(false),
        };
        let settings: Settings = config::Config::builder()
            .add_source(file)
            .add_source(
                config::Environment::with_prefix("INFERGATE")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()?
            .try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |key: &str, reason: &str| {
            Err(SettingsError::Invalid {
                key: key.to_string(),
                reason: reason.to_string(),
            })
        };
        if self.database.url.is_empty() {
            return invalid("database.url", "must not be empty");
        }
        if self.database.max_connections == 0 {
            return invalid("database.max_connections", "must be at least 1");
        }
        if !self.auth.jwt_secret.is_empty() && self.auth.jwt_secret.len() < 32 {
            return invalid(
                "auth.jwt_secret",
                "must be at least 32 bytes, or empty to generate one",
            );
        }
        if self.auth.token_ttl_hours == 0 {
            return invalid("auth.token_ttl_hours", "must be at least 1");
        }
        if self.queue.capacity == 0 {
            return invalid("queue.capacity", "must be at least 1");
        }
        if self.queue.max_wait_secs == 0 {
            return invalid("queue.max_wait_secs", "must be at least 1");
        }
        if self.workers.task_timeout_secs == 0 {
            return invalid("workers.task_timeout_secs", "must be at least 1");
        }
        if !(1..=20).contains(&self.workers.max_attempts) {
            return invalid("workers.max_attempts", "must be between 1 and 20");
        }
        if self.workers.max_response_bytes < 1024 {
            return invalid("workers.max_response_bytes", "must be at least 1024");
        }
        if self.health.interval_secs == 0 {
            return invalid("health.interval_secs", "must be at least 1");
        }
        if self.health.ping_timeout_secs == 0 {
            return invalid("health.ping_timeout_secs", "must be at least 1");
        }
        if self.health.eject_after_failures == 0 {
            return invalid("health.eject_after_failures", "must be at least 1");
        }
        if self.image.max_prompt_chars == 0 {
            return invalid("image.max_prompt_chars", "must be at least 1");
        }
        if self.image.default_steps == 0 || self.image.default_steps > self.image.max_steps {
            return invalid(
                "image.default_steps",
                "must be between 1 and image.max_steps",
            );
        }
        if self.image.max_side < 64 {
            return invalid("image.max_side", "must be at least 64");
        }
        self.validate_speech()?;
        let limits = &self.limits;
        for (key, per_minute, burst) in [
            ("submit", limits.submit_per_minute, limits.submit_burst),
            ("speech", limits.speech_per_minute, limits.speech_burst),
            ("login", limits.login_per_minute, limits.login_burst),
        ] {
            if per_minute > 0 && burst == 0 {
                return invalid(
                    &format!("limits.{key}_burst"),
                    "must be at least 1 while the rate is limited",
                );
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return invalid("log.level", &e.to_string());
        }
        for (i, instance) in self.instances.iter().enumerate() {
            if let Err((field, reason)) = instance.check() {
                return invalid(&format!("instances[{i}].{field}"), &reason);
            }
            if let Some(first) = self.instances[..i]
                .iter()
                .position(|other| other.same_backend(instance))
            {
                let reason = format!("same kind and url as instances[{first}]");
                return invalid(&format!("instances[{i}].url"), &reason);
            }
        }
        Ok(())
    }

    fn validate_speech(&self) -> Result<(), SettingsError> {
        let s = &self.speech;
        let checks = [
            (
                "speech.max_upload_bytes",
                s.max_upload_bytes >= 1024,
                "must be at least 1024",
            ),
            (
                "speech.max_pcm_seconds",
                s.max_pcm_seconds >= 1,
                "must be at least 1",
            ),
            (
                "speech.read_timeout_secs",
                s.read_timeout_secs >= 1,
                "must be at least 1",
            ),
            (
                "speech.max_upload_secs",
                s.max_upload_secs >= s.max_pcm_seconds,
                "must be at least speech.max_pcm_seconds (devices stream in real time)",
            ),
            (
                "speech.max_wait_secs",
                s.max_wait_secs >= 1,
                "must be at least 1",
            ),
            (
                "speech.max_waiting",
                s.max_waiting >= 1,
                "must be at least 1",
            ),
            (
                "speech.timeout_secs",
                s.timeout_secs >= 1,
                "must be at least 1",
            ),
        ];
        match checks.into_iter().find(|(_, ok, _)| !ok) {
            Some((key, _, reason)) => Err(SettingsError::Invalid {
                key: key.into(),
                reason: reason.into(),
            }),
            None => Ok(()),
        }
    }

    pub fn task_timeout(&self) -> Duration {
        Duration::from_secs(self.workers.task_timeout_secs)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.server.shutdown_grace_secs)
    }

    pub fn queue_max_wait(&self) -> Duration {
        Duration::from_secs(self.queue.max_wait_secs)
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

const MAX_URL_BYTES: usize = 2048;

/// An instance URL must be absolute http with a host, and no query or fragment. Backends
/// sit on a private network; the client is built without TLS.
pub fn check_instance_url(raw: &str) -> Result<(), String> {
    if raw.len() > MAX_URL_BYTES {
        return Err(format!("must be at most {MAX_URL_BYTES} bytes"));
    }
    let url = url::Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
    if url.scheme() != "http" {
        return Err("scheme must be http (TLS to backends is not supported)".into());
    }
    if url.host_str().is_none() {
        return Err("must name a host".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not carry a query or fragment".into());
    }
    Ok(())
}

/// The form of an instance URL that duplicates are judged by (`http://Host:80/` and
/// `http://host` are one backend); a URL that does not parse stays as written.
pub fn url_key(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(url) => url.as_str().trim_end_matches('/').to_string(),
        Err(_) => raw.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_follow_the_old_system() {
        let s = Settings::default();
        s.validate().unwrap();
        assert_eq!(s.server.port, 8080);
        assert_eq!(s.queue.capacity, 100);
        assert_eq!(s.workers.task_timeout_secs, 120);
        assert_eq!(s.health.interval_secs, 30);
        assert_eq!(s.workers.slots_for(0), 1);
        assert_eq!(s.workers.slots_for(5), 5);
        assert_eq!(s.balancing.image, Strategy::LeastLoaded);
        assert_eq!(s.speech.timeout_secs, 30);
        assert_eq!(s.speech.max_upload_bytes, 10 * 1024 * 1024);
        assert_eq!(s.speech.max_pcm_bytes(), 1_920_000);
    }

    #[test]
    fn invalid_values_name_their_key() {
        let mut s = Settings::default();
        s.queue.capacity = 0;
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("queue.capacity"));

        let mut s = Settings::default();
        s.instances[0].url = "ftp://x".into();
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("instances[0].url"));

        let mut s = Settings::default();
        let mut twin = s.instances[0].clone();
        twin.url = "http://LOCALHOST:8000/".into();
        s.instances.push(twin);
        let err = s.validate().unwrap_err().to_string();
        assert!(
            err.contains("instances[1].url") && err.contains("instances[0]"),
            "{err}"
        );

        let mut s = Settings::default();
        s.instances[0].capacity = MAX_INSTANCE_CAPACITY + 1;
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("instances[0].capacity"));

        let mut s = Settings::default();
        s.speech.max_upload_secs = s.speech.max_pcm_seconds - 1;
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("speech.max_upload_secs"));
    }

    #[test]
    fn a_file_may_set_only_some_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, "[queue]\ncapacity = 7\n").unwrap();
        let s = Settings::load(Some(&path)).unwrap();
        assert_eq!(s.queue.capacity, 7);
        assert_eq!(s.server.port, 8080);
    }

    #[test]
    fn the_shipped_settings_file_lists_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("settings.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let shipped: Settings = toml_from(&text);
        // Unknown keys are refused by deny_unknown_fields; values must be the defaults.
        assert_eq!(format!("{shipped:?}"), format!("{:?}", Settings::default()));
    }

    fn toml_from(text: &str) -> Settings {
        config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap()
    }

    #[test]
    fn environment_overrides_the_file() {
        // A key no other test asserts, since tests may share the process environment.
        std::env::set_var("INFERGATE__IMAGE__MAX_STEPS", "77");
        let s = Settings::load(None).unwrap();
        std::env::remove_var("INFERGATE__IMAGE__MAX_STEPS");
        assert_eq!(s.image.max_steps, 77);
    }

    #[test]
    fn wrong_types_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, "[server]\nport = \"eighty\"\n").unwrap();
        let err = Settings::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("port"), "{err}");
    }
}
