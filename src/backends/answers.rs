//! Reading backends' answers over HTTP: the status check, the size cap, the error a
//! failed send stands for, and the up-or-down probe of a health route.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use awc::error::{PayloadError, SendRequestError};
use futures_util::Stream;

use super::{error_detail, BackendError};

/// Bytes of a failed answer kept as the error's detail.
const ERROR_DETAIL_BYTES: usize = 2048;
/// Largest error body read, of which [`ERROR_DETAIL_BYTES`] are kept.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// The error a failed send stands for, `timeout` being the one the request had.
pub(super) fn send_error(error: SendRequestError, timeout: Duration) -> BackendError {
    match error {
        SendRequestError::Timeout => BackendError::Timeout(timeout.as_secs()),
        other => BackendError::Transport(other.to_string()),
    }
}

/// The body of a 200 answer, at most `max_bytes` of it; any other status is an error
/// carrying the start of its body. `what` names the body in errors.
pub(super) async fn read_ok_body<S>(
    response: &mut awc::ClientResponse<S>,
    max_bytes: usize,
    what: &str,
) -> Result<Bytes, BackendError>
where
    S: Stream<Item = Result<Bytes, PayloadError>>,
{
    let status = response.status();
    if status != StatusCode::OK {
        let body = response
            .body()
            .limit(MAX_ERROR_BODY_BYTES)
            .await
            .unwrap_or_default();
        return Err(BackendError::Status {
            status: status.as_u16(),
            detail: error_detail(&body, ERROR_DETAIL_BYTES),
        });
    }
    response.body().limit(max_bytes).await.map_err(|e| match e {
        PayloadError::Overflow => {
            BackendError::BadAnswer(format!("{what} larger than {max_bytes} bytes"))
        }
        other => BackendError::Transport(format!("reading the {what}: {other}")),
    })
}

/// `GET {base}{path}` within `timeout`: a 200 means the instance is up, anything else
/// is the reason it is not.
pub(super) async fn probe_route(
    client: &awc::Client,
    base: &str,
    path: &str,
    timeout: Duration,
) -> Result<(), String> {
    let request = client
        .get(format!("{}{path}", base.trim_end_matches('/')))
        .timeout(timeout)
        .send();
    match tokio::time::timeout(timeout, request).await {
        Ok(Ok(response)) if response.status() == StatusCode::OK => Ok(()),
        Ok(Ok(response)) => Err(format!("GET {path} answered {}", response.status())),
        Ok(Err(SendRequestError::Timeout)) | Err(_) => Err(format!(
            "GET {path} timed out after {}s",
            timeout.as_secs_f64()
        )),
        Ok(Err(e)) => Err(format!("GET {path} failed: {e}")),
    }
}
