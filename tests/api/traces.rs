//! Traces exported over OTLP/HTTP to a receiver in the test, decoded with
//! opentelemetry-proto: a submission's trace runs from the client's `traceparent` to the
//! backend, which receives the context of its client span.

use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpResponse, HttpServer};
use infergate::settings::{LogSettings, TelemetrySettings};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;

use std::time::Duration;

use crate::helpers::{fast_sim, spawn_app_with, start_sims};
use crate::poll::eventually;
use crate::process::{free_port, infergate, sign_up, task, write_config};

type Received = Arc<Mutex<Vec<Span>>>;

/// An OTLP/HTTP receiver on its own thread (the exporter's blocking client must not
/// wait on the test's own thread); answers its base URL and the spans received.
fn start_receiver() -> (String, Received) {
    let received = Received::default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let spans = received.clone();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            HttpServer::new(move || {
                let spans = spans.clone();
                App::new().route(
                    "/v1/traces",
                    web::post().to(move |body: web::Bytes| {
                        let spans = spans.clone();
                        async move {
                            let request =
                                ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                            let mut spans = spans.lock().unwrap();
                            for resource in request.resource_spans {
                                for scope in resource.scope_spans {
                                    spans.extend(scope.spans);
                                }
                            }
                            HttpResponse::Ok().finish()
                        }
                    }),
                )
            })
            .workers(1)
            .listen(listener)
            .unwrap()
            .run()
            .await
        })
    });
    (url, received)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[actix_web::test]
async fn a_submission_traceparent_reaches_the_backend_through_every_span() {
    let (receiver, received) = start_receiver();
    let telemetry = TelemetrySettings {
        otlp_endpoint: receiver,
        ..Default::default()
    };
    // A quiet log keeps the traces.
    let log = LogSettings {
        level: "warn".into(),
        ..Default::default()
    };
    let exporter = infergate::telemetry::init(&log, &telemetry).unwrap();
    let app = spawn_app_with(vec![fast_sim()], |_| {}).await;
    let user = app.new_user("alice").await;
    app.wait_for_healthy(1).await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = app
        .client
        .post(app.url("/api/v1/image/async"))
        .bearer_auth(&user.token)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&json!({"prompt": "a traced cat"}))
        .send()
        .await
        .unwrap();
    let task: serde_json::Value = response.json().await.unwrap();
    let task_id = task["task_id"].as_str().unwrap();
    let (_, ended) = app.wait_for_end(&user.token, task_id).await;
    assert_eq!(ended["status"], "DONE");
    // Dropping the exporter sends every span still buffered.
    drop(exporter);

    let spans = received.lock().unwrap().clone();
    let of_trace: Vec<&Span> = spans
        .iter()
        .filter(|s| hex(&s.trace_id) == trace_id)
        .collect();
    let named = |name: &str| of_trace.iter().find(|s| s.name == name).copied();
    let server = named("POST /api/v1/image/async").expect("the server span, in the client's trace");
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(hex(&server.parent_span_id), "00f067aa0ba902b7");
    assert!(
        named("submit").is_some(),
        "no submission span in {of_trace:#?}"
    );
    let attempt = named("image task attempt").expect("the attempt span, in the client's trace");
    let client = of_trace
        .iter()
        .find(|s| s.kind == SpanKind::Client as i32)
        .expect("a backend client span, in the client's trace");
    assert_eq!(client.name, "POST /generate");
    assert_eq!(client.parent_span_id, attempt.span_id);

    let seen = app.sims[0].trace_headers();
    let traceparent = seen
        .traceparent
        .expect("the backend received a traceparent");
    assert_eq!(
        traceparent,
        format!("00-{trace_id}-{}-01", hex(&client.span_id)),
        "the backend's context is its client span's"
    );
}

/// A child process killed when dropped, however the test ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[actix_web::test]
async fn log_lines_inside_a_traced_task_carry_its_trace_id() {
    let (receiver, _) = start_receiver();
    let sims = start_sims(vec![fast_sim()]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &[(sims[0].url(), 1)],
        "[health]\ninterval_secs = 1\n",
    );
    let log_path = dir.path().join("gateway.log");
    let port = free_port();
    let child = infergate(dir.path())
        .env("INFERGATE__SERVER__HOST", "127.0.0.1")
        .env("INFERGATE__SERVER__PORT", port.to_string())
        .env("INFERGATE__LOG__LEVEL", "info,infergate=debug")
        .env("INFERGATE__TELEMETRY__OTLP_ENDPOINT", receiver)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("spawn infergate");
    let gateway = Killed(child);
    let base = format!("http://127.0.0.1:{port}");
    let health = format!("{base}/health");
    eventually("the gateway answering", Duration::from_secs(20), || {
        reqwest::get(&health)
    })
    .await;
    let (_, token) = sign_up(&base, "alice").await;

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let response = reqwest::Client::new()
        .post(format!("{base}/api/v1/image/async"))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .json(&json!({"prompt": "a logged cat"}))
        .send()
        .await
        .unwrap();
    let task_id = response.json::<serde_json::Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    eventually("the task done", Duration::from_secs(20), || async {
        let task = task(&base, &token, &task_id).await;
        if task["status"] == "DONE" {
            Ok(())
        } else {
            Err(task)
        }
    })
    .await;
    drop(gateway);

    let log = std::fs::read_to_string(&log_path).unwrap();
    let traced = format!("trace_id=\"{trace_id}\"");
    let line = log
        .lines()
        .find(|l| l.contains("calling backend"))
        .unwrap_or_else(|| panic!("no backend call logged in {log}"));
    assert!(line.contains(&traced), "{line}");
    assert!(line.contains(&format!("task_id={task_id}")), "{line}");
}

#[actix_web::test]
async fn at_a_ratio_of_zero_only_a_callers_sampled_trace_is_exported() {
    let (receiver, received) = start_receiver();
    let telemetry = TelemetrySettings {
        otlp_endpoint: receiver,
        sample_ratio: 0.0,
        ..Default::default()
    };
    let log = LogSettings {
        level: "warn".into(),
        ..Default::default()
    };
    let exporter = infergate::telemetry::init(&log, &telemetry).unwrap();
    let app = spawn_app_with(vec![fast_sim()], |_| {}).await;
    let user = app.new_user("alice").await;
    app.wait_for_healthy(1).await;

    let sampled = "5bf92f3577b34da6a3ce929d0e0e4736";
    for traceparent in [
        Some(format!("00-{sampled}-00f067aa0ba902b7-01")),
        // The caller decided against recording this one.
        Some("00-6bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".to_string()),
        // Begun here, so the ratio decides: never.
        None,
    ] {
        let mut request = app
            .client
            .post(app.url("/api/v1/image/async"))
            .bearer_auth(&user.token);
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        let response = request
            .json(&json!({"prompt": "a sampled cat"}))
            .send()
            .await
            .unwrap();
        let task: serde_json::Value = response.json().await.unwrap();
        let (_, ended) = app
            .wait_for_end(&user.token, task["task_id"].as_str().unwrap())
            .await;
        assert_eq!(ended["status"], "DONE");
    }
    drop(exporter);

    let spans = received.lock().unwrap().clone();
    assert!(
        spans.iter().any(|s| s.name == "image task attempt"),
        "the caller's sampled trace is exported"
    );
    let others: Vec<&Span> = spans
        .iter()
        .filter(|s| hex(&s.trace_id) != sampled)
        .collect();
    assert!(
        others.is_empty(),
        "exported outside the sampled trace: {others:#?}"
    );
}
