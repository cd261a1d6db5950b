//! `POST /api/v1/speech/transcribe` (multipart upload) and `POST /api/v1/speech/pcm` (raw
//! PCM, streamed chunked by ESP32 devices), answered synchronously by a speech instance
//! leased from the InstanceRegistry.
//!
//! Both forward the body while it is still arriving: the handler pumps the client's chunks
//! into a bounded channel that the backend request reads from, so memory stays bounded and
//! the backend hears the first audio at once. Limits are judged from Content-Length up
//! front and again by counting, and an upload that breaks one aborts the backend request
//! rather than ending it, so the backend never transcribes a cut-off body.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

use actix::Addr;
use actix_multipart::{Field, Multipart};
use actix_web::http::header;
use actix_web::web;
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;

use crate::actors::instance_registry::Lease;
use crate::actors::messages::{Acquire, AcquireError, CallOutcome};
use crate::actors::InstanceRegistry;
use crate::auth::DeviceOrUser;
use crate::backends::fastwhisper::{self, FileForm, SpeechToTextResponse};
use crate::backends::BackendError;
use crate::error::{ApiError, ErrorBody};
use crate::limits::Limits;
use crate::settings::{InstanceKind, Settings, SpeechSettings};

/// Multipart framing (boundaries, part headers) allowed on top of `max_upload_bytes` when
/// judging a Content-Length up front.
const FORM_FRAMING_BYTES: u64 = 64 * 1024;
/// Form fields skipped while looking for `file`.
const MAX_OTHER_FIELDS: usize = 16;
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

