use infergate::domain::Strategy;

use crate::helpers::{fast_sim, spawn_app_on, spawn_app_with, start_sims};

#[actix_web::test]
async fn an_instance_that_fails_its_ping_gets_no_tasks() {
    let sims = start_sims(vec![fast_sim(), fast_sim()]);
    sims[1].set_ready(false);
    let app = spawn_app_on(sims, |_| {}).await;
    let user = app.new_user("alice").await;
    app.wait_for_healthy(1).await;

    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(app.submit_ok(&user.token, &format!("prompt {i}")).await);
    }
    for id in &ids {
        assert_eq!(app.wait_for_end(&user.token, id).await.1["status"], "DONE");
    }
    assert_eq!(app.sims[0].generated(), 6);
    assert_eq!(app.sims[1].generated(), 0);
}

#[actix_web::test]
async fn round_robin_spreads_tasks_over_healthy_instances() {
    let app = spawn_app_with(vec![fast_sim(), fast_sim()], |s| {
        s.balancing.image = Strategy::RoundRobin
    })
    .await;
    let user = app.new_user("alice").await;
    app.wait_for_healthy(2).await;
    for i in 0..6 {
        let id = app.submit_ok(&user.token, &format!("prompt {i}")).await;
        app.wait_for_end(&user.token, &id).await;
    }
    assert_eq!((app.sims[0].generated(), app.sims[1].generated()), (3, 3));
}

#[actix_web::test]
async fn user_hash_keeps_each_user_on_one_instance() {
    let app = spawn_app_with(vec![fast_sim(), fast_sim(), fast_sim()], |s| {
        s.balancing.image = Strategy::UserHash
    })
    .await;
    app.wait_for_healthy(3).await;
    for u in 0..6 {
        let user = app.new_user(&format!("user_{u}")).await;
        let before: Vec<u64> = app.sims.iter().map(|s| s.generated()).collect();
        for i in 0..3 {
            let id = app.submit_ok(&user.token, &format!("prompt {i}")).await;
            assert_eq!(app.wait_for_end(&user.token, &id).await.1["status"], "DONE");
        }
        let gained: Vec<u64> = app
            .sims
            .iter()
            .zip(&before)
            .map(|(s, b)| s.generated() - b)
            .collect();
        assert!(
            gained.contains(&3),
            "user_{u}'s tasks were spread: {gained:?}"
        );
    }
}
