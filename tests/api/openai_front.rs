//! The OpenAI-compatible front door over HTTP: images as durable tasks waited for,
//! transcriptions in every response format, the model list, auth by device key or JWT,
//! and errors in OpenAI's shape with the rest of the API's status codes.

use std::sync::atomic::Ordering;

use base64::Engine;
use infergate::domain::{InstanceKind, InstanceSpec, Protocol};
use infergate::settings::Settings;
use infergate::simulator::{render_png, SimConfig};
use reqwest::multipart::{Form, Part};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{
    assert_error, fast_sim, pcm, spawn_app_on, spawn_app_with, spawn_app_with_speech, start_sims,
    TestApp,
};

/// A user, a device key of theirs, and their login token.
struct Caller {
    token: String,
    key: String,
}

async fn caller(app: &TestApp, name: &str) -> Caller {
    let user = app.new_user(name).await;
    let key = app.create_key(&user.token, "sdk").await["key"]
        .as_str()
        .unwrap()
        .to_string();
    Caller {
        token: user.token,
        key,
    }
}

async fn images_app(sim: SimConfig, tweak: impl FnOnce(&mut Settings)) -> (TestApp, Caller) {
    let app = spawn_app_with(vec![sim], tweak).await;
    let caller = caller(&app, "alice").await;
    app.wait_for_healthy(1).await;
    (app, caller)
}

async fn generate(app: &TestApp, credential: &str, body: &Value) -> Response {
    app.client
        .post(app.url("/v1/images/generations"))
        .bearer_auth(credential)
        .json(body)
        .send()
        .await
        .expect("generate")
}

/// Asserts an error in OpenAI's shape; answers its `error` object.
async fn assert_openai_error(
    response: Response,
    status: StatusCode,
    code: &str,
    kind: &str,
) -> Value {
    assert_eq!(response.status(), status, "wrong status");
    let body: Value = response.json().await.unwrap();
    let error = &body["error"];
    assert_eq!(
        (&error["code"], &error["type"]),
        (&json!(code), &json!(kind)),
        "{body}"
    );
    assert!(error["param"].is_null(), "{body}");
    assert!(
        !error["message"].as_str().unwrap_or("").is_empty(),
        "{body}"
    );
    assert_eq!(body.as_object().unwrap().len(), 1, "only `error`: {body}");
    error.clone()
}

fn decoded(item: &Value) -> Vec<u8> {
    let encoded = item["b64_json"].as_str().expect("b64_json");
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap()
}

#[actix_web::test]
async fn images_come_back_in_base64_and_each_is_a_task_of_the_users() {
    let (app, caller) = images_app(fast_sim(), |_| {}).await;
    let before = chrono::Utc::now().timestamp();
    let body = json!({"prompt": "a red fox", "n": 2, "size": "256x256", "model": "dall-e-3"});
    let response = generate(&app, &caller.key, &body).await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    assert!(answer["created"].as_i64().unwrap() >= before);
    let data = answer["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for item in data {
        assert_eq!(decoded(item), render_png("a red fox", 64, 64, 20));
        assert!(item.get("url").is_none(), "{item}");
    }
    // Two tasks like any other, listed with the user's own.
    let tasks: Vec<Value> = app
        .get("/api/v1/tasks?limit=10", &caller.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tasks.len(), 2);
    assert!(
        tasks
            .iter()
            .all(|t| t["status"] == "DONE" && t["prompt"] == "a red fox"),
        "{tasks:?}"
    );
    assert_eq!(app.sims[0].generated(), 2);
}

