//! `POST /api/v1/speech/transcribe` (multipart upload) and `POST /api/v1/speech/pcm` (raw
//! PCM, streamed chunked by ESP32 devices): the request is parsed here, and the speech
//! service (`crate::speech`) streams it to a leased instance while it arrives. Limits are
//! judged from Content-Length up front, and again by counting as the bytes arrive.

use actix_multipart::{Field, Multipart};
use actix_web::http::header;
use actix_web::web;
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;

use crate::backends::fastwhisper::SpeechToTextResponse;
use crate::domain::UserId;
use crate::error::{ApiError, ErrorBody};
use crate::http::caller::DeviceOrUser;
use crate::limits::Limits;
use crate::speech::{Audio, Pace, SpeechError, SpeechService};

/// Multipart framing (boundaries, part headers) allowed on top of `max_upload_bytes` when
/// judging a Content-Length up front.
const FORM_FRAMING_BYTES: u64 = 64 * 1024;
/// Form fields read past while looking for `file`.
pub(super) const MAX_OTHER_FIELDS: usize = 16;
/// The only sample rate the PCM endpoint takes; the gateway does not resample.
const SAMPLE_RATE: u32 = 16_000;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/speech/transcribe", web::post().to(transcribe))
        .route("/api/v1/speech/pcm", web::post().to(pcm));
}

/// The form of `POST /api/v1/speech/transcribe`.
#[derive(utoipa::ToSchema)]
pub struct TranscribeForm {
    /// The audio file, passed on to the backend with its filename.
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
}

/// Raw 16 kHz 16-bit little-endian mono PCM.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct PcmAudio(pub Vec<u8>);

#[derive(Deserialize, utoipa::IntoParams)]
pub struct PcmQuery {
    /// Must be 16000 when given: the gateway does not resample.
    pub sample_rate: Option<u32>,
}

/// Transcribe an uploaded audio file.
#[utoipa::path(post, path = "/api/v1/speech/transcribe", tag = "speech",
    request_body(content = TranscribeForm, content_type = "multipart/form-data"),
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "The backend's transcript (code 0), or its own refusal such as code 1 \"audio too short\"", body = SpeechToTextResponse),
        (status = 400, description = "Not multipart/form-data, or no `file` field", body = ErrorBody),
        (status = 401, description = "Missing or bad token or API key", body = ErrorBody),
        (status = 408, description = "The upload stalled or took too long", body = ErrorBody),
        (status = 413, description = "Upload larger than speech.max_upload_bytes", body = ErrorBody),
        (status = 429, description = "Over the speech request rate (Retry-After, X-RateLimit-*)", body = ErrorBody),
        (status = 502, description = "The backend failed", body = ErrorBody),
        (status = 503, description = "No healthy speech instance, or all busy (see Retry-After)", body = ErrorBody),
        (status = 504, description = "The backend did not answer in time", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id, key_id = caller.key_id, instance))]
pub async fn transcribe(
    caller: DeviceOrUser,
    req: HttpRequest,
    payload: web::Payload,
    speech: web::Data<SpeechService>,
    rates: web::Data<Limits>,
) -> Result<HttpResponse, ApiError> {
    check_rate(&rates, caller.user_id)?;
    let deadline = speech.upload_deadline();
    let mut form = open_form(&req, payload, &speech)?;
    let skip = |_: &str, _: &[u8]| Ok(());
    let mut pace = speech.pace();
    let (field, audio) = find_file(&mut form, &speech, &mut pace, deadline, skip).await?;
    // The form stays alive while its field is read: a field reads through it.
    let upload = futures_util::stream::unfold((form, field), |(form, mut field)| async move {
        let item = field.next().await?;
        Some((item, (form, field)))
    });
    let answer = speech
        .transcribe(
            caller.user_id,
            audio,
            None,
            Box::pin(upload),
            pace,
            deadline,
        )
        .await?;
    tracing::debug!(code = answer.code, "file transcribed");
    Ok(HttpResponse::Ok().json(answer))
}

/// Transcribe raw PCM, typically streamed by a device while it records.
#[utoipa::path(post, path = "/api/v1/speech/pcm", tag = "speech",
    params(PcmQuery),
    request_body(content = PcmAudio, content_type = "application/octet-stream",
        description = "16 kHz 16-bit little-endian mono PCM, chunked or with a Content-Length"),
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "The backend's transcript (code 0), or its own refusal such as code 1 \"audio too short\" under 1 s", body = SpeechToTextResponse),
        (status = 400, description = "Odd number of bytes, or a sample_rate other than 16000", body = ErrorBody),
        (status = 401, description = "Missing or bad token or API key", body = ErrorBody),
        (status = 408, description = "The upload stalled or took too long", body = ErrorBody),
        (status = 413, description = "Longer than speech.max_pcm_seconds", body = ErrorBody),
        (status = 429, description = "Over the speech request rate (Retry-After, X-RateLimit-*)", body = ErrorBody),
        (status = 502, description = "The backend failed", body = ErrorBody),
        (status = 503, description = "No healthy speech instance, or all busy (see Retry-After)", body = ErrorBody),
        (status = 504, description = "The backend did not answer in time", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id, key_id = caller.key_id, instance))]
