//! `POST /v1/audio/transcriptions`: a multipart upload (`file`, `model`,
//! `response_format`, `language`) streamed through the speech pool like
//! `/api/v1/speech/transcribe`, and the transcript rendered in the asked format.
//!
//! Text fields are read as they come. Those before the file (where the SDKs put them)
//! are known before the backend is called; those after it (where curl examples put
//! them) are read once the file has been streamed, which is in time for
//! `response_format`, not for `language`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use actix_multipart::{Field, Multipart};
use actix_web::http::header;
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::{Stream, StreamExt};

use crate::domain::TranscriptionRequest;
use crate::error::{ApiError, OpenAiErrorBody};
use crate::http::caller::DeviceOrUser;
use crate::http::speech::{check_rate, find_file, open_form, MAX_OTHER_FIELDS};
use crate::limits::Limits;
use crate::speech::SpeechService;

/// Longest text field kept; OpenAI's longest (`prompt`) is far shorter.
const MAX_FIELD_BYTES: usize = 4096;

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/audio/transcriptions", web::post().to(transcriptions));
}

/// The form of `POST /v1/audio/transcriptions`.
#[derive(utoipa::ToSchema)]
pub struct TranscriptionForm {
    /// The audio file, passed on to the backend with its filename.
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
    /// Accepted and not used for routing: any speech instance serves the request.
    #[schema(example = "whisper-1")]
    pub model: Option<String>,
    /// `json` (default), `text`, `verbose_json`, `srt` or `vtt`.
    #[schema(example = "verbose_json")]
    pub response_format: Option<String>,
    /// The audio's language (ISO 639-1), passed to openai backends when sent before `file`.
    #[schema(example = "en")]
    pub language: Option<String>,
}

/// A form's text fields as read: at most [`MAX_OTHER_FIELDS`] of [`MAX_FIELD_BYTES`].
#[derive(Default)]
struct TextFields(HashMap<String, Vec<u8>>);

impl TextFields {
    fn push(&mut self, name: &str, chunk: &[u8]) -> Result<(), String> {
        if !self.0.contains_key(name) && self.0.len() >= MAX_OTHER_FIELDS {
            return Err(format!("more than {MAX_OTHER_FIELDS} form fields"));
        }
        let value = self.0.entry(name.to_string()).or_default();
        if value.len() + chunk.len() > MAX_FIELD_BYTES {
            return Err(format!(
                "form field `{name}` is longer than {MAX_FIELD_BYTES} bytes"
            ));
        }
        value.extend_from_slice(chunk);
        Ok(())
    }

    fn get(&self, name: &str) -> Result<Option<&str>, ApiError> {
        self.0
            .get(name)
            .map(|value| {
                std::str::from_utf8(value)
                    .map(str::trim)
                    .map_err(|_| ApiError::Validation(format!("form field `{name}` is not UTF-8")))
            })
            .transpose()
    }
}

/// Transcribe an audio file, as OpenAI's API does.
#[utoipa::path(post, path = "/v1/audio/transcriptions", tag = "openai",
    request_body(content = TranscriptionForm, content_type = "multipart/form-data"),
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "The transcript: `{text}` for json, the full verbose_json, or plain text, SRT or WebVTT", content_type = "application/json"),
        (status = 400, description = "Not multipart/form-data, no `file`, an unknown response_format, or audio the backend refused (such as too short)", body = OpenAiErrorBody),
        (status = 401, description = "Missing or bad key or token", body = OpenAiErrorBody),
        (status = 408, description = "The upload stalled or took too long", body = OpenAiErrorBody),
        (status = 413, description = "Upload larger than speech.max_upload_bytes", body = OpenAiErrorBody),
        (status = 429, description = "Over the speech request rate (Retry-After)", body = OpenAiErrorBody),
        (status = 502, description = "The backend failed", body = OpenAiErrorBody),
        (status = 503, description = "No healthy speech instance, or all busy (Retry-After)", body = OpenAiErrorBody),
        (status = 504, description = "The backend did not answer in time", body = OpenAiErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id, key_id = caller.key_id, instance))]
pub async fn transcriptions(
    caller: DeviceOrUser,
    req: HttpRequest,
    payload: web::Payload,
    speech: web::Data<SpeechService>,
    rates: web::Data<Limits>,
) -> Result<HttpResponse, ApiError> {
    check_rate(&rates, caller.user_id)?;
    let deadline = speech.upload_deadline();
    let mut form = open_form(&req, payload, &speech)?;
    let mut before = TextFields::default();
    let keep = |name: &str, chunk: &[u8]| before.push(name, chunk).map_err(ApiError::Validation);
    let mut pace = speech.pace();
    let (field, audio) = find_file(&mut form, &speech, &mut pace, deadline, keep).await?;
    let known = parse(&before)?;
    let after = Rc::new(RefCell::new(TextFields::default()));
    let upload = file_then_fields(form, field, after.clone());
    let language = known.language.as_deref();
    let transcript = speech
        .transcribe(
            caller.user_id,
            audio,
            language,
            Box::pin(upload),
            pace,
            deadline,
        )
        .await?;
    let after = after.take();
    let format = match after.get("response_format")? {
        Some(_) => parse(&after)?.format,
        None => known.format,
    };
    if transcript.code != 0 {
        // The old backends' own refusal of the audio, such as "audio too short".
        let message = transcript
            .message
            .unwrap_or_else(|| "the backend refused the audio".into());
        return Err(ApiError::Validation(message));
    }
    tracing::debug!(?format, "file transcribed");
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, format.content_type()))
        .body(format.render(&transcript)))
}

fn parse(fields: &TextFields) -> Result<TranscriptionRequest, ApiError> {
    let (model, format) = (fields.get("model")?, fields.get("response_format")?);
    Ok(TranscriptionRequest::parse(
        model,
        format,
        fields.get("language")?,
    )?)
}

/// The file's bytes, then (after its last) the text fields that follow it, read into
/// `after`. The form stays alive while its field is read: a field reads through it.
fn file_then_fields(
    form: Multipart,
    field: Field,
    after: Rc<RefCell<TextFields>>,
) -> impl Stream<Item = Result<Bytes, String>> {
    futures_util::stream::unfold(Some((form, field)), move |state| {
        let after = after.clone();
        async move {
            let (mut form, mut field) = state?;
            match field.next().await {
                Some(Ok(chunk)) => Some((Ok(chunk), Some((form, field)))),
                Some(Err(e)) => Some((Err(e.to_string()), None)),
                None => {
                    drop(field);
                    let mut fields = TextFields::default();
                    let read = read_fields(&mut form, &mut fields).await;
                    *after.borrow_mut() = fields;
                    read.err().map(|e| (Err(e), None))
                }
            }
        }
    })
}

/// The rest of the form, into `fields`.
async fn read_fields(form: &mut Multipart, fields: &mut TextFields) -> Result<(), String> {
    while let Some(field) = form.next().await {
        let mut field = field.map_err(|e| e.to_string())?;
        let name = field.name().unwrap_or_default().to_string();
        while let Some(chunk) = field.next().await {
            fields.push(&name, &chunk.map_err(|e| e.to_string())?)?;
        }
    }
    Ok(())
}
