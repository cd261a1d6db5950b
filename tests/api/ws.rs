//! Push over a WebSocket: the same events as the SSE stream, resume by message, pings.

use std::time::Duration;

use awc::ws::{Frame, Message};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

use crate::helpers::{fast_sim, spawn_app_with, TestApp};
use infergate::simulator::SimConfig;

const WAIT: Duration = Duration::from_secs(10);

type Socket = actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>;

async fn open(app: &TestApp, query: &str, token: &str) -> Socket {
    let url = app
        .url(&format!("/api/v1/ws{query}"))
        .replace("http://", "ws://");
    let (response, socket) = awc::Client::new()
        .ws(url)
        .bearer_auth(token)
        .connect()
        .await
        .expect("websocket handshake");
    assert_eq!(response.status(), 101);
    socket
}

/// The next event JSON (pings are answered by the test's silence: it just reads on).
async fn next_event(socket: &mut Socket) -> Option<Value> {
    loop {
        let frame = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a message within the wait")?
            .expect("a valid frame");
        match frame {
            Frame::Text(text) => return Some(serde_json::from_slice(&text).unwrap()),
            Frame::Close(_) => return None,
            _ => continue,
        }
    }
}

/// Stored changes (no progress) until one of type `until`.
async fn changes_until(socket: &mut Socket, until: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let event = next_event(socket)
            .await
            .unwrap_or_else(|| panic!("closed; seen {seen:?}"));
        if event["type"] == "progress" {
            continue;
        }
        let stop = event["type"] == until;
        seen.push(event);
        if stop {
            return seen;
        }
    }
}

