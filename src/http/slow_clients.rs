//! What keeps slow or numerous connections from holding the server.
//!
//! - **Body deadlines.** actix-web times out a slow request head (`client_request_timeout`)
//!   but not a slow body. `BodyDeadline` wraps every request body in a stream that fails
//!   once `server.body_timeout_secs` have passed since the head arrived; the request is
//!   answered 408 `upload_timeout` and its connection closed. The streamed speech uploads
//!   (`STREAMED_BODY_PATHS`) are exempt: the speech service holds them to a minimum data
//!   rate instead (`speech.min_bytes_per_sec`). A response to a request whose body was
//!   not read to its end (refused before it was needed, or cut off) also closes the
//!   connection, so an unread trickle cannot hold it (see `close`).
//! - **Connection caps.** The global cap is actix's own (`HttpServer::max_connections`,
//!   per worker thread: `server.max_connections` split evenly among them); beyond it the
//!   server stops accepting and new connections wait in the kernel's backlog. The
//!   per-address cap (`server.max_connections_per_address`) is counted by `on_connect`
//!   for every accepted connection, with a guard in the connection's data that counts it
//!   out when the connection ends; every request on a connection over the cap is answered
//!   429 `too_many_connections` at once, without reading its body, and the connection is
//!   closed.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{Extensions, Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::{header, ConnectionType, StatusCode};
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::HttpMessage;
use futures_util::Stream;
use tokio::time::Sleep;

use crate::error::ApiError;
use crate::limits::client_key;

type BoxedPayloadStream = Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>>;

/// Paths whose bodies are streams held to a minimum data rate by their handler rather
/// than to a total time here.
pub const STREAMED_BODY_PATHS: &[&str] = &["/api/v1/speech/"];

/// The error a body stream gives when its deadline passes; extractors that read bodies
/// map it to 408 (`is_deadline`).
fn deadline_error(secs: u64) -> PayloadError {
    PayloadError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("the request body did not arrive within {secs}s"),
    ))
}

/// Whether a body read failed because its deadline passed.
pub fn is_deadline(error: &PayloadError) -> bool {
    matches!(error, PayloadError::Io(e) if e.kind() == std::io::ErrorKind::TimedOut)
}

/// The body deadline's settings, shared by the middleware of every worker.
#[derive(Clone, Copy)]
pub struct BodyDeadline {
    pub total: Duration,
}

/// How the body of one request went.
#[derive(Default)]
struct BodyState {
    finished: Cell<bool>,
    timed_out: Cell<bool>,
}

/// A request body that fails once its deadline (if it has one) has passed. The body
/// itself is shared with the middleware, which may keep it past the handler (see
/// `close`).
struct TimedBody {
    inner: Rc<RefCell<Payload>>,
    deadline: Option<Pin<Box<Sleep>>>,
    secs: u64,
    state: Rc<BodyState>,
}

impl Stream for TimedBody {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.state.finished.get() {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut *this.inner.borrow_mut()).poll_next(cx);
        if let Poll::Ready(item) = polled {
            if !matches!(item, Some(Ok(_))) {
                this.state.finished.set(true);
            }
            return Poll::Ready(item);
        }
        if let Some(deadline) = &mut this.deadline {
            if deadline.as_mut().poll(cx).is_ready() {
                this.state.timed_out.set(true);
                this.state.finished.set(true);
                return Poll::Ready(Some(Err(deadline_error(this.secs))));
            }
        }
        Poll::Pending
    }
}

fn has_body(req: &ServiceRequest) -> bool {
    let headers = req.headers();
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    length.is_some_and(|n| n > 0) || headers.contains_key(header::TRANSFER_ENCODING)
}

