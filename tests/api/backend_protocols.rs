//! Each backend protocol end to end through the gateway, against the simulator: images
//! from openai and a1111 instances (and qwen answers typed by their bytes), answers a
//! client must refuse, transcriptions from openai speech instances (raw PCM as a
//! streamed WAV), health by protocol, mixed pools, and instances added with a model.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::HttpResponse;
use futures_util::StreamExt;
use infergate::domain::{InstanceKind, InstanceSpec, Protocol, Strategy};
use infergate::settings::Settings;
use infergate::simulator::{render_png, SimBackend, WavHeaderSeen};
use reqwest::multipart::{Form, Part};
use reqwest::{Body, StatusCode};
use serde_json::{json, Value};

use crate::fake_backend::spawn_answering;
use crate::helpers::{
    assert_error, fast_sim, pcm, spawn_app_on, spawn_app_with_speech, start_sims, Auth, TestApp,
    TestUser,
};

fn instance(kind: InstanceKind, protocol: Protocol, url: String) -> InstanceSpec {
    InstanceSpec {
        protocol: Some(protocol),
        ..InstanceSpec::new(kind, url)
    }
}

/// A gateway whose one image instance is a fast simulator speaking `protocol` (with
/// `model`, for openai); passive ejection is out of the way of tests that fail on purpose.
async fn image_app(
    protocol: Protocol,
    model: Option<&str>,
    tweak: impl FnOnce(&mut Settings),
) -> (TestApp, TestUser) {
    let sims = start_sims(vec![fast_sim()]);
    let mut spec = instance(InstanceKind::Image, protocol, sims[0].url());
    spec.model = model.map(str::to_string);
    let app = spawn_app_on(sims, |s| {
        s.instances = vec![spec];
        // These tests are about answers, not about ejecting the one instance.
        s.health.eject_after_failures = 100;
        s.health.eject_failure_percent = 0;
        tweak(s);
    })
    .await;
    let user = app.new_user("alice").await;
    app.wait_for_healthy(1).await;
    (app, user)
}

/// The bytes and Content-Type of a DONE task's image.
async fn image_of(app: &TestApp, token: &str, task: &Value) -> (String, Vec<u8>) {
    let url = task["result_url"]
        .as_str()
        .expect("a DONE task has its image");
    let response = app.get(url, token).await;
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    (content_type, response.bytes().await.unwrap().to_vec())
}

/// Submits `body`, waits for the end, and answers the task.
async fn run(app: &TestApp, user: &TestUser, body: Value) -> Value {
    let response = app.submit_image(&user.token, &body).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let id = response.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    app.wait_for_end(&user.token, &id).await.1
}

/// Asserts that the task failed after every attempt, for `reason`.
fn assert_failed_for(task: &Value, reason: &str) {
    assert_eq!(task["status"], "FAILED", "{task}");
    assert_eq!(task["attempts"], 3, "an unusable answer is retried: {task}");
    let error = task["error"].as_str().unwrap();
    assert!(error.contains(reason), "{reason:?} not in {error:?}");
    assert!(error.ends_with("(attempt 3 of 3)"), "{error}");
}

/// Turns the simulator's answers unusable in one way.
type Knob<'a> = &'a dyn Fn(&SimBackend);

fn reset(sim: &SimBackend) {
    sim.set_failure_rate(0.0);
    sim.set_malformed_json(false);
    sim.set_answer_bytes(0);
    sim.set_garbage_image(false);
    sim.set_answer_url(false);
}

#[actix_web::test]
async fn an_openai_instance_turns_tasks_into_pngs_with_its_model() {
    let (app, user) = image_app(Protocol::Openai, Some("sd-turbo"), |_| {}).await;
    let body = json!({"prompt": "a red fox", "negative_prompt": "blurry", "width": 320,
                      "height": 192, "steps": 8, "seed": 7});
    let task = run(&app, &user, body).await;
    assert_eq!(task["status"], "DONE", "{task}");
    let (content_type, bytes) = image_of(&app, &user.token, &task).await;
    assert_eq!(content_type, "image/png");
    assert_eq!(bytes, render_png("a red fox", 80, 48, 8));
    assert_eq!(
        app.sims[0].last_image_request().unwrap(),
        json!({"model": "sd-turbo", "prompt": "a red fox", "size": "320x192", "n": 1,
               "response_format": "b64_json", "negative_prompt": "blurry", "steps": 8, "step": 8,
               "seed": 7})
    );
}

