//! The simulator's "a1111" routes: `POST /sdapi/v1/txt2img` and `GET /sdapi/v1/options`.

use std::sync::atomic::Ordering;

use actix_web::{web, HttpResponse};
use base64::Engine;
use rand::Rng;
use serde::Deserialize;
use serde_json::json;

use super::{drawn_side, occupy_gpu, SimState};

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/sdapi/v1/txt2img", web::post().to(txt2img))
        .route("/sdapi/v1/options", web::get().to(options));
}

async fn options(state: web::Data<SimState>) -> HttpResponse {
    state.pings.fetch_add(1, Ordering::Relaxed);
    if state.is_ready() {
        HttpResponse::Ok().json(json!({}))
    } else {
        HttpResponse::ServiceUnavailable().json(json!({"detail": "model is loading"}))
    }
}

#[derive(Deserialize)]
struct Txt2ImgRequest {
    #[serde(default)]
    prompt: String,
    #[serde(default)]
    negative_prompt: String,
    steps: Option<u32>,
    width: Option<u32>,
    height: Option<u32>,
    seed: Option<i64>,
}

async fn txt2img(state: web::Data<SimState>, body: web::Json<serde_json::Value>) -> HttpResponse {
    state.record_image_request(&body);
    let parameters = body.into_inner();
    let request: Txt2ImgRequest = match serde_json::from_value(parameters.clone()) {
        Ok(request) => request,
        Err(e) => {
            return HttpResponse::UnprocessableEntity().json(json!({"detail": e.to_string()}))
        }
    };
    state.record_prompt(&request.prompt);
    if let Err(answer) = occupy_gpu(&state).await {
        return answer;
    }
    state.generated.fetch_add(1, Ordering::SeqCst);
    let steps = request.steps.unwrap_or(20);
    let image = state.image(
        &request.prompt,
        drawn_side(request.width),
        drawn_side(request.height),
        steps,
    );
    let seed = match request.seed {
        Some(seed) if seed >= 0 => seed,
        _ => rand::thread_rng().gen_range(0..u32::MAX as i64),
    };
    // A1111 sends its info as a JSON document inside a string.
    let info = json!({
        "prompt": request.prompt, "negative_prompt": request.negative_prompt,
        "seed": seed, "steps": steps,
    });
    state.json_answer(json!({
        "images": [base64::engine::general_purpose::STANDARD.encode(image)],
        "parameters": parameters,
        "info": info.to_string(),
    }))
}
