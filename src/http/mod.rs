//! The HTTP layer: handlers validate input, send messages to the actors and shape replies.
//! Each route group exposes `configure`, chained by `startup`.

pub mod accounts;
pub mod admin;
pub mod caller;
pub mod console;
pub mod docs;
pub mod events;
pub mod extract;
pub mod image;
pub mod keys;
pub mod metrics;
pub mod openai;
pub mod slow_clients;
pub mod speech;
pub mod system;
pub mod tasks;
pub mod webhooks;
pub mod ws;

use std::time::Duration;

use actix::dev::ToEnvelope;
use actix::{Actor, Addr, Handler, Message};
use actix_web::{web, HttpRequest, HttpResponse};

use crate::error::ApiError;

/// How long a handler waits for an actor's reply before answering 503.
pub const ACTOR_REPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// Sends `msg` and waits for the reply, at most `ACTOR_REPLY_TIMEOUT`: an actor that does
/// not answer in time (or is gone) is a 503 `busy`.
pub async fn ask<A, M>(actor: &Addr<A>, msg: M) -> Result<M::Result, ApiError>
where
    A: Actor + Handler<M>,
    A::Context: ToEnvelope<A, M>,
    M: Message + Send + 'static,
    M::Result: Send,
{
    Ok(actor.send(msg).timeout(ACTOR_REPLY_TIMEOUT).await?)
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.configure(system::configure)
        .configure(metrics::configure)
        .configure(accounts::configure)
        .configure(image::configure)
        .configure(tasks::configure)
        .configure(events::configure)
        .configure(webhooks::configure)
        .configure(ws::configure)
        .configure(speech::configure)
        .configure(keys::configure)
        .configure(admin::configure)
        .configure(openai::configure)
        .configure(docs::configure)
        .configure(console::configure);
}

/// What a request no route takes gets: 405 with `Allow` on a documented path, else a
/// JSON 404.
pub async fn no_route(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    tracing::debug!(method = %req.method(), path = req.path(), "no route");
    match docs::allowed_methods(req.path()) {
        Some(allow) => Err(ApiError::MethodNotAllowed {
            allow: allow.to_string(),
        }),
        None => Err(ApiError::NotFound("route")),
    }
}
