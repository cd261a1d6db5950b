//! `GET /api/v1/ws`: the same events as `GET /api/v1/events`, over a WebSocket. The
//! server sends each event's JSON as a text message; the client may send
//! `{"type":"resume","after":SEQ}` to replay the stored events after SEQ (or connect with
//! `?after=SEQ`). The server pings every `events.keepalive_secs` and closes a connection
//! that answered nothing for two of them. A client that falls behind is closed with
//! 1013 (try again later) and resumes from its last `seq`; a user who is disabled is
//! closed with 1008 (policy violation) at once.

use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Message, MessageStream, Session};
use sea_orm::DatabaseConnection;
use serde::Deserialize;

use crate::error::{ApiError, ErrorBody};
use crate::events::feed::{Feed, FeedEnd};
use crate::events::EventHub;
use crate::http::caller::Streamer;
use crate::http::events::Resume;
use crate::settings::Settings;
use crate::store::events;

/// The largest message a client may send (its messages are small commands).
const MAX_CLIENT_FRAME: usize = 4096;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/ws", web::get().to(connect));
}

/// What a client may send.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ClientMessage {
    Resume { after: i64 },
}

/// Every change of all your tasks, over a WebSocket (text messages of event JSON).
/// Send `{"type":"resume","after":SEQ}` to replay what came after SEQ.
#[utoipa::path(get, path = "/api/v1/ws", tag = "events",
    params(crate::http::events::StreamQuery),
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket handshake, or an invalid after", body = ErrorBody),
        (status = 401, description = "Missing or bad token, key or ticket", body = ErrorBody),
        (status = 429, description = "Too many open streams (events.max_streams_per_user)", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
pub async fn connect(
    caller: Streamer,
    Resume(after): Resume,
    req: HttpRequest,
    body: web::Payload,
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
    let (response, session, messages) = actix_ws::handle(&req, body)
        .map_err(|e| ApiError::Validation(format!("not a WebSocket handshake: {e}")))?;
    let keepalive = Duration::from_secs(settings.events.keepalive_secs);
    actix_web::rt::spawn(serve(
        feed,
        session,
        messages.max_frame_size(MAX_CLIENT_FRAME),
        keepalive,
    ));
    Ok(response)
}

/// How a connection ended, and what the client is told.
fn close(code: CloseCode, why: &str) -> Option<CloseReason> {
    Some(CloseReason {
        code,
        description: Some(why.to_string()),
    })
}

async fn serve(
    mut feed: Feed,
    mut session: Session,
    mut messages: MessageStream,
    keepalive: Duration,
) {
    let mut ping = tokio::time::interval(keepalive);
    ping.tick().await;
    let mut heard = Instant::now();
    let reason = loop {
        tokio::select! {
            event = feed.next() => match event {
                Ok(event) => {
                    if session.text(event.json().to_string()).await.is_err() {
                        return;
                    }
                }
                Err(FeedEnd::Closed) => {
                    break close(CloseCode::Again, "behind or shutting down; resume from your last seq")
                }
                Err(FeedEnd::Revoked) => break close(CloseCode::Policy, "account disabled"),
                Err(FeedEnd::Store(e)) => {
                    tracing::warn!(error = %e, "event socket cannot read the log; closing it");
                    break close(CloseCode::Error, "cannot read the event log; resume later");
                }
            },
            message = messages.recv() => {
                heard = Instant::now();
                match message {
                    Some(Ok(Message::Text(text))) => match serde_json::from_str(&text) {
                        Ok(ClientMessage::Resume { after }) if after >= 0 => {
                            if let Err(e) = feed.replay_from(after).await {
                                tracing::warn!(error = %e, "cannot replay events; closing the socket");
                                break close(CloseCode::Error, "cannot read the event log; resume later");
                            }
                        }
                        _ => {
                            let error = r#"{"type":"error","error":"send {\"type\":\"resume\",\"after\":SEQ} with SEQ at least 0"}"#;
                            if session.text(error).await.is_err() {
                                return;
                            }
                        }
                    },
                    Some(Ok(Message::Ping(bytes))) => {
                        if session.pong(&bytes).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | None => break None,
                    Some(Ok(Message::Binary(_))) => {
                        break close(CloseCode::Unsupported, "send text messages only")
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break close(CloseCode::Protocol, &e.to_string()),
                }
            }
            _ = ping.tick() => {
                if heard.elapsed() > 2 * keepalive {
                    break close(CloseCode::Away, "no answer to pings");
                }
                if session.ping(b"").await.is_err() {
                    return;
                }
            }
        }
    };
    let _ = session.close(reason).await;
}
