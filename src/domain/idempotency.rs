use sha2::{Digest, Sha256};

use super::ImageJob;
use super::ValidationError;

/// A client's `Idempotency-Key` with a fingerprint of the request it came with: a retry
/// of the same request gets the same task, another request under the key is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    pub request_hash: String,
}

pub const MAX_KEY_CHARS: usize = 255;

impl Idempotency {
    /// Keys are 1–255 visible ASCII characters (UUIDs, ULIDs, counters all fit).
    pub fn parse(header: &str, job: &ImageJob) -> Result<Idempotency, ValidationError> {
        let valid = (1..=MAX_KEY_CHARS).contains(&header.len())
            && header.bytes().all(|b| b.is_ascii_graphic());
        if !valid {
            return Err(ValidationError(format!(
                "Idempotency-Key must be 1 to {MAX_KEY_CHARS} visible ASCII characters"
            )));
        }
        let canonical = serde_json::to_vec(job).expect("an ImageJob always serialises");
        Ok(Idempotency {
            key: header.to_string(),
            request_hash: format!("{:x}", Sha256::digest(canonical)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn same_request_same_hash_other_request_other_hash() {
        let a = Idempotency::parse("k-1", &job("a cat")).unwrap();
        assert_eq!(a, Idempotency::parse("k-1", &job("a cat")).unwrap());
        assert_ne!(
            a.request_hash,
            Idempotency::parse("k-1", &job("a dog"))
                .unwrap()
                .request_hash
        );
        assert!(Idempotency::parse("", &job("a")).is_err());
        assert!(Idempotency::parse("has space", &job("a")).is_err());
        assert!(Idempotency::parse(&"k".repeat(256), &job("a")).is_err());
    }
}
