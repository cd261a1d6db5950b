use std::time::Duration;

use entity::prelude::{Image, Task};
use entity::user::Role;
use infergate::domain::{InstanceKind, InstanceSpec};
use infergate::retention::Clock;
use infergate::settings::Settings;
use infergate::simulator::{SimBackend, SimConfig};
use infergate::startup::{Application, Stopper};
use reqwest::multipart::Form;
use reqwest::{RequestBuilder, Response, StatusCode};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::poll::eventually;

pub const TEST_SECRET: &str = "test-secret-test-secret-test-secret-0123456789";

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    /// The simulated image backends, in the order given.
    pub sims: Vec<SimBackend>,
    /// The simulated speech backends, in the order given (see `spawn_app_with_speech`).
    pub speech_sims: Vec<SimBackend>,
    pub db: DatabaseConnection,
    pub db_url: String,
    /// Keeps the database file alive for the test.
    pub dir: TempDir,
    /// The clock retention judges age by.
    pub clock: Clock,
    stopper: Stopper,
    running: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// What outlives a stopped gateway, for the next start on the same database.
pub struct Stopped {
    pub db_url: String,
    pub dir: TempDir,
    pub sims: Vec<SimBackend>,
}

pub struct TestUser {
    pub token: String,
}

/// A fast simulated image backend.
pub fn fast_sim() -> SimConfig {
    SimConfig {
        latency_ms: 20,
        ..SimConfig::default()
    }
}

/// One fast image backend, default settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(vec![fast_sim()], |_| {}).await
}

/// Starts the simulated backends, then the gateway with them as its image instances.
pub async fn spawn_app_with(sims: Vec<SimConfig>, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_on(start_sims(sims), tweak).await
}

pub fn start_sims(configs: Vec<SimConfig>) -> Vec<SimBackend> {
    configs
        .into_iter()
        .map(|config| SimBackend::start(config, "127.0.0.1", 0).expect("start simulator"))
        .collect()
}

/// The gateway with already running simulators (set up before its first ping) as its
/// image instances.
pub async fn spawn_app_on(sims: Vec<SimBackend>, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let db_url = format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
    let mut settings = test_settings(db_url, &sims);
    tweak(&mut settings);
    start(settings, sims, dir).await
}

/// The gateway again, on the database and simulators a stopped one left.
pub async fn restart(stopped: Stopped, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = test_settings(stopped.db_url, &stopped.sims);
    tweak(&mut settings);
    start(settings, stopped.sims, stopped.dir).await
}

/// The tests' settings: a random port, fast health checks and retries, no limits, and
/// the simulators as image instances.
fn test_settings(db_url: String, sims: &[SimBackend]) -> Settings {
    let mut settings = Settings::default();
    settings.server.host = "127.0.0.1".into();
    settings.server.port = 0;
    settings.database.url = db_url;
    settings.auth.jwt_secret = TEST_SECRET.into();
    settings.health.interval_secs = 1;
    settings.workers.retry_base_ms = 20;
    // Limits get their own tests; elsewhere they would only get in the way.
    settings.limits.submit_per_minute = 0;
    settings.limits.speech_per_minute = 0;
    settings.limits.login_per_minute = 0;
    settings.limits.register_per_minute = 0;
    settings.limits.max_queued_per_user = 0;
    settings.instances = sims
        .iter()
        .map(|sim| InstanceSpec::new(InstanceKind::Image, sim.url()))
        .collect();
    settings
}

/// One fast image backend, and already running simulators (set up before their first
/// ping) as the speech instances, capacity 1 each.
pub async fn spawn_app_with_speech(
    speech_sims: Vec<SimBackend>,
    tweak: impl FnOnce(&mut Settings),
) -> TestApp {
    let speech: Vec<InstanceSpec> = speech_sims
        .iter()
        .map(|sim| InstanceSpec::new(InstanceKind::Speech, sim.url()))
        .collect();
    let mut app = spawn_app_on(start_sims(vec![fast_sim()]), |settings| {
        settings.instances.extend(speech);
        tweak(settings);
    })
    .await;
    app.speech_sims = speech_sims;
    app
}

