//! `/health` is liveness, `/ready` readiness: ready once the database and every actor
//! answer and every instance has answered its first ping.

use std::time::Duration;

use infergate::domain::{InstanceKind, InstanceSpec};
use reqwest::StatusCode;
use serde_json::Value;

use crate::fake_backend::spawn_slow_ping;
use crate::helpers::{fast_sim, spawn_app_on, start_sims};
use crate::poll::eventually;
use crate::postgres::TempDatabase;

#[actix_web::test]
async fn ready_only_once_every_instance_has_answered_its_first_ping() {
    let slow = spawn_slow_ping(Duration::from_millis(1500));
    let app = spawn_app_on(Vec::new(), |s| {
        s.instances = vec![InstanceSpec::new(InstanceKind::Image, slow)];
    })
    .await;
    // Alive at once, not ready yet.
    let health = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let early = app.client.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(early.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = early.json().await.unwrap();
    assert_eq!(body["status"], "not ready");
    assert_eq!(body["instance_registry"], "probing its instances");
    assert_eq!(body["database"], "ok");

    let ready: Value = eventually("ready", Duration::from_secs(10), || async {
        let response = app.client.get(app.url("/ready")).send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        if status == StatusCode::OK {
            Ok(body)
        } else {
            Err(body)
        }
    })
    .await;
    assert_eq!(ready["status"], "ready");
    for part in ["database", "task_store", "dispatcher", "instance_registry"] {
        assert_eq!(ready[part], "ok", "{ready}");
    }
}

#[actix_web::test]
async fn not_ready_once_the_database_is_gone() {
    let Some(database) = TempDatabase::create().await else {
        return;
    };
    let url = database.url.clone();
    let app = spawn_app_on(start_sims(vec![fast_sim()]), |s| s.database.url = url).await;
    app.wait_for_healthy(1).await;
    let ready = app.client.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);

    // Dropped under it, its connections cut.
    database.drop().await;
    let response = app.client.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "not ready");
    let database = body["database"].as_str().unwrap();
    assert!(database.starts_with("error: "), "{body}");
    // Liveness is another matter.
    let health = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}
