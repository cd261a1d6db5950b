//! The `infergate` binary itself: user management, settings errors, and demo mode.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::poll::eventually;
use crate::process::{free_port, infergate, sign_up, submit, task, Gateway};

#[test]
fn user_add_creates_an_admin_from_stdin_and_promote_changes_roles() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = infergate(dir.path())
        .args(["user", "add", "root_admin", "--admin", "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"long enough password\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("role admin"));

    let promote = infergate(dir.path())
        .args(["user", "promote", "root_admin", "--role", "vip"])
        .output()
        .unwrap();
    assert!(
        promote.status.success(),
        "{}",
        String::from_utf8_lossy(&promote.stderr)
    );
    // Roles are spelt as the API spells them.
    assert!(String::from_utf8_lossy(&promote.stdout).contains("root_admin is now vip"));
    let missing = infergate(dir.path())
        .args(["user", "promote", "nobody", "--role", "vip"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no user named nobody"));

    // A short password is refused, with the reason.
    let mut child = infergate(dir.path())
        .args(["user", "add", "shorty", "--password-stdin"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"short\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("password must be"));
}

#[test]
fn migrate_brings_the_database_up_to_date() {
    let dir = tempfile::tempdir().unwrap();
    let output = infergate(dir.path()).arg("migrate").output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(dir.path().join("gateway.db").exists());
}

#[test]
fn an_invalid_setting_stops_the_start_naming_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let output = infergate(dir.path())
        .env("INFERGATE__QUEUE__CAPACITY", "0")
        .arg("serve")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("queue.capacity"));

    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[[instances]]\nkind = \"image\"\nurl = \"not a url\"\n",
    )
    .unwrap();
    let output = infergate(dir.path())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("instances[0].url"));

    let output = infergate(dir.path())
        .args(["serve", "--config", "/no/such/file.toml"])
        .output()
        .unwrap();
    assert!(!output.status.success());
}

#[actix_web::test]
async fn demo_mode_completes_a_task_with_no_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(dir.path(), None, free_port(), &["--demo"]).await;
    let base = gateway.base.clone();
    let (registered, token) = sign_up(&base, "demo_user").await;
    assert_eq!(registered, StatusCode::CREATED);
    let submitted: Value = submit(&base, &token, "a lighthouse at dusk")
        .await
        .json()
        .await
        .unwrap();
    let task_id = submitted["task_id"].as_str().unwrap();
    eventually("the demo task DONE", Duration::from_secs(20), || async {
        let task = task(&base, &token, task_id).await;
        match task["status"].as_str().unwrap() {
            "DONE" => Ok(()),
            "QUEUED" | "RUNNING" => Err(task),
            other => panic!("demo task ended {other}: {task}"),
        }
    })
    .await;
}