/// The close frame's reason, read past every other frame, if the socket closes within
/// `within` (`Err` if it stays open; `Ok(None)` if it ends without a close frame).
async fn close_within(
    socket: &mut Socket,
    within: Duration,
) -> Result<Option<awc::ws::CloseReason>, tokio::time::error::Elapsed> {
    tokio::time::timeout(within, async {
        loop {
            match socket.next().await {
                Some(Ok(Frame::Close(reason))) => return reason,
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

#[actix_web::test]
async fn a_socket_sees_every_change_in_order_and_resumes_after_a_reconnect() {
    let sim = SimConfig {
        latency_ms: 300,
        ..SimConfig::default()
    };
    let app = spawn_app_with(vec![sim], |_| {}).await;
    let user = app.new_user("socket_user").await;
    let mut socket = open(&app, "", &user.token).await;
    let first = app.submit_ok(&user.token, "over a socket").await;
    let seen = changes_until(&mut socket, "running").await;
    assert_eq!(kinds(&seen), ["queued", "running"]);
    assert_eq!(seen[0]["task_id"], first.as_str());
    let last = seen[1]["seq"].as_i64().unwrap();
    assert_eq!(last, seen[0]["seq"].as_i64().unwrap() + 1);
    drop(socket);

    let second = app.submit_ok(&user.token, "while away").await;
    for id in [&first, &second] {
        app.wait_for_end(&user.token, id).await;
    }
    // A new socket starts live; a resume message replays exactly what was missed.
    let mut socket = open(&app, "", &user.token).await;
    let resume = json!({"type": "resume", "after": last}).to_string();
    socket.send(Message::Text(resume.into())).await.unwrap();
    let mut missed = changes_until(&mut socket, "done").await;
    if missed.last().unwrap()["task_id"] != second.as_str() {
        missed.extend(changes_until(&mut socket, "done").await);
    }
    assert_eq!(missed[0]["seq"], last + 1, "no gap");
    for pair in missed.windows(2) {
        assert_eq!(pair[1]["seq"], pair[0]["seq"].as_i64().unwrap() + 1);
    }
    let of = |id: &str| -> Vec<String> {
        let own = missed.iter().filter(|e| e["task_id"] == id);
        own.map(|e| e["type"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(of(&first), ["done"]);
    assert_eq!(of(&second), ["queued", "running", "done"]);
    // Also as `?after=` on the URL.
    let mut by_query = open(&app, &format!("?after={last}"), &user.token).await;
    assert_eq!(next_event(&mut by_query).await.unwrap()["seq"], last + 1);
}

#[actix_web::test]
async fn a_socket_pings_answers_bad_messages_and_refuses_strangers() {
    let app = spawn_app_with(vec![fast_sim()], |s| s.events.keepalive_secs = 1).await;
    let user = app.new_user("pinged").await;
    let mut socket = open(&app, "", &user.token).await;
    // A ping comes within the keep-alive.
    let ping = tokio::time::timeout(WAIT, async {
        loop {
            match socket.next().await {
                Some(Ok(Frame::Ping(_))) => return true,
                Some(Ok(_)) => continue,
                _ => return false,
            }
        }
    })
    .await
    .unwrap();
    assert!(ping, "the server pings an idle socket");
    socket.send(Message::Pong("".into())).await.unwrap();
    socket
        .send(Message::Text("{\"type\":\"rewind\"}".into()))
        .await
        .unwrap();
    let error = next_event(&mut socket).await.unwrap();
    assert_eq!(error["type"], "error");
    // Still open: events keep coming.
    let task_id = app.submit_ok(&user.token, "after the error").await;
    let seen = changes_until(&mut socket, "queued").await;
    assert_eq!(seen[0]["task_id"], task_id.as_str());

    let refused = awc::Client::new()
        .ws(app.url("/api/v1/ws").replace("http://", "ws://"))
        .connect()
        .await;
    match refused {
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
            assert_eq!(status, 401)
        }
        other => panic!(
            "a socket without credentials must be refused: {:?}",
            other.err()
        ),
    }
}

#[actix_web::test]
async fn a_socket_that_stops_answering_pings_is_closed() {
    let app = spawn_app_with(vec![fast_sim()], |s| s.events.keepalive_secs = 1).await;
    let user = app.new_user("silent").await;
    let mut socket = open(&app, "", &user.token).await;
    // awc answers nothing by itself: the test reads frames and never pongs.
    let closed = close_within(&mut socket, Duration::from_secs(8))
        .await
        .expect("closed within a few keep-alives");
    assert_eq!(closed.map(|r| r.code), Some(awc::ws::CloseCode::Away));
}

#[actix_web::test]
async fn a_socket_shows_only_its_users_events_and_opens_with_a_ticket_once() {
    let app = spawn_app_with(vec![fast_sim()], |_| {}).await;
    let alice = app.new_user("alice_ws").await;
    let bob = app.new_user("bob_ws").await;
    let ticket: Value = app
        .client
        .post(app.url("/api/v1/events/ticket"))
        .bearer_auth(&bob.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ticket = ticket["ticket"].as_str().unwrap();
    let url = app
        .url(&format!("/api/v1/ws?ticket={ticket}"))
        .replace("http://", "ws://");
    let (_, mut bobs) = awc::Client::new().ws(url.as_str()).connect().await.unwrap();
    app.submit_ok(&alice.token, "alice's").await;
    let own = app.submit_ok(&bob.token, "bob's").await;
    let first = changes_until(&mut bobs, "queued").await;
    assert_eq!(first[0]["task_id"], own.as_str(), "never alice's events");
    let again = awc::Client::new().ws(url.as_str()).connect().await;
    assert!(
        matches!(again, Err(awc::error::WsClientError::InvalidResponseStatus(s)) if s == 401),
        "a used ticket is refused"
    );
}

#[actix_web::test]
async fn a_disabled_users_socket_is_closed_with_1008_at_once() {
    let app = spawn_app_with(vec![fast_sim()], |_| {}).await;
    let admin = app.new_admin("root_ws").await;
    let user = app.new_user("banned_ws").await;
    let mut socket = open(&app, "", &user.token).await;
    app.submit_ok(&user.token, "before").await;
    changes_until(&mut socket, "done").await;
    app.disable_user(&admin.token, "banned_ws").await;
    let closed = close_within(&mut socket, Duration::from_secs(1))
        .await
        .expect("closed within a second");
    assert_eq!(closed.map(|r| r.code), Some(awc::ws::CloseCode::Policy));
}
