//! Logs and traces. Logs: readable text by default, JSON when `log.format = "json"`, on
//! stderr. Traces: with `telemetry.otlp_endpoint` set, every span is also an
//! OpenTelemetry span exported over OTLP/HTTP; unset, no OpenTelemetry layer exists and
//! tracing costs what plain logging costs.
//!
//! A task's trace context (W3C `traceparent`/`tracestate`) is taken from its submission's
//! span and stored with the task, so each attempt, even after a restart, continues the
//! submitting trace as a child of that span; every backend request carries the context
//! of its own client span.

pub mod depth_history;
mod http_span;
pub mod metrics;
mod window;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use http_span::HttpSpan;
pub use metrics::METRICS;
pub use window::{Figures, MAX_WINDOW_MINUTES};

use crate::backends::BackendError;
use crate::domain::TraceContext;
use crate::settings::{LogFormat, LogSettings, TelemetrySettings};

/// Whether spans are OpenTelemetry spans in this process; without, nothing is propagated.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Keeps the exporter alive; dropping it sends the spans still buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("infergate: exporting the last spans failed: {e}");
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OTLP exporter: {0}")]
pub struct TelemetryError(String);

/// Installs the global subscriber; `RUST_LOG` overrides `log.level` when set.
pub fn init(log: &LogSettings, telemetry: &TelemetrySettings) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let fmt = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let fmt = match log.format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
    };
    let provider = exporter(telemetry)?;
    // Spans are exported down to info whatever `log.level` keeps for the log: a quiet
    // log does not switch tracing off.
    let otel = provider.as_ref().map(|provider| {
        // Only what a trace viewer shows: no activation of an OpenTelemetry context at
        // every poll (propagation reads the span's own), no busy/idle timings, no
        // thread and source-location attributes. Each is work on every span of the
        // submit path; together they cost a measurable share of its throughput.
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("infergate"))
            .with_error_records_to_exceptions(true)
            .with_context_activation(false)
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
            .with_filter(LevelFilter::INFO)
    });
    EXPORTING.store(provider.is_some(), Ordering::Relaxed);
    // A second init in one process (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init();
    Ok(Telemetry { provider })
}

fn exporter(telemetry: &TelemetrySettings) -> Result<Option<SdkTracerProvider>, TelemetryError> {
    if telemetry.otlp_endpoint.is_empty() {
        return Ok(None);
    }
    let base = telemetry.otlp_endpoint.trim_end_matches('/');
    let endpoint = if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| TelemetryError(e.to_string()))?;
    let resource = Resource::builder()
        .with_service_name(telemetry.service_name.clone())
        .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_resource(resource)
            // Parent-based: a caller's sampled trace is always continued, its unsampled
            // one never; traces begun here are kept at the ratio.
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                telemetry.sample_ratio,
            ))))
            .with_batch_exporter(exporter)
            .build(),
    ))
}

/// The trace context of the current span, to be stored with what it starts.
pub fn current_trace() -> Option<TraceContext> {
    if !EXPORTING.load(Ordering::Relaxed) {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut carrier);
    Some(TraceContext {
        traceparent: carrier.remove("traceparent")?,
        tracestate: carrier.remove("tracestate").filter(|s| !s.is_empty()),
    })
}

/// Makes `span` a child of the stored context, and records its trace id for the logs.
pub fn continue_trace(span: &tracing::Span, trace: Option<&TraceContext>) {
    if !EXPORTING.load(Ordering::Relaxed) {
        return;
    }
    if let Some(trace) = trace {
        let carrier = HashMap::from([
            ("traceparent".to_string(), trace.traceparent.clone()),
            (
                "tracestate".to_string(),
                trace.tracestate.clone().unwrap_or_default(),
            ),
        ]);
        let _ = span.set_parent(TraceContextPropagator::new().extract(&carrier));
    }
    record_trace_id(span);
}

/// Puts the span's trace id in its `trace_id` field, so every log line inside shows it.
fn record_trace_id(span: &tracing::Span) {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span.record("trace_id", span_context.trace_id().to_string());
    }
}

/// `traceparent` and `tracestate` for an outbound request made inside `span`.
pub fn propagation_headers(span: &tracing::Span) -> Vec<(&'static str, String)> {
    if !EXPORTING.load(Ordering::Relaxed) {
        return Vec::new();
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|name| Some((name, carrier.remove(name).filter(|v| !v.is_empty())?)))
        .collect()
}

/// The client span of one backend request (`POST {url}`), per OpenTelemetry's HTTP
/// client conventions; its context is what the request propagates.
pub fn backend_span(url: &str) -> tracing::Span {
    let parsed = url::Url::parse(url).ok();
    let path = parsed.as_ref().map_or("", |u| u.path()).to_string();
    tracing::info_span!(
        "backend call",
        otel.name = %format!("POST {path}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        http.request.method = "POST",
        http.response.status_code = tracing::field::Empty,
        url.full = %crate::domain::redact_url(url),
        server.address = parsed.as_ref().and_then(|u| u.host_str()).unwrap_or(""),
        server.port = parsed.as_ref().and_then(|u| u.port_or_known_default()).unwrap_or(0),
        error.type = tracing::field::Empty,
    )
}

/// Records how the call of `span` ended: its status, and an error type when it failed.
pub fn record_backend_outcome(span: &tracing::Span, failure: Option<&BackendError>) {
    match failure {
        None => {
            span.record("http.response.status_code", 200);
        }
        Some(error) => {
            if let BackendError::Status { status, .. } = error {
                span.record("http.response.status_code", *status);
            }
            span.record("otel.status_code", "ERROR");
            span.record("error.type", error.kind());
        }
    }
}
