//! `POST {base}/v1/images/generations`: one image per call, asked for as base64 JSON. A
//! server that answers with a URL instead is followed to it, on its own host only.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::backends::answers::{read_ok_body, send_error};
use crate::backends::json_images::{answer_limit, decode_image, post_json, DEFAULT_SIDE};
use crate::backends::qwen::GeneratedImage;
use crate::backends::{checked_image, with_headers, BackendError, CallHeaders};
use crate::domain::ImageJob;

#[derive(Serialize)]
struct GenerationRequest<'a> {
    model: &'a str,
    prompt: &'a str,
    size: String,
    n: u32,
    response_format: &'static str,
    // Not in the OpenAI API, which has no such knobs: LocalAI reads `negative_prompt`
    // and `step`, other servers may read `steps` and `seed`, the rest ignore them.
    #[serde(skip_serializing_if = "Option::is_none")]
    negative_prompt: Option<&'a str>,
    steps: u32,
    step: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
}

#[derive(Deserialize)]
struct GenerationAnswer {
    #[serde(default)]
    data: Vec<GeneratedItem>,
}

#[derive(Deserialize)]
struct GeneratedItem {
    b64_json: Option<String>,
    url: Option<String>,
}

/// One generation with `model` on the server at `base`, of the job's width x height
/// (512 each when absent), bounded by `timeout` from start to last byte (an image
/// fetched by URL included) and by `max_bytes` of image; every request carries `headers`.
pub async fn generate(
    client: &awc::Client,
    base: &str,
    model: &str,
    job: &ImageJob,
    timeout: Duration,
    max_bytes: usize,
    headers: &CallHeaders,
) -> Result<GeneratedImage, BackendError> {
    let deadline = Instant::now() + timeout;
    let call = async {
        let request = GenerationRequest {
            model,
            prompt: &job.prompt,
            size: format!(
                "{}x{}",
                job.width.unwrap_or(DEFAULT_SIDE),
                job.height.unwrap_or(DEFAULT_SIDE)
            ),
            n: 1,
            response_format: "b64_json",
            negative_prompt: job.negative_prompt.as_deref(),
            steps: job.steps,
            step: job.steps,
            seed: job.seed,
        };
        let url = format!("{}/v1/images/generations", base.trim_end_matches('/'));
        let limit = answer_limit(max_bytes);
        let answer: GenerationAnswer =
            post_json(client, &url, &request, timeout, limit, headers).await?;
        let Some(first) = answer.data.into_iter().next() else {
            return Err(BackendError::BadAnswer("answer holds no image".into()));
        };
        match (first.b64_json, first.url) {
            (Some(encoded), _) if !encoded.is_empty() => decode_image(&encoded, max_bytes),
            (_, Some(url)) if !url.is_empty() => {
                let fetch = Fetch {
                    deadline,
                    timeout,
                    max_bytes,
                    headers,
                };
                fetch_image(client, base, &url, fetch).await
            }
            _ => Err(BackendError::BadAnswer(
                "the answer's image has neither b64_json nor url".into(),
            )),
        }
    };
    tokio::time::timeout_at(deadline, call)
        .await
        .unwrap_or(Err(BackendError::Timeout(timeout.as_secs())))
}

/// The bounds of the call a fetch by URL is part of.
struct Fetch<'a> {
    deadline: Instant,
    /// The whole call's, named in a timeout error.
    timeout: Duration,
    max_bytes: usize,
    headers: &'a CallHeaders,
}

/// `GET` of an image the server answered by URL, in what is left of the call's time.
async fn fetch_image(
    client: &awc::Client,
    base: &str,
    url: &str,
    fetch: Fetch<'_>,
) -> Result<GeneratedImage, BackendError> {
    let url = image_url(base, url)?;
    let mut response = with_headers(client.get(url.as_str()), fetch.headers)
        .timeout(fetch.deadline.saturating_duration_since(Instant::now()))
        .send()
        .await
        .map_err(|e| send_error(e, fetch.timeout))?;
    let bytes = read_ok_body(&mut response, fetch.max_bytes, "image").await?;
    checked_image(bytes.to_vec(), fetch.max_bytes)
}

