//! The "fastwhisper" speech protocol: `POST {base}/api/v1/asr` (multipart, field `file`)
//! and `POST {base}/api/v1/asr/pcm` (raw 16 kHz 16-bit LE mono PCM), both answering a
//! SpeechToTextResponse.
//!
//! Request bodies are streamed: the caller feeds a [`BodySender`] while its own client is
//! still uploading, and the backend reads from the other end of a small bounded channel.

use std::time::Duration;

use actix_web::http::{header, StatusCode};
use actix_web::web::Bytes;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{error_detail, with_headers, BackendError, CallHeaders};

/// Chunks in flight between the caller's upload and the backend's: what bounds the memory
/// one streaming request holds (a few network reads' worth).
const CHANNEL_CHUNKS: usize = 8;
/// Largest answer read from a backend.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// Bytes of a failed answer kept as the error's detail.
const ERROR_DETAIL_BYTES: usize = 2048;

/// What speech backends answer, passed on to clients as it came (`code` 1 with a
/// `message` is the backend's "audio too short").
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SpeechToTextResponse {
    /// 0 on success; the backend's own codes otherwise.
    pub code: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "audio too short")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "en")]
    pub language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = 0.98)]
    pub language_probability: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<Vec<Segment>>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Segment {
    /// Seconds from the start of the audio.
    pub start: f64,
    pub end: f64,
    pub text: String,
}

/// The caller's end of a streamed request body. Dropping it without [`BodySender::finish`]
/// aborts the backend request, so a backend never mistakes a cut-off upload for a whole one.
pub struct BodySender {
    /// `None` marks the end of the body.
    tx: mpsc::Sender<Option<Bytes>>,
    /// How long the backend may take to accept the next chunk.
    stall: Duration,
}

impl BodySender {
    pub async fn send(&self, chunk: Bytes) -> Result<(), BackendError> {
        self.push(Some(chunk)).await
    }

    /// The body is complete.
    pub async fn finish(self) -> Result<(), BackendError> {
        self.push(None).await
    }

    async fn push(&self, item: Option<Bytes>) -> Result<(), BackendError> {
        match tokio::time::timeout(self.stall, self.tx.send(item)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(BackendError::Transport(
                "the backend closed the upload".into(),
            )),
            Err(_) => Err(BackendError::Timeout(self.stall.as_secs())),
        }
    }
}

/// A streamed body: the sender for the caller, the stream for [`transcribe_file`] or
/// [`transcribe_pcm`]. `stall` bounds how long the backend may stop reading.
pub fn body_channel(
    stall: Duration,
) -> (
    BodySender,
    impl Stream<Item = Result<Bytes, std::io::Error>> + 'static,
) {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let body = futures_util::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Some(Some(chunk)) => Some((Ok(chunk), Some(rx))),
            Some(None) => None,
            None => Some((
                Err(std::io::Error::other("upload aborted by the gateway")),
                None,
            )),
        }
    });
    (BodySender { tx, stall }, body)
}

/// The multipart framing of one `file` part, so a file can be forwarded as it arrives
/// instead of being collected first.
pub struct FileForm {
    boundary: String,
}

impl Default for FileForm {
    fn default() -> Self {
        FileForm {
            boundary: format!("infergate-{}", uuid::Uuid::new_v4().simple()),
        }
    }
}

impl FileForm {
    pub fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }

    /// Everything before the file's bytes.
    pub fn opening(&self, filename: &str, content_type: &str) -> Bytes {
        // A filename is the client's text inside our header: keep it to one quoted line.
        let filename: String = filename
            .chars()
            .map(|c| match c {
                '"' | '\\' => '_',
                c if c.is_control() => '_',
                c => c,
            })
            .collect();
        let filename = if filename.is_empty() {
            "audio"
        } else {
            &filename
        };
        Bytes::from(format!(
            "--{}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
             Content-Type: {content_type}\r\n\r\n",
            self.boundary
        ))
    }

    /// A text field before the file part, for protocols that want more than the file.
    pub fn text_field(&self, name: &str, value: &str) -> Bytes {
        Bytes::from(format!(
            "--{}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n",
            self.boundary
        ))
    }

    /// Everything after the file's bytes.
    pub fn closing(&self) -> Bytes {
        Bytes::from(format!("\r\n--{}--\r\n", self.boundary))
    }
}

/// `POST {base}/api/v1/asr` with a body framed by `form`.
pub async fn transcribe_file(
    client: &awc::Client,
    base: &str,
    form: &FileForm,
    body: impl Stream<Item = Result<Bytes, std::io::Error>> + 'static,
    headers: &CallHeaders,
) -> Result<SpeechToTextResponse, BackendError> {
    let content_type = form.content_type();
    call(client, base, FILE_PATH, &content_type, body, headers).await
}

/// `POST {base}/api/v1/asr/pcm` with raw PCM.
pub async fn transcribe_pcm(
    client: &awc::Client,
    base: &str,
    body: impl Stream<Item = Result<Bytes, std::io::Error>> + 'static,
    headers: &CallHeaders,
) -> Result<SpeechToTextResponse, BackendError> {
    let content_type = "application/octet-stream";
    call(client, base, PCM_PATH, content_type, body, headers).await
}

pub const FILE_PATH: &str = "/api/v1/asr";
pub const PCM_PATH: &str = "/api/v1/asr/pcm";

async fn call(
    client: &awc::Client,
    base: &str,
    path: &str,
    content_type: &str,
    body: impl Stream<Item = Result<Bytes, std::io::Error>> + 'static,
    headers: &CallHeaders,
) -> Result<SpeechToTextResponse, BackendError> {
    let request = client.post(format!("{}{path}", base.trim_end_matches('/')));
    let mut response = with_headers(request, headers)
        .insert_header((header::CONTENT_TYPE, content_type))
        .send_stream(body)
        .await
        .map_err(|e| BackendError::Transport(e.to_string()))?;
    let status = response.status();
    if status != StatusCode::OK {
        let body = response.body().limit(64 * 1024).await.unwrap_or_default();
        return Err(BackendError::Status {
            status: status.as_u16(),
            detail: error_detail(&body, ERROR_DETAIL_BYTES),
        });
    }
    response
        .json::<SpeechToTextResponse>()
        .limit(MAX_ANSWER_BYTES)
        .await
        .map_err(|e| BackendError::BadAnswer(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_cannot_break_the_part_header() {
        let form = FileForm::default();
        let opening = form.opening("a\"b\r\nX-Evil: 1.wav", "audio/wav");
        let text = std::str::from_utf8(&opening).unwrap();
        assert!(
            text.contains("filename=\"a_b__X-Evil: 1.wav\"\r\n"),
            "{text}"
        );
        assert!(text.starts_with(&format!("--{}\r\n", form.boundary)));
        assert_eq!(form.closing(), format!("\r\n--{}--\r\n", form.boundary));
    }

    #[test]
    fn text_fields_are_parts_of_their_own() {
        let form = FileForm::default();
        assert_eq!(
            form.text_field("model", "whisper-1"),
            format!(
                "--{}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n",
                form.boundary
            )
        );
    }

    #[test]
    fn short_answers_pass_through_unchanged() {
        let raw = r#"{"code":1,"message":"audio too short"}"#;
        let parsed: SpeechToTextResponse = serde_json::from_str(raw).unwrap();
        assert_eq!(serde_json::to_string(&parsed).unwrap(), raw);
    }
}
