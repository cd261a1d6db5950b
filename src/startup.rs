//! Builds the whole gateway: database, actors, HTTP server. `Application::build` binds
//! its own listener, so port 0 works and tests learn the real port.

use std::collections::HashMap;
use std::net::TcpListener;
use std::time::Duration;

use actix::Supervisor;
use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use tracing_actix_web::TracingLogger;

use crate::actors::messages::RequeueOrphans;
use crate::actors::worker::WorkerDeps;
use crate::actors::{Dispatcher, InstanceRegistry, TaskStore, Worker};
use crate::auth::{load_or_create_secret, JwtKeys};
use crate::settings::{InstanceKind, Settings};
use crate::{database, http};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("database: {0}")]
    Database(#[from] sea_orm::DbErr),
    #[error("the task store did not answer: {0}")]
    Actor(#[from] actix::MailboxError),
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
}

pub struct Application {
    port: u16,
    server: Server,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Application, StartupError> {
        let db = database::connect(&settings.database).await?;
        database::migrate(&db).await?;
        let secret = load_or_create_secret(&db, &settings.auth.jwt_secret).await?;
        let keys = JwtKeys::new(
            &secret,
            Duration::from_secs(settings.auth.token_ttl_hours * 3600),
        );

        let store_db = db.clone();
        let store = Supervisor::start(move |_| TaskStore::new(store_db));
        // Tasks a dead process left RUNNING go back to the queue before the Dispatcher loads it.
        let orphans = store.send(RequeueOrphans).await??;
        if orphans > 0 {
            tracing::warn!(
                tasks = orphans,
                "re-queued tasks that were running when the gateway stopped"
            );
        }

        let strategies = HashMap::from([
            (InstanceKind::Image, settings.balancing.image),
            (InstanceKind::Speech, settings.balancing.speech),
        ]);
        let (instances, health) = (settings.instances.clone(), settings.health.clone());
        let registry =
            Supervisor::start(move |_| InstanceRegistry::new(&instances, strategies, health));

        let slots = settings.worker_slots();
        let (capacity, dispatcher_store) = (settings.queue.capacity, store.clone());
        let dispatcher =
            Supervisor::start(move |_| Dispatcher::new(dispatcher_store, capacity, slots));
        let deps = WorkerDeps {
            dispatcher: dispatcher.clone(),
            store: store.clone(),
            registry: registry.clone(),
            task_timeout: settings.task_timeout(),
            max_wait: settings.queue_max_wait(),
            max_response_bytes: settings.workers.max_response_bytes,
        };
        for slot in 0..slots {
            let deps = deps.clone();
            Supervisor::start(move |_| Worker::new(slot, deps));
        }
        tracing::info!(
            slots,
            instances = settings.instances.len(),
            "actors started"
        );

        let listener = TcpListener::bind((settings.server.host.as_str(), settings.server.port))?;
        let port = listener.local_addr()?.port();
        let max_json = settings.server.max_json_bytes;
        let (db, keys, settings) = (
            web::Data::new(db),
            web::Data::new(keys),
            web::Data::new(settings),
        );
        let (store, dispatcher, app_registry) = (
            web::Data::new(store),
            web::Data::new(dispatcher),
            web::Data::new(registry),
        );
        let server = HttpServer::new(move || {
            App::new()
                .wrap(TracingLogger::default())
                .app_data(http::extract::json_config(max_json))
                .app_data(http::extract::query_config())
                .app_data(http::extract::path_config())
                .app_data(db.clone())
                .app_data(keys.clone())
                .app_data(settings.clone())
                .app_data(store.clone())
                .app_data(dispatcher.clone())
                .app_data(app_registry.clone())
                .configure(http::configure)
                .default_service(web::to(http::no_route))
        })
        .listen(listener)?
        .run();
        tracing::info!(port, "listening");
        Ok(Application { port, server })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}
