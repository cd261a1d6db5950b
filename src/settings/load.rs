//! Where the settings come from, and the checks that stop a bad start with the key named.

use std::path::Path;

use super::{Settings, SettingsError};

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
        if let Some((key, _, reason)) = self.rules().into_iter().find(|(_, ok, _)| !ok) {
            return invalid(key, reason);
        }
        let limits = &self.limits;
        for (key, per_minute, burst) in [
            ("submit", limits.submit_per_minute, limits.submit_burst),
            ("speech", limits.speech_per_minute, limits.speech_burst),
            ("login", limits.login_per_minute, limits.login_burst),
            (
                "register",
                limits.register_per_minute,
                limits.register_burst,
            ),
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

    /// The rules a single value (or two of one section) must follow: the key, whether
    /// it holds, and what it must be.
    fn rules(&self) -> Vec<(&'static str, bool, &'static str)> {
        let (db, auth, queue, workers) = (&self.database, &self.auth, &self.queue, &self.workers);
        let (health, image, speech) = (&self.health, &self.image, &self.speech);
        let (telemetry, openai) = (&self.telemetry, &self.openai);
        let at_least_1 = "must be at least 1";
        let otlp_url = url::Url::parse(&telemetry.otlp_endpoint);
        vec![
            (
                "server.body_timeout_secs",
                self.server.body_timeout_secs >= 1,
                at_least_1,
            ),
            (
                "server.max_connections",
                self.server.max_connections >= 1,
                at_least_1,
            ),
            ("database.url", !db.url.is_empty(), "must not be empty"),
            (
                "database.max_connections",
                db.max_connections >= 1,
                at_least_1,
            ),
            (
                "database.hold_results_secs",
                db.hold_results_secs >= 1,
                at_least_1,
            ),
            (
                "auth.jwt_secret",
                auth.jwt_secret.is_empty() || auth.jwt_secret.len() >= 32,
                "must be at least 32 bytes, or empty to generate one",
            ),
            (
                "auth.token_ttl_hours",
                auth.token_ttl_hours >= 1,
                at_least_1,
            ),
            (
                "auth.max_concurrent_hashes",
                auth.max_concurrent_hashes <= 64,
                "must be at most 64 (each hash holds about 19 MiB); 0 = one per core",
            ),
            (
                "auth.max_queued_hashes",
                auth.max_queued_hashes <= 1024,
                "must be at most 1024",
            ),
            ("queue.capacity", queue.capacity >= 1, at_least_1),
            ("queue.max_wait_secs", queue.max_wait_secs >= 1, at_least_1),
            (
                "workers.task_timeout_secs",
                workers.task_timeout_secs >= 1,
                at_least_1,
            ),
            (
                "workers.max_attempts",
                (1..=20).contains(&workers.max_attempts),
                "must be between 1 and 20",
            ),
            (
                "workers.max_response_bytes",
                workers.max_response_bytes >= 1024,
                "must be at least 1024",
            ),
            (
                "health.interval_secs",
                health.interval_secs >= 1,
                at_least_1,
            ),
            (
                "health.ping_timeout_secs",
                health.ping_timeout_secs >= 1,
                at_least_1,
            ),
            (
                "health.eject_after_failures",
                health.eject_after_failures >= 1,
                at_least_1,
            ),
            (
                "health.eject_failure_percent",
                health.eject_failure_percent <= 100,
                "must be between 0 and 100",
            ),
            (
                "health.base_ejection_secs",
                health.base_ejection_secs >= 1,
                at_least_1,
            ),
            (
                "health.max_ejection_secs",
                health.max_ejection_secs >= health.base_ejection_secs,
                "must be at least health.base_ejection_secs",
            ),
            (
                "health.max_ejection_percent",
                (1..=100).contains(&health.max_ejection_percent),
                "must be between 1 and 100",
            ),
            (
                "image.max_prompt_chars",
                image.max_prompt_chars >= 1,
                at_least_1,
            ),
            (
                "image.default_steps",
                (1..=image.max_steps).contains(&image.default_steps),
                "must be between 1 and image.max_steps",
            ),
            (
                "image.max_side",
                image.max_side >= 64,
                "must be at least 64",
            ),
            (
                "speech.max_upload_bytes",
                speech.max_upload_bytes >= 1024,
                "must be at least 1024",
            ),
            (
                "speech.max_pcm_seconds",
                speech.max_pcm_seconds >= 1,
                at_least_1,
            ),
            (
                "speech.read_timeout_secs",
                speech.read_timeout_secs >= 1,
                at_least_1,
            ),
            (
                "speech.max_upload_secs",
                speech.max_upload_secs >= speech.max_pcm_seconds,
                "must be at least speech.max_pcm_seconds (devices stream in real time)",
            ),
            (
                "speech.max_wait_secs",
                speech.max_wait_secs >= 1,
                at_least_1,
            ),
            ("speech.max_waiting", speech.max_waiting >= 1, at_least_1),
            ("speech.timeout_secs", speech.timeout_secs >= 1, at_least_1),
            (
                "telemetry.otlp_endpoint",
                telemetry.otlp_endpoint.is_empty()
                    || otlp_url.is_ok_and(|u| matches!(u.scheme(), "http" | "https")),
                "must be empty or an http(s) URL",
            ),
            (
                "cluster.lease_secs",
                self.cluster.lease_secs >= 3,
                "must be at least 3",
            ),
            (
                "cluster.poll_ms",
                (10..=60_000).contains(&self.cluster.poll_ms),
                "must be between 10 and 60000",
            ),
            (
                "telemetry.service_name",
                !telemetry.service_name.is_empty(),
                "must not be empty",
            ),
            (
                "telemetry.sample_ratio",
                (0.0..=1.0).contains(&telemetry.sample_ratio),
                "must be between 0 and 1",
            ),
            (
                "stats.window_minutes",
                (1..=crate::telemetry::MAX_WINDOW_MINUTES).contains(&self.stats.window_minutes),
                "must be between 1 and 60",
            ),
            (
                "stats.alert_queue_usage",
                (0.0..=100.0).contains(&self.stats.alert_queue_usage),
                "must be a percentage, 0 to 100",
            ),
            (
                "stats.alert_failure_rate",
                (0.0..=100.0).contains(&self.stats.alert_failure_rate),
                "must be a percentage, 0 to 100",
            ),
            (
                "stats.alert_avg_processing_secs",
                self.stats.alert_avg_processing_secs >= 0.0,
                "must not be negative",
            ),
            (
                "stats.depth_sample_secs",
                (1..=3600).contains(&self.stats.depth_sample_secs),
                "must be between 1 and 3600",
            ),
            ("openai.wait_secs", openai.wait_secs >= 1, at_least_1),
            (
                "events.retention_hours",
                self.events.retention_hours >= 1,
                at_least_1,
            ),
            ("events.buffer", self.events.buffer >= 1, at_least_1),
            (
                "retention.interval_secs",
                self.retention.interval_secs >= 1,
                at_least_1,
            ),
            (
                "retention.batch",
                (1..=10_000).contains(&self.retention.batch),
                "must be between 1 and 10000",
            ),
            (
                "events.keepalive_secs",
                self.events.keepalive_secs >= 1,
                at_least_1,
            ),
            (
                "events.linger_ms",
                self.events.linger_ms <= 1000,
                "must be at most 1000",
            ),
            (
                "webhooks.timeout_secs",
                self.webhooks.timeout_secs >= 1,
                at_least_1,
            ),
            (
                "webhooks.max_attempts",
                self.webhooks.max_attempts >= 1,
                at_least_1,
            ),
            (
                "webhooks.concurrency",
                self.webhooks.concurrency >= 1,
                at_least_1,
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Strategy, MAX_INSTANCE_CAPACITY};

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
    fn every_rule_names_a_key_of_the_shipped_file() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("settings.toml");
        let text = std::fs::read_to_string(path).unwrap();
        for (key, _, _) in Settings::default().rules() {
            let (section, name) = key.split_once('.').unwrap();
            let body = text.split(&format!("[{section}]\n")).nth(1);
            let body = body.map(|b| b.split("\n[").next().unwrap_or(b));
            let listed =
                body.is_some_and(|b| b.lines().any(|l| l.starts_with(&format!("{name} "))));
            assert!(listed, "{key} is not in settings.toml");
        }
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
    fn a_wrong_enum_value_names_the_valid_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        for (text, valid) in [
            (
                "[balancing]\nimage = \"fastest\"\n",
                "`least-loaded`, `round-robin`, `user-hash`",
            ),
            ("[log]\nformat = \"xml\"\n", "`text`, `json`"),
            (
                "[[instances]]\nkind = \"video\"\nurl = \"http://x\"\n",
                "`image`, `speech`",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = Settings::load(Some(&path)).unwrap_err().to_string();
            assert!(err.contains(valid), "{err}");
        }
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
