//! Webhooks: signed deliveries of a task's events to a receiver run by the test, which
//! answers what each test scripts. Signatures are checked with the Standard Webhooks
//! reference library (`tests/sdk/verify_webhooks.py`, run with the interpreter named by
//! `INFERGATE_TEST_OPENAI_PYTHON`, whose virtualenv `.ci/run` gives the pinned
//! `standardwebhooks`); retries, restarts, redirects, 410, private addresses, and two
//! gateways sharing one PostgreSQL outbox here.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use entity::prelude::WebhookDelivery;
use entity::webhook_delivery;
use infergate::faults::{self, Site};
use infergate::settings::Settings;
use reqwest::StatusCode;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{json, Value};

use crate::helpers::{
    assert_error, fast_sim, restart, spawn_app_on, spawn_app_with, start_sims, TestApp,
};
use crate::poll::eventually;
use crate::postgres::TempDatabase;

const WAIT: Duration = Duration::from_secs(30);
const PYTHON_VAR: &str = "INFERGATE_TEST_OPENAI_PYTHON";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HashMap<String, String>,
    body: String,
    at: Instant,
}

#[derive(Default)]
struct Script {
    /// Statuses to answer in turn; then 204.
    answers: VecDeque<u16>,
    got: Vec<Received>,
}

/// A webhook receiver on a random loopback port.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    script: Arc<Mutex<Script>>,
}

impl Receiver {
    pub fn start(answers: &[u16]) -> Receiver {
        let script = Arc::new(Mutex::new(Script {
            answers: answers.iter().copied().collect(),
            got: Vec::new(),
        }));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let shared = web::Data::from(script.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                .default_service(web::to(receive))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        actix_web::rt::spawn(server);
        Receiver { url, script }
    }

    fn got(&self) -> Vec<Received> {
        self.script.lock().unwrap().got.clone()
    }
}

async fn receive(req: HttpRequest, body: String, script: web::Data<Mutex<Script>>) -> HttpResponse {
    let mut script = script.lock().unwrap();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    script.got.push(Received {
        path: req.path().to_string(),
        headers,
        body,
        at: Instant::now(),
    });
    let status = script.answers.pop_front().unwrap_or(204);
    let mut answer = HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap());
    if (300..400).contains(&status) {
        answer.insert_header(("location", "/elsewhere"));
    }
    answer.finish()
}

/// Receivers are on loopback; retries are quick.
pub fn test_settings(settings: &mut Settings) {
    settings.webhooks.allow_private_networks = true;
    settings.webhooks.retry_base_ms = 20;
    settings.webhooks.timeout_secs = 5;
}

async fn hooked_app(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_with(vec![fast_sim()], |settings| {
        test_settings(settings);
        tweak(settings);
    })
    .await
}

/// A user with a webhook secret: their token and the secret.
pub async fn hooked_user(app: &TestApp, name: &str) -> (String, String) {
    let user = app.new_user(name).await;
    let secret = rotate_secret(app, &user.token).await;
    (user.token, secret)
}