#[actix_web::test]
async fn a_url_answer_links_to_the_image_which_the_same_key_fetches() {
    let (app, caller) = images_app(fast_sim(), |_| {}).await;
    // A login token works as well as a device key.
    let body = json!({"prompt": "a lighthouse", "size": "256x256", "response_format": "url"});
    let response = generate(&app, &caller.token, &body).await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    let url = answer["data"][0]["url"].as_str().unwrap().to_string();
    assert!(
        url.starts_with(&format!("{}/api/images/", app.address)),
        "{url}"
    );
    assert!(answer["data"][0].get("b64_json").is_none());
    let image = app
        .client
        .get(&url)
        .bearer_auth(&caller.key)
        .send()
        .await
        .unwrap();
    assert_eq!(image.status(), StatusCode::OK);
    assert_eq!(image.headers()["content-type"], "image/png");
    assert_eq!(
        image.bytes().await.unwrap(),
        render_png("a lighthouse", 64, 64, 20)
    );
    let anonymous = app.client.get(&url).send().await.unwrap();
    assert_error(anonymous, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[actix_web::test]
async fn the_wait_is_bounded_and_the_error_names_the_tasks_which_keep_running() {
    let hanging = SimConfig {
        hang_rate: 1.0,
        ..fast_sim()
    };
    let (app, caller) = images_app(hanging, |s| s.openai.wait_secs = 1).await;
    let response = generate(&app, &caller.key, &json!({"prompt": "a cat", "n": 2})).await;
    assert_eq!(response.headers()["x-should-retry"], "false");
    let error = assert_openai_error(
        response,
        StatusCode::GATEWAY_TIMEOUT,
        "tasks_still_running",
        "server_error",
    )
    .await;
    let message = error["message"].as_str().unwrap();
    let tasks: Vec<Value> = app
        .get("/api/v1/tasks?limit=10", &caller.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tasks.len(), 2);
    for task in &tasks {
        assert!(
            message.contains(task["task_id"].as_str().unwrap()),
            "{message}"
        );
        assert!(
            ["QUEUED", "RUNNING"].contains(&task["status"].as_str().unwrap()),
            "{task}"
        );
    }
}

#[actix_web::test]
async fn a_task_that_fails_fails_the_call_with_its_reason() {
    let failing = SimConfig {
        failure_rate: 1.0,
        ..fast_sim()
    };
    let (app, caller) = images_app(failing, |s| s.health.eject_after_failures = 100).await;
    let response = generate(&app, &caller.key, &json!({"prompt": "a cat"})).await;
    let error = assert_openai_error(
        response,
        StatusCode::BAD_GATEWAY,
        "task_failed",
        "server_error",
    )
    .await;
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("CUDA out of memory") && message.contains("(attempt 3 of 3)"),
        "{message}"
    );
}

#[actix_web::test]
async fn a_full_queue_is_refused_and_a_partly_admitted_call_leaves_nothing_running() {
    let hanging = SimConfig {
        hang_rate: 1.0,
        ..fast_sim()
    };
    let (app, caller) = images_app(hanging, |s| s.queue.capacity = 2).await;
    // One task runs (and hangs), one waits: one place is left in the queue.
    app.submit_ok(&caller.token, "first").await;
    app.wait_for_stats("the first task running", |s| s["busy_workers"] == 1)
        .await;
    app.submit_ok(&caller.token, "second").await;
    let response = generate(&app, &caller.key, &json!({"prompt": "two more", "n": 2})).await;
    assert_eq!(response.headers()["retry-after"], "5");
    assert_openai_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "queue_full",
        "server_error",
    )
    .await;
    // The one image the queue took was cancelled with the call.
    let tasks: Vec<Value> = app
        .get("/api/v1/tasks?limit=10", &caller.token)
        .await
        .json()
        .await
        .unwrap();
    let mine: Vec<&Value> = tasks.iter().filter(|t| t["prompt"] == "two more").collect();
    assert_eq!(mine.len(), 1, "{tasks:?}");
    assert_eq!(mine[0]["status"], "CANCELLED");
    assert_eq!(app.stats().await["queue_length"], 1);
}

#[actix_web::test]
async fn errors_on_the_front_door_are_in_openai_shape_and_elsewhere_as_before() {
    let (app, caller) = images_app(fast_sim(), |_| {}).await;
    for (body, needle) in [
        (
            json!({"prompt": "a cat", "n": 5}),
            "n must be between 1 and 4",
        ),
        (
            json!({"prompt": "a cat", "size": "huge"}),
            "size must be WIDTHxHEIGHT",
        ),
        (
            json!({"prompt": "a cat", "response_format": "png"}),
            "response_format",
        ),
        (json!({"prompt": ""}), "prompt must not be empty"),
        (json!({"prompt": 7}), "invalid field"),
    ] {
        let response = generate(&app, &caller.key, &body).await;
        let error = assert_openai_error(
            response,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "invalid_request_error",
        )
        .await;
        assert!(
            error["message"].as_str().unwrap().contains(needle),
            "{body}: {error}"
        );
    }
    let malformed = app
        .client
        .post(app.url("/v1/images/generations"))
        .bearer_auth(&caller.key)
        .header("content-type", "application/json")
        .body("{\"prompt\": ")
        .send()
        .await
        .unwrap();
    assert_openai_error(
        malformed,
        StatusCode::BAD_REQUEST,
        "malformed_body",
        "invalid_request_error",
    )
    .await;

    let anonymous = app.client.get(app.url("/v1/models")).send().await.unwrap();
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    assert_openai_error(
        anonymous,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "authentication_error",
    )
    .await;
    let forged = generate(&app, "igk_not-a-key-of-anyone", &json!({"prompt": "a cat"})).await;
    assert_openai_error(
        forged,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "authentication_error",
    )
    .await;
    let unknown = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&caller.key)
        .send()
        .await
        .unwrap();
    assert_openai_error(
        unknown,
        StatusCode::NOT_FOUND,
        "not_found",
        "not_found_error",
    )
    .await;
    assert_eq!(
        app.task_rows().await,
        0,
        "nothing was stored by refused calls"
    );

    // The rest of the API keeps its own shape.
    let elsewhere = app
        .client
        .get(app.url("/api/v1/tasks"))
        .send()
        .await
        .unwrap();
    assert_error(elsewhere, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let nowhere = app
        .client
        .get(app.url("/api/v2/nothing"))
        .send()
        .await
        .unwrap();
    assert_error(nowhere, StatusCode::NOT_FOUND, "not_found").await;
}

