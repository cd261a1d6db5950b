//! `GET /health` (liveness), `GET /ready` (readiness) and `GET /api/v1/system/stats`
//! (no auth, aggregate figures only).

use std::time::Duration;

use actix::dev::ToEnvelope;
use actix::{Actor, Addr, Handler};
use actix_web::{web, HttpResponse};
use sea_orm::DatabaseConnection;
use serde::Serialize;

use crate::actors::messages::{
    CountWaiting, GetQueueStats, InstanceState, InstanceView, ListInstances, Ping, QueueStats,
};
use crate::actors::{Dispatcher, InstanceRegistry, TaskStore};
use crate::domain::InstanceKind;
use crate::error::{ApiError, ErrorBody};
use crate::http::ask;
use crate::settings::{Settings, StatsSettings};
use crate::store::space::{self, Size};
use crate::telemetry::{Figures, METRICS};

/// How long `/ready` waits for each part.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready))
        .route("/api/v1/system/stats", web::get().to(stats));
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct HealthResponse {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Liveness: the HTTP server answers.
#[utoipa::path(get, path = "/health", tag = "system", responses((status = 200, body = HealthResponse)))]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(HealthResponse { status: "ok" })
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ReadyResponse {
    /// `ready` or `not ready`.
    #[schema(example = "ready")]
    pub status: &'static str,
    /// Each part: `ok`, or why it is not.
    pub database: String,
    pub task_store: String,
    pub dispatcher: String,
    pub instance_registry: String,
}

/// Readiness: 200 once the database answers, every actor answers within a short
/// deadline, and every instance has answered its first ping; 503 naming what is not.
#[utoipa::path(get, path = "/ready", tag = "system", responses(
    (status = 200, description = "Ready", body = ReadyResponse),
    (status = 503, description = "Not ready; the failing parts say why", body = ReadyResponse),
))]
pub async fn ready(
    db: web::Data<DatabaseConnection>,
    store: web::Data<Addr<TaskStore>>,
    dispatcher: web::Data<Addr<Dispatcher>>,
    registry: web::Data<Addr<InstanceRegistry>>,
) -> HttpResponse {
    let database = match tokio::time::timeout(READY_TIMEOUT, db.ping()).await {
        Ok(Ok(())) => "ok".to_string(),
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => "error: no answer in time".to_string(),
    };
    let (task_store, dispatcher, instance_registry) = tokio::join!(
        pinged(&store, "ok"),
        pinged(&dispatcher, "ok"),
        pinged(&registry, "probing its instances"),
    );
    let parts = [&database, &task_store, &dispatcher, &instance_registry];
    let is_ready = parts.iter().all(|p| *p == "ok");
    let body = ReadyResponse {
        status: if is_ready { "ready" } else { "not ready" },
        database,
        task_store,
        dispatcher,
        instance_registry,
    };
    if is_ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// `ok` when the actor answers that it is ready, else what it is.
async fn pinged<A>(actor: &Addr<A>, not_yet: &str) -> String
where
    A: Actor + Handler<Ping>,
    A::Context: ToEnvelope<A, Ping>,
{
    match actor.send(Ping).timeout(READY_TIMEOUT).await {
        Ok(true) => "ok".into(),
        Ok(false) => not_yet.into(),
        Err(e) => format!("error: {e}"),
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct StatsResponse {
    /// Tasks waiting for a worker.
    pub queue_length: usize,
    pub queue_capacity: usize,
    /// queue_length as a percentage of queue_capacity.
    pub queue_usage: f64,
    pub workers: usize,
    pub busy_workers: usize,
    /// An admin paused dispatching: tasks are admitted but wait.
    pub paused: bool,
    /// The database's size (SQLite: the main file's pages, and how many are free).
    pub database: Size,
    pub image_instances: InstanceCounts,
    pub speech_instances: InstanceCounts,
    /// Percent of the tasks this process ended (DONE or FAILED) in the last
    /// `stats.window_minutes` that failed.
    pub failure_rate: f64,
    /// Mean backend time, in seconds, of the last attempts of those tasks.
    pub avg_processing_secs: f64,
    /// Those tasks per minute.
    pub throughput_per_min: f64,
    /// The thresholds crossed (`stats.alert_*`).
    pub alerts: Vec<Alert>,
}

#[derive(Serialize, utoipa::ToSchema, Default)]
pub struct InstanceCounts {
    pub total: usize,
    /// Healthy and taking work (not disabled or draining).
    pub healthy: usize,
    pub in_flight: u32,
    /// Requests waiting for an instance with room (none healthy, or all busy).
    pub waiting: usize,
}

/// A figure above its threshold.
#[derive(Serialize, utoipa::ToSchema, Debug, PartialEq)]
pub struct Alert {
    /// `queue_usage`, `failure_rate` or `avg_processing_secs`.
    #[schema(example = "failure_rate")]
    pub name: &'static str,
    pub value: f64,
    pub threshold: f64,
}

/// What the actors and the window say now: the stats, and the gauges of a scrape.
pub struct SystemFigures {
    pub queue: QueueStats,
    pub instances: Vec<InstanceView>,
    pub waiting_image: usize,
    pub waiting_speech: usize,
    pub queue_usage: f64,
    pub window: Figures,
}

impl SystemFigures {
    pub async fn gather(
        dispatcher: &Addr<Dispatcher>,
        registry: &Addr<InstanceRegistry>,
        settings: &StatsSettings,
    ) -> Result<SystemFigures, ApiError> {
        let queue = ask(dispatcher, GetQueueStats).await??;
        let instances = ask(registry, ListInstances).await?;
        let waiting_image = ask(registry, CountWaiting(InstanceKind::Image)).await?;
        let waiting_speech = ask(registry, CountWaiting(InstanceKind::Speech)).await?;
        let usage = queue.queue_length as f64 * 100.0 / queue.queue_capacity as f64;
        Ok(SystemFigures {
            queue,
            instances,
            waiting_image,
            waiting_speech,
            queue_usage: (usage * 100.0).round() / 100.0,
            window: METRICS.window.figures(settings.window_minutes),
        })
    }

    /// The figures above their thresholds.
    pub fn alerts(&self, settings: &StatsSettings) -> Vec<Alert> {
        [
            ("queue_usage", self.queue_usage, settings.alert_queue_usage),
            (
                "failure_rate",
                self.window.failure_rate,
                settings.alert_failure_rate,
            ),
            (
                "avg_processing_secs",
                self.window.avg_processing_secs,
                settings.alert_avg_processing_secs,
            ),
        ]
        .into_iter()
        .filter(|(_, value, threshold)| value > threshold)
        .map(|(name, value, threshold)| Alert {
            name,
            value,
            threshold,
        })
        .collect()
    }

    fn counts(&self, kind: InstanceKind) -> InstanceCounts {
        let waiting = match kind {
            InstanceKind::Image => self.waiting_image,
            InstanceKind::Speech => self.waiting_speech,
        };
        self.instances.iter().filter(|i| i.kind == kind).fold(
            InstanceCounts {
                waiting,
                ..Default::default()
            },
            |mut c, i| {
                c.total += 1;
                c.healthy += usize::from(i.state == InstanceState::Healthy);
                c.in_flight += i.in_flight;
                c
            },
        )
    }
}

/// Queue and instance figures, and the alert figures over the stats window.
#[utoipa::path(get, path = "/api/v1/system/stats", tag = "system",
    responses((status = 200, body = StatsResponse), (status = 503, body = ErrorBody)))]
pub async fn stats(
    db: web::Data<DatabaseConnection>,
    dispatcher: web::Data<Addr<Dispatcher>>,
    registry: web::Data<Addr<InstanceRegistry>>,
    settings: web::Data<Settings>,
) -> Result<HttpResponse, ApiError> {
    let figures = SystemFigures::gather(&dispatcher, &registry, &settings.stats).await?;
    let database = space::size(&db).await?;
    Ok(HttpResponse::Ok().json(StatsResponse {
        queue_length: figures.queue.queue_length,
        queue_capacity: figures.queue.queue_capacity,
        queue_usage: figures.queue_usage,
        workers: figures.queue.workers,
        busy_workers: figures.queue.busy_workers,
        paused: figures.queue.paused,
        database,
        image_instances: figures.counts(InstanceKind::Image),
        speech_instances: figures.counts(InstanceKind::Speech),
        failure_rate: figures.window.failure_rate,
        avg_processing_secs: figures.window.avg_processing_secs,
        throughput_per_min: figures.window.throughput_per_min,
        alerts: figures.alerts(&settings.stats),
    }))
}