/// Starts a gateway on an existing database directory (a restart).
pub async fn start(settings: Settings, sims: Vec<SimBackend>, dir: TempDir) -> TestApp {
    let db_url = settings.database.url.clone();
    let app = Application::build(settings)
        .await
        .expect("build application");
    let address = format!("http://127.0.0.1:{}", app.port());
    let (stopper, clock) = (app.stopper(), app.clock());
    let running = actix_web::rt::spawn(app.run_until_stopped());
    let db = open_database(&db_url).await;
    TestApp {
        address,
        client: reqwest::Client::new(),
        sims,
        speech_sims: Vec::new(),
        db,
        db_url,
        dir,
        clock,
        stopper,
        running,
    }
}

impl TestApp {
    /// Shuts the gateway down as SIGTERM would, and waits until it has.
    pub async fn stop(self) -> Stopped {
        self.stopper.stop();
        self.running
            .await
            .expect("gateway task")
            .expect("gateway shut down cleanly");
        Stopped {
            db_url: self.db_url,
            dir: self.dir,
            sims: self.sims,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn register(&self, username: &str, password: &str) -> Response {
        self.client
            .post(self.url("/register"))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .expect("register")
    }

    pub async fn login(&self, username: &str, password: &str) -> Response {
        self.client
            .post(self.url("/login"))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .expect("login")
    }

    /// Registers and logs in a fresh user.
    pub async fn new_user(&self, name: &str) -> TestUser {
        assert_eq!(
            self.register(name, "password123").await.status(),
            StatusCode::CREATED
        );
        let body: Value = self.login(name, "password123").await.json().await.unwrap();
        TestUser {
            token: body["token"].as_str().expect("token").to_string(),
        }
    }

    /// Registers and logs in a fresh user with the admin role.
    pub async fn new_admin(&self, name: &str) -> TestUser {
        assert_eq!(
            self.register(name, "password123").await.status(),
            StatusCode::CREATED
        );
        assert!(
            infergate::store::users::set_role(&self.db, name, Role::Admin)
                .await
                .unwrap()
        );
        let body: Value = self.login(name, "password123").await.json().await.unwrap();
        TestUser {
            token: body["token"].as_str().expect("token").to_string(),
        }
    }

    /// Disables `username` through the admin API, as the admin whose token is given.
    pub async fn disable_user(&self, admin_token: &str, username: &str) {
        let user = infergate::store::users::find_by_username(&self.db, username)
            .await
            .unwrap()
            .expect("the user exists");
        let response = self
            .client
            .patch(self.url(&format!("/api/v1/admin/users/{}", user.id)))
            .bearer_auth(admin_token)
            .json(&json!({"disabled": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    pub async fn submit_image(&self, token: &str, body: &Value) -> Response {
        self.client
            .post(self.url("/api/v1/image/async"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("submit")
    }

    /// Submits a prompt and returns the task id, asserting the 202.
    pub async fn submit_ok(&self, token: &str, prompt: &str) -> String {
        let response = self.submit_image(token, &json!({ "prompt": prompt })).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let body: Value = response.json().await.unwrap();
        body["task_id"].as_str().unwrap().to_string()
    }

    pub async fn get_task(&self, token: &str, task_id: &str) -> Response {
        self.client
            .get(self.url("/api/v1/tasks"))
            .query(&[("task_id", task_id)])
            .bearer_auth(token)
            .send()
            .await
            .expect("get task")
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("get")
    }

    /// Polls the task until it reaches a terminal status; returns every status seen and
    /// the final task JSON.
    pub async fn wait_for_end(&self, token: &str, task_id: &str) -> (Vec<String>, Value) {
        let seen = std::cell::RefCell::new(Vec::<String>::new());
        let what = format!("task {task_id} ending");
        let task = eventually(&what, Duration::from_secs(30), || async {
            let task: Value = self.get_task(token, task_id).await.json().await.unwrap();
            let status = task["status"].as_str().expect("status").to_string();
            let mut seen = seen.borrow_mut();
            if seen.last() != Some(&status) {
                seen.push(status.clone());
            }
            match status.as_str() {
                "DONE" | "FAILED" | "CANCELLED" => Ok(task),
                _ => Err(seen.clone()),
            }
        })
        .await;
        (seen.into_inner(), task)
    }

    /// Polls the task until it has `status`; returns it.
    pub async fn wait_for_status(&self, token: &str, task_id: &str, status: &str) -> Value {
        eventually(
            &format!("task {task_id} {status}"),
            Duration::from_secs(20),
            || async {
                let task: Value = self.get_task(token, task_id).await.json().await.unwrap();
                if task["status"] == status {
                    Ok(task)
                } else {
                    Err(task)
                }
            },
        )
        .await
    }

    pub async fn stats(&self) -> Value {
        self.client
            .get(self.url("/api/v1/system/stats"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits until the stats satisfy `check`.
    pub async fn wait_for_stats(&self, what: &str, check: impl Fn(&Value) -> bool) {
        eventually(what, Duration::from_secs(10), || async {
            let stats = self.stats().await;
            if check(&stats) {
                Ok(())
            } else {
                Err(stats)
            }
        })
        .await
    }

    /// Waits until `n` image instances are healthy.
    pub async fn wait_for_healthy(&self, n: u64) {
        self.wait_for_stats("image instances healthy", |s| {
            s["image_instances"]["healthy"] == n
        })
        .await
    }

    pub async fn cancelled_count(&self, token: &str) -> u64 {
        let tasks: Vec<Value> = self
            .get("/api/v1/tasks?limit=100", token)
            .await
            .json()
            .await
            .unwrap();
        tasks.iter().filter(|t| t["status"] == "CANCELLED").count() as u64
    }

    pub async fn task_rows(&self) -> u64 {
        Task::find().count(&self.db).await.unwrap()
    }

    pub async fn image_rows(&self) -> u64 {
        Image::find().count(&self.db).await.unwrap()
    }
}

/// The admin API for instances.
impl TestApp {
    /// `GET /api/v1/admin/instances`, asserting the 200.
    pub async fn instances(&self, token: &str) -> Vec<Value> {
        let response = self.get("/api/v1/admin/instances", token).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    /// The instance with this id, if listed.
    pub async fn instance(&self, token: &str, id: u64) -> Option<Value> {
        let instances = self.instances(token).await;
        instances.into_iter().find(|i| i["id"] == id)
    }

    pub async fn add_instance(&self, token: &str, body: &Value) -> Response {
        self.client
            .post(self.url("/api/v1/admin/instances"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("add instance")
    }

    /// Adds an image instance, asserting the 201; returns its id.
    pub async fn add_image_instance(&self, token: &str, url: &str) -> u64 {
        let response = self
            .add_instance(token, &json!({"kind": "image", "url": url}))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.unwrap();
        body["id"].as_u64().expect("id")
    }

    pub async fn patch_instance(&self, token: &str, id: u64, body: &Value) -> Response {
        self.client
            .patch(self.url(&format!("/api/v1/admin/instances/{id}")))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("patch instance")
    }

    pub async fn delete_instance(&self, token: &str, id: u64) -> Response {
        self.client
            .delete(self.url(&format!("/api/v1/admin/instances/{id}")))
            .bearer_auth(token)
            .send()
            .await
            .expect("delete instance")
    }

    /// Polls until `check` holds for the instance (`None` once it is gone).
    pub async fn wait_for_instance(
        &self,
        token: &str,
        id: u64,
        what: &str,
        check: impl Fn(Option<&Value>) -> bool,
    ) {
        let what = format!("instance {id} {what}");
        eventually(&what, Duration::from_secs(10), || async {
            let instance = self.instance(token, id).await;
            if check(instance.as_ref()) {
                Ok(())
            } else {
                Err(instance)
            }
        })
        .await
    }

    /// Waits until the stats count `n` workers.
    pub async fn wait_for_workers(&self, n: u64) {
        self.wait_for_stats(&format!("{n} workers"), |s| s["workers"] == n)
            .await
    }

    /// The URL of the instance the task's (last) attempt ran on.
    pub async fn task_instance(&self, task_id: &str) -> String {
        Task::find()
            .filter(entity::task::Column::TaskId.eq(task_id))
            .one(&self.db)
            .await
            .unwrap()
            .expect("task row")
            .instance
            .expect("task ran on an instance")
    }
}

/// How a speech request authenticates.
#[derive(Clone, Copy)]
pub enum Auth<'a> {
    /// `Authorization: Bearer` with a JWT or an API key.
    Bearer(&'a str),
    /// `X-API-Key`.
    ApiKey(&'a str),
}

impl Auth<'_> {
    pub fn apply(self, request: RequestBuilder) -> RequestBuilder {
        match self {
            Auth::Bearer(credential) => request.bearer_auth(credential),
            Auth::ApiKey(key) => request.header("X-API-Key", key),
        }
    }
}

/// `seconds` of 16 kHz 16-bit mono PCM (silence).
pub fn pcm(seconds: f64) -> Vec<u8> {
    vec![0; (seconds * 32_000.0) as usize]
}

impl TestApp {
    /// Uploads `form` to `/api/v1/speech/transcribe`.
    pub async fn transcribe(&self, auth: Auth<'_>, form: Form) -> Response {
        auth.apply(self.client.post(self.url("/api/v1/speech/transcribe")))
            .multipart(form)
            .send()
            .await
            .expect("transcribe")
    }

    /// Sends `body` to `/api/v1/speech/pcm`.
    pub async fn send_pcm(&self, auth: Auth<'_>, body: impl Into<reqwest::Body>) -> Response {
        auth.apply(self.client.post(self.url("/api/v1/speech/pcm")))
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .expect("send pcm")
    }

    /// Creates an API key, asserting the 201; returns the reply.
    pub async fn create_key(&self, token: &str, name: &str) -> Value {
        let response = self
            .client
            .post(self.url("/api/v1/keys"))
            .bearer_auth(token)
            .json(&json!({ "name": name }))
            .send()
            .await
            .expect("create key");
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.unwrap()
    }

    /// Waits until `n` speech instances are healthy.
    pub async fn wait_for_healthy_speech(&self, n: u64) {
        self.wait_for_stats(&format!("{n} speech instances healthy"), |s| {
            s["speech_instances"]["healthy"] == n
        })
        .await
    }

    /// Waits until no speech call holds an instance.
    pub async fn wait_for_speech_idle(&self) {
        self.wait_for_stats("every speech lease released", |s| {
            s["speech_instances"]["in_flight"] == 0
        })
        .await
    }
}

/// Asserts a JSON error reply: status, `code`, and a non-empty message.
pub async fn assert_error(response: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status, "wrong status");
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(content_type.as_deref(), Some("application/json"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "wrong code in {body}");
    assert!(
        !body["error"].as_str().unwrap_or("").is_empty(),
        "empty error message in {body}"
    );
    body
}

/// A small connection to a test gateway's database, to assert on what it stored.
pub async fn open_database(url: &str) -> DatabaseConnection {
    let settings = infergate::settings::DatabaseSettings {
        url: url.to_string(),
        max_connections: 2,
        ..Default::default()
    };
    infergate::store::connect(&settings)
        .await
        .expect("connect to the test database")
}