/// Why a streamed call ended without an answer.
enum Fault {
    /// The client's upload broke a rule; the instance is not to blame.
    Client(ApiError),
    Backend(BackendError),
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
#[tracing::instrument(skip_all, fields(user_id = caller.user_id, key_id = caller.key_id, instance))]
pub async fn transcribe(
    caller: DeviceOrUser,
    req: HttpRequest,
    payload: web::Payload,
    settings: web::Data<Settings>,
    registry: web::Data<Addr<InstanceRegistry>>,
    rates: web::Data<Limits>,
) -> Result<HttpResponse, ApiError> {
    check_rate(&rates, caller.user_id)?;
    let limits = &settings.speech;
    let upload_deadline = tokio::time::Instant::now() + secs(limits.max_upload_secs);
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
    if content_length(&req).is_some_and(|n| n > max_form) {
        return Err(too_large(limits));
    }
    let mut form = Multipart::new(req.headers(), payload);
    let (mut field, mut received) =
        tokio::time::timeout_at(upload_deadline, find_file(&mut form, limits))
            .await
            .map_err(|_| too_slow(limits))??;
    let disposition = field.content_disposition();
    let filename = disposition.and_then(|d| d.get_filename()).unwrap_or("");
    let content_type = field
        .content_type()
        .map_or("application/octet-stream".to_string(), ToString::to_string);
    let framing = FileForm::default();
    let (opening, closing) = (framing.opening(filename, &content_type), framing.closing());

    let lease = acquire(&registry, caller.user_id, limits).await?;
    tracing::Span::current().record("instance", lease.url.as_str());
    let (body, stream) = fastwhisper::body_channel(secs(limits.timeout_secs));
    let (client, base) = (fastwhisper::client(), lease.url.clone());
    let call = fastwhisper::transcribe_file(&client, &base, &framing, stream);
    let pump = async move {
        // The form stays alive while its field is read: a field reads through it.
        let _form = form;
        body.send(opening).await.map_err(Fault::Backend)?;
        while let Some(chunk) = read_timed(field.next(), limits)
            .await
            .map_err(Fault::Client)?
        {
            received += chunk.len();
            if received > limits.max_upload_bytes {
                return Err(Fault::Client(too_large(limits)));
            }
            body.send(chunk).await.map_err(Fault::Backend)?;
        }
        body.send(closing).await.map_err(Fault::Backend)?;
        body.finish().await.map_err(Fault::Backend)
    };
    let answer = relay(lease, call, pump, limits, upload_deadline).await?;
    tracing::info!(code = answer.code, "file transcribed");
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
#[tracing::instrument(skip_all, fields(user_id = caller.user_id, key_id = caller.key_id, instance))]
pub async fn pcm(
    caller: DeviceOrUser,
    req: HttpRequest,
    mut payload: web::Payload,
    query: web::Query<PcmQuery>,
    settings: web::Data<Settings>,
    registry: web::Data<Addr<InstanceRegistry>>,
    rates: web::Data<Limits>,
) -> Result<HttpResponse, ApiError> {
    check_rate(&rates, caller.user_id)?;
    let limits = &settings.speech;
    let upload_deadline = tokio::time::Instant::now() + secs(limits.max_upload_secs);
    if query.sample_rate.is_some_and(|rate| rate != SAMPLE_RATE) {
        return Err(ApiError::Validation(format!(
            "sample_rate must be {SAMPLE_RATE}: send 16 kHz 16-bit mono PCM (the gateway does not resample)"
        )));
    }
    let max_bytes = limits.max_pcm_bytes();
    if let Some(length) = content_length(&req) {
        if length > max_bytes {
            return Err(too_long(limits));
        }
        if !length.is_multiple_of(2) {
            return Err(odd_length());
        }
    }

    let lease = acquire(&registry, caller.user_id, limits).await?;
    tracing::Span::current().record("instance", lease.url.as_str());
    let (body, stream) = fastwhisper::body_channel(secs(limits.timeout_secs));
    let (client, base) = (fastwhisper::client(), lease.url.clone());
    let call = fastwhisper::transcribe_pcm(&client, &base, stream);
    let pump = async move {
        let mut received = 0u64;
        while let Some(chunk) = read_timed(payload.next(), limits)
            .await
            .map_err(Fault::Client)?
        {
            received += chunk.len() as u64;
            if received > max_bytes {
                return Err(Fault::Client(too_long(limits)));
            }
            body.send(chunk).await.map_err(Fault::Backend)?;
        }
        if !received.is_multiple_of(2) {
            return Err(Fault::Client(odd_length()));
        }
        body.finish().await.map_err(Fault::Backend)
    };
    let answer = relay(lease, call, pump, limits, upload_deadline).await?;
    tracing::info!(code = answer.code, "pcm transcribed");
    Ok(HttpResponse::Ok().json(answer))
}

/// The user's speech request rate (its own bucket, apart from image submissions).
fn check_rate(rates: &Limits, user_id: i64) -> Result<(), ApiError> {
    match &rates.speech {
        Some(limit) => limit
            .check(&user_id)
            .map(drop)
            .map_err(ApiError::RateLimited),
        None => Ok(()),
    }
}

/// A lease on a free healthy speech instance: 503 at once when none is healthy or too many
/// requests already wait, and after `max_wait_secs` of waiting.
async fn acquire(
    registry: &Addr<InstanceRegistry>,
    user_id: i64,
    limits: &SpeechSettings,
) -> Result<Lease, ApiError> {
    let request = registry.send(Acquire {
        kind: InstanceKind::Speech,
        user_id,
        avoid: None,
        fail_fast: true,
        max_waiting: Some(limits.max_waiting),
    });
    // On timeout the request is dropped, which withdraws it from the registry's line.
    match tokio::time::timeout(secs(limits.max_wait_secs), request).await {
        Ok(Ok(Ok(lease))) => Ok(lease),
        Ok(Ok(Err(AcquireError::NoHealthyInstance))) => Err(ApiError::NoHealthyInstance),
        Ok(Ok(Err(AcquireError::TooManyWaiting | AcquireError::RegistryStopped))) | Err(_) => {
            Err(ApiError::InstancesBusy)
        }
        Ok(Err(mailbox)) => Err(mailbox.into()),
    }
}

/// Runs the backend `call` while `pump` feeds it, then gives the lease back with the
/// outcome. The upload must end by `upload_deadline`; the backend then has
/// `timeout_secs` to answer. When the pump fails, the call is dropped mid-body, which
/// aborts the backend request.
async fn relay(
    lease: Lease,
    call: impl Future<Output = Result<SpeechToTextResponse, BackendError>>,
    pump: impl Future<Output = Result<(), Fault>>,
    limits: &SpeechSettings,
    upload_deadline: tokio::time::Instant,
) -> Result<SpeechToTextResponse, ApiError> {
    let pump = tokio::time::timeout_at(upload_deadline, pump);
    tokio::pin!(call, pump);
    let mut uploaded_at = Instant::now();
    let result = tokio::select! {
        // The call first: a backend that already answered (or failed) has the last word.
        biased;
        answer = &mut call => answer.map_err(Fault::Backend),
        pumped = &mut pump => match pumped {
            Err(_) => Err(Fault::Client(too_slow(limits))),
            Ok(Err(fault)) => Err(fault),
            Ok(Ok(())) => {
                uploaded_at = Instant::now();
                match tokio::time::timeout(secs(limits.timeout_secs), &mut call).await {
                    Ok(answer) => answer.map_err(Fault::Backend),
                    Err(_) => Err(Fault::Backend(BackendError::Timeout(limits.timeout_secs))),
                }
            }
        },
    };
    match result {
        Ok(answer) => {
            lease.release(CallOutcome::Success {
                latency: uploaded_at.elapsed(),
            });
            Ok(answer)
        }
        Err(Fault::Client(error)) => {
            lease.release(CallOutcome::Neutral);
            Err(error)
        }
        Err(Fault::Backend(error)) => {
            tracing::warn!(%error, "speech backend call failed");
            lease.release(CallOutcome::from(&error));
            Err(error.into())
        }
    }
}

/// Reads up to the `file` field, skipping others; returns it with the bytes of form data
/// read so far.
async fn find_file(
    form: &mut Multipart,
    limits: &SpeechSettings,
) -> Result<(Field, usize), ApiError> {
    let mut received = 0;
    for _ in 0..=MAX_OTHER_FIELDS {
        let Some(mut field) = read_timed(form.next(), limits).await? else {
            return Err(ApiError::Validation(
                "multipart field `file` is required".into(),
            ));
        };
        if field.name() == Some("file") {
            return Ok((field, received));
        }
        while let Some(chunk) = read_timed(field.next(), limits).await? {
            received += chunk.len();
            if received > limits.max_upload_bytes {
                return Err(too_large(limits));
            }
        }
    }
    Err(ApiError::Validation(format!(
        "multipart field `file` must be among the first {} fields",
        MAX_OTHER_FIELDS + 1
    )))
}

/// The client's next item; a client silent for `read_timeout_secs` is cut off.
async fn read_timed<T, E: Display>(
    next: impl Future<Output = Option<Result<T, E>>>,
    limits: &SpeechSettings,
) -> Result<Option<T>, ApiError> {
    match tokio::time::timeout(secs(limits.read_timeout_secs), next).await {
        Err(_) => Err(ApiError::UploadTimeout(format!(
            "no data from the client for {}s; upload cut off",
            limits.read_timeout_secs
        ))),
        Ok(None) => Ok(None),
        Ok(Some(Err(e))) => Err(ApiError::MalformedBody(format!(
            "cannot read the upload: {e}"
        ))),
        Ok(Some(Ok(item))) => Ok(Some(item)),
    }
}

fn content_length(req: &HttpRequest) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn too_large(limits: &SpeechSettings) -> ApiError {
    ApiError::PayloadTooLarge {
        limit: limits.max_upload_bytes,
    }
}

fn too_long(limits: &SpeechSettings) -> ApiError {
    ApiError::AudioTooLong {
        max_secs: limits.max_pcm_seconds,
    }
}

fn too_slow(limits: &SpeechSettings) -> ApiError {
    ApiError::UploadTimeout(format!(
        "the upload took longer than {}s; upload cut off",
        limits.max_upload_secs
    ))
}

fn odd_length() -> ApiError {
    ApiError::Validation("PCM body must hold whole 16-bit samples (an even number of bytes)".into())
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
