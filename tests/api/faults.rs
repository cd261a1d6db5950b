//! Backends failing, hanging, lying or dying: every task still ends, with a reason.

use std::time::Duration;

use actix_web::HttpResponse;
use infergate::domain::{InstanceKind, InstanceSpec};
use infergate::simulator::SimConfig;
use serde_json::Value;

use crate::fake_backend::{spawn_answering, spawn_dying};
use crate::helpers::{fast_sim, spawn_app_on, spawn_app_with, start_sims};

fn image_instance(url: String) -> InstanceSpec {
    InstanceSpec::new(InstanceKind::Image, url)
}

#[actix_web::test]
async fn a_failed_attempt_is_retried_on_another_instance() {
    let failing = SimConfig {
        latency_ms: 1,
        failure_rate: 1.0,
        ..SimConfig::default()
    };
    let app = spawn_app_with(vec![failing, fast_sim()], |s| {
        s.health.eject_after_failures = 100
    })
    .await;
    let user = app.new_user("alice").await;
    app.wait_for_healthy(2).await;
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(app.submit_ok(&user.token, &format!("prompt {i}")).await);
    }
    let mut retried = 0;
    for id in &ids {
        let (_, task) = app.wait_for_end(&user.token, id).await;
        assert_eq!(task["status"], "DONE", "{task}");
        let attempts = task["attempts"].as_i64().unwrap();
        // Never twice on the failing instance: the retry goes to the other one.
        assert!(attempts <= 2, "{task}");
        retried += (attempts == 2) as usize;
    }
    assert!(
        retried > 0,
        "round-robin never sent a task to the failing instance"
    );
    assert_eq!(app.sims[1].generated(), 8);
}

#[actix_web::test]
async fn a_flapping_instance_does_not_fail_tasks() {
    let flapping = SimConfig {
        latency_ms: 1,
        failure_rate: 0.5,
        ..SimConfig::default()
    };
    let app = spawn_app_with(vec![flapping, fast_sim()], |_| {}).await;
    let user = app.new_user("alice").await;
    app.wait_for_healthy(2).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(app.submit_ok(&user.token, &format!("prompt {i}")).await);
    }
    for id in &ids {
        let (_, task) = app.wait_for_end(&user.token, id).await;
        assert_eq!(task["status"], "DONE", "{task}");
    }
}

#[actix_web::test]
async fn a_4xx_answer_fails_the_task_at_once() {
    let url = spawn_answering(|| {
        HttpResponse::UnprocessableEntity().body("prompt rejected by safety filter")
    });
    let app = spawn_app_on(vec![], |s| s.instances = vec![image_instance(url)]).await;
    let user = app.new_user("alice").await;
    let id = app.submit_ok(&user.token, "a cat").await;
    let (_, task) = app.wait_for_end(&user.token, &id).await;
    assert_eq!(task["status"], "FAILED");
    assert_eq!(task["attempts"], 1);
    assert_eq!(
        task["error"],
        "backend answered 422: prompt rejected by safety filter"
    );
}

#[actix_web::test]
async fn a_garbage_answer_is_retried_then_fails_with_the_reason() {
    let url = spawn_answering(|| {
        HttpResponse::Ok()
            .content_type("text/html")
            .body("<html>oops</html>")
    });
    let app = spawn_app_on(vec![], |s| {
        s.instances = vec![image_instance(url)];
        s.health.eject_after_failures = 100;
    })
    .await;
    let user = app.new_user("alice").await;
    let id = app.submit_ok(&user.token, "a cat").await;
    let (_, task) = app.wait_for_end(&user.token, &id).await;
    assert_eq!(task["status"], "FAILED");
    assert_eq!(task["attempts"], 3);
    let error = task["error"].as_str().unwrap();
    assert!(
        error.contains("expected an image") && error.contains("attempt 3 of 3"),
        "{error}"
    );
}

