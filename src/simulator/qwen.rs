//! The simulator's "qwen" image routes: `GET /ping` and `POST /generate`.

use std::sync::atomic::Ordering;

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{drawn_side, occupy_gpu, SimState};

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/ping", web::get().to(ping))
        .route("/generate", web::post().to(generate));
}

async fn ping(state: web::Data<SimState>) -> HttpResponse {
    state.pings.fetch_add(1, Ordering::Relaxed);
    if state.is_ready() {
        HttpResponse::Ok().json(json!({"message": "simulated backend is ready", "status": "ready"}))
    } else {
        HttpResponse::ServiceUnavailable()
            .json(json!({"message": "model is loading", "status": "loading"}))
    }
}

#[derive(Deserialize)]
struct GenerateRequest {
    prompt: String,
    #[serde(default)]
    num_inference_steps: Option<u32>,
    #[serde(default)]
    width: Option<u32>,
    #[serde(default)]
    height: Option<u32>,
}

async fn generate(state: web::Data<SimState>, body: web::Json<GenerateRequest>) -> HttpResponse {
    if body.prompt.trim().is_empty() {
        return HttpResponse::UnprocessableEntity()
            .json(json!({"detail": "prompt must not be empty"}));
    }
    state.record_prompt(&body.prompt);
    if let Err(answer) = occupy_gpu(&state).await {
        return answer;
    }
    state.generated.fetch_add(1, Ordering::SeqCst);
    let image = state.image(
        &body.prompt,
        drawn_side(body.width),
        drawn_side(body.height),
        body.num_inference_steps.unwrap_or(20),
    );
    HttpResponse::Ok().content_type("image/png").body(image)
}

#[cfg(test)]
mod tests {
    use crate::backends::sniff_image;
    use crate::simulator::{SimBackend, SimConfig};

    #[actix_web::test]
    async fn the_garbage_knob_answers_bytes_labelled_png_that_are_no_image() {
        let config = SimConfig {
            latency_ms: 0,
            garbage_image: true,
            ..SimConfig::default()
        };
        let sim = SimBackend::start(config, "127.0.0.1", 0).unwrap();
        let mut response = awc::Client::default()
            .post(format!("{}/generate", sim.url()))
            .send_json(&serde_json::json!({"prompt": "a cat"}))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers().get("content-type").unwrap(), "image/png");
        let body = response.body().await.unwrap();
        assert!(!body.is_empty());
        assert_eq!(sniff_image(&body), None);
    }
}
