//! Which client a call goes through, by the protocol of the instance it is leased on:
//! the worker's image calls and the speech service's transcriptions.

use std::time::Duration;

use actix_web::web::Bytes;
use futures_util::future::LocalBoxFuture;
use futures_util::{FutureExt, Stream};

use super::fastwhisper::{self, FileForm, SpeechToTextResponse};
use super::openai::transcriptions::{self, TranscriptionForm};
use super::qwen::{self, GeneratedImage};
use super::{a1111, openai, BackendError, CallHeaders};
use crate::domain::{ImageJob, Protocol};

/// The instance a call goes to.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    pub url: &'a str,
    pub protocol: Protocol,
    /// What openai instances are asked for.
    pub model: Option<&'a str>,
}

impl Target<'_> {
    fn misconfigured(&self, serves: &str) -> BackendError {
        BackendError::Misconfigured(format!(
            "a {:?} instance does not serve {serves}",
            self.protocol
        ))
    }

    fn model_or_default(&self) -> &str {
        // Leases of openai instances always name one (`InstanceSpec::model`).
        self.model.unwrap_or_default()
    }
}

/// The path an image call on `protocol` posts to.
pub fn image_path(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Openai => "/v1/images/generations",
        Protocol::A1111 => "/sdapi/v1/txt2img",
        Protocol::Qwen | Protocol::Fastwhisper => "/generate",
    }
}

/// One image on `target` in its protocol, bounded by `timeout` from start to last byte
/// and by `max_bytes` of image.
pub async fn generate_image(
    client: &awc::Client,
    target: Target<'_>,
    job: &ImageJob,
    timeout: Duration,
    max_bytes: usize,
    headers: &CallHeaders,
) -> Result<GeneratedImage, BackendError> {
    let base = target.url;
    match target.protocol {
        Protocol::Qwen => qwen::generate(client, base, job, timeout, max_bytes, headers).await,
        Protocol::Openai => {
            let model = target.model_or_default();
            openai::images::generate(client, base, model, job, timeout, max_bytes, headers).await
        }
        Protocol::A1111 => a1111::generate(client, base, job, timeout, max_bytes, headers).await,
        Protocol::Fastwhisper => Err(target.misconfigured("images")),
    }
}

/// What an upload to transcribe holds.
#[derive(Clone, Copy, Debug)]
pub enum Upload<'a> {
    /// A file, passed on with its name and type.
    File {
        filename: &'a str,
        content_type: &'a str,
    },
    /// Raw 16 kHz 16-bit LE mono PCM.
    Pcm,
}

/// The path a transcription of `upload` on `protocol` posts to.
pub fn transcription_path(protocol: Protocol, upload: Upload<'_>) -> &'static str {
    match (protocol, upload) {
        (Protocol::Openai, _) => transcriptions::PATH,
        (_, Upload::File { .. }) => fastwhisper::FILE_PATH,
        (_, Upload::Pcm) => fastwhisper::PCM_PATH,
    }
}

/// One transcription call, framed for its protocol: the caller streams `opening`, then
/// the client's audio as it arrives, then `closing` into the body `call` reads.
pub struct Transcription<'a> {
    pub opening: Option<Bytes>,
    pub closing: Option<Bytes>,
    pub call: LocalBoxFuture<'a, Result<SpeechToTextResponse, BackendError>>,
}

/// The call transcribing `upload` on `target`, reading its body from `body`. The old
/// speech protocol has no language field, so `language` reaches openai servers only.
pub fn transcription<'a>(
    client: &'a awc::Client,
    target: Target<'a>,
    upload: Upload<'_>,
    language: Option<&str>,
    body: impl Stream<Item = Result<Bytes, std::io::Error>> + 'static,
    headers: &'a CallHeaders,
) -> Transcription<'a> {
    let base = target.url;
    match (target.protocol, upload) {
        (
            Protocol::Fastwhisper,
            Upload::File {
                filename,
                content_type,
            },
        ) => {
            let form = FileForm::default();
            Transcription {
                opening: Some(form.opening(filename, content_type)),
                closing: Some(form.closing()),
                call: async move {
                    fastwhisper::transcribe_file(client, base, &form, body, headers).await
                }
                .boxed_local(),
            }
        }
        (Protocol::Fastwhisper, Upload::Pcm) => Transcription {
            opening: None,
            closing: None,
            call: fastwhisper::transcribe_pcm(client, base, body, headers).boxed_local(),
        },
        (Protocol::Openai, upload) => {
            let form = TranscriptionForm::new(target.model_or_default()).with_language(language);
            let opening = match upload {
                Upload::File {
                    filename,
                    content_type,
                } => form.opening(filename, content_type),
                // The WAV header goes first, so the samples follow unchanged as they come.
                Upload::Pcm => form.pcm_opening(),
            };
            let content_type = form.content_type();
            Transcription {
                opening: Some(opening),
                closing: Some(form.closing()),
                call: async move {
                    transcriptions::transcribe(client, base, &content_type, body, headers).await
                }
                .boxed_local(),
            }
        }
        (Protocol::Qwen | Protocol::A1111, _) => {
            let error = target.misconfigured("transcriptions");
            Transcription {
                opening: None,
                closing: None,
                call: async move { Err(error) }.boxed_local(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_protocol_has_its_paths() {
        let file = Upload::File {
            filename: "a.wav",
            content_type: "audio/wav",
        };
        assert_eq!(image_path(Protocol::Qwen), "/generate");
        assert_eq!(image_path(Protocol::Openai), "/v1/images/generations");
        assert_eq!(image_path(Protocol::A1111), "/sdapi/v1/txt2img");
        assert_eq!(
            transcription_path(Protocol::Fastwhisper, file),
            "/api/v1/asr"
        );
        assert_eq!(
            transcription_path(Protocol::Fastwhisper, Upload::Pcm),
            "/api/v1/asr/pcm"
        );
        for upload in [file, Upload::Pcm] {
            assert_eq!(
                transcription_path(Protocol::Openai, upload),
                "/v1/audio/transcriptions"
            );
        }
    }
}
