//! `/health` is liveness, `/ready` readiness: ready once the database and every actor
//! answer and every instance has answered its first ping.

use std::time::Duration;

use infergate::domain::{InstanceKind, InstanceSpec};
use reqwest::StatusCode;
use serde_json::Value;

use crate::fake_backend::spawn_slow_ping;
use crate::helpers::spawn_app_on;
use crate::poll::eventually;

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
