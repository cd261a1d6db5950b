//! `GET /metrics`: the Prometheus exposition, open unless `telemetry.metrics_token` is
//! set; and the middleware counting every HTTP request by route template.

use std::time::Instant;

use actix::Addr;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};
use sea_orm::DatabaseConnection;
use sha2::{Digest, Sha256};

use crate::actors::messages::InstanceState;
use crate::actors::{Dispatcher, InstanceRegistry};
use crate::error::{ApiError, ErrorBody};
use crate::events::EventHub;
use crate::http::system::SystemFigures;
use crate::settings::Settings;
use crate::store::webhooks;
use crate::telemetry::metrics::{InstanceFigures, Snapshot};
use crate::telemetry::METRICS;

/// What Prometheus asks for first; others (promtool, curl) get the classic text format.
const OPEN_METRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics));
}

/// Counts the request under its route template once answered (the raw path never
/// becomes a label).
pub async fn record(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let response = next.call(req).await?;
    let request = response.request();
    METRICS.http_request(
        request.method().as_str(),
        request.match_pattern(),
        response.status().as_u16(),
        started.elapsed(),
    );
    Ok(response)
}

/// The gateway's metrics (names and labels in the README).
#[utoipa::path(get, path = "/metrics", tag = "system",
    security((), ("metrics_token" = [])),
    responses(
        (status = 200, description = "Prometheus metrics: OpenMetrics text when the Accept \
            header asks for it (as Prometheus does), else the classic text format",
            content(
                (String = "text/plain"),
                (String = "application/openmetrics-text"),
            )),
        (status = 401, description = "`telemetry.metrics_token` is set and was not given",
            body = ErrorBody),
        (status = 503, body = ErrorBody),
    ))]
pub async fn metrics(
    req: HttpRequest,
    settings: web::Data<Settings>,
    dispatcher: web::Data<Addr<Dispatcher>>,
    registry: web::Data<Addr<InstanceRegistry>>,
    hub: web::Data<EventHub>,
    db: web::Data<DatabaseConnection>,
) -> Result<HttpResponse, ApiError> {
    let token = &settings.telemetry.metrics_token;
    if !token.is_empty() && !bearer_matches(&req, token) {
        return Err(ApiError::Unauthorized(
            "this needs the metrics token".into(),
        ));
    }
    let figures = SystemFigures::gather(&dispatcher, &registry, &settings.stats).await?;
    // A database in trouble leaves the gauge as it was, not the whole scrape failed.
    let outbox_pending = webhooks::pending(&db)
        .await
        .inspect_err(|e| tracing::warn!(error = %e, "cannot count the pending webhook deliveries"))
        .ok();
    let waiting = figures.waiting_image + figures.waiting_speech;
    let snapshot = Snapshot {
        queued: figures.queue.queue_length,
        running: figures.queue.busy_workers,
        waiting,
        capacity: figures.queue.queue_capacity,
        streams: hub.streams(),
        outbox_pending,
        instances: figures
            .instances
            .iter()
            .map(|i| InstanceFigures {
                kind: i.kind,
                id: i.id,
                up: i.state == InstanceState::Healthy,
                in_flight: i.in_flight,
                capacity: i.capacity,
            })
            .collect(),
        queue_usage: figures.queue_usage,
        failure_rate: figures.window.failure_rate,
        avg_processing_secs: figures.window.avg_processing_secs,
        throughput_per_min: figures.window.throughput_per_min,
    };
    let open_metrics = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let content_type = if open_metrics { OPEN_METRICS } else { CLASSIC };
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .body(METRICS.render(&snapshot, open_metrics)))
}

/// Whether the request carries `Authorization: Bearer <token>`; digests are compared,
/// so the time taken says nothing of the token.
fn bearer_matches(req: &HttpRequest, token: &str) -> bool {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    given.is_some_and(|given| Sha256::digest(given) == Sha256::digest(token))
}
