//! A simulated GPU backend speaking every backend protocol ("qwen" image, "fastwhisper"
//! speech, "openai" image and speech, "a1111" image), for tests, benchmarks and demo
//! mode. Each protocol's routes live in a file of their own; this one holds what they
//! share: the knobs, the counters, the "GPU" and the images.
//!
//! Knobs: latency per call, failure rate (HTTP 500), hang rate (never answers), capacity
//! (concurrent calls; extra calls wait their turn, as on a GPU) and readiness of the
//! health routes. For client tests: answering an image by URL, malformed JSON, images
//! padded past a cap, and bytes that are no image at all. Images are real PNGs whose
//! pixels depend on the prompt.

mod a1111;
mod fastwhisper;
mod openai;
mod qwen;

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::dev::{ServerHandle, Service};
use actix_web::http::header::HeaderMap;
use actix_web::{web, App, HttpResponse, HttpServer};
use rand::Rng;
use tokio::sync::Semaphore;

pub use openai::{TranscriptionSeen, WavHeaderSeen};

/// Bytes per second of 16 kHz 16-bit mono PCM.
const PCM_BYTES_PER_SEC: u64 = 32_000;
/// Images answered by URL that stay fetchable: the latest ones.
const KEPT_FILES: usize = 16;
/// What every answer of the malformed-JSON knob is: JSON cut off mid-way.
const MALFORMED_JSON: &str = r#"{"data": [{"b64_json": "iVBORw0KGgo"#;

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
    /// Answer OpenAI image generations with a `url` to fetch instead of `b64_json`.
    #[arg(long)]
    pub answer_url: bool,
    /// Answer OpenAI, A1111 and transcription calls with malformed JSON.
    #[arg(long)]
    pub malformed_json: bool,
    /// Pad every image to at least this many bytes (0: no padding), to test answer caps.
    #[arg(long, default_value_t = 0)]
    pub answer_bytes: usize,
    /// Answer image calls with random bytes that are no image (labelled image/png).
    #[arg(long)]
    pub garbage_image: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            latency_ms: 500,
            failure_rate: 0.0,
            hang_rate: 0.0,
            capacity: 1,
            answer_url: false,
            malformed_json: false,
            answer_bytes: 0,
            garbage_image: false,
        }
    }
}

/// The W3C trace context headers requests carried.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceHeadersSeen {
    /// The last `traceparent` received.
    pub traceparent: Option<String>,
    /// The last `tracestate` received.
    pub tracestate: Option<String>,
    /// Requests that carried a `traceparent`.
    pub with_traceparent: u64,
    /// Requests that carried a `tracestate`.
    pub with_tracestate: u64,
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
    /// Bytes of the file of the `/v1/audio/transcriptions` upload in progress received so
    /// far, a WAV header included (for streaming tests).
    pub transcription_bytes_received: AtomicU64,
    last_transcription: Mutex<Option<TranscriptionSeen>>,
    /// The JSON body of the last OpenAI or A1111 image request.
    last_image_request: Mutex<Option<serde_json::Value>>,
    /// Images answered by URL, by number; bounded to the latest [`KEPT_FILES`].
    files: Mutex<VecDeque<(u64, Vec<u8>)>>,
    next_file: AtomicU64,
    trace_headers: Mutex<TraceHeadersSeen>,
    /// Calls on the GPU now (waiting for it or on it), and the most there ever were: a
    /// gateway that honours the capacity never lets this pass it.
    pub in_flight: AtomicU64,
    pub max_in_flight: AtomicU64,
    /// When the GPU worked, for benchmarks that ask how busy the gateway kept it.
    gpu_clock: Mutex<GpuClock>,
}

/// The GPU's working time: from the first call's start to the last call's end, and how
/// much of it was spent on calls (summed over calls at once; at capacity 1 the rest is
/// the time the GPU waited for the gateway).
#[derive(Default)]
struct GpuClock {
    first_start: Option<Instant>,
    last_end: Option<Instant>,
    busy: Duration,
}

impl SimState {
    fn new(config: SimConfig) -> SimState {
        SimState {
            gpu: Semaphore::new(config.capacity.max(1)),
            config: Mutex::new(config),
            ready: AtomicBool::new(true),
            generated: AtomicU64::new(0),
            transcribed: AtomicU64::new(0),
            pings: AtomicU64::new(0),
            arrived_prompts: Mutex::new(Vec::new()),
            pcm_bytes_received: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            gpu_clock: Mutex::new(GpuClock::default()),
            transcription_bytes_received: AtomicU64::new(0),
            last_transcription: Mutex::new(None),
            last_image_request: Mutex::new(None),
            files: Mutex::new(VecDeque::new()),
            next_file: AtomicU64::new(0),
            trace_headers: Mutex::new(TraceHeadersSeen::default()),
        }
    }

