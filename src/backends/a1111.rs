//! The "a1111" image protocol of AUTOMATIC1111's web UI API, which Forge and
//! stable-diffusion.cpp's server speak too: `POST {base}/sdapi/v1/txt2img` answered with
//! base64 images, health from `GET {base}/sdapi/v1/options`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::json_images::{answer_limit, decode_image, post_json, DEFAULT_SIDE};
use super::qwen::GeneratedImage;
use super::BackendError;
use crate::domain::ImageJob;

/// The seed that asks the server to pick one.
const RANDOM_SEED: i64 = -1;

#[derive(Serialize)]
struct Txt2ImgRequest<'a> {
    prompt: &'a str,
    negative_prompt: &'a str,
    steps: u32,
    width: u32,
    height: u32,
    seed: i64,
}

#[derive(Deserialize)]
struct Txt2ImgAnswer {
    #[serde(default)]
    images: Vec<String>,
}

/// One generation on the server at `base`, of the job's width x height (512 each when
/// absent; the seed random when absent), bounded by `timeout` from start to last
/// byte and by `max_bytes` of image.
pub async fn generate(
    client: &awc::Client,
    base: &str,
    job: &ImageJob,
    timeout: Duration,
    max_bytes: usize,
) -> Result<GeneratedImage, BackendError> {
    let call = async {
        let request = Txt2ImgRequest {
            prompt: &job.prompt,
            negative_prompt: job.negative_prompt.as_deref().unwrap_or(""),
            steps: job.steps,
            width: job.width.unwrap_or(DEFAULT_SIDE),
            height: job.height.unwrap_or(DEFAULT_SIDE),
            // Validated seeds fit an i64; the clamp keeps a larger one from wrapping to
            // a negative, which would mean "random".
            seed: job
                .seed
                .map_or(RANDOM_SEED, |seed| seed.min(i64::MAX as u64) as i64),
        };
        let url = format!("{}/sdapi/v1/txt2img", base.trim_end_matches('/'));
        let answer: Txt2ImgAnswer =
            post_json(client, &url, &request, timeout, answer_limit(max_bytes)).await?;
        let Some(first) = answer.images.first() else {
            return Err(BackendError::BadAnswer("answer holds no image".into()));
        };
        decode_image(first, max_bytes)
    };
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or(Err(BackendError::Timeout(timeout.as_secs())))
}

/// `GET {base}/sdapi/v1/options` within `timeout`: a 200 means the server is up.
pub async fn probe(client: &awc::Client, base: &str, timeout: Duration) -> Result<(), String> {
    super::answers::probe_route(client, base, "/sdapi/v1/options", timeout).await
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
            steps: 12,
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
            job,
            timeout,
            max_bytes,
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

    #[actix_web::test]
    async fn an_image_comes_back_with_defaults_filled_in() {
        let sim = sim();
        let image = generate_on(&sim, &job("a quiet harbour"), MAX_BYTES)
            .await
            .unwrap();
        assert_eq!(image.content_type, "image/png");
        assert_eq!(image.bytes, render_png("a quiet harbour", 128, 128, 12));
        assert_eq!(sim.generated(), 1);
        assert_eq!(sim.arrived_prompts(), ["a quiet harbour"]);
        assert_eq!(
            sim.last_image_request().unwrap(),
            serde_json::json!({
                "prompt": "a quiet harbour", "negative_prompt": "", "steps": 12,
                "width": 512, "height": 512, "seed": -1,
            })
        );
    }

    #[actix_web::test]
    async fn the_jobs_own_fields_are_sent() {
        let sim = sim();
        let mut job = job("a cat");
        job.negative_prompt = Some("dogs".into());
        job.width = Some(256);
        job.height = Some(640);
        job.seed = Some(42);
        let image = generate_on(&sim, &job, MAX_BYTES).await.unwrap();
        assert_eq!(image.bytes, render_png("a cat", 64, 160, 12));
        let request = sim.last_image_request().unwrap();
        assert_eq!(
            (&request["negative_prompt"], &request["seed"]),
            (&serde_json::json!("dogs"), &serde_json::json!(42))
        );
    }

    #[actix_web::test]
    async fn a_failed_generation_carries_the_status() {
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
    async fn malformed_oversized_and_non_image_answers_are_bad_answers() {
        let sim = sim();
        sim.set_malformed_json(true);
        let reason = bad_answer(generate_on(&sim, &job("a cat"), MAX_BYTES).await);
        assert!(reason.contains("not the expected JSON"), "{reason}");
        sim.set_malformed_json(false);
        sim.set_answer_bytes(300_000);
        let reason = bad_answer(generate_on(&sim, &job("a cat"), 200_000).await);
        assert!(reason.contains("larger than"), "{reason}");
        sim.set_answer_bytes(0);
        sim.set_garbage_image(true);
        let reason = bad_answer(generate_on(&sim, &job("a cat"), MAX_BYTES).await);
        assert!(reason.contains("not a PNG, JPEG or WebP"), "{reason}");
    }

    #[actix_web::test]
    async fn a_server_is_up_while_it_answers_its_options() {
        let sim = sim();
        let (client, timeout) = (crate::backends::client(), Duration::from_secs(5));
        assert_eq!(probe(&client, &sim.url(), timeout).await, Ok(()));
        sim.set_ready(false);
        let down = probe(&client, &sim.url(), timeout).await.unwrap_err();
        assert!(
            down.contains("GET /sdapi/v1/options answered 503"),
            "{down}"
        );
    }
}