#[actix_web::test]
async fn over_the_quota_is_a_rate_limit_error() {
    let (app, caller) = images_app(fast_sim(), |s| s.limits.max_queued_per_user = 1).await;
    app.sims[0].set_hang_rate(1.0);
    app.submit_ok(&caller.token, "holds the quota").await;
    let response = generate(&app, &caller.key, &json!({"prompt": "a cat"})).await;
    assert!(response.headers().contains_key("retry-after"));
    assert_openai_error(
        response,
        StatusCode::TOO_MANY_REQUESTS,
        "quota_exceeded",
        "rate_limit_error",
    )
    .await;
}

/// A gateway with one fast speech instance speaking `protocol`.
async fn speech_app(protocol: Protocol) -> (TestApp, Caller) {
    let sims = start_sims(vec![fast_sim()]);
    let url = sims[0].url();
    let app = spawn_app_with_speech(sims, |s| {
        let speech = s.instances.iter_mut().find(|i| i.url == url).unwrap();
        speech.protocol = Some(protocol);
    })
    .await;
    let caller = caller(&app, "alice").await;
    app.wait_for_healthy_speech(1).await;
    (app, caller)
}

fn audio(seconds: f64) -> Part {
    Part::bytes(pcm(seconds))
        .file_name("hello.wav")
        .mime_str("audio/wav")
        .unwrap()
}

async fn transcribe(app: &TestApp, credential: &str, form: Form) -> Response {
    app.client
        .post(app.url("/v1/audio/transcriptions"))
        .bearer_auth(credential)
        .multipart(form)
        .send()
        .await
        .expect("transcribe")
}

/// The content type and body of a transcription in `format`, the fields before the file.
async fn transcript(app: &TestApp, caller: &Caller, format: Option<&str>) -> (String, String) {
    let mut form = Form::new().text("model", "whisper-1");
    if let Some(format) = format {
        form = form.text("response_format", format.to_string());
    }
    let response = transcribe(app, &caller.key, form.part("file", audio(5.0))).await;
    assert_eq!(response.status(), StatusCode::OK, "{format:?}");
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    (content_type, response.text().await.unwrap())
}

#[actix_web::test]
async fn transcriptions_come_in_every_response_format() {
    let (app, caller) = speech_app(Protocol::Fastwhisper).await;
    let text = "simulated segment 1 simulated segment 2";
    let (content_type, body) = transcript(&app, &caller, None).await;
    assert_eq!(content_type, "application/json");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"text": text})
    );
    let (_, body) = transcript(&app, &caller, Some("json")).await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"text": text})
    );
    let (content_type, body) = transcript(&app, &caller, Some("text")).await;
    assert_eq!(
        (content_type.as_str(), body.as_str()),
        ("text/plain; charset=utf-8", &*format!("{text}\n"))
    );
    let (_, body) = transcript(&app, &caller, Some("verbose_json")).await;
    let verbose: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        verbose,
        json!({"task": "transcribe", "language": "en", "duration": 5.0, "text": text, "segments": [
            {"id": 0, "start": 0.0, "end": 2.5, "text": "simulated segment 1"},
            {"id": 1, "start": 2.5, "end": 5.0, "text": "simulated segment 2"}]})
    );
    let (_, body) = transcript(&app, &caller, Some("srt")).await;
    assert_eq!(
        body,
        "1\n00:00:00,000 --> 00:00:02,500\nsimulated segment 1\n\n\
         2\n00:00:02,500 --> 00:00:05,000\nsimulated segment 2\n\n"
    );
    let (content_type, body) = transcript(&app, &caller, Some("vtt")).await;
    assert_eq!(content_type, "text/vtt; charset=utf-8");
    assert!(
        body.starts_with("WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nsimulated segment 1\n"),
        "{body}"
    );
}

