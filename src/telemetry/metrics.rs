//! The Prometheus metrics of this process, served at `GET /metrics`.
//!
//! One registry for the process: the recording sites are spread over the actors, and a
//! process serves one gateway. Recording is a relaxed atomic add: every label set a
//! counter or histogram on the task path can take is resolved once, here, into the
//! handles the sites use, and the HTTP layer keeps a per-thread table of its label
//! sets. A `Family` lookup (a read lock) is left only to backend calls, whose instance
//! label is known at call time, and to scrapes.
//!
//! Labels are bounded: kinds, statuses, outcomes and reasons are fixed lists, `route`
//! is the route template, `instance` an instance id; no task, user or prompt is one.
//! Gauges (queue depth, instances, the alert figures) are set from the actors at each
//! scrape.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use entity::task::Status as TaskStatus;
use entity::webhook_delivery::State as DeliveryState;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use super::window::Window;
use crate::backends::BackendError;
use crate::domain::{InstanceId, InstanceKind};

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Seconds: 10 ms to 10 min.
const SECONDS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0, 600.0,
];
/// Writes per group commit (at most 500).
const BATCH_SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
/// What `infergate_rejections_total{reason}` counts: the codes of refusals under load.
pub const REJECTIONS: &[&str] = &[
    "queue_full",
    "quota_exceeded",
    "rate_limited",
    "shutting_down",
    "too_many_connections",
    "instances_busy",
    "hashing_busy",
    "tasks_still_running",
];
const ENDED: [TaskStatus; 3] = [TaskStatus::Done, TaskStatus::Failed, TaskStatus::Cancelled];

/// How an attempt on a backend ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    Done,
    /// Failed, and the task goes back to the queue for another.
    Retried,
    /// Failed, and so did the task.
    Failed,
}

impl AttemptOutcome {
    const ALL: [AttemptOutcome; 3] = [Self::Done, Self::Retried, Self::Failed];

    fn label(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Retried => "retried",
            Self::Failed => "failed",
        }
    }
}

