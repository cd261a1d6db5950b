//! What the JSON image protocols (openai, a1111) share: one bounded JSON call, and
//! images in base64.

use std::time::Duration;

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::answers::{read_ok_body, send_error};
use super::qwen::GeneratedImage;
use super::{checked_image, with_headers, BackendError, CallHeaders};

/// Side in pixels asked for when a job names none: what SD 1.5 models are trained at.
pub(super) const DEFAULT_SIDE: u32 = 512;
/// Room in an answer for what surrounds the image (A1111 echoes its parameters and info).
const ANSWER_SLACK_BYTES: usize = 64 * 1024;

/// Standard base64, with or without padding: servers differ on it.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Largest JSON answer that can carry an image of `max_image_bytes` in base64.
pub(super) fn answer_limit(max_image_bytes: usize) -> usize {
    max_image_bytes.div_ceil(3) * 4 + ANSWER_SLACK_BYTES
}

/// POSTs `body` as JSON to `url` with `headers` and parses a JSON answer of at most
/// `max_answer_bytes`; `timeout` bounds the wait for the answer's headers.
pub(super) async fn post_json<A: DeserializeOwned>(
    client: &awc::Client,
    url: &str,
    body: &impl Serialize,
    timeout: Duration,
    max_answer_bytes: usize,
    headers: &CallHeaders,
) -> Result<A, BackendError> {
    let mut response = with_headers(client.post(url), headers)
        .timeout(timeout)
        .send_json(body)
        .await
        .map_err(|e| send_error(e, timeout))?;
    let answer = read_ok_body(&mut response, max_answer_bytes, "answer").await?;
    // Parsed whatever its Content-Type: some servers label JSON as text.
    serde_json::from_slice(&answer)
        .map_err(|e| BackendError::BadAnswer(format!("answer is not the expected JSON: {e}")))
}

/// Decodes a base64 image from an answer and checks it like any image.
pub(super) fn decode_image(
    encoded: &str,
    max_bytes: usize,
) -> Result<GeneratedImage, BackendError> {
    let bytes = BASE64
        .decode(encoded.trim())
        .map_err(|e| BackendError::BadAnswer(format!("image is not valid base64: {e}")))?;
    checked_image(bytes, max_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG_START: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

    fn bad_answer(result: Result<GeneratedImage, BackendError>) -> String {
        match result {
            Err(BackendError::BadAnswer(reason)) => reason,
            Err(other) => panic!("expected BadAnswer, got {other}"),
            Ok(image) => panic!("expected BadAnswer, got an {}", image.content_type),
        }
    }

    #[test]
    fn base64_images_are_decoded_and_typed_by_their_bytes() {
        let encoded = base64::engine::general_purpose::STANDARD.encode(PNG_START);
        let image = decode_image(&encoded, 1024).unwrap();
        assert_eq!(image.content_type, "image/png");
        assert_eq!(image.bytes, PNG_START);
        // Without its padding, and with a stray newline, it is the same image.
        let unpadded = format!("{}\n", encoded.trim_end_matches('='));
        assert_eq!(decode_image(&unpadded, 1024).unwrap().bytes, PNG_START);
    }

    #[test]
    fn unusable_images_are_bad_answers() {
        assert!(bad_answer(decode_image("not base64!", 1024)).contains("base64"));
        assert_eq!(bad_answer(decode_image("", 1024)), "empty image");
        let text = base64::engine::general_purpose::STANDARD.encode("hello, not an image");
        assert!(bad_answer(decode_image(&text, 1024)).contains("not a PNG"));
        let big = [PNG_START, &[0u8; 100]].concat();
        assert!(bad_answer(checked_image(big.clone(), 99)).contains("larger than 99 bytes"));
        assert!(checked_image(big.clone(), big.len()).is_ok());
    }

    #[test]
    fn answers_have_room_for_the_base64_of_the_largest_image() {
        let image = vec![0xFFu8; 3001];
        let encoded = base64::engine::general_purpose::STANDARD.encode(&image);
        assert!(answer_limit(image.len()) >= encoded.len() + ANSWER_SLACK_BYTES);
        assert!(answer_limit(image.len()) < encoded.len() + ANSWER_SLACK_BYTES + 4);
    }
}