#[actix_web::test]
async fn a_format_sent_after_the_file_still_counts() {
    let (app, caller) = speech_app(Protocol::Fastwhisper).await;
    let form = Form::new()
        .part("file", audio(3.0))
        .text("model", "whisper-1")
        .text("response_format", "text");
    let response = transcribe(&app, &caller.token, form).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.text().await.unwrap(),
        "simulated segment 1 simulated segment 2\n"
    );
}

#[actix_web::test]
async fn the_language_reaches_an_openai_speech_backend() {
    let (app, caller) = speech_app(Protocol::Openai).await;
    let form = Form::new()
        .text("model", "whisper-1")
        .text("language", "de")
        .text("response_format", "verbose_json")
        .part("file", audio(3.0));
    let response = transcribe(&app, &caller.key, form).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (&body["language"], &body["duration"]),
        (&json!("english"), &json!(3.0))
    );
    let seen = app.speech_sims[0].last_transcription().unwrap();
    assert_eq!(seen.language.as_deref(), Some("de"));
    // The gateway asks the backend for verbose_json whatever the client asked for.
    assert_eq!(seen.response_format.as_deref(), Some("verbose_json"));
}

#[actix_web::test]
async fn refused_transcriptions_answer_in_openai_shape() {
    let (app, caller) = speech_app(Protocol::Fastwhisper).await;
    let form = Form::new()
        .text("response_format", "xml")
        .part("file", audio(2.0));
    let response = transcribe(&app, &caller.key, form).await;
    let error = assert_openai_error(
        response,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "invalid_request_error",
    )
    .await;
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("response_format"),
        "{error}"
    );
    let transcribed = || app.speech_sims[0].state.transcribed.load(Ordering::SeqCst);
    assert_eq!(transcribed(), 0, "refused before any audio was sent");
    let no_file = transcribe(&app, &caller.key, Form::new().text("model", "whisper-1")).await;
    assert_openai_error(
        no_file,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "invalid_request_error",
    )
    .await;
    // Under a second: the old backend's own refusal, as a 400.
    let short = transcribe(&app, &caller.key, Form::new().part("file", audio(0.5))).await;
    let error = assert_openai_error(
        short,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "invalid_request_error",
    )
    .await;
    assert_eq!(error["message"], "audio too short");
    app.wait_for_speech_idle().await;
}

#[actix_web::test]
async fn models_list_what_the_enabled_instances_serve() {
    let sims = start_sims(vec![fast_sim(), fast_sim()]);
    let speech = InstanceSpec {
        protocol: Some(Protocol::Openai),
        model: Some("Systran/faster-whisper-small".into()),
        ..InstanceSpec::new(InstanceKind::Speech, sims[1].url())
    };
    let app = spawn_app_on(sims, |s| {
        s.instances.truncate(1);
        s.instances.push(speech);
    })
    .await;
    let caller = caller(&app, "alice").await;
    let models = |app: &TestApp, key: String| {
        let request = app.client.get(app.url("/v1/models")).bearer_auth(key);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let list: Value = response.json().await.unwrap();
            assert_eq!(list["object"], "list");
            let data = list["data"].as_array().unwrap().clone();
            assert!(data
                .iter()
                .all(|m| m["object"] == "model" && m["owned_by"] == "infergate"));
            data.iter()
                .map(|m| m["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        models(&app, caller.key.clone()).await,
        [
            "infergate-image",
            "infergate-speech",
            "Systran/faster-whisper-small"
        ]
    );
    let admin = app.new_admin("root").await;
    let speech_id = app.instances(&admin.token).await[1]["id"].as_u64().unwrap();
    let disabled = app
        .patch_instance(&admin.token, speech_id, &json!({"enabled": false}))
        .await;
    assert_eq!(disabled.status(), StatusCode::OK);
    assert_eq!(models(&app, caller.key.clone()).await, ["infergate-image"]);
}

#[actix_web::test]
async fn the_front_door_is_in_the_openapi_document() {
    let (app, _) = images_app(fast_sim(), |_| {}).await;
    let doc: Value = app
        .client
        .get(app.url("/api-docs/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (path, method) in [
        ("/v1/images/generations", "post"),
        ("/v1/audio/transcriptions", "post"),
        ("/v1/models", "get"),
    ] {
        let operation = &doc["paths"][path][method];
        assert_eq!(operation["tags"][0], "openai", "{method} {path}");
        assert!(
            operation["responses"]["401"].is_object(),
            "{method} {path}: no 401"
        );
    }
    assert!(doc["components"]["schemas"]["OpenAiErrorBody"].is_object());
}