/// `infergate_webhook_deliveries_total{outcome}`: what an attempt's answer made of its
/// delivery.
fn delivery_outcome(state: DeliveryState) -> &'static str {
    match state {
        DeliveryState::Delivered => "delivered",
        // Pending again: failed, and due for another attempt.
        DeliveryState::Pending => "retrying",
        // A 410, or the last attempt failed.
        DeliveryState::Failed => "gave_up",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindStatusLabels {
    kind: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindOutcomeLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    kind: &'static str,
    instance: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    kind: &'static str,
    instance: u64,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: &'static str,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpRouteLabels {
    method: &'static str,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

type F64Gauge = Gauge<f64, AtomicU64>;
/// Method, route template, status.
type HttpKey = (&'static str, String, u16);

/// The families, as registered, and the handles the task path records with.
pub struct Metrics {
    registry: Registry,
    submitted: Counter,
    finished: HashMap<TaskStatus, Counter>,
    total_seconds: HashMap<TaskStatus, Histogram>,
    attempts: HashMap<&'static str, Counter>,
    queue_wait: Histogram,
    run_seconds: Histogram,
    rejections: HashMap<&'static str, Counter>,
    speech_audio: HashMap<&'static str, Counter<f64, AtomicU64>>,
    db_commit: Histogram,
    db_batch: Histogram,
    stream_events: Counter,
    streams_behind: Counter,
    webhook_attempts: HashMap<DeliveryState, Counter>,
    webhook_seconds: Histogram,
    backend_requests: Family<BackendLabels, Counter>,
    backend_seconds: Family<InstanceLabels, Histogram, fn() -> Histogram>,
    http_requests: Family<HttpLabels, Counter>,
    http_seconds: Family<HttpRouteLabels, Histogram, fn() -> Histogram>,
    gauges: Gauges,
    /// The tasks ended lately, for the alert figures.
    pub window: Window,
}

/// What a scrape sets from the actors' answers.
struct Gauges {
    queue_depth: Family<StateLabels, Gauge>,
    queue_capacity: Gauge,
    streams: Gauge,
    outbox_pending: Gauge,
    instance_up: Family<InstanceLabels, Gauge>,
    instance_in_flight: Family<InstanceLabels, Gauge>,
    instance_capacity: Family<InstanceLabels, Gauge>,
    queue_usage: F64Gauge,
    failure_rate: F64Gauge,
    avg_processing: F64Gauge,
    throughput: F64Gauge,
}

/// One instance as a scrape shows it.
pub struct InstanceFigures {
    pub kind: InstanceKind,
    pub id: InstanceId,
    pub up: bool,
    pub in_flight: u32,
    pub capacity: u32,
}

/// The figures a scrape reads from the actors.
pub struct Snapshot {
    pub queued: usize,
    pub running: usize,
    /// Requests waiting for an instance with room.
    pub waiting: usize,
    pub capacity: usize,
    /// Open event streams.
    pub streams: usize,
    /// Webhook deliveries pending in the outbox, when they could be counted.
    pub outbox_pending: Option<u64>,
    pub instances: Vec<InstanceFigures>,
    pub queue_usage: f64,
    pub failure_rate: f64,
    pub avg_processing_secs: f64,
    pub throughput_per_min: f64,
}

fn seconds() -> Histogram {
    Histogram::new(SECONDS)
}

fn status_label(status: TaskStatus) -> &'static str {
    match status {
        TaskStatus::Queued => "QUEUED",
        TaskStatus::Running => "RUNNING",
        TaskStatus::Done => "DONE",
        TaskStatus::Failed => "FAILED",
        TaskStatus::Cancelled => "CANCELLED",
    }
}

fn kind_label(kind: InstanceKind) -> &'static str {
    match kind {
        InstanceKind::Image => "image",
        InstanceKind::Speech => "speech",
    }
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let image = "image";
        let submitted = Family::<KindLabels, Counter>::default();
        registry.register(
            "infergate_tasks_submitted",
            "Tasks admitted (committed, answered 202)",
            submitted.clone(),
        );
        let finished = Family::<KindStatusLabels, Counter>::default();
        registry.register(
            "infergate_tasks_finished",
            "Tasks that reached an end: DONE, FAILED or CANCELLED",
            finished.clone(),
        );
        let total =
            Family::<KindStatusLabels, Histogram, fn() -> Histogram>::new_with_constructor(seconds);
        registry.register(
            "infergate_task_total_seconds",
            "From admission to the task's end",
            total.clone(),
        );
        let attempts = Family::<KindOutcomeLabels, Counter>::default();
        registry.register(
            "infergate_task_attempts",
            "Attempts on a backend, by how they ended",
            attempts.clone(),
        );
        let queue_wait =
            Family::<KindLabels, Histogram, fn() -> Histogram>::new_with_constructor(seconds);
        registry.register(
            "infergate_task_queue_wait_seconds",
            "From admission to the first attempt's start",
            queue_wait.clone(),
        );
        let run = Family::<KindLabels, Histogram, fn() -> Histogram>::new_with_constructor(seconds);
        registry.register(
            "infergate_task_run_seconds",
            "From the start to the end of a task's last attempt",
            run.clone(),
        );
        let backend_requests = Family::<BackendLabels, Counter>::default();
        registry.register(
            "infergate_backend_requests",
            "Calls to backend instances, by outcome (ok or the error's kind)",
            backend_requests.clone(),
        );
        let backend_seconds =
            Family::<InstanceLabels, Histogram, fn() -> Histogram>::new_with_constructor(seconds);
        registry.register(
            "infergate_backend_request_seconds",
            "How long backend calls took",
            backend_seconds.clone(),
        );
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "infergate_http_requests",
            "HTTP requests answered, by route template and status",
            http_requests.clone(),
        );
        let http_seconds =
            Family::<HttpRouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(seconds);
        registry.register(
            "infergate_http_request_duration_seconds",
            "How long HTTP requests took to answer",
            http_seconds.clone(),
        );
        let rejections = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "infergate_rejections",
            "Requests refused under load, by reason (the error code)",
            rejections.clone(),
        );
        let speech_audio = Family::<EndpointLabels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "infergate_speech_audio_seconds",
            "Seconds of audio transcribed (pcm: as sent; transcribe: the last segment's end)",
            speech_audio.clone(),
        );
        let db_commit = seconds();
        registry.register(
            "infergate_db_commit_seconds",
            "How long the task store's group commits took",
            db_commit.clone(),
        );
        let db_batch = Histogram::new(BATCH_SIZES);
        registry.register(
            "infergate_db_commit_batch_size",
            "Writes per group commit",
            db_batch.clone(),
        );
        let stream_events = Counter::default();
        registry.register(
            "infergate_stream_events",
            "Task events pushed to SSE and WebSocket streams",
            stream_events.clone(),
        );
        let streams_behind = Counter::default();
        registry.register(
            "infergate_streams_fell_behind",
            "Streams closed because their client fell behind (it resumes from the log)",
            streams_behind.clone(),
        );
        let webhook_attempts = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "infergate_webhook_deliveries",
            "Webhook delivery attempts by outcome: delivered (a 2xx), retrying (failed, \
             another attempt is due), gave_up (a 410 or the last attempt failed)",
            webhook_attempts.clone(),
        );
        let webhook_seconds = seconds();
        registry.register(
            "infergate_webhook_delivery_seconds",
            "How long webhook attempts took, from sending to the receiver's answer or the failure",
            webhook_seconds.clone(),
        );
        let gauges = Gauges::register(&mut registry);
        let finished_of = |status| {
            let labels = KindStatusLabels {
                kind: image,
                status: status_label(status),
            };
            (
                finished.get_or_create_owned(&labels),
                total.get_or_create_owned(&labels),
            )
        };
        let ended: Vec<_> = ENDED.iter().map(|s| (*s, finished_of(*s))).collect();
        Metrics {
            submitted: submitted.get_or_create_owned(&KindLabels { kind: image }),
            finished: ended.iter().map(|(s, (c, _))| (*s, c.clone())).collect(),
            total_seconds: ended.into_iter().map(|(s, (_, h))| (s, h)).collect(),
            attempts: AttemptOutcome::ALL
                .iter()
                .map(|o| {
                    let labels = KindOutcomeLabels {
                        kind: image,
                        outcome: o.label(),
                    };
                    (o.label(), attempts.get_or_create_owned(&labels))
                })
                .collect(),
            queue_wait: queue_wait.get_or_create_owned(&KindLabels { kind: image }),
            run_seconds: run.get_or_create_owned(&KindLabels { kind: image }),
            rejections: REJECTIONS
                .iter()
                .map(|r| {
                    (
                        *r,
                        rejections.get_or_create_owned(&ReasonLabels { reason: r }),
                    )
                })
                .collect(),
            speech_audio: ["transcribe", "pcm"]
                .into_iter()
                .map(|e| {
                    (
                        e,
                        speech_audio.get_or_create_owned(&EndpointLabels { endpoint: e }),
                    )
                })
                .collect(),
            db_commit,
            db_batch,
            stream_events,
            streams_behind,
            webhook_attempts: [
                DeliveryState::Delivered,
                DeliveryState::Pending,
                DeliveryState::Failed,
            ]
            .into_iter()
            .map(|state| {
                let labels = OutcomeLabels {
                    outcome: delivery_outcome(state),
                };
                (state, webhook_attempts.get_or_create_owned(&labels))
            })
            .collect(),
            webhook_seconds,
            backend_requests,
            backend_seconds,
            http_requests,
            http_seconds,
            gauges,
            window: Window::default(),
            registry,
        }
    }

    pub fn task_submitted(&self) {
        self.submitted.inc();
    }

    /// A task's end: `total` since its admission (unknown for the tasks recovered at
    /// start), `ran` its last attempt's backend time (none when it never reached one).
    pub fn task_ended(&self, status: TaskStatus, total: Option<Duration>, ran: Option<Duration>) {
        if let Some(counter) = self.finished.get(&status) {
            counter.inc();
            if let Some(total) = total {
                self.total_seconds[&status].observe(total.as_secs_f64());
            }
        }
        if let Some(ran) = ran {
            self.run_seconds.observe(ran.as_secs_f64());
        }
        self.window.record(status, ran);
    }

    pub fn attempt_ended(&self, outcome: AttemptOutcome) {
        self.attempts[outcome.label()].inc();
    }

    pub fn task_started(&self, waited: Duration) {
        self.queue_wait.observe(waited.as_secs_f64());
    }

    /// A refusal under load, when `code` is one of [`REJECTIONS`].
    pub fn rejected(&self, code: &str) {
        if let Some(counter) = self.rejections.get(code) {
            counter.inc();
        }
    }

    /// `endpoint` is `transcribe` or `pcm`.
    pub fn speech_audio(&self, endpoint: &'static str, seconds: f64) {
        if let Some(counter) = self.speech_audio.get(endpoint) {
            counter.inc_by(seconds);
        }
    }

    pub fn db_commit(&self, took: Duration, writes: usize) {
        self.db_commit.observe(took.as_secs_f64());
        self.db_batch.observe(writes as f64);
    }

    pub fn stream_event(&self) {
        self.stream_events.inc();
    }

    pub fn stream_fell_behind(&self) {
        self.streams_behind.inc();
    }

    /// One webhook attempt: what it made of its delivery, and how long it took.
    pub fn webhook_attempt(&self, state: DeliveryState, took: Duration) {
        self.webhook_attempts[&state].inc();
        self.webhook_seconds.observe(took.as_secs_f64());
    }

    /// The instance left the registry: its series leave the scrape (its gauges do at
    /// each scrape, being set from the instances there are).
    pub fn instance_removed(&self, kind: InstanceKind, instance: InstanceId) {
        let (kind, instance) = (kind_label(kind), instance.0);
        for outcome in std::iter::once("ok").chain(BackendError::KINDS) {
            self.backend_requests.remove(&BackendLabels {
                kind,
                instance,
                outcome,
            });
        }
        self.backend_seconds
            .remove(&InstanceLabels { kind, instance });
    }

    /// One backend call; `outcome` is `ok` or the error's kind.
    pub fn backend_call(
        &self,
        kind: InstanceKind,
        instance: InstanceId,
        outcome: &'static str,
        took: Duration,
    ) {
        let (kind, instance) = (kind_label(kind), instance.0);
        let labels = BackendLabels {
            kind,
            instance,
            outcome,
        };
        self.backend_requests.get_or_create(&labels).inc();
        let labels = InstanceLabels { kind, instance };
        self.backend_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// One HTTP request answered; `route` is the template, `None` when no route matched.
    pub fn http_request(&self, method: &str, route: Option<String>, status: u16, took: Duration) {
        thread_local! {
            /// This thread's handles, so a request takes no lock once its route was seen.
            static HANDLES: RefCell<HashMap<HttpKey, (Counter, Histogram)>> =
                RefCell::default();
        }
        let method = http_method(method);
        let route = route.unwrap_or_else(|| "unmatched".into());
        HANDLES.with_borrow_mut(|handles| {
            let key = (method, route, status);
            let (counter, histogram) = match handles.get(&key) {
                Some(found) => found,
                None => {
                    let counter = self.http_requests.get_or_create_owned(&HttpLabels {
                        method,
                        route: key.1.clone(),
                        status,
                    });
                    let histogram = self.http_seconds.get_or_create_owned(&HttpRouteLabels {
                        method,
                        route: key.1.clone(),
                    });
                    handles.entry(key).or_insert((counter, histogram))
                }
            };
            counter.inc();
            histogram.observe(took.as_secs_f64());
        });
    }

    /// The exposition in OpenMetrics text (`open_metrics`) or in Prometheus' classic
    /// text format, with the gauges set from `snapshot`.
    pub fn render(&self, snapshot: &Snapshot, open_metrics: bool) -> String {
        self.gauges.set(snapshot);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        if open_metrics {
            text
        } else {
            classic(&text)
        }
    }
}

