//! The "qwen" image protocol: `POST {base}/generate` with JSON, raw image bytes back.

use std::time::Duration;

use actix_web::http::{header, StatusCode};
use serde::Serialize;

use super::{error_detail, with_headers, BackendError, CallHeaders};
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
        let content_type = response
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
        let content_type = match content_type {
            None => "image/jpeg".to_string(),
            Some(ct) if ct.starts_with("image/") => ct,
            Some(ct) => {
                return Err(BackendError::BadAnswer(format!(
                    "expected an image, got Content-Type {ct:?}"
                )))
            }
        };
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
        if bytes.is_empty() {
            return Err(BackendError::BadAnswer("empty image".into()));
        }
        Ok(GeneratedImage {
            content_type,
            bytes: bytes.to_vec(),
        })
    };
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or(Err(BackendError::Timeout(timeout.as_secs())))
}
