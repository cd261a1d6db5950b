//! Backends that misbehave in ways the simulator does not: answers chosen by the test,
//! and one that drops the connection mid-request.

use std::io::{Read, Write};
use std::net::TcpListener;

use actix_web::{web, App, HttpResponse, HttpServer};

/// An image backend whose `/ping` is ready and whose `/generate` answers `answer()`.
pub fn spawn_answering(answer: fn() -> HttpResponse) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = HttpServer::new(move || {
        App::new()
            .route(
                "/ping",
                web::get().to(|| async {
                    HttpResponse::Ok().json(serde_json::json!({"message": "ok", "status": "ready"}))
                }),
            )
            .route("/generate", web::post().to(move || async move { answer() }))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    actix_web::rt::spawn(server);
    url
}

/// A backend that answers pings but closes the connection as soon as it has read a
/// generation request, as a crashing GPU server would.
pub fn spawn_dying() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            if request.starts_with(b"GET /ping") {
                let body = r#"{"message":"ok","status":"ready"}"#;
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
            // Anything else: the connection drops with no answer.
        }
    });
    url
}

/// An image backend whose every `/ping` answers ready only after `delay`.
pub fn spawn_slow_ping(delay: std::time::Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = HttpServer::new(move || {
        App::new().route(
            "/ping",
            web::get().to(move || async move {
                tokio::time::sleep(delay).await;
                HttpResponse::Ok().json(serde_json::json!({"message": "ok", "status": "ready"}))
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    actix_web::rt::spawn(server);
    url
}
