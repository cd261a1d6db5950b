//! The same gateway on PostgreSQL. Needs `INFERGATE_TEST_POSTGRES_URL` (`.ci/run` sets it);
//! each test gets a database of its own, dropped at the end.

use infergate::domain::{InstanceKind, InstanceSpec};
use infergate::settings::Settings;
use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use serde_json::{json, Value};

use crate::helpers::{fast_sim, spawn_app_on, start, start_sims};

/// A fresh database on the test server, or `None` (with a note) when none is configured.
pub struct TempDatabase {
    admin: DatabaseConnection,
    name: String,
    pub url: String,
}

impl TempDatabase {
    pub async fn create() -> Option<TempDatabase> {
        let Ok(base) = std::env::var("INFERGATE_TEST_POSTGRES_URL") else {
            eprintln!("skipped: INFERGATE_TEST_POSTGRES_URL is not set, so the PostgreSQL tests did not run");
            return None;
        };
        let admin = Database::connect(&base)
            .await
            .expect("connect to the test PostgreSQL");
        let name = format!("infergate_{}", uuid::Uuid::new_v4().simple());
        admin
            .execute(Statement::from_string(
                admin.get_database_backend(),
                format!("CREATE DATABASE {name}"),
            ))
            .await
            .unwrap();
        let (server, _) = base.rsplit_once('/').expect("URL ends in /database");
        let url = format!("{server}/{name}");
        Some(TempDatabase { admin, name, url })
    }

    pub async fn drop(self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = self
            .admin
            .execute(Statement::from_string(
                self.admin.get_database_backend(),
                sql,
            ))
            .await;
    }
}

#[actix_web::test]
async fn the_full_flow_works_on_postgresql() {
    let Some(database) = TempDatabase::create().await else {
        return;
    };
    let url = database.url.clone();
    let app = spawn_app_on(start_sims(vec![fast_sim()]), |s| s.database.url = url).await;
    let user = app.new_user("alice").await;

    let id = app.submit_ok(&user.token, "a cat on postgres").await;
    let (_, task) = app.wait_for_end(&user.token, &id).await;
    assert_eq!(task["status"], "DONE", "{task}");
    let image = app
        .get(task["result_url"].as_str().unwrap(), &user.token)
        .await;
    assert_eq!(image.status(), StatusCode::OK);
    assert_eq!(&image.bytes().await.unwrap()[..4], b"\x89PNG");

    // Idempotent replay and cancel go through the same conditional statements.
    let keyed = |prompt: &str| {
        app.client
            .post(app.url("/api/v1/image/async"))
            .bearer_auth(&user.token)
            .header("Idempotency-Key", "pg-key")
            .json(&json!({ "prompt": prompt }))
            .send()
    };
    let first: Value = keyed("same").await.unwrap().json().await.unwrap();
    let again: Value = keyed("same").await.unwrap().json().await.unwrap();
    assert_eq!(first["task_id"], again["task_id"]);
    assert_eq!(
        keyed("other").await.unwrap().status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let list: Vec<Value> = app
        .get("/api/v1/tasks", &user.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 2);
    drop(app);
    database.drop().await;
}

#[actix_web::test]
async fn queued_tasks_survive_a_restart_on_postgresql() {
    let Some(database) = TempDatabase::create().await else {
        return;
    };
    let sims = start_sims(vec![fast_sim()]);
    sims[0].set_ready(false);
    let url = database.url.clone();
    let first = spawn_app_on(sims, |s| s.database.url = url).await;
    let user = first.new_user("alice").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(first.submit_ok(&user.token, &format!("prompt {i}")).await);
    }

    // A second gateway on the same database finds and runs them (the first never could).
    let sims = start_sims(vec![fast_sim()]);
    let mut settings = Settings::default();
    settings.server.host = "127.0.0.1".into();
    settings.server.port = 0;
    settings.database.url = database.url.clone();
    settings.auth.jwt_secret = crate::helpers::TEST_SECRET.into();
    settings.health.interval_secs = 1;
    settings.instances = vec![InstanceSpec::new(InstanceKind::Image, sims[0].url())];
    let dir = tempfile::tempdir().unwrap();
    let second = start(settings, sims, dir).await;
    for id in &ids {
        assert_eq!(
            second.wait_for_end(&user.token, id).await.1["status"],
            "DONE"
        );
    }
    drop((first, second));
    database.drop().await;
}