#[actix_web::test]
async fn an_openai_image_answered_by_url_is_fetched_and_stored() {
    let (app, user) = image_app(Protocol::Openai, None, |_| {}).await;
    app.sims[0].set_answer_url(true);
    let task = run(&app, &user, json!({"prompt": "a lighthouse"})).await;
    assert_eq!(task["status"], "DONE", "{task}");
    let (content_type, bytes) = image_of(&app, &user.token, &task).await;
    assert_eq!(content_type, "image/png");
    // No size asked: 512x512, which the simulator draws at a quarter.
    assert_eq!(bytes, render_png("a lighthouse", 128, 128, 20));
    // Unset, the model is OpenAI's own default.
    assert_eq!(
        app.sims[0].last_image_request().unwrap()["model"],
        "dall-e-2"
    );
}

#[actix_web::test]
async fn openai_failures_and_unusable_answers_are_retried_then_fail_the_task() {
    let (app, user) = image_app(Protocol::Openai, None, |s| {
        s.workers.max_response_bytes = 100_000;
    })
    .await;
    let sim = &app.sims[0];
    let cases: [(Knob, &str); 5] = [
        (
            &|sim| sim.set_failure_rate(1.0),
            "backend answered 500: simulated failure: CUDA out of memory",
        ),
        (
            &|sim| sim.set_malformed_json(true),
            "answer is not the expected JSON",
        ),
        (&|sim| sim.set_answer_bytes(200_000), "larger than"),
        (
            &|sim| {
                sim.set_answer_bytes(200_000);
                sim.set_answer_url(true)
            },
            "image larger than 100000 bytes",
        ),
        (
            &|sim| sim.set_garbage_image(true),
            "answer is not a PNG, JPEG or WebP image",
        ),
    ];
    for (knob, reason) in cases {
        knob(sim);
        let task = run(&app, &user, json!({"prompt": "a cat"})).await;
        assert_failed_for(&task, reason);
        reset(sim);
    }
    assert_eq!(app.image_rows().await, 0, "no refused answer was stored");
}

#[actix_web::test]
async fn an_a1111_instance_turns_tasks_into_pngs() {
    let (app, user) = image_app(Protocol::A1111, None, |_| {}).await;
    let body = json!({"prompt": "a quiet harbour", "negative_prompt": "people", "width": 256,
                      "height": 640, "steps": 12, "seed": 42});
    let task = run(&app, &user, body).await;
    assert_eq!(task["status"], "DONE", "{task}");
    let (content_type, bytes) = image_of(&app, &user.token, &task).await;
    assert_eq!(content_type, "image/png");
    assert_eq!(bytes, render_png("a quiet harbour", 64, 160, 12));
    assert_eq!(
        app.sims[0].last_image_request().unwrap(),
        json!({"prompt": "a quiet harbour", "negative_prompt": "people", "steps": 12,
               "width": 256, "height": 640, "seed": 42})
    );
}

#[actix_web::test]
async fn a1111_failures_and_unusable_answers_are_retried_then_fail_the_task() {
    let (app, user) = image_app(Protocol::A1111, None, |s| {
        s.workers.max_response_bytes = 100_000;
    })
    .await;
    let sim = &app.sims[0];
    let cases: [(Knob, &str); 4] = [
        (
            &|sim| sim.set_failure_rate(1.0),
            "backend answered 500: simulated failure: CUDA out of memory",
        ),
        (
            &|sim| sim.set_malformed_json(true),
            "answer is not the expected JSON",
        ),
        (&|sim| sim.set_answer_bytes(200_000), "larger than"),
        (
            &|sim| sim.set_garbage_image(true),
            "answer is not a PNG, JPEG or WebP image",
        ),
    ];
    for (knob, reason) in cases {
        knob(sim);
        let task = run(&app, &user, json!({"prompt": "a cat"})).await;
        assert_failed_for(&task, reason);
        reset(sim);
    }
}

