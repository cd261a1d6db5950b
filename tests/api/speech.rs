use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use infergate::domain::{InstanceKind, InstanceSpec};
use infergate::settings::Settings;
use infergate::simulator::{SimBackend, SimConfig};
use reqwest::multipart::{Form, Part};
use reqwest::{Body, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{
    assert_error, pcm, spawn_app_with_speech, start, start_sims, Auth, Stopped, TestApp, TestUser,
    TEST_SECRET,
};

/// A fast simulated speech backend.
fn speech_sim() -> SimConfig {
    SimConfig {
        latency_ms: 20,
        ..SimConfig::default()
    }
}

fn sim_with(tweak: impl FnOnce(&mut SimConfig)) -> SimConfig {
    let mut config = speech_sim();
    tweak(&mut config);
    config
}

async fn speech_app(
    sims: Vec<SimConfig>,
    tweak: impl FnOnce(&mut infergate::settings::Settings),
) -> (TestApp, TestUser) {
    let app = spawn_app_with_speech(start_sims(sims), tweak).await;
    let user = app.new_user("alice").await;
    app.wait_for_healthy_speech(app.speech_sims.len() as u64)
        .await;
    (app, user)
}

fn transcribed(sim: &SimBackend) -> u64 {
    sim.state.transcribed.load(Ordering::SeqCst)
}

fn file_form(bytes: Vec<u8>) -> Form {
    Form::new().part(
        "file",
        Part::bytes(bytes)
            .file_name("hello.wav")
            .mime_str("audio/wav")
            .unwrap(),
    )
}

/// A body sent as `chunks` pieces with a pause between them; no Content-Length.
fn chunked(chunks: Vec<Vec<u8>>, pause: Duration) -> Body {
    let stream = futures_util::stream::iter(chunks).then(move |chunk| async move {
        tokio::time::sleep(pause).await;
        Ok::<_, std::io::Error>(chunk)
    });
    Body::wrap_stream(stream)
}

#[actix_web::test]
async fn a_file_upload_is_transcribed() {
    let (app, user) = speech_app(vec![speech_sim()], |_| {}).await;
    let response = app
        .transcribe(Auth::Bearer(&user.token), file_form(pcm(5.0)))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], 0);
    assert_eq!(body["language"], "en");
    assert!(body["language_probability"].as_f64().unwrap() > 0.0);
    let segments = body["segments"].as_array().unwrap();
    assert_eq!(segments.len(), 2);
    assert_eq!(segments[0]["text"], "simulated segment 1");
    // The simulator sizes its transcript by the file's bytes: all of them arrived.
    assert_eq!(segments[1]["end"], 5.0);
    assert_eq!(transcribed(&app.speech_sims[0]), 1);
}

#[actix_web::test]
async fn streamed_pcm_reaches_the_backend_before_the_upload_ends() {
    let (app, user) = speech_app(vec![speech_sim()], |_| {}).await;
    let state = app.speech_sims[0].state.clone();
    let heard_early = Arc::new(AtomicBool::new(false));
    let pieces = 40;
    let chunks: Vec<Vec<u8>> = (0..pieces).map(|_| pcm(0.1)).collect();
    let heard = heard_early.clone();
    let stream =
        futures_util::stream::iter(chunks.into_iter().enumerate()).then(move |(i, chunk)| {
            let (state, heard) = (state.clone(), heard.clone());
            async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                if i == pieces - 1 {
                    // Before the last piece: has the backend heard anything yet? A gateway
                    // that buffered the whole body could not have forwarded a byte.
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while Instant::now() < deadline {
                        if state.pcm_bytes_received.load(Ordering::SeqCst) > 0 {
                            heard.store(true, Ordering::SeqCst);
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                Ok::<_, std::io::Error>(chunk)
            }
        });
    let response = app
        .send_pcm(Auth::Bearer(&user.token), Body::wrap_stream(stream))
        .await;
    assert!(
        heard_early.load(Ordering::SeqCst),
        "the backend received nothing before the client's last piece"
    );
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], 0);
    assert_eq!(
        body["segments"].as_array().unwrap().last().unwrap()["end"],
        4.0
    );
    assert_eq!(
        app.speech_sims[0]
            .state
            .pcm_bytes_received
            .load(Ordering::SeqCst),
        4 * 32_000
    );
}