/// Where an image URL from the server at `base` points, relative ones resolved against
/// `base`. Only the server's own origin is fetched: an answer must not be able to send
/// the gateway to any other host of its network.
fn image_url(base: &str, url: &str) -> Result<url::Url, BackendError> {
    let base = url::Url::parse(base)
        .map_err(|e| BackendError::BadAnswer(format!("backend URL {base:?} is invalid: {e}")))?;
    let resolved = base
        .join(url)
        .map_err(|e| BackendError::BadAnswer(format!("image URL {url:?} is invalid: {e}")))?;
    if resolved.origin() != base.origin() {
        return Err(BackendError::BadAnswer(format!(
            "image URL {url:?} is not on the backend's own host"
        )));
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::{render_png, SimBackend, SimConfig};

    const MAX_BYTES: usize = 1024 * 1024;

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

    fn sim() -> SimBackend {
        let config = SimConfig {
            latency_ms: 0,
            ..SimConfig::default()
        };
        SimBackend::start(config, "127.0.0.1", 0).unwrap()
    }

    async fn generate_on(
        sim: &SimBackend,
        job: &ImageJob,
        max_bytes: usize,
    ) -> Result<GeneratedImage, BackendError> {
        let timeout = Duration::from_secs(10);
        generate(
            &crate::backends::client(),
            &sim.url(),
            "sim-image",
            job,
            timeout,
            max_bytes,
            &[],
        )
        .await
    }

    fn bad_answer(result: Result<GeneratedImage, BackendError>) -> String {
        match result {
            Err(BackendError::BadAnswer(reason)) => reason,
            Err(other) => panic!("expected BadAnswer, got {other}"),
            Ok(image) => panic!("expected BadAnswer, got an {}", image.content_type),
        }
    }

    #[test]
    fn image_urls_stay_on_the_backends_origin() {
        let base = "http://10.0.0.5:8080";
        let at = |url| image_url(base, url).map(|u| u.to_string());
        assert_eq!(
            at("/files/1.png").unwrap(),
            "http://10.0.0.5:8080/files/1.png"
        );
        assert_eq!(
            at("http://10.0.0.5:8080/generated-images/a.png").unwrap(),
            "http://10.0.0.5:8080/generated-images/a.png"
        );
        for elsewhere in [
            "http://169.254.169.254/latest/meta-data",
            "http://10.0.0.5:8081/a.png",
            "https://10.0.0.5:8080/a.png",
            "file:///etc/passwd",
        ] {
            assert!(at(elsewhere).is_err(), "{elsewhere}");
        }
    }

    #[actix_web::test]
    async fn an_image_comes_back_as_base64_with_the_jobs_fields() {
        let sim = sim();
        let mut job = job("a red fox");
        job.width = Some(320);
        job.height = Some(192);
        job.seed = Some(7);
        job.negative_prompt = Some("blurry".into());
        let image = generate_on(&sim, &job, MAX_BYTES).await.unwrap();
        assert_eq!(image.content_type, "image/png");
        // The simulator draws at a quarter of the size asked for.
        assert_eq!(image.bytes, render_png("a red fox", 80, 48, 20));
        assert_eq!(sim.generated(), 1);
        assert_eq!(sim.arrived_prompts(), ["a red fox"]);
        let request = sim.last_image_request().unwrap();
        assert_eq!(
            request,
            serde_json::json!({
                "model": "sim-image", "prompt": "a red fox", "size": "320x192", "n": 1,
                "response_format": "b64_json", "negative_prompt": "blurry", "steps": 20, "step": 20,
                "seed": 7,
            })
        );
    }

    #[actix_web::test]
    async fn absent_fields_are_left_out_and_the_size_defaults_to_512() {
        let sim = sim();
        generate_on(&sim, &job("a cat"), MAX_BYTES).await.unwrap();
        let request = sim.last_image_request().unwrap();
        assert_eq!(request["size"], "512x512");
        assert!(request.get("seed").is_none() && request.get("negative_prompt").is_none());
    }

    #[actix_web::test]
    async fn an_image_answered_by_url_is_fetched() {
        let sim = sim();
        sim.set_answer_url(true);
        let image = generate_on(&sim, &job("a lighthouse"), MAX_BYTES)
            .await
            .unwrap();
        assert_eq!(image.content_type, "image/png");
        assert_eq!(image.bytes, render_png("a lighthouse", 128, 128, 20));
    }

    #[actix_web::test]
    async fn the_trace_context_goes_with_the_call_and_the_fetch() {
        let sim = sim();
        sim.set_answer_url(true);
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string();
        let headers = [("traceparent", parent.clone())];
        let (client, timeout) = (crate::backends::client(), Duration::from_secs(10));
        let job = job("a cat");
        generate(&client, &sim.url(), "m", &job, timeout, MAX_BYTES, &headers)
            .await
            .unwrap();
        let seen = sim.trace_headers();
        assert_eq!(seen.traceparent, Some(parent));
        assert_eq!(
            seen.with_traceparent, 2,
            "the generation and the image's fetch"
        );
    }

    #[actix_web::test]
    async fn a_failed_generation_carries_the_status_and_the_servers_words() {
        let sim = sim();
        sim.set_failure_rate(1.0);
        match generate_on(&sim, &job("a cat"), MAX_BYTES).await {
            Err(BackendError::Status {
                status: 500,
                detail,
            }) => {
                assert!(detail.contains("CUDA out of memory"), "{detail}")
            }
            other => panic!("expected a 500, got {:?}", other.map(|i| i.content_type)),
        }
    }

    #[actix_web::test]
    async fn malformed_json_is_a_bad_answer() {
        let sim = sim();
        sim.set_malformed_json(true);
        let reason = bad_answer(generate_on(&sim, &job("a cat"), MAX_BYTES).await);
        assert!(reason.contains("not the expected JSON"), "{reason}");
    }

    #[actix_web::test]
    async fn an_image_over_the_cap_is_refused_inline_or_by_url() {
        let sim = sim();
        sim.set_answer_bytes(300_000);
        let reason = bad_answer(generate_on(&sim, &job("a cat"), 200_000).await);
        assert!(reason.contains("larger than"), "{reason}");
        sim.set_answer_url(true);
        let reason = bad_answer(generate_on(&sim, &job("a cat"), 200_000).await);
        assert_eq!(reason, "image larger than 200000 bytes");
        // Under a cap it fits, the same padded image is fine.
        let image = generate_on(&sim, &job("a cat"), 400_000).await.unwrap();
        assert!(image.bytes.len() >= 300_000);
    }

    #[actix_web::test]
    async fn bytes_that_are_no_image_are_refused_inline_or_by_url() {
        let sim = sim();
        sim.set_garbage_image(true);
        let reason = bad_answer(generate_on(&sim, &job("a cat"), MAX_BYTES).await);
        assert!(reason.contains("not a PNG, JPEG or WebP"), "{reason}");
        sim.set_answer_url(true);
        let reason = bad_answer(generate_on(&sim, &job("a cat"), MAX_BYTES).await);
        assert!(reason.contains("not a PNG, JPEG or WebP"), "{reason}");
    }

    #[actix_web::test]
    async fn a_server_that_never_answers_times_out() {
        let sim = sim();
        sim.set_hang_rate(1.0);
        let timeout = Duration::from_millis(300);
        let client = crate::backends::client();
        let result = generate(
            &client,
            &sim.url(),
            "sim-image",
            &job("a cat"),
            timeout,
            MAX_BYTES,
            &[],
        )
        .await;
        assert!(matches!(result, Err(BackendError::Timeout(_))));
    }
}