#[actix_web::test]
async fn qwen_noise_labelled_png_is_retried_then_fails_and_oversized_images_too() {
    let (app, user) = image_app(Protocol::Qwen, None, |s| {
        s.workers.max_response_bytes = 100_000;
    })
    .await;
    let sim = &app.sims[0];
    sim.set_garbage_image(true);
    let task = run(&app, &user, json!({"prompt": "a cat"})).await;
    assert_failed_for(&task, "answer is not a PNG, JPEG or WebP image");
    reset(sim);
    sim.set_answer_bytes(200_000);
    let task = run(&app, &user, json!({"prompt": "a cat"})).await;
    assert_failed_for(&task, "image larger than 100000 bytes");
    reset(sim);
    let task = run(&app, &user, json!({"prompt": "a cat"})).await;
    assert_eq!(task["status"], "DONE", "{task}");
}

/// A qwen backend answering `answer()` to every generation.
async fn qwen_fake(answer: fn() -> HttpResponse) -> (TestApp, TestUser) {
    let url = spawn_answering(answer);
    let app = spawn_app_on(vec![], |s| {
        s.instances = vec![instance(InstanceKind::Image, Protocol::Qwen, url)];
        s.health.eject_after_failures = 100;
    })
    .await;
    let user = app.new_user("alice").await;
    app.wait_for_healthy(1).await;
    (app, user)
}

const JPEG: &[u8] = b"\xFF\xD8\xFF\xE0\0\x10JFIF\0\x01\x01\0\0\x01\0\x01\0\0\xFF\xD9";

#[actix_web::test]
async fn qwen_images_are_stored_as_the_type_their_bytes_are() {
    // No Content-Type: the old servers' JPEG.
    let (app, user) = qwen_fake(|| HttpResponse::Ok().body(JPEG)).await;
    let task = run(&app, &user, json!({"prompt": "a cat"})).await;
    assert_eq!(task["status"], "DONE", "{task}");
    assert_eq!(
        image_of(&app, &user.token, &task).await,
        ("image/jpeg".into(), JPEG.to_vec())
    );

    // A PNG labelled JPEG is a PNG.
    let (app, user) = qwen_fake(|| {
        HttpResponse::Ok()
            .content_type("image/jpeg")
            .body(render_png("a cat", 8, 8, 20))
    })
    .await;
    let task = run(&app, &user, json!({"prompt": "a cat"})).await;
    let (content_type, _) = image_of(&app, &user.token, &task).await;
    assert_eq!(content_type, "image/png");
}

#[actix_web::test]
async fn qwen_noise_without_a_content_type_is_an_unusable_answer() {
    let (app, user) =
        qwen_fake(|| HttpResponse::Ok().body(&b"\x00\x01 definitely not an image"[..])).await;
    let task = run(&app, &user, json!({"prompt": "a cat"})).await;
    assert_failed_for(&task, "answer is not a PNG, JPEG or WebP image");
}

#[actix_web::test]
async fn a_qwen_and_an_openai_instance_serve_one_queue_side_by_side() {
    let sims = start_sims(vec![fast_sim(), fast_sim()]);
    let (qwen, openai) = (sims[0].url(), sims[1].url());
    let app = spawn_app_on(sims, |s| {
        s.instances = vec![
            instance(InstanceKind::Image, Protocol::Qwen, qwen.clone()),
            instance(InstanceKind::Image, Protocol::Openai, openai.clone()),
        ];
        s.balancing.image = Strategy::RoundRobin;
    })
    .await;
    let user = app.new_user("alice").await;
    app.wait_for_healthy(2).await;
    let mut ids = Vec::new();
    for i in 0..12 {
        let body = json!({"prompt": format!("prompt {i}"), "width": 256, "height": 256});
        let response = app.submit_image(&user.token, &body).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let task: Value = response.json().await.unwrap();
        ids.push(task["task_id"].as_str().unwrap().to_string());
    }
    let mut served_by = std::collections::HashSet::new();
    for (i, id) in ids.iter().enumerate() {
        let (_, task) = app.wait_for_end(&user.token, id).await;
        assert_eq!(task["status"], "DONE", "{task}");
        let (content_type, bytes) = image_of(&app, &user.token, &task).await;
        assert_eq!(content_type, "image/png");
        // Both protocols draw the same picture of the same prompt.
        assert_eq!(bytes, render_png(&format!("prompt {i}"), 64, 64, 20));
        served_by.insert(app.task_instance(id).await);
    }
    assert_eq!(served_by, [qwen, openai].into_iter().collect());
    assert!(
        app.sims.iter().all(|sim| sim.generated() >= 3),
        "both took their share"
    );
    assert_eq!(app.sims.iter().map(SimBackend::generated).sum::<u64>(), 12);
}

