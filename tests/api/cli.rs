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

#[actix_web::test]
async fn demo_mode_runs_only_its_simulators_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    add_user_with(
        dir.path(),
        &["user", "add", "root", "--admin", "--password-stdin"],
    );
    // The shipped settings.toml, with its `localhost:8000` image instance.
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("settings.toml");
    let gateway = Gateway::start(dir.path(), Some(&shipped), free_port(), &["--demo"]).await;
    let (_, token) = sign_up(&gateway.base, "root").await;
    let instances: Vec<Value> = reqwest::Client::new()
        .get(format!("{}/api/v1/admin/instances", gateway.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // settings.toml's `localhost:8000` instance is not loaded: only the two simulators.
    let mut kinds: Vec<&str> = instances
        .iter()
        .map(|i| i["kind"].as_str().unwrap())
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["image", "speech"], "{instances:?}");
    for instance in &instances {
        let url = instance["url"].as_str().unwrap();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        assert!(!url.ends_with(":8000"), "{url}");
    }
}

fn run(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    infergate(dir).args(args).output().unwrap()
}

fn add_user(dir: &std::path::Path, name: &str) {
    add_user_with(dir, &["user", "add", name, "--password-stdin"]);
}

fn add_user_with(dir: &std::path::Path, args: &[&str]) {
    let mut child = infergate(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"password123\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
}

#[actix_web::test]
async fn user_disable_enable_and_remove_take_effect_on_a_running_gateway() {
    let dir = tempfile::tempdir().unwrap();
    add_user(dir.path(), "alice");
    let gateway = Gateway::start(dir.path(), None, free_port(), &["--demo"]).await;
    let base = gateway.base.clone();
    let (_, token) = sign_up(&base, "alice").await;
    let client = reqwest::Client::new();
    let status = |token: String| {
        let client = client.clone();
        let url = format!("{base}/api/v1/tasks");
        async move {
            client
                .get(&url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let refused_within = |what: &'static str, want: StatusCode| {
        let token = token.clone();
        let status = &status;
        async move {
            eventually(what, Duration::from_secs(10), || async {
                match status(token.clone()).await {
                    got if got == want => Ok(()),
                    got => Err(got),
                }
            })
            .await
        }
    };
    assert_eq!(status(token.clone()).await, StatusCode::OK);
    assert_eq!(
        submit(&base, &token, "a task").await.status(),
        StatusCode::ACCEPTED
    );

    // Names are matched whatever their case.
    let disabled = run(dir.path(), &["user", "disable", "ALICE"]);
    assert!(disabled.status.success(), "{disabled:?}");
    assert!(String::from_utf8_lossy(&disabled.stdout).contains("alice is now disabled"));
    refused_within(
        "the disabled user's token refused",
        StatusCode::UNAUTHORIZED,
    )
    .await;

    let enabled = run(dir.path(), &["user", "enable", "alice"]);
    assert!(String::from_utf8_lossy(&enabled.stdout).contains("alice is now enabled"));
    refused_within("the enabled user's token working again", StatusCode::OK).await;

    let removed = run(dir.path(), &["user", "remove", "alice"]);
    assert!(removed.status.success(), "{removed:?}");
    let said = String::from_utf8_lossy(&removed.stdout).to_string();
    assert!(
        said.contains("removed user alice") && said.contains("with 1 tasks"),
        "{said}"
    );
    refused_within("the removed user's token refused", StatusCode::UNAUTHORIZED).await;

    for command in ["remove", "disable", "enable"] {
        let missing = run(dir.path(), &["user", command, "nobody"]);
        assert!(!missing.status.success());
        assert!(String::from_utf8_lossy(&missing.stderr).contains("no user named nobody"));
    }
    // Each change is in the audit log, by `cli`.
    let db = crate::helpers::open_database(&crate::process::database_url(dir.path())).await;
    let (entries, _, _) = infergate::store::audit::list(&db, 10, None).await.unwrap();
    let logged: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e.actor_name.as_str(), e.action.as_str()))
        .collect();
    assert_eq!(
        logged,
        [
            ("cli", "user.remove"),
            ("cli", "user.update"),
            ("cli", "user.update"),
            ("cli", "user.add")
        ]
    );
    assert_eq!(entries[2].filter.as_deref(), Some(r#"{"disabled":true}"#));
    assert_eq!(entries[0].target.as_deref(), Some("alice"));
    drop(gateway);
}

#[actix_web::test]
async fn credentials_in_an_instance_url_never_reach_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let sim = infergate::simulator::SimBackend::start(
        infergate::simulator::SimConfig::default(),
        "127.0.0.1",
        0,
    )
    .unwrap();
    let url = sim.url().replace("http://", "http://ops:s3cret@");
    let config =
        crate::process::write_config(dir.path(), &[(url, 1)], "[health]\ninterval_secs = 1\n");
    let port = free_port();
    let mut child = infergate(dir.path())
        .env("INFERGATE__LOG__LEVEL", "info")
        .env("INFERGATE__SERVER__HOST", "127.0.0.1")
        .env("INFERGATE__SERVER__PORT", port.to_string())
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Collect both streams on threads of their own until the process ends.
    let collect = |mut stream: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stream.read_to_string(&mut text);
            text
        })
    };
    let out = collect(Box::new(child.stdout.take().unwrap()));
    let err = collect(Box::new(child.stderr.take().unwrap()));
    let stats = format!("http://127.0.0.1:{port}/api/v1/system/stats");
    eventually("the instance healthy", Duration::from_secs(20), || async {
        let stats: Value = reqwest::get(&stats)
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if stats["image_instances"]["healthy"] == 1 {
            Ok(())
        } else {
            Err(stats.to_string())
        }
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let log = format!("{}{}", out.join().unwrap(), err.join().unwrap());
    assert!(log.contains("instance is healthy"), "{log}");
    assert!(!log.contains("s3cret") && !log.contains("ops:"), "{log}");
}

#[actix_web::test]
async fn compact_converts_an_old_sqlite_file_and_gives_its_free_pages_back() {
    use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
    use sqlx::sqlite::{SqliteAutoVacuum, SqliteConnectOptions, SqlitePool};
    use std::str::FromStr;

    async fn pragma(db: &DatabaseConnection, name: &str) -> i64 {
        let sql = format!("PRAGMA {name}");
        let row = db
            .query_one(Statement::from_string(db.get_database_backend(), sql))
            .await
            .unwrap()
            .unwrap();
        row.try_get_by_index::<i64>(0).unwrap()
    }
    async fn open(url: &str, auto_vacuum: SqliteAutoVacuum) -> DatabaseConnection {
        let options = SqliteConnectOptions::from_str(url)
            .unwrap()
            .create_if_missing(true)
            .auto_vacuum(auto_vacuum);
        let pool = SqlitePool::connect_with(options).await.unwrap();
        sea_orm::SqlxSqliteConnector::from_sqlx_sqlite_pool(pool)
    }

    let dir = tempfile::tempdir().unwrap();
    let url = crate::process::database_url(dir.path());
    // A file as an older version made it, without incremental auto-vacuum, with pages
    // freed by deleted rows.
    let old = open(&url, SqliteAutoVacuum::None).await;
    <migration::Migrator as migration::MigratorTrait>::up(&old, None)
        .await
        .unwrap();
    old.execute_unprepared(
        "CREATE TABLE filler (b BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
         INSERT INTO filler SELECT randomblob(4096) FROM n;
         DROP TABLE filler;",
    )
    .await
    .unwrap();
    assert_eq!(pragma(&old, "auto_vacuum").await, 0);
    assert!(pragma(&old, "freelist_count").await > 400);
    old.close().await.unwrap();

    // Not while a gateway holds the file.
    let held = infergate::store::lock(&url)
        .unwrap()
        .expect("an SQLite file");
    let refused = run(dir.path(), &["compact"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("in use by another infergate gateway"),
        "{stderr}"
    );
    drop(held);

    let compacted = run(dir.path(), &["compact"]);
    let stdout = String::from_utf8_lossy(&compacted.stdout);
    assert!(
        compacted.status.success(),
        "{}",
        String::from_utf8_lossy(&compacted.stderr)
    );
    assert!(stdout.contains("incremental auto-vacuum on"), "{stdout}");
    let db = open(&url, SqliteAutoVacuum::Incremental).await;
    assert_eq!(pragma(&db, "auto_vacuum").await, 2);
    assert_eq!(pragma(&db, "freelist_count").await, 0);
}
