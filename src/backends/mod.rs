//! Clients for the backend protocols: those the existing Python servers speak (qwen,
//! fastwhisper), OpenAI-compatible servers, and AUTOMATIC1111's API.

pub mod a1111;
mod answers;
mod dispatch;
pub mod fastwhisper;
mod json_images;
pub mod openai;
pub mod qwen;
pub mod transcript_formats;

use std::time::Duration;

pub use dispatch::{
    generate_image, image_path, transcription, transcription_path, Target, Transcription, Upload,
};
use qwen::GeneratedImage;

/// Headers of one backend request beyond its protocol's own: the W3C trace context
/// (`traceparent`, `tracestate`) of the call's client span.
pub type CallHeaders = [(&'static str, String)];

/// `request` with `headers` on it.
pub fn with_headers(mut request: awc::ClientRequest, headers: &CallHeaders) -> awc::ClientRequest {
    for (name, value) in headers {
        request = request.insert_header((*name, value.as_str()));
    }
    request
}

/// Longest a pooled connection to a backend is reused after its last call. Backends
/// close idle connections of their own accord (uvicorn and actix-web after 5 s,
/// gunicorn after 2 s); reusing one the moment its backend closes it fails the request
/// ("connector has been disconnected") and costs the task an attempt.
const REUSE_IDLE_FOR: Duration = Duration::from_secs(1);

/// The outbound client for backend calls and pings. Redirects are not followed (a
/// backend that redirects is misconfigured), and there is no client-wide timeout: each
/// call bounds its own phases. awc clients are bound to their thread: make one per actor
/// or per HTTP worker thread, not per call.
pub fn client() -> awc::Client {
    awc::Client::builder()
        .connector(awc::Connector::new().conn_keep_alive(REUSE_IDLE_FOR))
        .disable_redirects()
        .disable_timeout()
        .finish()
}

/// Why a backend call failed; the Worker decides what to do by matching on it.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("backend unreachable: {0}")]
    Transport(String),
    #[error("backend did not answer within {0}s")]
    Timeout(u64),
    #[error("backend answered {status}: {detail}")]
    Status { status: u16, detail: String },
    #[error("backend answer is unusable: {0}")]
    BadAnswer(String),
    /// The instance's protocol does not serve its kind (a row changed by hand).
    #[error("backend instance is misconfigured: {0}")]
    Misconfigured(String),
}

impl BackendError {
    /// Every `kind`, for the metric series of an instance that is removed.
    pub const KINDS: [&'static str; 5] = [
        "transport",
        "timeout",
        "status",
        "bad_answer",
        "misconfigured",
    ];

    /// A short name of the failure, for the `error.type` of a trace span.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendError::Transport(_) => "transport",
            BackendError::Timeout(_) => "timeout",
            BackendError::Status { .. } => "status",
            BackendError::BadAnswer(_) => "bad_answer",
            BackendError::Misconfigured(_) => "misconfigured",
        }
    }

    /// Whether the failure says the instance itself is in trouble (counts towards
    /// ejecting it); a 4xx means the request was at fault.
    pub fn is_instance_fault(&self) -> bool {
        !matches!(self, BackendError::Status { status, .. } if (400..500).contains(status))
    }
}

/// Keeps the first `max` bytes of an error body, cut at a character boundary.
pub fn error_detail(body: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(max)]).into_owned();
    // Control characters (a NUL above all, which PostgreSQL refuses in text) are not
    // worth storing with the task.
    let text: String = text
        .trim_end_matches('\u{FFFD}')
        .trim()
        .chars()
        .filter(|c| !c.is_control() || matches!(c, '\n' | '\t'))
        .collect();
    if text.is_empty() {
        "(empty body)".into()
    } else {
        text
    }
}

/// The image format named by the first bytes of `bytes`: PNG, JPEG or WebP.
pub fn sniff_image(bytes: &[u8]) -> Option<&'static str> {
    match bytes {
        [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, ..] => Some("image/png"),
        [0xFF, 0xD8, 0xFF, ..] => Some("image/jpeg"),
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => Some("image/webp"),
        _ => None,
    }
}

/// An image of 1 to `max_bytes` bytes that is a PNG, JPEG or WebP, typed by its content
/// rather than by what the server says it is.
fn checked_image(bytes: Vec<u8>, max_bytes: usize) -> Result<GeneratedImage, BackendError> {
    if bytes.is_empty() {
        return Err(BackendError::BadAnswer("empty image".into()));
    }
    if bytes.len() > max_bytes {
        return Err(BackendError::BadAnswer(format!(
            "image larger than {max_bytes} bytes"
        )));
    }
    let Some(content_type) = sniff_image(&bytes) else {
        return Err(BackendError::BadAnswer(
            "answer is not a PNG, JPEG or WebP image".into(),
        ));
    };
    Ok(GeneratedImage {
        content_type: content_type.into(),
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_kind_is_listed() {
        let every = [
            BackendError::Transport(String::new()),
            BackendError::Timeout(1),
            BackendError::Status {
                status: 500,
                detail: String::new(),
            },
            BackendError::BadAnswer(String::new()),
            BackendError::Misconfigured(String::new()),
        ];
        let kinds: Vec<&str> = every.iter().map(BackendError::kind).collect();
        assert_eq!(kinds, BackendError::KINDS);
    }

    #[test]
    fn images_are_known_by_their_magic_bytes() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        assert_eq!(sniff_image(png), Some("image/png"));
        assert_eq!(
            sniff_image(b"\xFF\xD8\xFF\xE0\0\x10JFIF"),
            Some("image/jpeg")
        );
        assert_eq!(sniff_image(b"RIFF\x24\0\0\0WEBPVP8 "), Some("image/webp"));
        // Near misses: a WAV is RIFF too, a PNG signature cut short is not a PNG.
        assert_eq!(sniff_image(b"RIFF\x24\0\0\0WAVEfmt "), None);
        assert_eq!(sniff_image(&png[..7]), None);
        assert_eq!(sniff_image(b"\xFF\xD8"), None);
        assert_eq!(sniff_image(b"<html>not an image</html>"), None);
        assert_eq!(sniff_image(b""), None);
    }

    #[test]
    fn error_detail_is_capped_and_never_empty() {
        assert_eq!(error_detail(b"", 2048), "(empty body)");
        assert_eq!(error_detail(&[b'x'; 5000], 2048).len(), 2048);
        assert_eq!(error_detail(b"bad\0 input\x07\n", 2048), "bad input");
        // A multi-byte character cut in half is dropped, not mangled.
        assert_eq!(error_detail("aé".as_bytes(), 2), "a");
    }
}
