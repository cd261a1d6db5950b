//! The simulator's "openai" routes: `GET /v1/models`, `POST /v1/images/generations` (with
//! `GET /files/{n}.png` for images answered by URL) and `POST /v1/audio/transcriptions`.

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use actix_multipart::{Field, Multipart};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;

use super::{drawn_side, occupy_gpu, simulated_segments, SimState, PCM_BYTES_PER_SEC};

/// Bytes of a WAV header as our clients write it: RIFF, one fmt chunk, the data chunk.
const WAV_HEADER_BYTES: usize = 44;
/// Longest text field read from a form.
const MAX_FIELD_BYTES: usize = 1024;

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/models", web::get().to(models))
        .route("/v1/images/generations", web::post().to(generations))
        .route("/files/{name}", web::get().to(file))
        .route("/v1/audio/transcriptions", web::post().to(transcriptions));
}

/// What a `/v1/audio/transcriptions` request sent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TranscriptionSeen {
    /// The form's field names, in the order they came.
    pub fields: Vec<String>,
    pub model: Option<String>,
    pub response_format: Option<String>,
    pub language: Option<String>,
    pub filename: Option<String>,
    pub file_content_type: Option<String>,
    /// Bytes of the file part, a WAV header included.
    pub file_bytes: u64,
    pub wav_header: WavHeaderSeen,
}

/// What the first bytes of an uploaded file said about it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum WavHeaderSeen {
    /// Not a WAV: all of it counts as 16 kHz 16-bit audio.
    #[default]
    NotWav,
    /// A 44-byte header of 16 kHz mono 16-bit PCM.
    Pcm16kMono,
    /// A WAV of some other shape, and why it was refused.
    Refused(String),
}

/// The OpenAI error shape.
fn openai_error(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({"error": {
        "message": message, "type": "invalid_request_error", "param": null, "code": null,
    }}))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

async fn models(state: web::Data<SimState>) -> HttpResponse {
    state.pings.fetch_add(1, Ordering::Relaxed);
    if !state.is_ready() {
        return openai_error(StatusCode::SERVICE_UNAVAILABLE, "model is loading");
    }
    HttpResponse::Ok().json(json!({"object": "list", "data": [
        {"id": "sim-image", "object": "model"},
        {"id": "sim-whisper", "object": "model"},
    ]}))
}

#[derive(Deserialize)]
struct GenerationRequest {
    prompt: String,
    size: Option<String>,
    steps: Option<u32>,
    response_format: Option<String>,
}

/// `"WxH"` as a width and height.
fn parse_size(size: &str) -> Option<(u32, u32)> {
    let (width, height) = size.split_once('x')?;
    let side = |text: &str| text.parse().ok().filter(|side| (1..=4096).contains(side));
    Some((side(width)?, side(height)?))
}

