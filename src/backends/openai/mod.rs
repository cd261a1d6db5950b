//! The "openai" protocol: OpenAI-compatible servers (LocalAI, speaches, vLLM, the
//! whisper.cpp and stable-diffusion.cpp servers). Images come from
//! `/v1/images/generations`, transcripts from `/v1/audio/transcriptions`, health from
//! `/v1/models`.

use std::time::Duration;

pub mod images;
pub mod transcriptions;

/// `GET {base}/v1/models` within `timeout`: a 200 means the server is up.
pub async fn probe(client: &awc::Client, base: &str, timeout: Duration) -> Result<(), String> {
    super::answers::probe_route(client, base, "/v1/models", timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::{SimBackend, SimConfig};

    #[actix_web::test]
    async fn a_server_is_up_while_it_lists_its_models() {
        let sim = SimBackend::start(SimConfig::default(), "127.0.0.1", 0).unwrap();
        let client = crate::backends::client();
        let timeout = Duration::from_secs(5);
        assert_eq!(probe(&client, &sim.url(), timeout).await, Ok(()));
        sim.set_ready(false);
        let down = probe(&client, &sim.url(), timeout).await.unwrap_err();
        assert!(down.contains("GET /v1/models answered 503"), "{down}");
    }

    #[actix_web::test]
    async fn a_server_that_is_not_there_is_down() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let base = format!("http://127.0.0.1:{port}");
        let down = probe(&crate::backends::client(), &base, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(down.starts_with("GET /v1/models failed: "), "{down}");
    }
}
