//! Extractor settings that turn actix's own input errors into our JSON errors.

use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::web;

use crate::error::ApiError;
use crate::http::slow_clients::is_deadline;

pub fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .error_handler(move |err, _| {
            let api_error = match err {
                JsonPayloadError::Overflow { .. }
                | JsonPayloadError::OverflowKnownLength { .. } => {
                    ApiError::PayloadTooLarge { limit }
                }
                JsonPayloadError::ContentType => {
                    ApiError::UnsupportedMediaType("Content-Type must be application/json")
                }
                JsonPayloadError::Deserialize(e) if e.is_data() => {
                    ApiError::Validation(format!("invalid field: {e}"))
                }
                JsonPayloadError::Deserialize(e) => {
                    ApiError::MalformedBody(format!("body is not valid JSON: {e}"))
                }
                JsonPayloadError::Payload(e) if is_deadline(&e) => {
                    ApiError::UploadTimeout(format!("{e}; connection closed"))
                }
                other => ApiError::MalformedBody(format!("cannot read body: {other}")),
            };
            api_error.into()
        })
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, _| {
        let QueryPayloadError::Deserialize(e) = err else {
            return ApiError::Validation("invalid query string".into()).into();
        };
        ApiError::Validation(format!("invalid query string: {e}")).into()
    })
}

pub fn path_config() -> web::PathConfig {
    // A path segment of the wrong shape (say a non-numeric image id) names nothing that exists.
    web::PathConfig::default()
        .error_handler(|_: PathError, _| ApiError::NotFound("resource").into())
}
