//! The "qwen" image protocol: `POST {base}/generate` with JSON, raw image bytes back,
//! typed by their magic bytes.

use std::time::Duration;

use actix_web::http::{header, StatusCode};
use serde::Serialize;

use super::{checked_image, error_detail, with_headers, BackendError, CallHeaders};
use crate::domain::ImageJob;

/// Bytes of a failed answer kept as the task's error.
const ERROR_DETAIL_BYTES: usize = 2048;

#[derive(Serialize)]
struct GenerateRequest<'a> {
    prompt: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    negative_prompt: Option<&'a str>,
    num_inference_steps: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    height: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
}

/// An image as stored: its bytes, and the Content-Type they are.
pub struct GeneratedImage {
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// One generation on the instance at `base`, bounded by `timeout` from start to last byte
/// and by `max_bytes` of answer.
pub async fn generate(
    client: &awc::Client,
    base: &str,
    job: &ImageJob,
    timeout: Duration,
    max_bytes: usize,
    headers: &CallHeaders,
) -> Result<GeneratedImage, BackendError> {
    let call = async {
        let body = GenerateRequest {
            prompt: &job.prompt,
            negative_prompt: job.negative_prompt.as_deref(),
            num_inference_steps: job.steps,
            width: job.width,
            height: job.height,
            seed: job.seed,
        };
        let request = client.post(format!("{}/generate", base.trim_end_matches('/')));
        let mut response = with_headers(request, headers)
            .timeout(timeout)
            .send_json(&body)
            .await
            .map_err(|e| match e {
                awc::error::SendRequestError::Timeout => BackendError::Timeout(timeout.as_secs()),
                other => BackendError::Transport(other.to_string()),
            })?;
        let status = response.status();
        let label = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("").trim().to_string());
        if status != StatusCode::OK {
            let body = response.body().limit(64 * 1024).await.unwrap_or_default();
            return Err(BackendError::Status {
                status: status.as_u16(),
                detail: error_detail(&body, ERROR_DETAIL_BYTES),
            });
        }
        if let Some(label) = label.filter(|label| !label.starts_with("image/")) {
            return Err(BackendError::BadAnswer(format!(
                "expected an image, got Content-Type {label:?}"
            )));
        }
        let bytes = response
            .body()
            .limit(max_bytes)
            .await
            .map_err(|e| match e {
                awc::error::PayloadError::Overflow => {
                    BackendError::BadAnswer(format!("image larger than {max_bytes} bytes"))
                }
                other => BackendError::Transport(format!("reading the image: {other}")),
            })?;
        // Typed by its bytes, whatever the label says: a label proves nothing, and the
        // old servers leave it out for JPEGs.
        checked_image(bytes.to_vec(), max_bytes)
    };
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or(Err(BackendError::Timeout(timeout.as_secs())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::{render_png, SimBackend, SimConfig};

    fn job(prompt: &str) -> ImageJob {
        ImageJob {
            prompt: prompt.into(),
            negative_prompt: None,
            width: None,
            height: None,
            steps: 20,
            seed: None,
        }
    }

    async fn generate_on(sim: &SimBackend) -> Result<GeneratedImage, BackendError> {
        let (client, timeout) = (crate::backends::client(), Duration::from_secs(10));
        generate(&client, &sim.url(), &job("a cat"), timeout, 1 << 20, &[]).await
    }

    #[actix_web::test]
    async fn an_image_is_typed_by_its_bytes_and_noise_is_refused() {
        let config = SimConfig {
            latency_ms: 0,
            ..SimConfig::default()
        };
        let sim = SimBackend::start(config, "127.0.0.1", 0).unwrap();
        let image = generate_on(&sim).await.unwrap();
        assert_eq!(image.content_type, "image/png");
        assert_eq!(image.bytes, render_png("a cat", 64, 64, 20));
        // Random bytes labelled image/png.
        sim.set_garbage_image(true);
        match generate_on(&sim).await {
            Err(BackendError::BadAnswer(reason)) => {
                assert!(reason.contains("not a PNG, JPEG or WebP"), "{reason}")
            }
            other => panic!(
                "expected a bad answer, got {:?}",
                other.map(|i| i.content_type)
            ),
        }
    }
}
