//! Requests of the OpenAI-compatible routes, parsed into what the gateway does with them:
//! `n` image jobs answered in one format, and a transcription's format and language.
//! A `model` is taken for the SDKs' sake and checked as text; the pool routes by kind,
//! so it chooses nothing.

use serde::Deserialize;

use super::image_job::whole;
use super::{ImageJob, ImageLimits, ImageRequest, ValidationError};
use crate::backends::transcript_formats::TranscriptFormat;

/// Most images one call may ask for.
pub const MAX_IMAGES: usize = 4;
const MAX_MODEL_CHARS: usize = 256;
/// Longest language code taken (ISO 639-1 codes are two letters, some servers take names).
const MAX_LANGUAGE_CHARS: usize = 32;

/// Body of `POST /v1/images/generations`, OpenAI's fields plus the gateway's own
/// `negative_prompt`, `steps` and `seed`. Unknown fields (`quality`, `style`, `user`, …)
/// are ignored.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct ImageGenerationRequest {
    /// What to draw: required, not blank, by the rules of `ImageRequest.prompt` (the
    /// served document states them). An `Option` so a missing prompt gets our message.
    #[schema(
        required = true,
        value_type = String,
        min_length = 1,
        example = "A watercolor lighthouse at dawn"
    )]
    pub prompt: Option<String>,
    /// Accepted and not used for routing: every image instance serves every request.
    #[schema(
        example = "infergate-image",
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub model: Option<String>,
    /// Images to make, 1 to 4 (default 1); each is a task of its own.
    #[schema(minimum = 1, maximum = 4)]
    #[serde(default, deserialize_with = "whole")]
    pub n: Option<i64>,
    /// `WIDTHxHEIGHT`, each 64 to `image.max_side`, or `auto` (the backend's default).
    /// The document lists common sizes; any other within the limits is taken too.
    #[schema(example = "512x512")]
    pub size: Option<String>,
    /// `b64_json` (default: the image in the answer) or `url` (a link to
    /// `/api/images/{id}`, fetched with the same credentials).
    #[schema(example = "b64_json", pattern = "^(b64_json|url)$")]
    pub response_format: Option<String>,
    #[schema(example = "blurry, low quality")]
    pub negative_prompt: Option<String>,
    /// Inference steps, 1 to `image.max_steps` (default `image.default_steps`).
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "whole")]
    pub steps: Option<i64>,
    /// Non-negative seed for reproducible images.
    #[schema(minimum = 0)]
    #[serde(default, deserialize_with = "whole")]
    pub seed: Option<i64>,
}

/// How generated images are answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ImageFormat {
    #[default]
    B64Json,
    Url,
}

/// A checked `POST /v1/images/generations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageGeneration {
    pub job: ImageJob,
    pub n: usize,
    pub format: ImageFormat,
}

impl ImageGeneration {
    pub fn parse(
        request: ImageGenerationRequest,
        limits: &ImageLimits,
    ) -> Result<ImageGeneration, ValidationError> {
        if let Some(model) = &request.model {
            check_model(model)?;
        }
        let n = match request.n {
            None => 1,
            Some(n) if (1..=MAX_IMAGES as i64).contains(&n) => n as usize,
            Some(_) => {
                return Err(ValidationError(format!(
                    "n must be between 1 and {MAX_IMAGES}"
                )))
            }
        };
        let format = match request.response_format.as_deref() {
            None | Some("b64_json") => ImageFormat::B64Json,
            Some("url") => ImageFormat::Url,
            Some(other) => {
                return Err(ValidationError(format!(
                    "response_format must be b64_json or url (got {other:?})"
                )))
            }
        };
        let (width, height) = match request.size.as_deref() {
            None | Some("auto") => (None, None),
            Some(size) => {
                let (width, height) = parse_size(size).ok_or_else(|| {
                    ValidationError(format!(
                        "size must be WIDTHxHEIGHT, such as 512x512, or auto (got {size:?})"
                    ))
                })?;
                (Some(width), Some(height))
            }
        };
        let job = ImageJob::parse(
            ImageRequest {
                prompt: request.prompt,
                negative_prompt: request.negative_prompt,
                width,
                height,
                steps: request.steps,
                seed: request.seed,
                webhook_url: None,
                webhook_events: None,
            },
            limits,
        )?;
        Ok(ImageGeneration { job, n, format })
    }
}

/// `"512x768"` as its two sides (their range is the job's rule).
fn parse_size(size: &str) -> Option<(i64, i64)> {
    let (width, height) = size.split_once('x')?;
    let side = |text: &str| {
        let digits =
            !text.is_empty() && text.len() <= 6 && text.bytes().all(|b| b.is_ascii_digit());
        digits.then(|| text.parse().ok()).flatten()
    };
    Some((side(width)?, side(height)?))
}

