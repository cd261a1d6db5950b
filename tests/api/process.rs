//! Running the real `infergate` binary, for tests that kill, signal or restart it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::poll::eventually;

pub const BIN: &str = env!("CARGO_BIN_EXE_infergate");

/// `infergate` with its database in `dir` and quiet logs.
pub fn infergate(dir: &Path) -> Command {
    let mut command = Command::new(BIN);
    command
        .current_dir(dir)
        .env("INFERGATE__DATABASE__URL", database_url(dir))
        .env("INFERGATE__LOG__LEVEL", "warn");
    command
}

pub fn database_url(dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", dir.join("gateway.db").display())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A gateway process; killed when dropped, however the test ends.
pub struct Gateway {
    child: Option<Child>,
    pub base: String,
}

impl Gateway {
    /// Starts `infergate serve` (with the config file, if any) and waits until it answers.
    pub async fn start(dir: &Path, config: Option<&Path>, port: u16, extra: &[&str]) -> Gateway {
        Gateway::start_with(dir, config, port, extra, &[]).await
    }

    /// The same, with more environment (which wins over the defaults above).
    pub async fn start_with(
        dir: &Path,
        config: Option<&Path>,
        port: u16,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> Gateway {
        let mut command = infergate(dir);
        command.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        command
            .env("INFERGATE__SERVER__HOST", "127.0.0.1")
            .env("INFERGATE__SERVER__PORT", port.to_string())
            .arg("serve")
            .args(extra);
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let child = command.spawn().expect("spawn infergate");
        let gateway = Gateway {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
        };
        let health = format!("{}/health", gateway.base);
        eventually("the gateway answering", Duration::from_secs(20), || {
            reqwest::get(&health)
        })
        .await;
        gateway
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit by itself.
    pub async fn wait(mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("gateway did not exit within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn kill(mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A settings file naming these image instances.
pub fn write_config(dir: &Path, instances: &[(String, u32)], extra: &str) -> PathBuf {
    let mut text = String::from(extra);
    for (url, capacity) in instances {
        text.push_str(&format!(
            "\n[[instances]]\nkind = \"image\"\nurl = \"{url}\"\ncapacity = {capacity}\n"
        ));
    }
    let path = dir.join("settings.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Registers `username` (answering the status: 409 when it already exists) and logs in.
pub async fn sign_up(base: &str, username: &str) -> (StatusCode, String) {
    let client = reqwest::Client::new();
    let credentials = json!({"username": username, "password": "password123"});
    let registered = client
        .post(format!("{base}/register"))
        .json(&credentials)
        .send()
        .await
        .unwrap()
        .status();
    let login: Value = client
        .post(format!("{base}/login"))
        .json(&credentials)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (registered, login["token"].as_str().unwrap().to_string())
}

pub async fn submit(base: &str, token: &str, prompt: impl Into<String>) -> reqwest::Response {
    let prompt = prompt.into();
    reqwest::Client::new()
        .post(format!("{base}/api/v1/image/async"))
        .bearer_auth(token)
        .json(&json!({ "prompt": prompt }))
        .send()
        .await
        .unwrap()
}

pub async fn task(base: &str, token: &str, task_id: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{base}/api/v1/tasks"))
        .query(&[("task_id", task_id)])
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}
