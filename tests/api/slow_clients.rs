//! Slow and numerous connections, driven by a raw TCP client: bodies that trickle are cut
//! off with 408 and their connections closed; the per-address and global connection
//! caps hold.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{spawn_app_with, TestApp};
use crate::poll::eventually;

/// Longest any raw exchange here may take before the test gives up on it.
const BOUND: Duration = Duration::from_secs(15);

async fn connect(app: &TestApp) -> TcpStream {
    let addr = app.address.trim_start_matches("http://");
    TcpStream::connect(addr).await.unwrap()
}

/// Reads until the server closes the connection; panics if it does not within `BOUND`.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(BOUND, stream.read_to_end(&mut answer))
        .await
        .expect("the server kept the connection open")
        .ok();
    String::from_utf8_lossy(&answer).to_string()
}

/// Reads one whole response (head and a Content-Length body) from a kept-alive connection.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(BOUND, stream.read(&mut buf))
            .await
            .expect("no answer")
            .unwrap();
        assert!(n > 0, "closed before a whole answer: {answer:?}");
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(String::from)
                })
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
    }
}

/// Sends the head, then the body one byte per `pause`, for as long as the server reads.
fn trickle(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    head: String,
    body: Vec<u8>,
    pause: Duration,
) {
    actix_web::rt::spawn(async move {
        if writer.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for byte in body {
            tokio::time::sleep(pause).await;
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
        }
    });
}

fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

async fn app_with_body_timeout() -> TestApp {
    spawn_app_with(vec![], |s| s.server.body_timeout_secs = 1).await
}

#[actix_web::test]
async fn a_trickled_json_body_gets_408_and_its_connection_is_closed() {
    let app = app_with_body_timeout().await;
    let body = br#"{"username":"slowpoke","password":"password123"}"#.to_vec();
    let head = format!(
        "POST /register HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let (mut reader, writer) = connect(&app).await.into_split();
    trickle(writer, head, body, Duration::from_millis(200));
    let mut answer = Vec::new();
    tokio::time::timeout(BOUND, reader.read_to_end(&mut answer))
        .await
        .expect("the server kept the trickling connection open")
        .ok();
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert!(answer.contains("\"code\":\"upload_timeout\""), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    // Nothing of the half-sent registration was stored.
    assert_eq!(app.login("slowpoke", "password123").await.status(), 401);
}

#[actix_web::test]
async fn a_trickled_chunked_body_gets_408_too() {
    let app = app_with_body_timeout().await;
    let head = "POST /login HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_string();
    // One-byte chunks: "1\r\nX\r\n" each.
    let body: Vec<u8> = br#"{"username":"a"}"#
        .iter()
        .flat_map(|b| [b'1', b'\r', b'\n', *b, b'\r', b'\n'])
        .collect();
    let (mut reader, writer) = connect(&app).await.into_split();
    trickle(writer, head, body, Duration::from_millis(100));
    let mut answer = Vec::new();
    tokio::time::timeout(BOUND, reader.read_to_end(&mut answer))
        .await
        .expect("the server kept the trickling connection open")
        .ok();
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(status_of(&answer), 408, "{answer}");
}

#[actix_web::test]
async fn a_trickled_body_nobody_reads_does_not_keep_its_connection() {
    let app = app_with_body_timeout().await;
    // Refused for its missing token before its body is read.
    let head = "POST /api/v1/image/async HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_string();
    let body: Vec<u8> = (0..200).flat_map(|_| *b"1\r\n \r\n").collect();
    let (mut reader, writer) = connect(&app).await.into_split();
    trickle(writer, head, body, Duration::from_millis(100));
    let mut answer = Vec::new();
    tokio::time::timeout(BOUND, reader.read_to_end(&mut answer))
        .await
        .expect("the server kept the trickling connection open")
        .ok();
    assert_eq!(status_of(&String::from_utf8_lossy(&answer)), 401);
}

#[actix_web::test]
async fn a_prompt_json_body_is_unaffected_and_keeps_its_connection() {
    let app = app_with_body_timeout().await;
    let mut stream = connect(&app).await;
    for name in ["quick_1", "quick_2"] {
        let body = format!(r#"{{"username":"{name}","password":"password123"}}"#);
        let request = format!(
            "POST /register HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let answer = read_response(&mut stream).await;
        assert_eq!(status_of(&answer), 201, "{answer}");
    }
}

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: gateway\r\n\r\n";

/// A connection the server has accepted and answered on, kept open.
async fn open_connection(app: &TestApp) -> TcpStream {
    let mut stream = connect(app).await;
    stream.write_all(HEALTH).await.unwrap();
    let answer = read_response(&mut stream).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    stream
}

#[actix_web::test]
async fn connections_over_the_per_address_cap_get_429_and_are_closed() {
    let app = spawn_app_with(vec![], |s| s.server.max_connections_per_address = 2).await;
    let first = open_connection(&app).await;
    let _second = open_connection(&app).await;

    let mut third = connect(&app).await;
    third.write_all(HEALTH).await.unwrap();
    let answer = read_until_closed(&mut third).await;
    assert_eq!(status_of(&answer), 429, "{answer}");
    assert!(
        answer.contains("\"code\":\"too_many_connections\""),
        "{answer}"
    );
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );

    // Once one closes, a new connection is served again.
    drop(first);
    eventually("a connection served again", BOUND, || async {
        let mut stream = connect(&app).await;
        stream.write_all(HEALTH).await.unwrap();
        let answer = read_response(&mut stream).await;
        match status_of(&answer) {
            200 => Ok(()),
            other => Err(other),
        }
    })
    .await;
}

#[actix_web::test]
async fn beyond_the_global_cap_a_connection_waits_until_another_closes() {
    let app = spawn_app_with(vec![], |s| s.server.max_connections = 2).await;
    let first = open_connection(&app).await;
    let _second = open_connection(&app).await;

    let mut third = connect(&app).await;
    third.write_all(HEALTH).await.unwrap();
    let mut buf = [0u8; 64];
    // Not accepted: no answer while both others are open (an answer would come at once).
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(early.is_err(), "a connection beyond the cap was served");
    drop(first);
    let answer = read_response(&mut third).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
}
