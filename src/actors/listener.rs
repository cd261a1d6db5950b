//! Listener: the wake-ups other gateways on the same PostgreSQL database send with
//! `NOTIFY`, passed to the actor each concerns: work queued (the Dispatcher claims), a
//! task cancelled (its Dispatcher aborts it if it runs here), instances changed and a
//! call slot freed (the InstanceRegistry). Notifications sent while its connection is
//! down are lost, so every (re)connection is followed by a resync of all three; the
//! Dispatcher's and the registry's polls are the backstop in between.

use std::time::Duration;

use actix::prelude::*;
use sea_orm::DatabaseConnection;
use sqlx::postgres::PgListener;

use super::messages::{ReloadInstances, SlotFreed, TaskCancelled, Wake};
use super::{Dispatcher, InstanceRegistry};
use crate::domain::TaskId;
use crate::store::cluster::CHANNEL;

/// Pause before connecting again after the listening connection failed.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

pub struct Listener {
    db: DatabaseConnection,
    dispatcher: Addr<Dispatcher>,
    registry: Addr<InstanceRegistry>,
}

impl Listener {
    pub fn new(
        db: DatabaseConnection,
        dispatcher: Addr<Dispatcher>,
        registry: Addr<InstanceRegistry>,
    ) -> Listener {
        Listener {
            db,
            dispatcher,
            registry,
        }
    }

    fn resync(dispatcher: &Addr<Dispatcher>, registry: &Addr<InstanceRegistry>) {
        dispatcher.do_send(Wake);
        registry.do_send(ReloadInstances);
        registry.do_send(SlotFreed);
    }
}

impl Actor for Listener {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let pool = self.db.get_postgres_connection_pool().clone();
        let (dispatcher, registry) = (self.dispatcher.clone(), self.registry.clone());
        let listen = async move {
            loop {
                let mut listener = match PgListener::connect_with(&pool).await {
                    Ok(listener) => listener,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for other gateways; trying again");
                        tokio::time::sleep(RECONNECT_AFTER).await;
                        continue;
                    }
                };
                if let Err(e) = listener.listen(CHANNEL).await {
                    tracing::warn!(error = %e, "cannot listen for other gateways; trying again");
                    tokio::time::sleep(RECONNECT_AFTER).await;
                    continue;
                }
                // Whatever was said while nobody listened is lost: look for it.
                Self::resync(&dispatcher, &registry);
                loop {
                    match listener.try_recv().await {
                        Ok(Some(notification)) => {
                            route(notification.payload(), &dispatcher, &registry)
                        }
                        // The connection dropped and came back: notifications were lost.
                        Ok(None) => {
                            tracing::info!("listening connection re-established; resyncing");
                            Self::resync(&dispatcher, &registry);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "listening connection lost; reconnecting");
                            break;
                        }
                    }
                }
            }
        };
        ctx.spawn(listen.into_actor(self));
    }
}

impl Supervised for Listener {}

/// Passes one notification on.
fn route(payload: &str, dispatcher: &Addr<Dispatcher>, registry: &Addr<InstanceRegistry>) {
    match payload.split_once(':') {
        Some(("c", task_id)) => dispatcher.do_send(TaskCancelled {
            task_id: TaskId::from(task_id.to_string()),
            user_id: None,
        }),
        _ => match payload {
            "q" => dispatcher.do_send(Wake),
            "i" => registry.do_send(ReloadInstances),
            "s" => registry.do_send(SlotFreed),
            other => tracing::debug!(payload = other, "unknown notification"),
        },
    }
}