#[actix_web::test]
async fn under_a_second_gets_the_backends_own_answer() {
    let (app, user) = speech_app(vec![speech_sim()], |_| {}).await;
    let response = app
        .client
        .post(app.url("/api/v1/speech/pcm?sample_rate=16000"))
        .bearer_auth(&user.token)
        .body(pcm(0.5))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"code": 1, "message": "audio too short"}));
}

#[actix_web::test]
async fn pcm_limits_are_enforced_and_nothing_is_transcribed() {
    let (app, user) = speech_app(vec![speech_sim()], |s| s.speech.max_pcm_seconds = 1).await;
    let auth = Auth::Bearer(&user.token);

    let odd = app.send_pcm(auth, vec![0u8; 1001]).await;
    assert_error(odd, StatusCode::BAD_REQUEST, "invalid_request").await;
    let odd_chunked = chunked(vec![vec![0; 1000], vec![0; 1001]], Duration::ZERO);
    let odd_chunked = app.send_pcm(auth, odd_chunked).await;
    assert_error(odd_chunked, StatusCode::BAD_REQUEST, "invalid_request").await;

    let long = app.send_pcm(auth, pcm(1.5)).await;
    assert_error(long, StatusCode::PAYLOAD_TOO_LARGE, "audio_too_long").await;
    let long_chunked = chunked(vec![pcm(0.5), pcm(0.5), pcm(0.5)], Duration::ZERO);
    let long_chunked = app.send_pcm(auth, long_chunked).await;
    assert_error(
        long_chunked,
        StatusCode::PAYLOAD_TOO_LARGE,
        "audio_too_long",
    )
    .await;

    let resample = app
        .client
        .post(app.url("/api/v1/speech/pcm?sample_rate=8000"))
        .bearer_auth(&user.token)
        .body(pcm(0.5))
        .send()
        .await
        .unwrap();
    let body = assert_error(resample, StatusCode::BAD_REQUEST, "invalid_request").await;
    assert!(body["error"].as_str().unwrap().contains("16000"));

    let anonymous = app
        .client
        .post(app.url("/api/v1/speech/pcm"))
        .body(pcm(0.5));
    assert_error(
        anonymous.send().await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;

    // Refused uploads reached no transcript, and gave their instance back.
    app.wait_for_speech_idle().await;
    assert_eq!(transcribed(&app.speech_sims[0]), 0);
    let exact = app.send_pcm(auth, pcm(1.0)).await;
    assert_eq!(exact.status(), StatusCode::OK);
}

#[actix_web::test]
async fn upload_limits_are_enforced_and_nothing_is_transcribed() {
    let (app, user) = speech_app(vec![speech_sim()], |s| {
        s.speech.max_upload_bytes = 64 * 1024
    })
    .await;
    let auth = Auth::Bearer(&user.token);

    // Refused from its Content-Length, before the body is read.
    let huge = app.transcribe(auth, file_form(vec![0; 512 * 1024])).await;
    assert_error(huge, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    // Within the framing allowance of its Content-Length: refused by counting.
    let counted = app.transcribe(auth, file_form(vec![0; 100 * 1024])).await;
    assert_error(counted, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    // No Content-Length at all: refused by counting.
    let streamed = Part::stream(chunked(
        (0..10).map(|_| vec![0u8; 10 * 1024]).collect(),
        Duration::ZERO,
    ))
    .file_name("big.wav");
    let streamed = app
        .transcribe(auth, Form::new().part("file", streamed))
        .await;
    assert_error(streamed, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;

    let no_file = Form::new().text("language", "en");
    let no_file = app.transcribe(auth, no_file).await;
    let body = assert_error(no_file, StatusCode::BAD_REQUEST, "invalid_request").await;
    assert!(body["error"].as_str().unwrap().contains("file"));

    let json = app
        .client
        .post(app.url("/api/v1/speech/transcribe"))
        .bearer_auth(&user.token)
        .json(&json!({"file": "aGVsbG8="}))
        .send()
        .await
        .unwrap();
    assert_error(json, StatusCode::BAD_REQUEST, "malformed_body").await;

    app.wait_for_speech_idle().await;
    assert_eq!(transcribed(&app.speech_sims[0]), 0);
    // The other fields may come first; the file within the limit is fine.
    let fine = Form::new()
        .text("language", "en")
        .part("file", Part::bytes(pcm(1.0)).file_name("a.wav"));
    assert_eq!(app.transcribe(auth, fine).await.status(), StatusCode::OK);
}

#[actix_web::test]
async fn no_healthy_speech_instance_is_503_at_once() {
    let sims = start_sims(vec![speech_sim()]);
    sims[0].set_ready(false);
    let app = spawn_app_with_speech(sims, |s| s.speech.max_wait_secs = 30).await;
    let user = app.new_user("alice").await;
    app.wait_for_healthy(1).await;
    let response = app.send_pcm(Auth::Bearer(&user.token), pcm(1.0)).await;
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .unwrap()
            .to_str()
            .unwrap(),
        "5"
    );
    assert_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "no_healthy_instance",
    )
    .await;
}

#[actix_web::test]
async fn a_request_that_finds_every_instance_busy_waits_then_gets_503() {
    let (app, user) = speech_app(vec![sim_with(|c| c.latency_ms = 3000)], |s| {
        s.speech.max_wait_secs = 1
    })
    .await;
    let auth = Auth::Bearer(&user.token);
    let (first, second) = tokio::join!(app.send_pcm(auth, pcm(1.0)), async {
        app.wait_for_stats("the first request started", |s| {
            s["speech_instances"]["in_flight"] == 1
        })
        .await;
        app.send_pcm(auth, pcm(1.0)).await
    });
    assert!(second.headers().contains_key("retry-after"));
    assert_error(second, StatusCode::SERVICE_UNAVAILABLE, "instances_busy").await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(transcribed(&app.speech_sims[0]), 1);
}

#[actix_web::test]
async fn past_max_waiting_a_request_is_refused_at_once_while_the_waiting_one_is_served() {
    let (app, user) = speech_app(vec![sim_with(|c| c.latency_ms = 2000)], |s| {
        s.speech.max_waiting = 1;
        s.speech.max_wait_secs = 30;
    })
    .await;
    let auth = Auth::Bearer(&user.token);
    let until = |in_flight: u64, waiting: u64| {
        let app = &app;
        async move {
            let what = format!("{in_flight} speech calls in flight, {waiting} waiting");
            app.wait_for_stats(&what, |s| {
                let speech = &s["speech_instances"];
                speech["in_flight"] == in_flight && speech["waiting"] == waiting
            })
            .await
        }
    };
    let (first, second, third) = tokio::join!(
        app.send_pcm(auth, pcm(1.0)),
        async {
            until(1, 0).await;
            app.send_pcm(auth, pcm(1.0)).await
        },
        async {
            until(1, 1).await;
            let refused = app.send_pcm(auth, pcm(1.0)).await;
            // Refused while the first still runs and the second still waits.
            let speech = app.stats().await["speech_instances"].clone();
            assert_eq!(
                (speech["in_flight"].clone(), speech["waiting"].clone()),
                (json!(1), json!(1))
            );
            refused
        }
    );
    assert!(third.headers().contains_key("retry-after"));
    assert_error(third, StatusCode::SERVICE_UNAVAILABLE, "instances_busy").await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(transcribed(&app.speech_sims[0]), 2);
}

#[actix_web::test]
async fn a_slow_backend_is_504() {
    let (app, user) = speech_app(vec![sim_with(|c| c.latency_ms = 5000)], |s| {
        s.speech.timeout_secs = 1
    })
    .await;
    let response = app.send_pcm(Auth::Bearer(&user.token), pcm(1.0)).await;
    assert_error(response, StatusCode::GATEWAY_TIMEOUT, "backend_timeout").await;
}

#[actix_web::test]
async fn a_failing_backend_is_502_with_its_message() {
    let (app, user) = speech_app(vec![sim_with(|c| c.failure_rate = 1.0)], |_| {}).await;
    let response = app
        .transcribe(Auth::Bearer(&user.token), file_form(pcm(1.0)))
        .await;
    let body = assert_error(response, StatusCode::BAD_GATEWAY, "backend_error").await;
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("CUDA out of memory"),
        "{body}"
    );
}

#[actix_web::test]
async fn two_instances_share_the_load() {
    let (app, user) = speech_app(vec![speech_sim(), speech_sim()], |_| {}).await;
    for _ in 0..4 {
        let response = app.send_pcm(Auth::Bearer(&user.token), pcm(1.0)).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(
        (
            transcribed(&app.speech_sims[0]),
            transcribed(&app.speech_sims[1])
        ),
        (2, 2)
    );
}

#[actix_web::test]
async fn a_dead_instance_is_skipped() {
    let (mut app, user) = speech_app(vec![speech_sim(), speech_sim()], |_| {}).await;
    app.speech_sims.remove(1).stop().await;
    app.wait_for_healthy_speech(1).await;
    for _ in 0..4 {
        let response = app.send_pcm(Auth::Bearer(&user.token), pcm(1.0)).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(transcribed(&app.speech_sims[0]), 4);
}

#[actix_web::test]
async fn a_failing_instance_is_ejected_by_its_own_traffic() {
    // Pings only at start: the old speech backend has no /ping, so passive health must do.
    let (app, user) = speech_app(vec![speech_sim(), speech_sim()], |s| {
        s.health.interval_secs = 3600;
        s.health.eject_after_failures = 2;
    })
    .await;
    app.speech_sims[1].set_failure_rate(1.0);
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let response = app.send_pcm(Auth::Bearer(&user.token), pcm(1.0)).await;
        statuses.push(response.status());
    }
    let failed = statuses
        .iter()
        .filter(|s| **s == StatusCode::BAD_GATEWAY)
        .count();
    assert_eq!(failed, 2, "{statuses:?}");
    assert_eq!(transcribed(&app.speech_sims[0]), 6);
    assert_eq!(app.stats().await["speech_instances"]["healthy"], 1);
}

#[actix_web::test]
async fn a_stalled_client_is_cut_off() {
    let (app, user) = speech_app(vec![speech_sim()], |s| s.speech.read_timeout_secs = 1).await;
    let stream = futures_util::stream::iter([0u64, 15]).then(|pause| async move {
        tokio::time::sleep(Duration::from_secs(pause)).await;
        Ok::<_, std::io::Error>(pcm(0.5))
    });
    let response = app
        .send_pcm(Auth::Bearer(&user.token), Body::wrap_stream(stream))
        .await;
    assert_error(response, StatusCode::REQUEST_TIMEOUT, "upload_timeout").await;
    app.wait_for_speech_idle().await;
    assert_eq!(transcribed(&app.speech_sims[0]), 0);
}

#[actix_web::test]
async fn a_speech_request_right_after_start_waits_for_the_first_ping_and_succeeds() {
    let sims = start_sims(vec![speech_sim()]);
    let speech_url = sims[0].url();
    let first = spawn_app_with_speech(sims, |_| {}).await;
    let user = first.new_user("alice").await;
    let Stopped { db_url, dir, .. } = first.stop().await;

    // A restart, as after a deploy: the devices are back before the first ping is.
    let mut settings = Settings::default();
    settings.server.host = "127.0.0.1".into();
    settings.server.port = 0;
    settings.database.url = db_url;
    settings.auth.jwt_secret = TEST_SECRET.into();
    settings.limits.speech_per_minute = 0;
    settings.instances = vec![InstanceSpec::new(InstanceKind::Speech, speech_url)];
    let app = start(settings, Vec::new(), dir).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let response = app.send_pcm(Auth::Bearer(&user.token), pcm(1.0)).await;
    assert_eq!(response.status(), StatusCode::OK);
}

/// A chunked body that sends `piece` every `pause`, `count` times.
fn paced(piece: Vec<u8>, pause: Duration, count: usize) -> Body {
    let stream = futures_util::stream::iter(0..count).then(move |_| {
        let piece = piece.clone();
        async move {
            tokio::time::sleep(pause).await;
            Ok::<_, std::io::Error>(piece)
        }
    });
    Body::wrap_stream(stream)
}

#[actix_web::test]
async fn a_trickling_device_is_cut_off_and_another_users_request_gets_the_instance() {
    // One instance of capacity 1; the defaults: half of real time at least, 5 s of wait.
    let (app, alice) = speech_app(vec![speech_sim()], |_| {}).await;
    let bob = app.new_user("bob_1").await;
    let (trickled, others) = tokio::join!(
        // 2 bytes every half second, for up to 30 s.
        app.send_pcm(
            Auth::Bearer(&alice.token),
            paced(vec![0, 0], Duration::from_millis(500), 60)
        ),
        async {
            app.wait_for_stats("the trickling request holding the instance", |s| {
                s["speech_instances"]["in_flight"] == 1
            })
            .await;
            app.send_pcm(Auth::Bearer(&bob.token), pcm(1.2)).await
        }
    );
    assert_eq!(others.status(), StatusCode::OK);
    let body = assert_error(trickled, StatusCode::REQUEST_TIMEOUT, "upload_timeout").await;
    assert!(body["error"].as_str().unwrap().contains("16000"), "{body}");
    assert_eq!(transcribed(&app.speech_sims[0]), 1);
}

#[actix_web::test]
async fn a_silent_device_holds_no_instance_while_it_waits_for_its_first_bytes() {
    let (app, alice) = speech_app(vec![speech_sim()], |s| s.speech.read_timeout_secs = 3).await;
    let bob = app.new_user("bob_1").await;
    let silent = Body::wrap_stream(futures_util::stream::once(async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok::<_, std::io::Error>(pcm(1.0))
    }));
    let (silent, others) = tokio::join!(app.send_pcm(Auth::Bearer(&alice.token), silent), async {
        // Give the silent request time to reach the gateway (it must not matter).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let answer = app.send_pcm(Auth::Bearer(&bob.token), pcm(1.2)).await;
        let in_flight = app.stats().await["speech_instances"]["in_flight"].clone();
        (answer, in_flight)
    });
    let (others, in_flight) = others;
    assert_eq!(others.status(), StatusCode::OK);
    assert_eq!(in_flight, 0, "the silent request held an instance");
    assert_error(silent, StatusCode::REQUEST_TIMEOUT, "upload_timeout").await;
    assert_eq!(transcribed(&app.speech_sims[0]), 1);
}

#[actix_web::test]
async fn pcm_streamed_in_real_time_is_not_cut_off() {
    let (app, user) = speech_app(vec![speech_sim()], |_| {}).await;
    // 3 s of audio in 100 ms pieces, as a device records it.
    let response = app
        .send_pcm(
            Auth::Bearer(&user.token),
            paced(pcm(0.1), Duration::from_millis(100), 30),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["segments"].as_array().unwrap().last().unwrap()["end"],
        3.0
    );
}

#[actix_web::test]
async fn a_trickled_file_upload_is_cut_off_too() {
    let (app, user) = speech_app(vec![speech_sim()], |s| s.speech.min_bytes_per_sec = 8000).await;
    let file =
        Part::stream(paced(vec![0; 10], Duration::from_millis(300), 100)).file_name("slow.wav");
    let response = app
        .transcribe(Auth::Bearer(&user.token), Form::new().part("file", file))
        .await;
    assert_error(response, StatusCode::REQUEST_TIMEOUT, "upload_timeout").await;
    app.wait_for_speech_idle().await;
    assert_eq!(transcribed(&app.speech_sims[0]), 0);
}