#[actix_web::test]
async fn an_oversized_or_empty_image_is_refused() {
    let big = spawn_answering(|| {
        HttpResponse::Ok()
            .content_type("image/png")
            .body(vec![0u8; 10_000])
    });
    let empty = spawn_answering(|| HttpResponse::Ok().content_type("image/png").finish());
    for (url, expected) in [(big, "larger than 2048 bytes"), (empty, "empty image")] {
        let app = spawn_app_on(vec![], |s| {
            s.instances = vec![image_instance(url)];
            s.workers.max_response_bytes = 2048;
            s.workers.max_attempts = 1;
        })
        .await;
        let user = app.new_user("alice").await;
        let id = app.submit_ok(&user.token, "a cat").await;
        let (_, task) = app.wait_for_end(&user.token, &id).await;
        assert_eq!(task["status"], "FAILED");
        assert!(task["error"].as_str().unwrap().contains(expected), "{task}");
    }
}

#[actix_web::test]
async fn a_backend_dying_mid_request_is_retried_and_ejected() {
    let dying = spawn_dying();
    let app = spawn_app_on(start_sims(vec![fast_sim()]), |s| {
        s.instances.push(image_instance(dying));
        s.health.eject_after_failures = 1;
        s.health.interval_secs = 3600;
    })
    .await;
    let user = app.new_user("alice").await;
    app.wait_for_healthy(2).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(app.submit_ok(&user.token, &format!("prompt {i}")).await);
    }
    for id in &ids {
        let (_, task) = app.wait_for_end(&user.token, id).await;
        assert_eq!(task["status"], "DONE", "{task}");
    }
    // One failed call took the dying instance out until its next (hour-away) ping.
    let stats = app.stats().await;
    assert_eq!(stats["image_instances"]["healthy"], 1, "{stats}");
    assert_eq!(app.sims[0].generated(), 6);
}

#[actix_web::test]
async fn a_dead_only_instance_fails_the_task_after_its_attempts() {
    let dying = spawn_dying();
    let app = spawn_app_on(vec![], |s| {
        s.instances = vec![image_instance(dying)];
        s.health.eject_after_failures = 100;
    })
    .await;
    let user = app.new_user("alice").await;
    let id = app.submit_ok(&user.token, "a cat").await;
    let (_, task) = app.wait_for_end(&user.token, &id).await;
    assert_eq!(task["status"], "FAILED");
    assert_eq!(task["attempts"], 3);
    assert!(
        task["error"]
            .as_str()
            .unwrap()
            .starts_with("backend unreachable"),
        "{task}"
    );
}

#[actix_web::test]
async fn tasks_wait_while_every_instance_is_down_and_run_when_one_returns() {
    let sims = start_sims(vec![fast_sim()]);
    sims[0].set_ready(false);
    let app = spawn_app_on(sims, |_| {}).await;
    let user = app.new_user("alice").await;
    let ids = [
        app.submit_ok(&user.token, "one").await,
        app.submit_ok(&user.token, "two").await,
    ];
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for id in &ids {
        let task: serde_json::Value = app.get_task(&user.token, id).await.json().await.unwrap();
        assert_eq!(task["status"], "QUEUED");
    }
    let stats = app.stats().await;
    assert_eq!(stats["image_instances"]["waiting"], 1, "{stats}");
    assert_eq!(stats["queue_length"], 1, "{stats}");

    app.sims[0].set_ready(true);
    for id in &ids {
        assert_eq!(app.wait_for_end(&user.token, id).await.1["status"], "DONE");
    }
}

