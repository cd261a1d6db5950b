//! Listener: the wake-ups other gateways on the same PostgreSQL database send with
//! `NOTIFY`, passed to the actor each concerns: work queued (the Dispatcher claims), a
//! task cancelled (its Dispatcher aborts it if it runs here), instances changed (the
//! InstanceRegistry), a call slot freed (the registry's waiters, and the Dispatcher,
//! whose claims count free slots), a user shut out (the event hub ends their streams,
//! the standing check forgets them), webhook deliveries queued (the deliverer looks);
//! and every gateway's task events, this one's included, in commit order, for the event
//! hub. Notifications sent while its connection is down are lost, so every
//! (re)connection is followed by a resync of all of them (streams read the event log);
//! the Dispatcher's, the registry's and the deliverer's polls are the backstop in
//! between.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use sea_orm::DatabaseConnection;
use sqlx::postgres::PgListener;

use super::messages::{ReloadInstances, SlotFreed, TaskCancelled, Wake, WakeReason};
use super::{Dispatcher, InstanceRegistry};
use crate::auth::UserStanding;
use crate::domain::{TaskId, UserId};
use crate::events::EventHub;
use crate::store::events::{from_notification, EVENTS_CHANNEL};
use crate::store::users;
use crate::store::CHANNEL;

/// Pause before connecting again after the listening connection failed.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

pub struct Listener {
    db: DatabaseConnection,
    dispatcher: Addr<Dispatcher>,
    registry: Addr<InstanceRegistry>,
    hub: EventHub,
    standing: Arc<UserStanding>,
}

impl Listener {
    pub fn new(
        db: DatabaseConnection,
        dispatcher: Addr<Dispatcher>,
        registry: Addr<InstanceRegistry>,
        hub: EventHub,
        standing: Arc<UserStanding>,
    ) -> Listener {
        Listener {
            db,
            dispatcher,
            registry,
            hub,
            standing,
        }
    }
}

/// The actors and the hub a notification goes to.
#[derive(Clone)]
struct Routes {
    /// Where users shut out while nobody listened are looked up.
    db: DatabaseConnection,
    dispatcher: Addr<Dispatcher>,
    registry: Addr<InstanceRegistry>,
    hub: EventHub,
    standing: Arc<UserStanding>,
}

impl Routes {
    /// Whatever was said while nobody listened is lost: everyone looks for it.
    fn resync(&self) {
        self.dispatcher.do_send(Wake(WakeReason::Resync));
        self.registry.do_send(ReloadInstances);
        self.registry.do_send(SlotFreed);
        self.hub.catch_up_all();
        self.hub.deliveries_queued();
        // A user shut out meanwhile: those with streams here are looked up.
        let watching: Vec<i64> = self.hub.watched().iter().map(|(u, _)| u.0).collect();
        let routes = self.clone();
        actix_web::rt::spawn(async move {
            match users::shut_out(&routes.db, &watching).await {
                Ok(gone) => gone.into_iter().for_each(|id| routes.shut_out(UserId(id))),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look for users shut out while not listening")
                }
            }
        });
    }

    fn shut_out(&self, user_id: UserId) {
        self.standing.forget(user_id);
        self.hub.revoke(user_id);
    }

    /// Passes one notification on.
    fn route(&self, channel: &str, payload: &str) {
        if channel == EVENTS_CHANNEL {
            match from_notification(payload) {
                Some(events) => self.hub.publish(events),
                None => tracing::debug!(payload, "unreadable event notification"),
            }
            return;
        }
        match payload.split_once(':') {
            Some(("c", task_id)) => self.dispatcher.do_send(TaskCancelled {
                task_id: TaskId::from(task_id.to_string()),
                user_id: None,
            }),
            Some(("u", user_id)) => match user_id.parse() {
                Ok(user_id) => self.shut_out(UserId(user_id)),
                Err(_) => tracing::debug!(payload, "unreadable user notification"),
            },
            _ => match payload {
                "q" => self.dispatcher.do_send(Wake(WakeReason::Queued)),
                "i" => self.registry.do_send(ReloadInstances),
                "w" => self.hub.deliveries_queued(),
                // The waiters may take it, and an idle worker's claim may count it.
                "s" => {
                    self.registry.do_send(SlotFreed);
                    self.dispatcher.do_send(Wake(WakeReason::SlotFreed));
                }
                other => tracing::debug!(payload = other, "unknown notification"),
            },
        }
    }
}

impl Actor for Listener {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let pool = self.db.get_postgres_connection_pool().clone();
        let routes = Routes {
            db: self.db.clone(),
            dispatcher: self.dispatcher.clone(),
            registry: self.registry.clone(),
            hub: self.hub.clone(),
            standing: self.standing.clone(),
        };
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
                if let Err(e) = listener.listen_all([CHANNEL, EVENTS_CHANNEL]).await {
                    tracing::warn!(error = %e, "cannot listen for other gateways; trying again");
                    tokio::time::sleep(RECONNECT_AFTER).await;
                    continue;
                }
                routes.resync();
                loop {
                    match listener.try_recv().await {
                        Ok(Some(notification)) => {
                            routes.route(notification.channel(), notification.payload())
                        }
                        // The connection dropped and came back: notifications were lost.
                        Ok(None) => {
                            tracing::info!("listening connection re-established; resyncing");
                            routes.resync();
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
