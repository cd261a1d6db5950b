//! Push: Server-Sent Events for one task (`GET /api/v1/tasks/{task_id}/events`) and for
//! all of a user's tasks (`GET /api/v1/events`), and the single-use tickets browsers
//! open them with (`POST /api/v1/events/ticket`).
//!
//! Frames: a stored change is `id: <seq>` and `data: <event JSON>`; progress is
//! `data:` alone (it has no number); the task stream opens with `event: snapshot`
//! carrying the task as `GET /api/v1/tasks` shows it; an idle stream gets a `:` comment
//! every `events.keepalive_secs`. So `id:` is only ever a stored number, and a client
//! that reconnects with `Last-Event-ID` (or `?after=`) gets exactly what it missed.

use std::time::Duration;

use actix::Addr;
use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::stream::{self, Stream};
use sea_orm::DatabaseConnection;
use serde::{Deserialize, Serialize};

use crate::actors::Dispatcher;
use crate::auth::tickets::{self, TICKET_TTL};
use crate::domain::{TaskEvent, TaskId};
use crate::error::{ApiError, ErrorBody};
use crate::events::feed::{Feed, FeedEnd};
use crate::events::{EventHub, Published};
use crate::http::caller::{DeviceOrUser, Streamer};
use crate::http::tasks::{views, TaskView};
use crate::settings::Settings;
use crate::store::events;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/events", web::get().to(user_events))
        .route("/api/v1/events/ticket", web::post().to(ticket))
        .route("/api/v1/tasks/{task_id}/events", web::get().to(task_events));
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct StreamQuery {
    /// Replay the stored events after this `seq`, then go live (as `Last-Event-ID`,
    /// which wins when both are given).
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// A ticket from `POST /api/v1/events/ticket`, for clients that cannot send headers.
    pub ticket: Option<String>,
}

/// Where the client resumes: `Last-Event-ID`, else `?after=`; `None`: from now on.
pub struct Resume(pub Option<i64>);

impl actix_web::FromRequest for Resume {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Resume, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        std::future::ready(resume_point(req))
    }
}

fn resume_point(req: &HttpRequest) -> Result<Resume, ApiError> {
    let query = web::Query::<StreamQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::Validation(format!("invalid query: {e}")))?;
    if query.after.is_some_and(|after| after < 0) {
        return Err(ApiError::Validation("after must be at least 0".into()));
    }
    let Some(value) = req.headers().get("Last-Event-ID") else {
        return Ok(Resume(query.after));
    };
    let seq = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|seq| *seq >= 0)
        .ok_or_else(|| ApiError::Validation("Last-Event-ID must be an event's seq".into()))?;
    Ok(Resume(Some(seq)))
}

/// One SSE frame.
fn frame(event: &Published) -> Bytes {
    let json = event.json();
    Bytes::from(match event.seq {
        Some(seq) => format!("id: {seq}\ndata: {json}\n\n"),
        None => format!("data: {json}\n\n"),
    })
}

fn snapshot_frame(task: &TaskView, last: i64) -> Bytes {
    let json = serde_json::to_string(task).expect("a task serializes");
    Bytes::from(if last > 0 {
        format!("event: snapshot\nid: {last}\ndata: {json}\n\n")
    } else {
        format!("event: snapshot\ndata: {json}\n\n")
    })
}

const KEEPALIVE: &[u8] = b": keep-alive\n\n";

/// The stream's state between writes.
struct Streaming {
    feed: Feed,
    /// Frames to send before reading the feed (the snapshot).
    first: Option<Bytes>,
    /// A task stream ends after its task's last event.
    until_terminal: bool,
    keepalive: Duration,
    /// How long a change that does not end its task waits for company before it is
    /// written (`events.linger_ms`).
    linger: Duration,
    ended: bool,
}

/// Frames written at most in one go when events pile up.
const MAX_BATCH_BYTES: usize = 32 * 1024;

impl Streaming {
    fn new(
        feed: Feed,
        first: Option<Bytes>,
        until_terminal: bool,
        settings: &Settings,
    ) -> Streaming {
        Streaming {
            feed,
            first,
            until_terminal,
            keepalive: Duration::from_secs(settings.events.keepalive_secs),
            linger: Duration::from_millis(settings.events.linger_ms),
            ended: false,
        }
    }