pub async fn pcm(
    caller: DeviceOrUser,
    req: HttpRequest,
    payload: web::Payload,
    query: web::Query<PcmQuery>,
    speech: web::Data<SpeechService>,
    rates: web::Data<Limits>,
) -> Result<HttpResponse, ApiError> {
    check_rate(&rates, caller.user_id)?;
    let limits = speech.limits();
    let deadline = speech.upload_deadline();
    if query.sample_rate.is_some_and(|rate| rate != SAMPLE_RATE) {
        return Err(ApiError::Validation(format!(
            "sample_rate must be {SAMPLE_RATE}: send 16 kHz 16-bit mono PCM (the gateway does not resample)"
        )));
    }
    if let Some(length) = content_length(&req) {
        if length > limits.max_pcm_bytes() {
            return Err(SpeechError::TooLong(limits.max_pcm_seconds).into());
        }
        if !length.is_multiple_of(2) {
            return Err(SpeechError::OddLength.into());
        }
    }
    let answer = speech
        .transcribe(
            caller.user_id,
            Audio::Pcm,
            None,
            payload,
            speech.pace(),
            deadline,
        )
        .await?;
    tracing::debug!(code = answer.code, "pcm transcribed");
    Ok(HttpResponse::Ok().json(answer))
}

/// The user's speech request rate (its own bucket, apart from image submissions).
pub(super) fn check_rate(rates: &Limits, user_id: UserId) -> Result<(), ApiError> {
    match &rates.speech {
        Some(limit) => limit
            .check(&user_id)
            .map(drop)
            .map_err(ApiError::RateLimited),
        None => Ok(()),
    }
}

/// The upload as a form: refused unless it is multipart/form-data no longer (judged by
/// its Content-Length, when it has one) than `speech.max_upload_bytes` allows.
pub(super) fn open_form(
    req: &HttpRequest,
    payload: web::Payload,
    speech: &SpeechService,
) -> Result<Multipart, ApiError> {
    let limits = speech.limits();
    let is_form = req
        .mime_type()
        .ok()
        .flatten()
        .is_some_and(|mime| mime.essence_str() == "multipart/form-data");
    if !is_form {
        return Err(ApiError::MalformedBody(
            "body must be multipart/form-data with the audio in field `file`".into(),
        ));
    }
    let max_form = limits.max_upload_bytes as u64 + FORM_FRAMING_BYTES;
    if content_length(req).is_some_and(|n| n > max_form) {
        return Err(SpeechError::TooLarge(limits.max_upload_bytes).into());
    }
    Ok(Multipart::new(req.headers(), payload))
}

/// Reads up to the `file` field by `deadline`, handing the other fields' bytes to `keep`
/// (name, chunk); returns the field and the audio it holds.
pub(super) async fn find_file(
    form: &mut Multipart,
    speech: &SpeechService,
    pace: &mut Pace,
    deadline: tokio::time::Instant,
    keep: impl FnMut(&str, &[u8]) -> Result<(), ApiError>,
) -> Result<(Field, Audio), ApiError> {
    let limits = speech.limits();
    let fields = fields_to_file(form, speech, pace, keep);
    let (field, received) = tokio::time::timeout_at(deadline, fields)
        .await
        .map_err(|_| SpeechError::TooSlow(limits.max_upload_secs))??;
    let disposition = field.content_disposition();
    let filename = disposition.and_then(|d| d.get_filename()).unwrap_or("");
    let audio = Audio::File {
        filename: filename.to_string(),
        content_type: field
            .content_type()
            .map_or("application/octet-stream".to_string(), ToString::to_string),
        received,
    };
    Ok((field, audio))
}

/// Reads the fields before `file`; returns it with the bytes of form data read so far.
async fn fields_to_file(
    form: &mut Multipart,
    speech: &SpeechService,
    pace: &mut Pace,
    mut keep: impl FnMut(&str, &[u8]) -> Result<(), ApiError>,
) -> Result<(Field, usize), ApiError> {
    let max = speech.limits().max_upload_bytes;
    let mut received = 0;
    for _ in 0..=MAX_OTHER_FIELDS {
        let Some(mut field) = speech.next_chunk(pace, form.next()).await? else {
            return Err(ApiError::Validation(
                "multipart field `file` is required".into(),
            ));
        };
        if field.name() == Some("file") {
            return Ok((field, received));
        }
        let name = field.name().unwrap_or_default().to_string();
        while let Some(chunk) = speech.next_chunk(pace, field.next()).await? {
            received += chunk.len();
            pace.add(chunk.len());
            if received > max {
                return Err(SpeechError::TooLarge(max).into());
            }
            keep(&name, &chunk)?;
        }
    }
    Err(ApiError::Validation(format!(
        "multipart field `file` must be among the first {} fields",
        MAX_OTHER_FIELDS + 1
    )))
}

fn content_length(req: &HttpRequest) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}