#[actix_web::test]
async fn an_instance_coming_back_gets_its_capacity_step_by_step() {
    let sims = start_sims(vec![SimConfig {
        latency_ms: 30_000,
        capacity: 4,
        ..SimConfig::default()
    }]);
    let app = spawn_app_on(sims, |s| {
        s.instances[0].capacity = 4;
        s.health.slow_start_secs = 4;
    })
    .await;
    let user = app.new_user("alice").await;
    app.wait_for_healthy(1).await;
    app.sims[0].set_ready(false);
    app.wait_for_healthy(0).await;
    for i in 0..8 {
        app.submit_ok(&user.token, &format!("prompt {i}")).await;
    }

    app.sims[0].set_ready(true);
    // Calls on the instance as it comes back: one at first, then more as the ramp climbs
    // (without a slow start all four would start at once).
    let mut seen = vec![0];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while seen.last() != Some(&4) {
        assert!(std::time::Instant::now() < deadline, "seen {seen:?}");
        let in_flight = app.stats().await["image_instances"]["in_flight"]
            .as_u64()
            .unwrap();
        if Some(&in_flight) != seen.last() {
            seen.push(in_flight);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen[1], 1, "seen {seen:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "seen {seen:?}");
    assert!(
        seen.len() > 3,
        "no step between one call and four: {seen:?}"
    );
}

#[actix_web::test]
async fn a_half_failing_only_instance_is_never_ejected_and_still_does_its_share() {
    let gpu = SimConfig {
        latency_ms: 1,
        ..SimConfig::default()
    };
    // Pings only at start: what happens is passive health's doing.
    let app = spawn_app_with(vec![gpu], |s| {
        s.health.interval_secs = 3600;
        s.queue.max_wait_secs = 5;
    })
    .await;
    let user = app.new_user("alice").await;
    let admin = app.new_admin("root").await;
    app.wait_for_healthy(1).await;
    // It has worked once: an instance that never has may go even when it is the last
    // (one run in eight would start with three failures in a row).
    let first = app.submit_ok(&user.token, "works").await;
    assert_eq!(
        app.wait_for_end(&user.token, &first).await.1["status"],
        "DONE"
    );
    app.sims[0].set_failure_rate(0.5);
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(app.submit_ok(&user.token, &format!("prompt {i}")).await);
    }
    let mut done = 0;
    for id in &ids {
        let (_, task) = app.wait_for_end(&user.token, id).await;
        done += usize::from(task["status"] == "DONE");
    }
    // Three attempts at 50% each: 87.5% of the tasks succeed, 35 of 40 on average.
    assert!(done >= 28, "{done} of 40 DONE");
    let instances = app.instances(&admin.token).await;
    assert_eq!(instances[0]["state"], "healthy", "{instances:?}");
}

#[actix_web::test]
async fn an_ejected_instance_comes_back_through_a_probe_and_never_more_than_the_share_go() {
    let failing = SimConfig {
        latency_ms: 1,
        failure_rate: 1.0,
        ..SimConfig::default()
    };
    let app = spawn_app_with(vec![failing.clone(), failing], |s| {
        s.health.interval_secs = 3600;
        s.health.base_ejection_secs = 1;
        s.health.max_ejection_percent = 50;
        s.workers.max_attempts = 1;
    })
    .await;
    let user = app.new_user("alice").await;
    let admin = app.new_admin("root").await;
    app.wait_for_healthy(2).await;
    for i in 0..12 {
        let id = app.submit_ok(&user.token, &format!("prompt {i}")).await;
        app.wait_for_end(&user.token, &id).await;
    }
    // Both fail every call, but only half of the kind may be out at once.
    let ejected =
        |instances: &[Value]| instances.iter().filter(|i| i["state"] == "ejected").count();
    let instances = app.instances(&admin.token).await;
    assert_eq!(ejected(&instances), 1, "{instances:?}");

    // Fixed: once its ejection is over, one probe call brings it back.
    for sim in &app.sims {
        sim.set_failure_rate(0.0);
    }
    crate::poll::eventually("both back", Duration::from_secs(15), || async {
        let id = app.submit_ok(&user.token, "probe").await;
        app.wait_for_end(&user.token, &id).await;
        let instances = app.instances(&admin.token).await;
        if ejected(&instances) == 0 {
            Ok(())
        } else {
            Err(instances)
        }
    })
    .await;
}
