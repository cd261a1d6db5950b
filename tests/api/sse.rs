//! A small Server-Sent Events client for the tests: frames as they arrive.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::{RequestBuilder, StatusCode};
use serde_json::Value;

/// One SSE message (comments are skipped).
#[derive(Debug, Clone)]
pub struct Frame {
    pub event: Option<String>,
    pub id: Option<i64>,
    pub data: Value,
}

pub struct Sse {
    pub status: StatusCode,
    body: futures_util::stream::BoxStream<'static, reqwest::Result<actix_web::web::Bytes>>,
    buffer: String,
    pub comments: usize,
}

impl Sse {
    pub async fn open(request: RequestBuilder) -> Sse {
        let response = request.send().await.expect("open the stream");
        let status = response.status();
        Sse {
            status,
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
            comments: 0,
        }
    }

    /// The next message within `within`; `None` once the stream has ended.
    pub async fn next_within(&mut self, within: Duration) -> Option<Frame> {
        tokio::time::timeout(within, self.next())
            .await
            .unwrap_or_else(|_| panic!("no event within {within:?}"))
    }

    /// Reads what the stream still sends: `true` once it has ended, `false` if it is
    /// still open after `within`.
    pub async fn ends_within(&mut self, within: Duration) -> bool {
        tokio::time::timeout(within, async { while self.next().await.is_some() {} })
            .await
            .is_ok()
    }

    /// The next message, or `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(frame) = self.parse(&block) {
                    return Some(frame);
                }
                continue;
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buffer.push_str(std::str::from_utf8(&chunk).unwrap()),
                Some(Err(_)) | None => return None,
            }
        }
    }

    fn parse(&mut self, block: &str) -> Option<Frame> {
        let (mut event, mut id, mut data) = (None, None, String::new());
        let mut any = false;
        for line in block.lines() {
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (field, value) = line.split_once(": ").unwrap_or((line, ""));
            match field {
                "event" => event = Some(value.to_string()),
                "id" => id = Some(value.parse().expect("ids are numbers")),
                "data" => {
                    data.push_str(value);
                    any = true;
                }
                _ => {}
            }
        }
        any.then(|| Frame {
            event,
            id,
            data: serde_json::from_str(&data).expect("data is JSON"),
        })
    }

    /// Stored changes only (skips progress), until one matching `until`.
    pub async fn changes_until(
        &mut self,
        within: Duration,
        mut until: impl FnMut(&Frame) -> bool,
    ) -> Vec<Frame> {
        let mut seen = Vec::new();
        loop {
            let frame = self
                .next_within(within)
                .await
                .unwrap_or_else(|| panic!("the stream ended; seen {seen:?}"));
            if frame.data["type"] == "progress" {
                continue;
            }
            let stop = until(&frame);
            seen.push(frame);
            if stop {
                return seen;
            }
        }
    }
}

/// The `type` of each frame.
pub fn types(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .map(|f| f.data["type"].as_str().unwrap_or("?").to_string())
        .collect()
}
