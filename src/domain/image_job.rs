use serde::{Deserialize, Serialize};

use super::{ValidationError, WebhookEvent};

/// What an image request may ask for (the `[image]` settings).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageLimits {
    pub max_prompt_chars: usize,
    pub default_steps: u32,
    pub max_steps: u32,
    pub max_side: u32,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_prompt_chars: 4000,
            default_steps: 20,
            max_steps: 150,
            max_side: 2048,
        }
    }
}

/// Body of `POST /api/v1/image/async`.
/// Unknown fields are ignored, as the old system ignored them.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ImageRequest {
    /// Up to `image.max_prompt_chars` characters, not blank, without control characters
    /// (tabs and line breaks are fine). The document states the running server's limits.
    #[schema(value_type = String, required = true, min_length = 1, max_length = 4000,
        pattern = "^[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]*[^\\t\\n\\u000B\\u000C\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]*$",
        example = "A futuristic city with flying cars")]
    pub prompt: Option<String>,
    /// Up to `image.max_prompt_chars` characters, without control characters; blank is none.
    #[schema(
        max_length = 4000,
        pattern = "^[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]*$",
        example = "blurry, low quality"
    )]
    pub negative_prompt: Option<String>,
    /// Pixels, 64 to `image.max_side`.
    #[schema(minimum = 64, maximum = 2048)]
    #[serde(default, deserialize_with = "whole")]
    pub width: Option<i64>,
    /// Pixels, 64 to `image.max_side`.
    #[schema(minimum = 64, maximum = 2048)]
    #[serde(default, deserialize_with = "whole")]
    pub height: Option<i64>,
    /// Inference steps, 1 to `image.max_steps` (default `image.default_steps`).
    #[schema(minimum = 1, maximum = 150)]
    #[serde(default, deserialize_with = "whole")]
    pub steps: Option<i64>,
    /// Non-negative seed for reproducible images.
    #[schema(minimum = 0)]
    #[serde(default, deserialize_with = "whole")]
    pub seed: Option<i64>,
    /// Where to POST this task's events, signed with your webhook secret (create it
    /// first: `POST /api/v1/webhook-secret`): http or https, at most 2,048 characters,
    /// leading to a public address (checked on the address the name resolves to).
    #[schema(
        max_length = 2048,
        pattern = "^https?://[^/@:?#\\s]+",
        example = "https://example.com/hooks/infergate"
    )]
    pub webhook_url: Option<String>,
    /// Which events the webhook receives (default `["completed"]`; `completed` is DONE,
    /// FAILED or CANCELLED). Only with `webhook_url`.
    #[schema(min_items = 1, value_type = Option<Vec<WebhookEvent>>)]
    pub webhook_events: Option<Vec<String>>,
}

/// A whole number, also when written `64.0`: JSON Schema's integers include those, so a
/// client generating requests from the document may send them.
pub(super) fn whole<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde::de::Error;
    let Some(number) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    let range = i64::MIN as f64..i64::MAX as f64;
    number
        .as_i64()
        .or_else(|| {
            let f = number.as_f64()?;
            (f.fract() == 0.0 && range.contains(&f)).then_some(f as i64)
        })
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("{number} is not a whole number")))
}

/// A validated text-to-image job: what a worker sends to an image backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ImageJob {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub steps: u32,
    pub seed: Option<u64>,
}

impl ImageJob {
    pub fn parse(request: ImageRequest, limits: &ImageLimits) -> Result<ImageJob, ValidationError> {
        let prompt = request.prompt.unwrap_or_default();
        if prompt.trim().is_empty() {
            return Err(ValidationError::new("prompt must not be empty"));
        }
        check_text("prompt", &prompt, limits.max_prompt_chars)?;
        let negative_prompt = match request.negative_prompt {
            Some(text) if text.trim().is_empty() => None,
            Some(text) => {
                check_text("negative_prompt", &text, limits.max_prompt_chars)?;
                Some(text)
            }
            None => None,
        };
        let side = |name: &str, value: Option<i64>| -> Result<Option<u32>, ValidationError> {
            value
                .map(|v| in_range(name, v, 64, limits.max_side as i64).map(|v| v as u32))
                .transpose()
        };
        let steps = match request.steps {
            Some(v) => in_range("steps", v, 1, limits.max_steps as i64)? as u32,
            None => limits.default_steps,
        };
        let seed = match request.seed {
            Some(v) => Some(in_range("seed", v, 0, i64::MAX)? as u64),
            None => None,
        };
        Ok(ImageJob {
            prompt,
            negative_prompt,
            width: side("width", request.width)?,
            height: side("height", request.height)?,
            steps,
            seed,
        })
    }
}

fn check_text(name: &str, text: &str, max_chars: usize) -> Result<(), ValidationError> {
    if text.chars().count() > max_chars {
        return Err(ValidationError(format!(
            "{name} must be at most {max_chars} characters"
        )));
    }
    if text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(ValidationError(format!(
            "{name} must not contain control characters"
        )));
    }
    Ok(())
}

fn in_range(name: &str, value: i64, min: i64, max: i64) -> Result<i64, ValidationError> {
    if value < min || value > max {
        return Err(ValidationError(format!(
            "{name} must be between {min} and {max}"
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(prompt: &str) -> ImageRequest {
        ImageRequest {
            prompt: Some(prompt.into()),
            negative_prompt: None,
            width: None,
            height: None,
            steps: None,
            seed: None,
            webhook_url: None,
            webhook_events: None,
        }
    }

    #[test]
    fn whole_numbers_may_be_written_with_a_zero_fraction() {
        let parsed: ImageRequest =
            serde_json::from_str(r#"{"prompt":"a","width":1020.0,"steps":20,"seed":null}"#)
                .unwrap();
        assert_eq!(
            (parsed.width, parsed.steps, parsed.seed),
            (Some(1020), Some(20), None)
        );
        assert!(serde_json::from_str::<ImageRequest>(r#"{"width":64.5}"#).is_err());
        assert!(serde_json::from_str::<ImageRequest>(r#"{"width":1e30}"#).is_err());
        assert!(serde_json::from_str::<ImageRequest>(r#"{"width":"64"}"#).is_err());
    }

    #[test]
    fn defaults_fill_in_the_steps() {
        let job = ImageJob::parse(request("a cat"), &ImageLimits::default()).unwrap();
        assert_eq!(job.steps, 20);
        assert_eq!(job.prompt, "a cat");
    }

    #[test]
    fn rejects_blank_long_and_out_of_range() {
        let limits = ImageLimits::default();
        assert!(ImageJob::parse(request("   "), &limits).is_err());
        assert!(ImageJob::parse(request(&"x".repeat(4001)), &limits).is_err());
        assert!(ImageJob::parse(request(&"x".repeat(4000)), &limits).is_ok());
        let mut r = request("a");
        r.width = Some(10);
        assert!(ImageJob::parse(r, &limits).is_err());
        let mut r = request("a");
        r.steps = Some(0);
        assert!(ImageJob::parse(r, &limits).is_err());
        let mut r = request("a");
        r.seed = Some(-1);
        assert!(ImageJob::parse(r, &limits).is_err());
    }
}
