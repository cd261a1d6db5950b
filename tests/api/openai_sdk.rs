//! The official `openai` Python SDK against the front door: `tests/sdk/openai_sdk.py`,
//! run with the interpreter named by `INFERGATE_TEST_OPENAI_PYTHON` (`.ci/run` installs
//! the pinned SDK into `.ci/sdk-venv` and sets it). Without that variable the test uses
//! `.ci/sdk-venv` when it holds the SDK, and otherwise says it was skipped and passes;
//! with it, a missing SDK fails the test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use infergate::domain::{InstanceKind, Protocol};
use infergate::simulator::SimConfig;
use reqwest::StatusCode;

use crate::helpers::{fast_sim, spawn_app_on, spawn_app_with, start_sims, TestApp};

const PYTHON_VAR: &str = "INFERGATE_TEST_OPENAI_PYTHON";

/// The interpreter to run the script with, or why there is none.
fn sdk_python() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (python, required) = match std::env::var_os(PYTHON_VAR) {
        Some(python) => (PathBuf::from(python), true),
        None => (root.join(".ci/sdk-venv/bin/python"), false),
    };
    let imports = Command::new(&python)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|output| output.status.success());
    match (imports, required) {
        (true, _) => Ok(python),
        (false, true) => panic!(
            "{PYTHON_VAR}={} cannot import openai: install it with .ci/run",
            python.display()
        ),
        (false, false) => Err(format!(
            "no {PYTHON_VAR} and no SDK in {}: run .ci/run to install it",
            python.display()
        )),
    }
}

/// A user's new device key.
async fn device_key(app: &TestApp, name: &str) -> String {
    let user = app.new_user(name).await;
    app.create_key(&user.token, "sdk").await["key"]
        .as_str()
        .unwrap()
        .to_string()
}

#[actix_web::test]
async fn the_official_openai_sdk_generates_transcribes_and_raises_its_own_errors() {
    let python = match sdk_python() {
        Ok(python) => python,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    // OpenAI both ways: the SDK talks to the gateway, the gateway to openai backends.
    let app = spawn_app_on(start_sims(vec![fast_sim(), fast_sim()]), |s| {
        s.instances[0].protocol = Some(Protocol::Openai);
        s.instances[1].kind = InstanceKind::Speech;
        s.instances[1].protocol = Some(Protocol::Openai);
    })
    .await;
    let key = device_key(&app, "alice").await;
    app.wait_for_healthy(1).await;
    app.wait_for_healthy_speech(1).await;

    // A second gateway whose queue is full: one task hangs on the GPU, one waits.
    let hanging = SimConfig {
        hang_rate: 1.0,
        ..fast_sim()
    };
    let full = spawn_app_with(vec![hanging], |s| s.queue.capacity = 1).await;
    let full_key = device_key(&full, "bob").await;
    let carol = full.new_user("carol").await;
    full.wait_for_healthy(1).await;
    full.submit_ok(&carol.token, "runs forever").await;
    full.wait_for_stats("a task running", |s| s["busy_workers"] == 1)
        .await;
    full.submit_ok(&carol.token, "waits").await;
    let refused = full
        .submit_image(&carol.token, &serde_json::json!({"prompt": "x"}))
        .await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/openai_sdk.py");
    let mut command = Command::new(&python);
    command
        .arg(script)
        .env("INFERGATE_BASE", &app.address)
        .env("INFERGATE_KEY", &key)
        .env("INFERGATE_FULL_BASE", &full.address)
        .env("INFERGATE_FULL_KEY", &full_key);
    // The gateways serve on this thread while the script runs on another.
    let Output {
        status,
        stdout,
        stderr,
    } = actix_web::rt::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("run the SDK script");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr),
    );
    println!("{stdout}");
    assert!(
        status.success(),
        "the SDK script failed:\n{stdout}\n{stderr}"
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok: ")).count(),
        6,
        "{stdout}"
    );
}
