//! The simulator's "fastwhisper" speech routes: `POST /api/v1/asr` (multipart `file`) and
//! `POST /api/v1/asr/pcm` (raw PCM).

use std::sync::atomic::Ordering;

use actix_multipart::Multipart;
use actix_web::{web, HttpResponse};
use futures_util::StreamExt;
use serde_json::json;

use super::{occupy_gpu, simulated_segments, SimState, PCM_BYTES_PER_SEC};

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/asr", web::post().to(transcribe_file))
        .route("/api/v1/asr/pcm", web::post().to(transcribe_pcm));
}

/// A simulated SpeechToTextResponse for `seconds` of audio.
fn transcript(seconds: f64) -> serde_json::Value {
    if seconds < 1.0 {
        return json!({"code": 1, "message": "audio too short"});
    }
    let segments: Vec<_> = simulated_segments(seconds)
        .into_iter()
        .map(|(start, end, text)| json!({"start": start, "end": end, "text": text}))
        .collect();
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
    fn short_audio_gets_the_backends_own_answer() {
        assert_eq!(transcript(0.5)["code"], 1);
        assert_eq!(transcript(5.0)["segments"].as_array().unwrap().len(), 2);
    }
}
