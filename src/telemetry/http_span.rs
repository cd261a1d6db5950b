//! The server span of every HTTP request, named and attributed after OpenTelemetry's HTTP
//! semantic conventions (`{method} {route}`, `http.request.method`, `http.route`,
//! `url.path`, `http.response.status_code`…), continuing a `traceparent` the client sent.

use std::collections::HashMap;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::Error;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::field::Empty;
use tracing::Span;
use tracing_actix_web::RootSpanBuilder;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The root span builder given to `TracingLogger`.
pub struct HttpSpan;

impl RootSpanBuilder for HttpSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let method = request.method().as_str();
        // The route template, never the raw path: ids stay out of span names.
        let route = request.match_pattern();
        let name = match &route {
            Some(route) => format!("{method} {route}"),
            None => method.to_string(),
        };
        let connection = request.connection_info();
        let span = tracing::info_span!(
            "HTTP request",
            otel.name = %name,
            otel.kind = "server",
            otel.status_code = Empty,
            http.request.method = %method,
            http.route = route.as_deref().unwrap_or(""),
            http.response.status_code = Empty,
            url.path = %request.path(),
            url.scheme = %connection.scheme(),
            server.address = %connection.host(),
            client.address = connection.peer_addr().unwrap_or(""),
            user_agent.original = request
                .headers()
                .get("user-agent")
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
            network.protocol.version = ?request.version(),
            error.type = Empty,
            trace_id = Empty,
        );
        if super::EXPORTING.load(std::sync::atomic::Ordering::Relaxed) {
            let carrier: HashMap<String, String> = ["traceparent", "tracestate"]
                .into_iter()
                .filter_map(|name| {
                    let value = request.headers().get(name)?.to_str().ok()?;
                    Some((name.to_string(), value.to_string()))
                })
                .collect();
            if !carrier.is_empty() {
                let _ = span.set_parent(TraceContextPropagator::new().extract(&carrier));
            }
            super::record_trace_id(&span);
        }
        span
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        let status = match outcome {
            Ok(response) => response.status(),
            Err(error) => error.as_response_error().status_code(),
        };
        span.record("http.response.status_code", status.as_u16());
        // Per the conventions a server span fails on a 5xx only; a 4xx is the client's.
        if status.is_server_error() {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", status.as_str());
        }
    }
}