    /// Counts a call on the GPU that began at `started` and ends now.
    fn clock_call(&self, started: Instant) {
        let mut clock = self.gpu_clock.lock().expect("sim clock lock");
        clock.first_start.get_or_insert(started);
        clock.last_end = Some(Instant::now());
        clock.busy += started.elapsed();
    }

    fn knobs(&self) -> SimConfig {
        self.config.lock().expect("sim config lock").clone()
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    fn record_prompt(&self, prompt: &str) {
        self.arrived_prompts
            .lock()
            .expect("sim prompts lock")
            .push(prompt.to_string());
    }

    fn record_image_request(&self, request: &serde_json::Value) {
        *self.last_image_request.lock().expect("sim request lock") = Some(request.clone());
    }

    fn record_trace_headers(&self, headers: &HeaderMap) {
        let value = |name| {
            headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let mut seen = self.trace_headers.lock().expect("sim trace lock");
        if let Some(traceparent) = value("traceparent") {
            seen.traceparent = Some(traceparent);
            seen.with_traceparent += 1;
        }
        if let Some(tracestate) = value("tracestate") {
            seen.tracestate = Some(tracestate);
            seen.with_tracestate += 1;
        }
    }

    /// The image a generation answers: the prompt's PNG (padded to the `answer_bytes`
    /// knob), or bytes that are no image at all under the garbage knob.
    fn image(&self, prompt: &str, width: u32, height: u32, steps: u32) -> Vec<u8> {
        let knobs = self.knobs();
        if knobs.garbage_image {
            return garbage();
        }
        let png = render_png(prompt, width, height, steps);
        if png.len() >= knobs.answer_bytes {
            return png;
        }
        encode_png(prompt, width, height, steps, knobs.answer_bytes - png.len())
    }

    /// Keeps `bytes` fetchable at `/files/{n}.png`; returns that path.
    fn keep_file(&self, bytes: Vec<u8>) -> String {
        let number = self.next_file.fetch_add(1, Ordering::SeqCst);
        let mut files = self.files.lock().expect("sim files lock");
        if files.len() == KEPT_FILES {
            files.pop_front();
        }
        files.push_back((number, bytes));
        format!("/files/{number}.png")
    }

    fn kept_file(&self, number: u64) -> Option<Vec<u8>> {
        let files = self.files.lock().expect("sim files lock");
        files
            .iter()
            .find(|(n, _)| *n == number)
            .map(|(_, bytes)| bytes.clone())
    }

    /// `answer` as JSON, or malformed JSON under that knob.
    fn json_answer(&self, answer: serde_json::Value) -> HttpResponse {
        if self.knobs().malformed_json {
            return HttpResponse::Ok()
                .content_type("application/json")
                .body(MALFORMED_JSON);
        }
        HttpResponse::Ok().json(answer)
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
        let state = Arc::new(SimState::new(config));
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            let state = data.clone();
            App::new()
                .app_data(data.clone())
                .app_data(web::JsonConfig::default().limit(1024 * 1024))
                .wrap_fn(move |req, service| {
                    state.record_trace_headers(req.headers());
                    service.call(req)
                })
                .route("/sim/stats", web::get().to(stats))
                .configure(qwen::configure)
                .configure(fastwhisper::configure)
                .configure(openai::configure)
                .configure(a1111::configure)
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

    fn tune(&self, change: impl FnOnce(&mut SimConfig)) {
        change(&mut self.state.config.lock().expect("sim config lock"));
    }

    /// Whether the health routes (`/ping`, `/v1/models`, `/sdapi/v1/options`) report ready.
    pub fn set_ready(&self, ready: bool) {
        self.state.ready.store(ready, Ordering::SeqCst);
    }

    pub fn set_failure_rate(&self, rate: f64) {
        self.tune(|config| config.failure_rate = rate);
    }

    pub fn set_hang_rate(&self, rate: f64) {
        self.tune(|config| config.hang_rate = rate);
    }

    pub fn set_latency(&self, latency: Duration) {
        self.tune(|config| config.latency_ms = latency.as_millis() as u64);
    }

    /// Whether OpenAI image generations answer a `url` instead of `b64_json`.
    pub fn set_answer_url(&self, on: bool) {
        self.tune(|config| config.answer_url = on);
    }

    /// Whether OpenAI, A1111 and transcription calls answer malformed JSON.
    pub fn set_malformed_json(&self, on: bool) {
        self.tune(|config| config.malformed_json = on);
    }

    /// Pads every image to at least `bytes` (0: no padding).
    pub fn set_answer_bytes(&self, bytes: usize) {
        self.tune(|config| config.answer_bytes = bytes);
    }

    /// Whether image calls answer random bytes that are no image.
    pub fn set_garbage_image(&self, on: bool) {
        self.tune(|config| config.garbage_image = on);
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

    /// The JSON body of the last OpenAI or A1111 image request.
    pub fn last_image_request(&self) -> Option<serde_json::Value> {
        self.state
            .last_image_request
            .lock()
            .expect("sim request lock")
            .clone()
    }

    /// What the last `/v1/audio/transcriptions` request sent.
    pub fn last_transcription(&self) -> Option<TranscriptionSeen> {
        self.state
            .last_transcription
            .lock()
            .expect("sim transcription lock")
            .clone()
    }

    /// The trace context headers received so far, on any route.
    pub fn trace_headers(&self) -> TraceHeadersSeen {
        self.state
            .trace_headers
            .lock()
            .expect("sim trace lock")
            .clone()
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

/// Holds a GPU permit for the configured latency; `Err` is the answer to send instead.
async fn occupy_gpu(state: &SimState) -> Result<(), HttpResponse> {
    let _call = InFlight::enter(state);
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
    let started = Instant::now();
    compute_for(Duration::from_millis(knobs.latency_ms)).await;
    state.clock_call(started);
    if fail {
        return Err(
            HttpResponse::InternalServerError().body("simulated failure: CUDA out of memory")
        );
    }
    Ok(())
}

/// Takes `latency` as a GPU would, to a tenth of a millisecond: tokio's timer wakes on a
/// millisecond tick and later (a 50 ms call took 51.2 ms on average on two busy cores),
/// so the last two milliseconds are slept on a blocking thread, which the kernel wakes on
/// time. Dropped (the caller gave up), it ends at once; that thread sleeps out its rest.
async fn compute_for(latency: Duration) {
    const FINE: Duration = Duration::from_millis(2);
    let deadline = Instant::now() + latency;
    if latency > FINE {
        tokio::time::sleep(latency - FINE).await;
    }
    let rest = deadline.saturating_duration_since(Instant::now());
    if !rest.is_zero() {
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(rest)).await;
    }
}

/// The side drawn for a requested one: small images keep tests fast, so the requested
/// size only scales them a little.
fn drawn_side(requested: Option<u32>) -> u32 {
    requested.unwrap_or(256).clamp(64, 1024) / 4
}

/// Start, end and text of each segment of a simulated transcript of `seconds` of audio.
fn simulated_segments(seconds: f64) -> Vec<(f64, f64, String)> {
    let mut segments = Vec::new();
    let mut start = 0.0;
    while start < seconds {
        let end = (start + 2.5f64).min(seconds);
        let text = format!("simulated segment {}", segments.len() + 1);
        segments.push((start, end, text));
        start = end;
    }
    segments
}

/// Bytes that no image format starts with.
fn garbage() -> Vec<u8> {
    let mut bytes = b"not an image: ".to_vec();
    let mut rng = rand::thread_rng();
    bytes.extend((0..1024).map(|_| rng.gen::<u8>()));
    bytes
}

/// A valid PNG whose pixels are a function of the prompt.
pub fn render_png(prompt: &str, width: u32, height: u32, steps: u32) -> Vec<u8> {
    encode_png(prompt, width, height, steps, 0)
}

/// [`render_png`] with a text chunk of `padding` bytes, for answers of a given size.
fn encode_png(prompt: &str, width: u32, height: u32, steps: u32, padding: usize) -> Vec<u8> {
    let mut seed: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in prompt.bytes() {
        seed = (seed ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut pixels = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        for x in 0..width {
            let v = seed.rotate_left((x * 7 + y * 13 + steps) % 64);
            pixels.extend_from_slice(&[
                (v as u8) ^ (x as u8).wrapping_mul(4),
                (v >> 8) as u8 ^ (y as u8).wrapping_mul(4),
                (v >> 16) as u8,
            ]);
        }
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    if padding > 0 {
        encoder
            .add_text_chunk("Comment".into(), "x".repeat(padding))
            .expect("an ASCII text chunk");
    }
    let mut writer = encoder.write_header().expect("in-memory PNG header");
    writer
        .write_image_data(&pixels)
        .expect("in-memory PNG data");
    writer.finish().expect("in-memory PNG end");
    out
}

/// One call on the GPU, counted while it lasts.
struct InFlight<'a>(&'a SimState);

impl<'a> InFlight<'a> {
    fn enter(state: &'a SimState) -> InFlight<'a> {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(state)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `GET /sim/stats`: the counters, for benchmarks driving a simulator in its own process.
async fn stats(state: web::Data<SimState>) -> HttpResponse {
    let (span, busy) = {
        let clock = state.gpu_clock.lock().expect("sim clock lock");
        let span = match (clock.first_start, clock.last_end) {
            (Some(first), Some(last)) => last - first,
            _ => Duration::ZERO,
        };
        (span, clock.busy)
    };
    HttpResponse::Ok().json(serde_json::json!({
        "gpu_span_ms": span.as_secs_f64() * 1000.0,
        "gpu_busy_ms": busy.as_secs_f64() * 1000.0,
        "generated": state.generated.load(Ordering::SeqCst),
        "transcribed": state.transcribed.load(Ordering::SeqCst),
        "max_in_flight": state.max_in_flight.load(Ordering::SeqCst),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::sniff_image;

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
        // Sides past 64 pixels, as a 512x512 request draws, are fine too.
        assert_eq!(
            sniff_image(&render_png("a cat", 256, 2, 20)),
            Some("image/png")
        );
    }

    #[test]
    fn padded_images_are_still_valid_pngs_of_at_least_the_size_asked() {
        let state = SimState::new(SimConfig {
            answer_bytes: 50_000,
            ..SimConfig::default()
        });
        let padded = state.image("a cat", 16, 16, 20);
        assert!(
            padded.len() >= 50_000 && padded.len() < 50_200,
            "{}",
            padded.len()
        );
        let mut reader = png::Decoder::new(std::io::Cursor::new(padded))
            .read_info()
            .unwrap();
        let mut pixels = vec![0; reader.output_buffer_size()];
        reader.next_frame(&mut pixels).unwrap();
        assert_eq!(pixels.len(), 16 * 16 * 3);
        let unpadded = SimState::new(SimConfig::default()).image("a cat", 16, 16, 20);
        assert_eq!(unpadded, render_png("a cat", 16, 16, 20));
    }

    #[actix_web::test]
    async fn a_call_takes_at_least_its_latency_and_the_gpu_clock_counts_it() {
        let state = SimState::new(SimConfig {
            latency_ms: 20,
            ..SimConfig::default()
        });
        let started = Instant::now();
        for _ in 0..2 {
            assert!(occupy_gpu(&state).await.is_ok());
        }
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(40), "{elapsed:?}");
        let clock = state.gpu_clock.lock().unwrap();
        assert!(clock.busy >= Duration::from_millis(40), "{:?}", clock.busy);
        let span = clock.last_end.unwrap() - clock.first_start.unwrap();
        assert!(span >= clock.busy && span <= elapsed, "{span:?}");
    }

    #[test]
    fn garbage_is_no_image() {
        let state = SimState::new(SimConfig {
            garbage_image: true,
            ..SimConfig::default()
        });
        let garbage = state.image("a cat", 16, 16, 20);
        assert_eq!(sniff_image(&garbage), None);
        assert_ne!(
            garbage,
            state.image("a cat", 16, 16, 20),
            "random each time"
        );
    }

    #[test]
    fn only_the_latest_files_are_kept() {
        let state = SimState::new(SimConfig::default());
        let first = state.keep_file(vec![1]);
        assert_eq!(first, "/files/0.png");
        for n in 1..=KEPT_FILES as u8 {
            state.keep_file(vec![n]);
        }
        assert_eq!(state.kept_file(0), None);
        assert_eq!(state.kept_file(1), Some(vec![1]));
        assert_eq!(
            state.kept_file(KEPT_FILES as u64),
            Some(vec![KEPT_FILES as u8])
        );
    }

    #[actix_web::test]
    async fn every_route_records_the_trace_context_it_received() {
        let sim = SimBackend::start(SimConfig::default(), "127.0.0.1", 0).unwrap();
        let client = awc::Client::default();
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        client
            .get(format!("{}/ping", sim.url()))
            .insert_header(("traceparent", parent))
            .insert_header(("tracestate", "congo=t61rcWkgMzE"))
            .send()
            .await
            .unwrap();
        client
            .get(format!("{}/v1/models", sim.url()))
            .send()
            .await
            .unwrap();
        client
            .get(format!("{}/no/such/route", sim.url()))
            .insert_header(("traceparent", parent.replace("-01", "-00")))
            .send()
            .await
            .unwrap();
        assert_eq!(
            sim.trace_headers(),
            TraceHeadersSeen {
                traceparent: Some(parent.replace("-01", "-00")),
                tracestate: Some("congo=t61rcWkgMzE".into()),
                with_traceparent: 2,
                with_tracestate: 1,
            }
        );
    }

    #[test]
    fn segments_cover_the_audio_in_steps_of_two_and_a_half_seconds() {
        let segments = simulated_segments(6.0);
        let spans: Vec<_> = segments.iter().map(|(s, e, _)| (*s, *e)).collect();
        assert_eq!(spans, [(0.0, 2.5), (2.5, 5.0), (5.0, 6.0)]);
        assert_eq!(segments[2].2, "simulated segment 3");
    }
}