#[actix_web::test]
async fn openai_and_a1111_instances_are_judged_by_their_own_health_routes() {
    let sims = start_sims(vec![fast_sim(), fast_sim()]);
    for sim in &sims {
        sim.set_ready(false);
    }
    let instances = vec![
        instance(InstanceKind::Image, Protocol::Openai, sims[0].url()),
        instance(InstanceKind::Image, Protocol::A1111, sims[1].url()),
    ];
    let app = spawn_app_on(sims, |s| s.instances = instances).await;
    // Pinged (at /v1/models and /sdapi/v1/options, the simulator's only counted routes
    // besides /ping), and down while those answer 503.
    app.wait_for_stats("both pinged twice", |_| {
        app.sims
            .iter()
            .all(|sim| sim.state.pings.load(Ordering::SeqCst) >= 2)
    })
    .await;
    assert_eq!(app.stats().await["image_instances"]["healthy"], 0);
    let admin = app.new_admin("root").await;
    let listed = app.instances(&admin.token).await;
    let errors: Vec<&str> = listed
        .iter()
        .map(|i| i["last_error"].as_str().unwrap())
        .collect();
    assert_eq!(
        errors,
        [
            "GET /v1/models answered 503 Service Unavailable",
            "GET /sdapi/v1/options answered 503 Service Unavailable"
        ]
    );
    for sim in &app.sims {
        sim.set_ready(true);
    }
    app.wait_for_healthy(2).await;
}

#[actix_web::test]
async fn admins_add_openai_instances_with_a_model_and_bad_combinations_are_refused() {
    let app = spawn_app_on(start_sims(vec![fast_sim()]), |_| {}).await;
    let admin = app.new_admin("root").await;
    let speech = start_sims(vec![fast_sim()]);
    let body = json!({"kind": "speech", "url": speech[0].url(), "protocol": "openai",
                      "model": "Systran/faster-whisper-small"});
    let response = app.add_instance(&admin.token, &body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let added: Value = response.json().await.unwrap();
    assert_eq!(
        (&added["protocol"], &added["model"]),
        (&json!("openai"), &json!("Systran/faster-whisper-small"))
    );
    let row = infergate::store::instances::load(&app.db)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(row.model.as_deref(), Some("Systran/faster-whisper-small"));
    // Listed with the kind's default when unset; protocols without models list none.
    let response = app
        .add_instance(
            &admin.token,
            &json!({"kind": "image", "url": "http://10.0.0.9:7860", "protocol": "a1111"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        response.json::<Value>().await.unwrap()["model"],
        Value::Null
    );

    for (body, field) in [
        (
            json!({"kind": "speech", "url": "http://10.0.0.9:1", "protocol": "a1111"}),
            "protocol",
        ),
        (
            json!({"kind": "image", "url": "http://10.0.0.9:2", "protocol": "fastwhisper"}),
            "protocol",
        ),
        (
            json!({"kind": "image", "url": "http://10.0.0.9:3", "model": "sd-xl"}),
            "model",
        ),
        (
            json!({"kind": "image", "url": "http://10.0.0.9:4", "protocol": "openai", "model": ""}),
            "model",
        ),
        (
            // Lowercase on the wire, like every other protocol.
            json!({"kind": "image", "url": "http://10.0.0.9:5", "protocol": "OpenAI"}),
            "`OpenAI` is not one of `qwen`, `fastwhisper`, `openai`, `a1111`",
        ),
    ] {
        let response = app.add_instance(&admin.token, &body).await;
        let error = assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
        assert!(
            error["error"].as_str().unwrap().contains(field),
            "{body}: {error}"
        );
    }
}

/// A gateway whose one speech instance is a fast simulator speaking openai.
async fn openai_speech_app() -> (TestApp, TestUser) {
    let sims = start_sims(vec![fast_sim()]);
    let url = sims[0].url();
    let app = spawn_app_with_speech(sims, |s| {
        let speech = s.instances.iter_mut().find(|i| i.url == url).unwrap();
        speech.protocol = Some(Protocol::Openai);
        speech.model = Some("Systran/faster-whisper-small".into());
    })
    .await;
    let user = app.new_user("alice").await;
    app.wait_for_healthy_speech(1).await;
    (app, user)
}

#[actix_web::test]
async fn a_file_goes_to_an_openai_speech_instance_as_a_verbose_json_form() {
    let (app, user) = openai_speech_app().await;
    let form = Form::new().part(
        "file",
        Part::bytes(pcm(5.0))
            .file_name("memo.mp3")
            .mime_str("audio/mpeg")
            .unwrap(),
    );
    let response = app.transcribe(Auth::Bearer(&user.token), form).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"code": 0, "language": "english", "segments": [
            {"start": 0.0, "end": 2.5, "text": "simulated segment 1"},
            {"start": 2.5, "end": 5.0, "text": "simulated segment 2"}]})
    );
    let seen = app.speech_sims[0].last_transcription().unwrap();
    assert_eq!(seen.fields, ["model", "response_format", "file"]);
    assert_eq!(seen.model.as_deref(), Some("Systran/faster-whisper-small"));
    assert_eq!(seen.response_format.as_deref(), Some("verbose_json"));
    assert_eq!(
        (seen.filename.as_deref(), seen.file_bytes),
        (Some("memo.mp3"), 160_000)
    );
}