async fn generations(
    req: HttpRequest,
    state: web::Data<SimState>,
    body: web::Json<serde_json::Value>,
) -> HttpResponse {
    state.record_image_request(&body);
    let request: GenerationRequest = match serde_json::from_value(body.into_inner()) {
        Ok(request) => request,
        Err(e) => return openai_error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    if request.prompt.trim().is_empty() {
        return openai_error(StatusCode::BAD_REQUEST, "prompt must not be empty");
    }
    let (width, height) = match request.size.as_deref().map(parse_size) {
        None => (None, None),
        Some(Some((width, height))) => (Some(width), Some(height)),
        Some(None) => return openai_error(StatusCode::BAD_REQUEST, "size must be WIDTHxHEIGHT"),
    };
    state.record_prompt(&request.prompt);
    if let Err(answer) = occupy_gpu(&state).await {
        return answer;
    }
    state.generated.fetch_add(1, Ordering::SeqCst);
    let image = state.image(
        &request.prompt,
        drawn_side(width),
        drawn_side(height),
        request.steps.unwrap_or(20),
    );
    let by_url = state.knobs().answer_url || request.response_format.as_deref() == Some("url");
    let item = if by_url {
        let path = state.keep_file(image);
        let host = req.connection_info().host().to_string();
        json!({"url": format!("http://{host}{path}")})
    } else {
        json!({"b64_json": base64::engine::general_purpose::STANDARD.encode(image)})
    };
    state.json_answer(json!({"created": unix_now(), "data": [item]}))
}

async fn file(state: web::Data<SimState>, name: web::Path<String>) -> HttpResponse {
    let kept = name
        .strip_suffix(".png")
        .and_then(|number| number.parse().ok())
        .and_then(|number| state.kept_file(number));
    match kept {
        Some(bytes) => HttpResponse::Ok().content_type("image/png").body(bytes),
        None => HttpResponse::NotFound().body("no such file"),
    }
}

/// Reads a text field of at most [`MAX_FIELD_BYTES`].
async fn field_text(field: &mut Field) -> Result<String, HttpResponse> {
    let mut text = Vec::new();
    while let Some(chunk) = field.next().await {
        let chunk = chunk.map_err(|_| openai_error(StatusCode::BAD_REQUEST, "malformed form"))?;
        text.extend_from_slice(&chunk);
        if text.len() > MAX_FIELD_BYTES {
            return Err(openai_error(StatusCode::BAD_REQUEST, "form field too long"));
        }
    }
    String::from_utf8(text).map_err(|_| openai_error(StatusCode::BAD_REQUEST, "field is not UTF-8"))
}

/// What a file's first bytes say: whether it is a WAV, and if so whether it is the one
/// shape this backend takes.
fn wav_header(head: &[u8]) -> WavHeaderSeen {
    if head.len() < 12 || &head[0..4] != b"RIFF" || &head[8..12] != b"WAVE" {
        return WavHeaderSeen::NotWav;
    }
    let refused = |why: &str| WavHeaderSeen::Refused(why.to_string());
    if head.len() < WAV_HEADER_BYTES {
        return refused("WAV header cut short");
    }
    let u16_at = |at: usize| u16::from_le_bytes([head[at], head[at + 1]]);
    let u32_at =
        |at: usize| u32::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    if &head[12..16] != b"fmt " || u32_at(16) != 16 || &head[36..40] != b"data" {
        return refused("expected a 16-byte fmt chunk followed by the data chunk");
    }
    if u16_at(20) != 1 || u16_at(22) != 1 || u32_at(24) != 16_000 || u16_at(34) != 16 {
        return refused("expected 16 kHz mono 16-bit integer PCM");
    }
    if u32_at(28) != 32_000 || u16_at(32) != 2 {
        return refused("byte rate and block align do not match 16 kHz mono 16-bit");
    }
    WavHeaderSeen::Pcm16kMono
}

async fn transcriptions(state: web::Data<SimState>, mut form: Multipart) -> HttpResponse {
    state
        .transcription_bytes_received
        .store(0, Ordering::SeqCst);
    let mut seen = TranscriptionSeen::default();
    let mut saw_file = false;
    let mut head = Vec::with_capacity(WAV_HEADER_BYTES);
    while let Some(field) = form.next().await {
        let Ok(mut field) = field else {
            return openai_error(StatusCode::BAD_REQUEST, "malformed multipart body");
        };
        let name = field.name().unwrap_or_default().to_string();
        seen.fields.push(name.clone());
        if name != "file" {
            let text = match field_text(&mut field).await {
                Ok(text) => text,
                Err(answer) => return answer,
            };
            match name.as_str() {
                "model" => seen.model = Some(text),
                "response_format" => seen.response_format = Some(text),
                "language" => seen.language = Some(text),
                _ => {}
            }
            continue;
        }
        saw_file = true;
        seen.filename = field
            .content_disposition()
            .and_then(|d| d.get_filename())
            .map(str::to_string);
        seen.file_content_type = field.content_type().map(ToString::to_string);
        while let Some(chunk) = field.next().await {
            let Ok(chunk) = chunk else {
                return openai_error(StatusCode::BAD_REQUEST, "upload interrupted");
            };
            let wanted = WAV_HEADER_BYTES.saturating_sub(head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..wanted]);
            seen.file_bytes += chunk.len() as u64;
            state
                .transcription_bytes_received
                .store(seen.file_bytes, Ordering::SeqCst);
        }
    }
    seen.wav_header = wav_header(&head);
    *state
        .last_transcription
        .lock()
        .expect("sim transcription lock") = Some(seen.clone());
    if !saw_file {
        return openai_error(StatusCode::BAD_REQUEST, "field `file` is required");
    }
    let audio_bytes = match &seen.wav_header {
        WavHeaderSeen::NotWav => seen.file_bytes,
        WavHeaderSeen::Pcm16kMono => seen.file_bytes - WAV_HEADER_BYTES as u64,
        WavHeaderSeen::Refused(why) => return openai_error(StatusCode::BAD_REQUEST, why),
    };
    if let Err(answer) = occupy_gpu(&state).await {
        return answer;
    }
    state.transcribed.fetch_add(1, Ordering::SeqCst);
    let seconds = audio_bytes as f64 / PCM_BYTES_PER_SEC as f64;
    if seconds < 1.0 {
        return openai_error(StatusCode::BAD_REQUEST, "audio too short");
    }
    let segments = simulated_segments(seconds);
    let text = segments
        .iter()
        .map(|(_, _, text)| text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    match seen.response_format.as_deref().unwrap_or("json") {
        "json" => state.json_answer(json!({"text": text})),
        "verbose_json" => {
            let segments: Vec<_> = segments
                .iter()
                .enumerate()
                .map(|(id, (start, end, text))| {
                    json!({"id": id, "start": start, "end": end, "text": text})
                })
                .collect();
            state.json_answer(json!({
                "task": "transcribe", "language": "english", "duration": seconds,
                "text": text, "segments": segments,
            }))
        }
        other => openai_error(
            StatusCode::BAD_REQUEST,
            &format!("response_format {other:?} is not simulated"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::fastwhisper::FileForm;
    use crate::backends::openai::transcriptions::wav_header_streaming;
    use crate::simulator::{SimBackend, SimConfig};

    #[actix_web::test]
    async fn transcripts_come_as_plain_json_unless_verbose_is_asked() {
        let config = SimConfig {
            latency_ms: 0,
            ..SimConfig::default()
        };
        let sim = SimBackend::start(config, "127.0.0.1", 0).unwrap();
        let form = FileForm::default();
        let body = [
            form.text_field("model", "sim-whisper").to_vec(),
            form.text_field("language", "en").to_vec(),
            form.opening("a.raw", "application/octet-stream").to_vec(),
            vec![0; 64_000],
            form.closing().to_vec(),
        ]
        .concat();
        let mut response = awc::Client::default()
            .post(format!("{}/v1/audio/transcriptions", sim.url()))
            .content_type(form.content_type())
            .send_body(body)
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let answer: serde_json::Value = response.json().await.unwrap();
        assert_eq!(answer, json!({"text": "simulated segment 1"}));
        let seen = sim.last_transcription().unwrap();
        assert_eq!(seen.language.as_deref(), Some("en"));
        assert_eq!(seen.response_format, None);
    }

    #[test]
    fn sizes_are_width_by_height() {
        assert_eq!(parse_size("320x192"), Some((320, 192)));
        for bad in ["320", "x192", "320x", "0x10", "10x5000", "axb", "320X192"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_16_khz_mono_16_bit_wavs_are_taken() {
        assert_eq!(
            wav_header(&wav_header_streaming()),
            WavHeaderSeen::Pcm16kMono
        );
        assert_eq!(wav_header(b"ID3\x04 an mp3"), WavHeaderSeen::NotWav);
        assert!(matches!(
            wav_header(&wav_header_streaming()[..30]),
            WavHeaderSeen::Refused(_)
        ));
        let mut stereo_44k = wav_header_streaming();
        stereo_44k[22] = 2;
        stereo_44k[24..28].copy_from_slice(&44_100u32.to_le_bytes());
        assert_eq!(
            wav_header(&stereo_44k),
            WavHeaderSeen::Refused("expected 16 kHz mono 16-bit integer PCM".into())
        );
        let mut float = wav_header_streaming();
        float[20] = 3;
        assert!(matches!(wav_header(&float), WavHeaderSeen::Refused(_)));
    }
}
