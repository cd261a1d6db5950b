//! Clients for the backend protocols the existing Python servers speak.

pub mod fastwhisper;
pub mod qwen;

/// Headers of one backend request beyond its protocol's own: the W3C trace context
/// (`traceparent`, `tracestate`) of the call's client span.
pub type CallHeaders = [(&'static str, String)];

/// `request` with `headers` on it.
pub fn with_headers(mut request: awc::ClientRequest, headers: &CallHeaders) -> awc::ClientRequest {
    for (name, value) in headers {
        request = request.insert_header((*name, value.as_str()));
    }
    request
}

/// The outbound client for backend calls and pings. Redirects are not followed (a
/// backend that redirects is misconfigured), and there is no client-wide timeout: each
/// call bounds its own phases. awc clients are bound to their thread: make one per actor
/// or per HTTP worker thread, not per call.
pub fn client() -> awc::Client {
    awc::Client::builder()
        .disable_redirects()
        .disable_timeout()
        .finish()
}

/// Why a backend call failed; the Worker decides what to do by matching on it.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("backend unreachable: {0}")]
    Transport(String),
    #[error("backend did not answer within {0}s")]
    Timeout(u64),
    #[error("backend answered {status}: {detail}")]
    Status { status: u16, detail: String },
    #[error("backend answer is unusable: {0}")]
    BadAnswer(String),
}

impl BackendError {
    /// A short name of the failure, for the `error.type` of a trace span.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendError::Transport(_) => "transport",
            BackendError::Timeout(_) => "timeout",
            BackendError::Status { .. } => "status",
            BackendError::BadAnswer(_) => "bad_answer",
        }
    }

    /// Whether the failure says the instance itself is in trouble (counts towards
    /// ejecting it); a 4xx means the request was at fault.
    pub fn is_instance_fault(&self) -> bool {
        !matches!(self, BackendError::Status { status, .. } if (400..500).contains(status))
    }
}

/// Keeps the first `max` bytes of an error body, cut at a character boundary.
pub fn error_detail(body: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(max)]).into_owned();
    // Control characters (a NUL above all, which PostgreSQL refuses in text) are not
    // worth storing with the task.
    let text: String = text
        .trim_end_matches('\u{FFFD}')
        .trim()
        .chars()
        .filter(|c| !c.is_control() || matches!(c, '\n' | '\t'))
        .collect();
    if text.is_empty() {
        "(empty body)".into()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_detail_is_capped_and_never_empty() {
        assert_eq!(error_detail(b"", 2048), "(empty body)");
        assert_eq!(error_detail(&[b'x'; 5000], 2048).len(), 2048);
        assert_eq!(error_detail(b"bad\0 input\x07\n", 2048), "bad input");
        // A multi-byte character cut in half is dropped, not mangled.
        assert_eq!(error_detail("aé".as_bytes(), 2), "a");
    }
}
