//! Reading backends' answers over HTTP: the status check and the size cap.

use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use awc::error::PayloadError;
use futures_util::Stream;

use super::{error_detail, BackendError};

/// Bytes of a failed answer kept as the error's detail.
const ERROR_DETAIL_BYTES: usize = 2048;
/// Largest error body read, of which [`ERROR_DETAIL_BYTES`] are kept.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

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