/// Middleware: the per-address cap first, then the body deadline (see the module doc).
pub async fn guard_connection(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let body = has_body(&req).then(|| Rc::new(RefCell::new(req.take_payload())));
    if req
        .conn_data::<Connection>()
        .is_some_and(|connection| connection.over_cap)
    {
        let refused = req.error_response(ApiError::TooManyConnections);
        return Ok(close(refused, body));
    }
    let Some(inner) = body else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let streamed = STREAMED_BODY_PATHS
        .iter()
        .any(|prefix| req.path().starts_with(prefix));
    let total = req
        .app_data::<actix_web::web::Data<BodyDeadline>>()
        .map(|d| d.total)
        .filter(|_| !streamed);
    let state = Rc::new(BodyState::default());
    let timed: BoxedPayloadStream = Box::pin(TimedBody {
        inner: inner.clone(),
        deadline: total.map(|total| Box::pin(tokio::time::sleep(total))),
        secs: total.map_or(0, |t| t.as_secs()),
        state: state.clone(),
    });
    req.set_payload(Payload::from(timed));
    let response = next.call(req).await?.map_into_boxed_body();
    if state.timed_out.get() {
        let secs = total.map_or(0, |t| t.as_secs());
        let error = ApiError::UploadTimeout(format!(
            "the request body did not arrive within {secs}s; connection closed"
        ));
        let (request, _) = response.into_parts();
        let timed_out =
            ServiceResponse::new(request, actix_web::ResponseError::error_response(&error));
        return Ok(close(timed_out, Some(inner)));
    }
    // A body left unread (refused before it was needed, or cut off) could go on
    // trickling into a kept-alive connection.
    let cut_off = response.status() == StatusCode::REQUEST_TIMEOUT;
    if cut_off || !state.finished.get() {
        return Ok(close(response, Some(inner)));
    }
    Ok(response)
}

/// Closes the connection once this response is sent. actix closes on its own after a
/// response to a body left unread, unless the body was chunked and its reader is gone:
/// that one it reads to its end, for as long as it trickles. So the unread body is kept
/// alive (its reader held by the response and its body until the last byte is written),
/// and actix closes the connection.
fn close(
    response: ServiceResponse<BoxBody>,
    unread: Option<Rc<RefCell<Payload>>>,
) -> ServiceResponse<BoxBody> {
    let mut response = response.map_body(|head, body| {
        head.set_connection_type(ConnectionType::Close);
        match &unread {
            Some(unread) => BoxBody::new(HoldingBody {
                body,
                _unread: unread.clone(),
            }),
            None => body,
        }
    });
    if let Some(unread) = unread {
        // An empty body is judged before it is written: hold the reader there too.
        response
            .response_mut()
            .extensions_mut()
            .insert(HeldReader { _unread: unread });
    }
    response
}

/// A response body that keeps the request's unread body alive until it is written.
struct HoldingBody {
    body: BoxBody,
    _unread: Rc<RefCell<Payload>>,
}

impl MessageBody for HoldingBody {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}

struct HeldReader {
    _unread: Rc<RefCell<Payload>>,
}

/// Put in each connection's data by `count_connection`.
struct Connection {
    /// The connection's place in its address's count, when there is a cap.
    _slot: Option<AddressSlot>,
    over_cap: bool,
}

/// Open connections per client address (as `client_key` keys it).
#[derive(Default)]
pub struct ConnectionCounts {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection's place in its address's count, given back when the connection ends
/// (its data is dropped).
struct AddressSlot {
    counts: Arc<ConnectionCounts>,
    addr: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.addr);
            }
        }
    }
}

impl ConnectionCounts {
    /// Connections open from `addr` now.
    pub fn open_from(&self, addr: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&client_key(addr)).copied().unwrap_or(0)
    }
}

/// The `on_connect` hook: counts the connection in for its address and marks it when it
/// is over `max_per_address` (0: no cap).
pub fn count_connection(
    counts: &Arc<ConnectionCounts>,
    max_per_address: usize,
    connection: &dyn Any,
    data: &mut Extensions,
) {
    let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() else {
        return;
    };
    let (slot, over_cap) = match stream.peer_addr() {
        Ok(peer) if max_per_address > 0 => {
            let addr = client_key(peer.ip());
            let open = {
                let mut open = counts.open.lock().unwrap_or_else(|e| e.into_inner());
                let n = open.entry(addr).or_default();
                *n += 1;
                *n
            };
            let over_cap = open > max_per_address;
            if over_cap {
                tracing::warn!(client = %addr, open, "connection over the per-address cap; refused");
            }
            let slot = AddressSlot {
                counts: counts.clone(),
                addr,
            };
            (Some(slot), over_cap)
        }
        _ => (None, false),
    };
    data.insert(Connection {
        _slot: slot,
        over_cap,
    });
}