    /// Adds the event's frame to the batch; true when nothing more may join it (the
    /// stream's last event, a task's ending, a full batch).
    fn add(&mut self, batch: &mut Vec<u8>, event: &Published) -> bool {
        batch.extend_from_slice(&frame(event));
        self.ended = self.until_terminal && event.kind.is_terminal();
        self.ended || event.kind.is_terminal() || batch.len() >= MAX_BATCH_BYTES
    }

    /// Adds what is at hand without waiting; true as `add`.
    fn add_ready(&mut self, batch: &mut Vec<u8>) -> bool {
        while let Some(event) = self.feed.ready() {
            if self.add(batch, &event) {
                return true;
            }
        }
        false
    }
}

fn sse(state: Streaming) -> impl Stream<Item = Result<Bytes, actix_web::Error>> {
    let idle = Box::pin(tokio::time::sleep(state.keepalive));
    stream::unfold((state, idle), |(mut state, mut idle)| async move {
        if let Some(first) = state.first.take() {
            return Some((Ok(first), (state, idle)));
        }
        if state.ended {
            return None;
        }
        let event = tokio::select! {
            event = state.feed.next() => event,
            _ = idle.as_mut() => {
                idle.as_mut().reset(tokio::time::Instant::now() + state.keepalive);
                return Some((Ok(Bytes::from_static(KEEPALIVE)), (state, idle)));
            }
        };
        let event = match event {
            Ok(event) => event,
            // A revoked stream just ends: the client's reconnection gets 401.
            Err(FeedEnd::Closed | FeedEnd::Revoked) => return None,
            Err(FeedEnd::Store(e)) => {
                tracing::warn!(error = %e, "event stream cannot read the log; closing it");
                return None;
            }
        };
        // This one, whatever else is at hand, and what comes while it lingers, in one
        // write; an ending ends the wait.
        let mut batch = Vec::with_capacity(512);
        let mut full = state.add(&mut batch, &event) || state.add_ready(&mut batch);
        let deadline = tokio::time::Instant::now() + state.linger;
        while !full && !state.linger.is_zero() {
            tokio::select! {
                event = state.feed.next() => match event {
                    Ok(event) => full = state.add(&mut batch, &event) || state.add_ready(&mut batch),
                    // Nothing more may reach a user shut out, what was held included.
                    Err(FeedEnd::Revoked) => return None,
                    // What was held still goes; the next call meets the end again.
                    Err(_) => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        idle.as_mut()
            .reset(tokio::time::Instant::now() + state.keepalive);
        Some((Ok(Bytes::from(batch)), (state, idle)))
    })
}

fn streaming_response(state: Streaming) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // Proxies that buffer (nginx) would hold events back.
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(sse(state))
}

/// Every change of all your tasks, as Server-Sent Events. Without a resume point it
/// starts with what happens from now on.
#[utoipa::path(get, path = "/api/v1/events", tag = "events", params(StreamQuery),
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "text/event-stream of task events (`id:` is the event's seq)", body = TaskEvent, content_type = "text/event-stream"),
        (status = 400, description = "Invalid Last-Event-ID or after", body = ErrorBody),
        (status = 401, description = "Missing or bad token, key or ticket", body = ErrorBody),
        (status = 429, description = "Too many open streams (events.max_streams_per_user)", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
pub async fn user_events(
    caller: Streamer,
    Resume(after): Resume,
    hub: web::Data<EventHub>,
    db: web::Data<DatabaseConnection>,
    settings: web::Data<Settings>,
) -> Result<HttpResponse, ApiError> {
    let db = db.get_ref().clone();
    let mut feed = Feed::subscribe(&hub, db.clone(), caller.user_id, None)?;
    match after {
        Some(after) => feed.replay_from(after).await?,
        None => feed.start_after(events::last_seq(&db, caller.user_id).await?),
    }
    let first = Bytes::from_static(b"retry: 2000\n\n");
    Ok(streaming_response(Streaming::new(
        feed,
        Some(first),
        false,
        &settings,
    )))
}

/// One task's changes as Server-Sent Events: a `snapshot` of the task first, then each
/// change; the stream ends after the task's last. Resumed (`Last-Event-ID`, `?after=`),
/// it replays what came after instead of the snapshot; a task that had ended by then
/// answers 204, which tells `EventSource` not to reconnect.
#[utoipa::path(get, path = "/api/v1/tasks/{task_id}/events", tag = "events",
    params(("task_id" = String, Path, description = "The task to watch"), StreamQuery),
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "text/event-stream: `event: snapshot` with the task, then its events", body = TaskEvent, content_type = "text/event-stream"),
        (status = 204, description = "Resumed after the task's last event: nothing more will come"),
        (status = 400, description = "Invalid Last-Event-ID or after", body = ErrorBody),
        (status = 401, description = "Missing or bad token, key or ticket", body = ErrorBody),
        (status = 404, description = "No such task of yours", body = ErrorBody),
        (status = 429, description = "Too many open streams (events.max_streams_per_user)", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id, task_id = %task_id))]
