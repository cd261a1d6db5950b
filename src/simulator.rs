//! A simulated GPU backend speaking both backend protocols ("qwen" image and
//! "fastwhisper" speech), for tests, benchmarks and demo mode.
//!
//! Knobs: latency per call, failure rate (HTTP 500), hang rate (never answers), capacity
//! (concurrent calls; extra calls wait their turn, as on a GPU) and readiness of `/ping`.
//! Images are real PNGs whose pixels depend on the prompt.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_multipart::Multipart;
use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpResponse, HttpServer};
use futures_util::StreamExt;
use rand::Rng;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Semaphore;

/// Bytes per second of 16 kHz 16-bit mono PCM.
const PCM_BYTES_PER_SEC: u64 = 32_000;

#[derive(Clone, Debug, clap::Args)]
pub struct SimConfig {
    /// Time each call takes, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub latency_ms: u64,
    /// Fraction of calls answered with HTTP 500, 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    pub failure_rate: f64,
    /// Fraction of calls that never answer, 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    pub hang_rate: f64,
    /// Calls served at once; the rest wait.
    #[arg(long, default_value_t = 1)]
    pub capacity: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            latency_ms: 500,
            failure_rate: 0.0,
            hang_rate: 0.0,
            capacity: 1,
        }
    }
}

/// Live knobs and counters, shared with whoever started the simulator.
pub struct SimState {
    config: Mutex<SimConfig>,
    /// Stands for the GPU: one permit per concurrent call.
    gpu: Semaphore,
    ready: AtomicBool,
    pub generated: AtomicU64,
    pub transcribed: AtomicU64,
    pub pings: AtomicU64,
    /// Prompts in the order their generation requests arrived (for ordering tests).
    arrived_prompts: Mutex<Vec<String>>,
    /// Bytes of the PCM upload in progress received so far (for streaming tests).
    pub pcm_bytes_received: AtomicU64,
}

impl SimState {
    fn knobs(&self) -> SimConfig {
        self.config.lock().expect("sim config lock").clone()
    }
}

/// A running simulator.
pub struct SimBackend {
    pub addr: SocketAddr,
    pub state: Arc<SimState>,
    handle: ServerHandle,
}