async fn rotate_secret(app: &TestApp, token: &str) -> String {
    let response = app
        .client
        .post(app.url("/api/v1/webhook-secret"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    body["secret"].as_str().unwrap().to_string()
}

pub async fn submit_hooked(app: &TestApp, token: &str, body: Value) -> String {
    let response = app.submit_image(token, &body).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    body["task_id"].as_str().unwrap().to_string()
}

/// The task's `webhook` once `done` says it is settled.
pub async fn wait_for_webhook(
    app: &TestApp,
    token: &str,
    task_id: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    eventually("the task's webhook state", WAIT, || async {
        let task: Value = app.get_task(token, task_id).await.json().await.unwrap();
        match done(&task["webhook"]) {
            true => Ok(task["webhook"].clone()),
            false => Err(task),
        }
    })
    .await
}

/// The task's deliveries as stored.
async fn deliveries(app: &TestApp, task_id: &str) -> Vec<webhook_delivery::Model> {
    WebhookDelivery::find()
        .filter(webhook_delivery::Column::TaskId.eq(task_id))
        .all(&app.db)
        .await
        .unwrap()
}

#[actix_web::test]
async fn a_receiver_failing_twice_then_accepting_gets_one_webhook_id_three_times() {
    let app = hooked_app(|_| {}).await;
    let receiver = Receiver::start(&[500, 503]);
    let (token, _) = hooked_user(&app, "flaky").await;
    let task_id = submit_hooked(
        &app,
        &token,
        json!({"prompt": "a lighthouse", "webhook_url": receiver.url}),
    )
    .await;
    let webhook = wait_for_webhook(&app, &token, &task_id, |w| w["delivered"] == true).await;
    assert_eq!(
        webhook,
        json!({"delivered": true, "attempts": 3, "last_status": 204})
    );
    let got = receiver.got();
    assert_eq!(got.len(), 3);
    let ids: Vec<&str> = got
        .iter()
        .map(|r| r.headers["webhook-id"].as_str())
        .collect();
    assert!(ids[0].starts_with("msg_"), "{ids:?}");
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    // Every attempt is the same event, exactly: the task's ending, small, its image a URL.
    assert!(got.iter().all(|r| r.body == got[0].body));
    let event: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(event["type"], "done");
    assert_eq!(event["task_id"], task_id.as_str());
    assert!(event["result_url"]
        .as_str()
        .unwrap()
        .starts_with("/api/images/"));
    assert_eq!(got[0].headers["content-type"], "application/json");
    // Old clients' fields are unchanged; a task without a webhook shows none.
    let plain = app.submit_ok(&token, "no hook").await;
    let (_, task) = app.wait_for_end(&token, &plain).await;
    assert!(task.get("webhook").is_none(), "{task}");
}

/// The interpreter with `standardwebhooks`, or why there is none (then the test is
/// skipped, unless `INFERGATE_TEST_OPENAI_PYTHON` is set, which makes it required).
fn verifier_python() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (python, required) = match std::env::var_os(PYTHON_VAR) {
        Some(python) => (PathBuf::from(python), true),
        None => (root.join(".ci/sdk-venv/bin/python"), false),
    };
    let imports = Command::new(&python)
        .args(["-c", "import standardwebhooks"])
        .output()
        .is_ok_and(|output| output.status.success());
    match (imports, required) {
        (true, _) => Ok(python),
        (false, true) => panic!(
            "{PYTHON_VAR}={} cannot import standardwebhooks: install it with .ci/run",
            python.display()
        ),
        (false, false) => Err(format!(
            "no {PYTHON_VAR} and no standardwebhooks in {}: run .ci/run to install it",
            python.display()
        )),
    }
}

#[actix_web::test]
async fn deliveries_verify_with_the_standard_webhooks_reference_library() {
    let python = match verifier_python() {
        Ok(python) => python,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    let app = hooked_app(|_| {}).await;
    let receiver = Receiver::start(&[]);
    let (token, first_secret) = hooked_user(&app, "verifier").await;
    // A rotation: what is sent from now on is signed with the new secret only.
    let secret = rotate_secret(&app, &token).await;
    assert_ne!(secret, first_secret);
    let task_id = submit_hooked(
        &app,
        &token,
        json!({
            "prompt": "a signed cat",
            "webhook_url": receiver.url,
            "webhook_events": ["queued", "running", "completed"],
        }),
    )
    .await;
    eventually("three deliveries", WAIT, || async {
        let got = receiver.got();
        if got.len() >= 3 {
            Ok(())
        } else {
            Err(got)
        }
    })
    .await;
    let got = receiver.got();
    let captured = json!({
        "secret": secret,
        "deliveries": got.iter().map(|r| json!({"headers": r.headers, "body": r.body})).collect::<Vec<_>>(),
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/verify_webhooks.py");
    let mut child = Command::new(python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(captured.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "verification failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let payloads: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    let mut types: Vec<&str> = payloads
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    types.sort_unstable();
    assert_eq!(types, ["done", "queued", "running"]);
    assert!(payloads.iter().all(|p| p["task_id"] == task_id.as_str()));
    // Each event is its own delivery, with its own id.
    let mut ids: Vec<&str> = got
        .iter()
        .map(|r| r.headers["webhook-id"].as_str())
        .collect();
    ids.dedup();
    assert_eq!(ids.len(), 3);
}

#[actix_web::test]
async fn a_gateway_restarted_mid_retry_still_delivers() {
    // Retries a second or two apart: time enough to stop the gateway in between.
    let slow_retries = |settings: &mut Settings| settings.webhooks.retry_base_ms = 2000;
    let app = hooked_app(slow_retries).await;
    let receiver = Receiver::start(&[500]);
    let (token, _) = hooked_user(&app, "restarted").await;
    let task_id = submit_hooked(
        &app,
        &token,
        json!({"prompt": "survive", "webhook_url": receiver.url}),
    )
    .await;
    wait_for_webhook(&app, &token, &task_id, |w| w["attempts"] == 1).await;
    let app = restart(app.stop().await, |s| {
        test_settings(s);
        slow_retries(s);
    })
    .await;
    let webhook = wait_for_webhook(&app, &token, &task_id, |w| w["delivered"] == true).await;
    assert_eq!(
        webhook,
        json!({"delivered": true, "attempts": 2, "last_status": 204})
    );
    let got = receiver.got();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].headers["webhook-id"], got[1].headers["webhook-id"]);
}

#[actix_web::test]
async fn a_301_is_a_failed_attempt_and_is_not_followed() {
    let app = hooked_app(|s| s.webhooks.max_attempts = 2).await;
    let receiver = Receiver::start(&[301, 301]);
    let (token, _) = hooked_user(&app, "redirected").await;
    let task_id = submit_hooked(
        &app,
        &token,
        json!({"prompt": "moved", "webhook_url": receiver.url}),
    )
    .await;
    let settled = |w: &Value| w["attempts"] == 2;
    let webhook = wait_for_webhook(&app, &token, &task_id, settled).await;
    assert_eq!(
        webhook,
        json!({"delivered": false, "attempts": 2, "last_status": 301})
    );
    let stored = deliveries(&app, &task_id).await;
    assert_eq!(stored[0].state, webhook_delivery::State::Failed);
    let paths: Vec<String> = receiver.got().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/hook", "/hook"]);
}

#[actix_web::test]
async fn a_410_stops_the_retries_at_once() {
    let app = hooked_app(|s| s.webhooks.max_attempts = 5).await;
    let receiver = Receiver::start(&[410]);
    let (token, _) = hooked_user(&app, "gone").await;
    let task_id = submit_hooked(
        &app,
        &token,
        json!({"prompt": "gone", "webhook_url": receiver.url}),
    )
    .await;
    let webhook = wait_for_webhook(&app, &token, &task_id, |w| w["attempts"] == 1).await;
    assert_eq!(
        webhook,
        json!({"delivered": false, "attempts": 1, "last_status": 410})
    );
    // Failed for good: nothing claims it again.
    let stored = deliveries(&app, &task_id).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].state, webhook_delivery::State::Failed);
    assert_eq!(receiver.got().len(), 1);
}

#[actix_web::test]
async fn private_addresses_and_bad_subscriptions_are_refused_with_400() {
    let app = spawn_app_with(vec![fast_sim()], |_| {}).await;
    let receiver = Receiver::start(&[]);
    let (token, _) = hooked_user(&app, "careful").await;
    for url in [
        receiver.url.as_str(),
        "http://localhost:8080/hook",
        "http://10.0.0.7/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[fd00::1]/hook",
        "http://100.64.0.1/hook",
    ] {
        let body = json!({"prompt": "p", "webhook_url": url});
        let response = app.submit_image(&token, &body).await;
        assert_error(response, StatusCode::BAD_REQUEST, "webhook_refused").await;
    }
    for body in [
        json!({"prompt": "p", "webhook_url": "ftp://example.com/hook"}),
        json!({"prompt": "p", "webhook_url": format!("https://example.com/{}", "a".repeat(2100))}),
        json!({"prompt": "p", "webhook_url": "https://example.com/", "webhook_events": ["done"]}),
        json!({"prompt": "p", "webhook_url": "https://example.com/", "webhook_events": []}),
        json!({"prompt": "p", "webhook_events": ["completed"]}),
    ] {
        let response = app.submit_image(&token, &body).await;
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    assert!(receiver.got().is_empty());
    assert_eq!(app.task_rows().await, 0);
}

#[actix_web::test]
async fn a_webhook_needs_a_secret_and_the_secret_is_new_each_time() {
    let app = hooked_app(|_| {}).await;
    let receiver = Receiver::start(&[]);
    let user = app.new_user("secretless").await;
    let body = json!({"prompt": "p", "webhook_url": receiver.url});
    let response = app.submit_image(&user.token, &body).await;
    assert_error(response, StatusCode::BAD_REQUEST, "no_webhook_secret").await;
    let (first, second) = (
        rotate_secret(&app, &user.token).await,
        rotate_secret(&app, &user.token).await,
    );
    assert_ne!(first, second);
    for secret in [first, second] {
        let key = secret.strip_prefix("whsec_").expect("whsec_ prefix");
        // Base64 of 32 bytes.
        assert_eq!(key.len(), 44, "{secret}");
    }
    let response = app
        .client
        .post(app.url("/api/v1/webhook-secret"))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[actix_web::test]
async fn two_gateways_on_postgresql_send_each_delivery_once() {
    let Some(database) = TempDatabase::create().await else {
        return;
    };
    let on = |url: String| {
        move |settings: &mut Settings| {
            test_settings(settings);
            settings.database.url = url;
        }
    };
    let a = spawn_app_on(start_sims(vec![fast_sim()]), on(database.url.clone())).await;
    let b = spawn_app_on(start_sims(vec![fast_sim()]), on(database.url.clone())).await;
    let receiver = Receiver::start(&[]);
    let (token, _) = hooked_user(&a, "shared").await;
    let every = json!(["queued", "running", "completed"]);
    let mut task_ids = Vec::new();
    for i in 0..10 {
        let through = if i % 2 == 0 { &a } else { &b };
        let body = json!({"prompt": format!("p{i}"), "webhook_url": receiver.url, "webhook_events": every});
        task_ids.push(submit_hooked(through, &token, body).await);
    }
    // Once every delivery is stored as delivered, none can be sent again.
    eventually("every delivery delivered", WAIT, || async {
        let stored = WebhookDelivery::find().all(&a.db).await.unwrap();
        let delivered = stored
            .iter()
            .filter(|d| d.state == webhook_delivery::State::Delivered)
            .count();
        match delivered == task_ids.len() * 3 {
            true => Ok(()),
            false => Err(delivered),
        }
    })
    .await;
    let got = receiver.got();
    let mut ids: Vec<&str> = got
        .iter()
        .map(|r| r.headers["webhook-id"].as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        (got.len(), ids.len()),
        (30, 30),
        "a delivery was sent twice"
    );
    drop((a, b));
    database.drop().await;
}

#[actix_web::test]
async fn on_postgresql_a_queued_delivery_wakes_the_deliverer_without_waiting_for_its_poll() {
    let Some(database) = TempDatabase::create().await else {
        return;
    };
    let url = database.url.clone();
    let app = spawn_app_on(
        start_sims(vec![fast_sim()]),
        move |settings: &mut Settings| {
            test_settings(settings);
            settings.database.url = url;
        },
    )
    .await;
    let receiver = Receiver::start(&[]);
    let (token, _) = hooked_user(&app, "woken").await;
    // Commits wake the deliverer only through the `NOTIFY` of those that queue
    // deliveries; without it each delivery would wait for the poll, once a second, and
    // half of them for more than half a second.
    let mut waits = Vec::new();
    for i in 0..8 {
        let body = json!({"prompt": format!("p{i}"), "webhook_url": receiver.url, "webhook_events": ["queued"]});
        submit_hooked(&app, &token, body).await;
        let queued = Instant::now();
        eventually("the delivery", WAIT, || async {
            match receiver.got().len() > i {
                true => Ok(()),
                false => Err(i),
            }
        })
        .await;
        waits.push(receiver.got()[i].at.saturating_duration_since(queued));
    }
    waits.sort();
    assert!(
        waits[waits.len() / 2] < Duration::from_millis(300),
        "deliveries waited for the poll: {waits:?}"
    );
    drop(app);
    database.drop().await;
}

/// Claims run out a second after their attempt's timeout would, plus the margin.
fn quick_claims(settings: &mut Settings) {
    settings.webhooks.timeout_secs = 1;
}

#[actix_web::test]
async fn a_panicking_deliverer_restarts_and_what_it_had_claimed_goes_out_later() {
    let app = hooked_app(quick_claims).await;
    let receiver = Receiver::start(&[]);
    let (token, _) = hooked_user(&app, "healed").await;
    faults::arm(Site::DelivererSend, 1);
    let first = submit_hooked(
        &app,
        &token,
        json!({"prompt": "one", "webhook_url": receiver.url}),
    )
    .await;
    let delivered = |w: &Value| w["delivered"] == true;
    let webhook = wait_for_webhook(&app, &token, &first, delivered).await;
    assert_eq!(webhook["attempts"], 1, "the panic came before the attempt");
    // The restarted deliverer goes on with new work.
    let second = submit_hooked(
        &app,
        &token,
        json!({"prompt": "two", "webhook_url": receiver.url}),
    )
    .await;
    wait_for_webhook(&app, &token, &second, delivered).await;
    assert_eq!(receiver.got().len(), 2);
    // Stopped while the runtime runs: a statement the deliverer has out when the test's
    // runtime is torn down would drop its pooled connection outside it, and abort.
    app.stop().await;
}

#[actix_web::test]
async fn a_panicking_attempt_costs_only_that_attempt() {
    let app = hooked_app(quick_claims).await;
    let receiver = Receiver::start(&[]);
    let (token, _) = hooked_user(&app, "contained").await;
    faults::arm(Site::WebhookAttempt, 1);
    let task_id = submit_hooked(
        &app,
        &token,
        json!({"prompt": "p", "webhook_url": receiver.url}),
    )
    .await;
    let webhook = wait_for_webhook(&app, &token, &task_id, |w| w["delivered"] == true).await;
    assert_eq!(
        webhook,
        json!({"delivered": true, "attempts": 1, "last_status": 204})
    );
    assert_eq!(receiver.got().len(), 1);
}