fn check_model(model: &str) -> Result<(), ValidationError> {
    if model.chars().count() > MAX_MODEL_CHARS || model.chars().any(char::is_control) {
        return Err(ValidationError(format!(
            "model must be one line of at most {MAX_MODEL_CHARS} characters"
        )));
    }
    Ok(())
}

/// A checked `POST /v1/audio/transcriptions`, from its form's text fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TranscriptionRequest {
    pub format: TranscriptFormat,
    /// The audio's language, passed to backends that take one.
    pub language: Option<String>,
}

impl TranscriptionRequest {
    /// From the fields `model`, `response_format` and `language` (each absent or as
    /// sent); other fields OpenAI defines (`prompt`, `temperature`, …) are ignored.
    pub fn parse(
        model: Option<&str>,
        response_format: Option<&str>,
        language: Option<&str>,
    ) -> Result<TranscriptionRequest, ValidationError> {
        if let Some(model) = model {
            check_model(model)?;
        }
        let format = match response_format {
            Some(name) => name
                .parse::<TranscriptFormat>()
                .map_err(|e| ValidationError(e.to_string()))?,
            None => TranscriptFormat::default(),
        };
        let language = match language.map(str::trim) {
            None | Some("") => None,
            Some(language) => {
                let known = language.len() <= MAX_LANGUAGE_CHARS
                    && language
                        .bytes()
                        .all(|b| b.is_ascii_alphabetic() || b == b'-');
                if !known {
                    return Err(ValidationError(format!(
                        "language must be a language code such as en (got {language:?})"
                    )));
                }
                Some(language.to_string())
            }
        };
        Ok(TranscriptionRequest { format, language })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(prompt: &str) -> ImageGenerationRequest {
        ImageGenerationRequest {
            prompt: Some(prompt.into()),
            ..Default::default()
        }
    }

    fn parsed(request: ImageGenerationRequest) -> Result<ImageGeneration, ValidationError> {
        ImageGeneration::parse(request, &ImageLimits::default())
    }

    #[test]
    fn defaults_are_one_image_in_base64_at_the_backends_size() {
        let generation = parsed(request("a cat")).unwrap();
        assert_eq!((generation.n, generation.format), (1, ImageFormat::B64Json));
        assert_eq!((generation.job.width, generation.job.height), (None, None));
        assert_eq!(generation.job.steps, 20);
    }

    #[test]
    fn size_n_format_and_the_extras_are_taken() {
        let generation = parsed(ImageGenerationRequest {
            model: Some("dall-e-3".into()),
            n: Some(4),
            size: Some("768x512".into()),
            response_format: Some("url".into()),
            negative_prompt: Some("blurry".into()),
            steps: Some(8),
            seed: Some(3),
            ..request("a cat")
        })
        .unwrap();
        assert_eq!((generation.n, generation.format), (4, ImageFormat::Url));
        let job = generation.job;
        assert_eq!(
            (job.width, job.height, job.steps, job.seed),
            (Some(768), Some(512), 8, Some(3))
        );
        assert_eq!(job.negative_prompt.as_deref(), Some("blurry"));
        let auto = parsed(ImageGenerationRequest {
            size: Some("auto".into()),
            ..request("a cat")
        });
        assert_eq!(auto.unwrap().job.width, None);
    }

    #[test]
    fn out_of_range_and_unknown_values_are_refused_with_the_field_named() {
        let refused = |change: fn(&mut ImageGenerationRequest), field: &str| {
            let mut request = request("a cat");
            change(&mut request);
            let error = parsed(request).unwrap_err().0;
            assert!(error.starts_with(field), "{field}: {error}");
        };
        refused(|r| r.n = Some(0), "n must be between 1 and 4");
        refused(|r| r.n = Some(5), "n must be between 1 and 4");
        refused(
            |r| r.response_format = Some("png".into()),
            "response_format",
        );
        refused(|r| r.size = Some("1024".into()), "size");
        refused(|r| r.size = Some("-5x64".into()), "size");
        refused(
            |r| r.size = Some("32x64".into()),
            "width must be between 64",
        );
        refused(
            |r| r.size = Some("64x4096".into()),
            "height must be between 64",
        );
        refused(|r| r.prompt = None, "prompt must not be empty");
        refused(|r| r.model = Some("a\nb".into()), "model");
    }

    #[test]
    fn transcription_fields_are_checked() {
        let request =
            TranscriptionRequest::parse(Some("whisper-1"), Some("srt"), Some("de")).unwrap();
        assert_eq!(request.format, TranscriptFormat::Srt);
        assert_eq!(request.language.as_deref(), Some("de"));
        assert_eq!(
            TranscriptionRequest::parse(None, None, Some(" ")).unwrap(),
            TranscriptionRequest::default()
        );
        let error = TranscriptionRequest::parse(None, Some("xml"), None).unwrap_err();
        assert!(
            error.0.starts_with("response_format must be one of"),
            "{error}"
        );
        assert!(TranscriptionRequest::parse(None, None, Some("en\r\nX: y")).is_err());
    }
}