/// OpenMetrics text in the classic format (what promtool and older scrapers read): a
/// counter's family is named with its `_total`, and there is no `# EOF`. Every other
/// line is the same in both.
fn classic(open_metrics: &str) -> String {
    let lines: Vec<&str> = open_metrics.lines().collect();
    let mut out = String::with_capacity(open_metrics.len() + 1024);
    let mut counter = None;
    for (i, line) in lines.iter().enumerate() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            let is_counter = lines.get(i + 1) == Some(&format!("# TYPE {name} counter").as_str());
            counter = is_counter.then_some(name);
        }
        match counter {
            Some(name) if line.starts_with("# ") => {
                out.push_str(&line.replacen(name, &format!("{name}_total"), 1));
            }
            _ if *line == "# EOF" => continue,
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The method as a label: the standard ones, else `other` (no label from a client's
/// invention).
fn http_method(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN.into_iter().find(|m| *m == method).unwrap_or("other")
}

impl Gauges {
    fn register(registry: &mut Registry) -> Gauges {
        let gauges = Gauges {
            queue_depth: Family::default(),
            queue_capacity: Gauge::default(),
            streams: Gauge::default(),
            outbox_pending: Gauge::default(),
            instance_up: Family::default(),
            instance_in_flight: Family::default(),
            instance_capacity: Family::default(),
            queue_usage: F64Gauge::default(),
            failure_rate: F64Gauge::default(),
            avg_processing: F64Gauge::default(),
            throughput: F64Gauge::default(),
        };
        let g = &gauges;
        registry.register(
            "infergate_queue_depth",
            "Tasks queued, running, and requests waiting for an instance with room",
            g.queue_depth.clone(),
        );
        registry.register(
            "infergate_queue_capacity",
            "Tasks the queue holds at most",
            g.queue_capacity.clone(),
        );
        registry.register(
            "infergate_event_streams",
            "SSE and WebSocket streams open on this gateway",
            g.streams.clone(),
        );
        registry.register(
            "infergate_webhook_outbox_pending",
            "Webhook deliveries not yet delivered nor given up, in the whole outbox (with \
             several gateways, the same figure on each)",
            g.outbox_pending.clone(),
        );
        registry.register(
            "infergate_instance_up",
            "1 when the instance is healthy and takes work",
            g.instance_up.clone(),
        );
        registry.register(
            "infergate_instance_in_flight",
            "Calls the instance is running",
            g.instance_in_flight.clone(),
        );
        registry.register(
            "infergate_instance_capacity",
            "Calls the instance takes at once",
            g.instance_capacity.clone(),
        );
        registry.register(
            "infergate_queue_usage_percent",
            "Queued tasks as a percentage of the queue's capacity",
            g.queue_usage.clone(),
        );
        registry.register(
            "infergate_failure_rate_percent",
            "Failed tasks as a percentage of those this process ended in the stats window",
            g.failure_rate.clone(),
        );
        registry.register(
            "infergate_avg_processing_seconds",
            "Mean backend time of the tasks this process ended in the stats window",
            g.avg_processing.clone(),
        );
        registry.register(
            "infergate_throughput_per_minute",
            "Tasks this process ended (DONE or FAILED) per minute over the stats window",
            g.throughput.clone(),
        );
        gauges
    }

    fn set(&self, s: &Snapshot) {
        for (state, n) in [
            ("queued", s.queued),
            ("running", s.running),
            ("waiting", s.waiting),
        ] {
            self.queue_depth
                .get_or_create(&StateLabels { state })
                .set(n as i64);
        }
        self.queue_capacity.set(s.capacity as i64);
        self.streams.set(s.streams as i64);
        if let Some(pending) = s.outbox_pending {
            self.outbox_pending.set(pending as i64);
        }
        // Removed instances leave the scrape.
        self.instance_up.clear();
        self.instance_in_flight.clear();
        self.instance_capacity.clear();
        for i in &s.instances {
            let labels = InstanceLabels {
                kind: kind_label(i.kind),
                instance: i.id.0,
            };
            self.instance_up.get_or_create(&labels).set(i64::from(i.up));
            self.instance_in_flight
                .get_or_create(&labels)
                .set(i64::from(i.in_flight));
            self.instance_capacity
                .get_or_create(&labels)
                .set(i64::from(i.capacity));
        }
        self.queue_usage.set(s.queue_usage);
        self.failure_rate.set(s.failure_rate);
        self.avg_processing.set(s.avg_processing_secs);
        self.throughput.set(s.throughput_per_min);
    }
}

/// A histogram recorded with atomic adds only (prometheus-client's takes a lock per
/// observation): a count per bucket and the sum as f64 bits.
#[derive(Clone, Debug)]
pub struct Histogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    bounds: &'static [f64],
    /// One per bound, then +Inf; not cumulative.
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram(Arc::new(HistogramInner {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }))
    }

    pub fn observe(&self, value: f64) {
        let inner = &self.0;
        let bucket = inner.bounds.partition_point(|bound| *bound < value);
        inner.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let _ = inner
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = &self.0;
        let buckets: Vec<(f64, u64)> = inner
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(inner.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        // The count is the buckets' sum, so the two agree in every scrape.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = f64::from_bits(inner.sum.load(Ordering::Relaxed));
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_each_value_in_the_first_bucket_that_holds_it() {
        let histogram = Histogram::new(&[0.1, 1.0]);
        for value in [0.05, 0.1, 0.5, 7.0] {
            histogram.observe(value);
        }
        let mut registry = Registry::default();
        registry.register("h_seconds", "test", histogram);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "h_seconds_sum 7.65",
            "h_seconds_count 4",
            "h_seconds_bucket{le=\"0.1\"} 2",
            "h_seconds_bucket{le=\"1.0\"} 3",
            "h_seconds_bucket{le=\"+Inf\"} 4",
        ] {
            assert!(text.contains(line), "{line} not in {text}");
        }
    }

    #[test]
    fn the_classic_format_names_a_counter_family_with_its_total() {
        let open_metrics = "# HELP a_requests Requests.\n# TYPE a_requests counter\n\
            a_requests_total{x=\"1\"} 2\n# HELP b Bees.\n# TYPE b gauge\nb 1\n# EOF\n";
        assert_eq!(
            classic(open_metrics),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\n\
            a_requests_total{x=\"1\"} 2\n# HELP b Bees.\n# TYPE b gauge\nb 1\n"
        );
    }

    #[test]
    fn http_methods_outside_the_standard_ones_share_one_label() {
        assert_eq!(http_method("GET"), "GET");
        assert_eq!(http_method("BREW"), "other");
    }
}