pub async fn task_events(
    caller: Streamer,
    Resume(after): Resume,
    task_id: web::Path<String>,
    hub: web::Data<EventHub>,
    db: web::Data<DatabaseConnection>,
    dispatcher: web::Data<Addr<Dispatcher>>,
    settings: web::Data<Settings>,
) -> Result<HttpResponse, ApiError> {
    let task_id = TaskId::from(task_id.into_inner());
    let db = db.get_ref().clone();
    let user_id = caller.user_id;
    let mut feed = Feed::subscribe(&hub, db.clone(), user_id, Some(task_id.clone()))?;
    let (task, last) = events::task_as_of(&db, user_id, &task_id)
        .await?
        .ok_or(ApiError::NotFound("task"))?;
    if task.status.is_terminal() {
        return Ok(match after {
            // Its snapshot, and nothing after it.
            None => {
                let view = views(&db, &dispatcher, user_id, vec![task]).await?;
                event_stream_body(snapshot_frame(&view[0], last).to_vec())
            }
            // What it missed up to its end, if anything; else: do not come back.
            Some(after) => {
                let missed =
                    events::after(&db, user_id, after, Some(&task_id), ENDED_REPLAY).await?;
                if missed.is_empty() {
                    HttpResponse::NoContent().finish()
                } else {
                    let frames = missed.into_iter().map(|e| frame(&Published::new(e)));
                    event_stream_body(frames.flat_map(|f| f.to_vec()).collect())
                }
            }
        });
    }
    let first = match after {
        Some(after) => {
            feed.replay_from(after).await?;
            None
        }
        None => {
            feed.start_after(last);
            let view = views(&db, &dispatcher, user_id, vec![task]).await?;
            Some(snapshot_frame(&view[0], last))
        }
    };
    Ok(streaming_response(Streaming::new(
        feed, first, true, &settings,
    )))
}

/// Events replayed at most for a task that has ended (it has a handful).
const ENDED_REPLAY: u64 = 1000;

/// A whole, finite event stream.
fn event_stream_body(body: Vec<u8>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Ticket {
    /// Pass as `?ticket=` to open one stream, once.
    #[schema(example = "igt_3q2-7wVg…")]
    pub ticket: String,
    /// Seconds it stays valid.
    #[schema(example = 60)]
    pub expires_in: u64,
}

/// A single-use ticket that opens one event stream (SSE or WebSocket) within 60 s, for
/// browsers, whose `EventSource` and `WebSocket` cannot send an Authorization header.
#[utoipa::path(post, path = "/api/v1/events/ticket", tag = "events",
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 201, description = "The ticket", body = Ticket),
        (status = 401, description = "Missing or bad token or key", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
pub async fn ticket(
    caller: DeviceOrUser,
    db: web::Data<DatabaseConnection>,
) -> Result<HttpResponse, ApiError> {
    let ticket = tickets::issue(&db, caller.user_id).await?;
    Ok(HttpResponse::Created().json(Ticket {
        ticket,
        expires_in: TICKET_TTL.as_secs(),
    }))
}