#[actix_web::test]
async fn pcm_reaches_an_openai_speech_instance_as_a_wav_while_the_device_still_sends() {
    let (app, user) = openai_speech_app().await;
    let state = app.speech_sims[0].state.clone();
    let heard_early = Arc::new(AtomicBool::new(false));
    let pieces = 40;
    let heard = heard_early.clone();
    let stream = futures_util::stream::iter(0..pieces).then(move |i| {
        let (state, heard) = (state.clone(), heard.clone());
        async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if i == pieces - 1 {
                // A gateway that buffered the body could not have forwarded a byte yet.
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if state.transcription_bytes_received.load(Ordering::SeqCst) > 44 {
                        heard.store(true, Ordering::SeqCst);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            Ok::<_, std::io::Error>(pcm(0.1))
        }
    });
    let response = app
        .send_pcm(Auth::Bearer(&user.token), Body::wrap_stream(stream))
        .await;
    assert!(
        heard_early.load(Ordering::SeqCst),
        "the backend had no audio before the last piece"
    );
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["segments"].as_array().unwrap().last().unwrap()["end"],
        4.0
    );
    let seen = app.speech_sims[0].last_transcription().unwrap();
    assert_eq!(seen.wav_header, WavHeaderSeen::Pcm16kMono);
    assert_eq!(
        (seen.filename.as_deref(), seen.file_content_type.as_deref()),
        (Some("audio.wav"), Some("audio/wav"))
    );
    assert_eq!(seen.file_bytes, 44 + 4 * 32_000);
}

#[actix_web::test]
async fn openai_speech_failures_are_bad_gateway_errors() {
    let (app, user) = openai_speech_app().await;
    let sim = &app.speech_sims[0];
    sim.set_failure_rate(1.0);
    let response = app.send_pcm(Auth::Bearer(&user.token), pcm(2.0)).await;
    let body = assert_error(response, StatusCode::BAD_GATEWAY, "backend_error").await;
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("CUDA out of memory"),
        "{body}"
    );
    sim.set_failure_rate(0.0);
    sim.set_malformed_json(true);
    let response = app.send_pcm(Auth::Bearer(&user.token), pcm(2.0)).await;
    let body = assert_error(response, StatusCode::BAD_GATEWAY, "backend_error").await;
    assert!(
        body["error"].as_str().unwrap().contains("not verbose_json"),
        "{body}"
    );
    app.wait_for_speech_idle().await;
}