impl SimBackend {
    /// Serves on `host:port` (port 0 picks a free one) on the current actix system.
    pub fn start(config: SimConfig, host: &str, port: u16) -> std::io::Result<SimBackend> {
        let listener = TcpListener::bind((host, port))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(SimState {
            gpu: Semaphore::new(config.capacity.max(1)),
            config: Mutex::new(config),
            ready: AtomicBool::new(true),
            generated: AtomicU64::new(0),
            transcribed: AtomicU64::new(0),
            pings: AtomicU64::new(0),
            arrived_prompts: Mutex::new(Vec::new()),
            pcm_bytes_received: AtomicU64::new(0),
        });
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::JsonConfig::default().limit(1024 * 1024))
                .route("/ping", web::get().to(ping))
                .route("/generate", web::post().to(generate))
                .route("/api/v1/asr", web::post().to(transcribe_file))
                .route("/api/v1/asr/pcm", web::post().to(transcribe_pcm))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)?
        .run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Ok(SimBackend {
            addr,
            state,
            handle,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Whether `/ping` reports ready.
    pub fn set_ready(&self, ready: bool) {
        self.state.ready.store(ready, Ordering::SeqCst);
    }

    pub fn set_failure_rate(&self, rate: f64) {
        self.state
            .config
            .lock()
            .expect("sim config lock")
            .failure_rate = rate;
    }

    pub fn set_latency(&self, latency: Duration) {
        self.state
            .config
            .lock()
            .expect("sim config lock")
            .latency_ms = latency.as_millis() as u64;
    }

    /// Prompts in the order their generation requests arrived.
    pub fn arrived_prompts(&self) -> Vec<String> {
        self.state
            .arrived_prompts
            .lock()
            .expect("sim prompts lock")
            .clone()
    }

    pub fn generated(&self) -> u64 {
        self.state.generated.load(Ordering::SeqCst)
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

async fn ping(state: web::Data<SimState>) -> HttpResponse {
    state.pings.fetch_add(1, Ordering::Relaxed);
    if state.ready.load(Ordering::SeqCst) {
        HttpResponse::Ok().json(json!({"message": "simulated backend is ready", "status": "ready"}))
    } else {
        HttpResponse::ServiceUnavailable()
            .json(json!({"message": "model is loading", "status": "loading"}))
    }
}

/// Holds a GPU permit for the configured latency; `Err` is the answer to send instead.
async fn occupy_gpu(state: &SimState) -> Result<(), HttpResponse> {
    let knobs = state.knobs();
    let _permit = state
        .gpu
        .acquire()
        .await
        .expect("semaphore is never closed");
    let (fail, hang) = {
        let mut rng = rand::thread_rng();
        (
            rng.gen_bool(knobs.failure_rate.clamp(0.0, 1.0)),
            rng.gen_bool(knobs.hang_rate.clamp(0.0, 1.0)),
        )
    };
    if hang {
        // Never answers; ends when the caller gives up and the connection drops.
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(Duration::from_millis(knobs.latency_ms)).await;
    if fail {
        return Err(
            HttpResponse::InternalServerError().body("simulated failure: CUDA out of memory")
        );
    }
    Ok(())
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
    state
        .arrived_prompts
        .lock()
        .expect("sim prompts lock")
        .push(body.prompt.clone());
    if let Err(answer) = occupy_gpu(&state).await {
        return answer;
    }
    state.generated.fetch_add(1, Ordering::SeqCst);
    // Small images keep tests fast; the requested size only scales them a little.
    let side = |v: Option<u32>| v.unwrap_or(256).clamp(64, 1024) / 4;
    let png = render_png(
        &body.prompt,
        side(body.width),
        side(body.height),
        body.num_inference_steps.unwrap_or(20),
    );
    HttpResponse::Ok().content_type("image/png").body(png)
}

/// A valid PNG whose pixels are a function of the prompt.
pub fn render_png(prompt: &str, width: u32, height: u32, steps: u32) -> Vec<u8> {
    let mut seed: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in prompt.bytes() {
        seed = (seed ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut pixels = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        for x in 0..width {
            let v = seed.rotate_left((x * 7 + y * 13 + steps) % 64);
            pixels.extend_from_slice(&[
                (v as u8) ^ (x as u8 * 4),
                (v >> 8) as u8 ^ (y as u8 * 4),
                (v >> 16) as u8,
            ]);
        }
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().expect("in-memory PNG header");
    writer
        .write_image_data(&pixels)
        .expect("in-memory PNG data");
    writer.finish().expect("in-memory PNG end");
    out
}

/// Segments of a simulated transcript of `seconds` of audio.
fn transcript(seconds: f64) -> serde_json::Value {
    if seconds < 1.0 {
        return json!({"code": 1, "message": "audio too short"});
    }
    let mut segments = Vec::new();
    let mut start = 0.0;
    while start < seconds {
        let end = (start + 2.5f64).min(seconds);
        segments.push(json!({"start": start, "end": end, "text": format!("simulated segment {}", segments.len() + 1)}));
        start = end;
    }
    json!({"code": 0, "language": "en", "language_probability": 0.98, "segments": segments})
}

async fn transcribe_file(state: web::Data<SimState>, mut form: Multipart) -> HttpResponse {
    let mut bytes = 0u64;
    let mut saw_file = false;
    while let Some(field) = form.next().await {
        let Ok(mut field) = field else {
            return HttpResponse::BadRequest().json(json!({"detail": "malformed multipart body"}));
        };
        let is_file = field.name() == Some("file");
        while let Some(chunk) = field.next().await {
            match chunk {
                Ok(chunk) if is_file => bytes += chunk.len() as u64,
                Ok(_) => {}
                Err(_) => {
                    return HttpResponse::BadRequest()
                        .json(json!({"detail": "malformed multipart body"}))
                }
            }
        }
        saw_file |= is_file;
    }
    if !saw_file {
        return HttpResponse::UnprocessableEntity()
            .json(json!({"detail": "field `file` is required"}));
    }
    if let Err(answer) = occupy_gpu(&state).await {
        return answer;
    }
    state.transcribed.fetch_add(1, Ordering::SeqCst);
    // Treat the file as 16 kHz PCM-sized audio for the transcript's length.
    HttpResponse::Ok().json(transcript(bytes as f64 / PCM_BYTES_PER_SEC as f64))
}

async fn transcribe_pcm(state: web::Data<SimState>, mut body: web::Payload) -> HttpResponse {
    state.pcm_bytes_received.store(0, Ordering::SeqCst);
    let mut bytes = 0u64;
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            return HttpResponse::BadRequest().json(json!({"detail": "upload interrupted"}));
        };
        bytes += chunk.len() as u64;
        state.pcm_bytes_received.store(bytes, Ordering::SeqCst);
    }
    if let Err(answer) = occupy_gpu(&state).await {
        return answer;
    }
    state.transcribed.fetch_add(1, Ordering::SeqCst);
    HttpResponse::Ok().json(transcript(bytes as f64 / PCM_BYTES_PER_SEC as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pngs_are_valid_and_depend_on_the_prompt() {
        let a = render_png("a cat", 16, 16, 20);
        let b = render_png("a dog", 16, 16, 20);
        assert_eq!(&a[..8], b"\x89PNG\r\n\x1a\n");
        assert_ne!(a, b);
        assert_eq!(a, render_png("a cat", 16, 16, 20));
        let decoder = png::Decoder::new(std::io::Cursor::new(a));
        let reader = decoder.read_info().unwrap();
        assert_eq!(reader.info().width, 16);
    }

    #[test]
    fn short_audio_gets_the_backends_own_answer() {
        assert_eq!(transcript(0.5)["code"], 1);
        assert_eq!(transcript(5.0)["segments"].as_array().unwrap().len(), 2);
    }
}
