//! Builds the whole gateway: database, actors, HTTP server. `Application::build` binds
//! its own listener, so port 0 works and tests learn the real port.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr, Arbiter, AsyncContext, Context, Supervisor};
use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use sea_orm::DatabaseConnection;
use tracing_actix_web::TracingLogger;

use crate::telemetry::{depth_history, HttpSpan};

use crate::actors::instance_registry::SharedSlots;
use crate::actors::messages::{Drain, RecoverOrphans, StopDelivering};
use crate::actors::progress::Progress;
use crate::actors::task_store::write;
use crate::actors::worker::WorkerDeps;
use crate::actors::{Deliverer, Dispatcher, InstanceRegistry, Listener, TaskStore, WorkerPool};
use crate::auth::{load_or_create_secret, HashPool, JwtKeys, UserStanding};
use crate::cluster::Cluster;
use crate::domain::InstanceKind;
use crate::events::EventHub;
use crate::generation::GenerationService;
use crate::http;
use crate::http::slow_clients::{self, BodyDeadline, ConnectionCounts};
use crate::limits::Limits;
use crate::retention::{self, Clock};
use crate::settings::Settings;
use crate::speech::SpeechService;
use crate::store::{self, DatabaseLock, LockError, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Locked(#[from] LockError),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Migration(#[from] sea_orm::DbErr),
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("cannot serve: {0}")]
    Serve(#[from] std::io::Error),
}

pub struct Application {
    port: u16,
    server: Server,
    /// Its streams are ended at shutdown.
    hub: EventHub,
    /// Told to drain on SIGTERM/SIGINT.
    dispatcher: Addr<Dispatcher>,
    /// Told to stop sending then, too.
    deliverer: Addr<Deliverer>,
    shutdown_grace: Duration,
    /// The TaskStore's thread, stopped last.
    store_thread: Arbiter,
    /// This gateway's hold on its SQLite file, released at exit.
    _lock: Option<DatabaseLock>,
    /// Asks for the same graceful shutdown as a signal (tests restart in one process).
    stop: Arc<tokio::sync::Notify>,
    /// The retention job's time.
    clock: Clock,
}

/// Stops a running gateway as SIGTERM would.
#[derive(Clone)]
pub struct Stopper(Arc<tokio::sync::Notify>);

impl Stopper {
    pub fn stop(&self) {
        self.0.notify_one();
    }
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Application, StartupError> {
        // Nothing is touched before these two hold: the database is this gateway's alone,
        // and the port is free. A start that fails here changes nothing.
        let lock = store::lock(&settings.database.url)?;
        let host = settings.server.listen_host();
        let address = format!("{host}:{}", settings.server.port);
        let listen_error = |source| StartupError::Listen {
            address: address.clone(),
            source,
        };
        let listener = TcpListener::bind((host, settings.server.port)).map_err(listen_error)?;
        let port = listener.local_addr().map_err(listen_error)?.port();

        let db = store::connect(&settings.database).await?;
        store::migrate(&db).await?;
        let secret = load_or_create_secret(&db, &settings.auth.jwt_secret).await?;
        let keys = JwtKeys::new(
            &secret,
            Duration::from_secs(settings.auth.token_ttl_hours * 3600),
        );

        // PostgreSQL: one of several gateways, sharing the queue and the backends' slots.
        let cluster = Cluster::of(&settings);
        let (store_db, hold_results, store_cluster) =
            (db.clone(), settings.hold_results(), cluster.clone());
        // The TaskStore gets a thread of its own: building statements and decoding rows
        // would otherwise compete with every other actor (end-to-end median 3,130 against
        // 2,990 tasks/s on two cores).
        let store_thread = Arbiter::new();
        // With several gateways, the commits that queue webhook deliveries say so.
        let hub = EventHub::new(
            settings.events.buffer,
            settings.events.max_streams_per_user,
            cluster.is_some(),
        );
        // Published on this thread, not the TaskStore's, whose next commit waits for it.
        let store_hub = hub.relay();
        let store = Supervisor::start_in_arbiter(&store_thread.handle(), move |_| {
            TaskStore::new(store_db, hold_results, store_cluster, store_hub)
        });
        // Tasks a dead process left RUNNING go back to the queue (or fail, out of
        // attempts) before the Dispatcher loads it. Several gateways never touch each
        // other's: a dead one's tasks are taken over when their leases run out.
        let max_attempts = settings.workers.max_attempts as i32;
        if cluster.is_none() {
            let (requeued, failed) = write(&store, RecoverOrphans { max_attempts }).await?;
            if requeued + failed > 0 {
                tracing::warn!(
                    requeued,
                    failed,
                    "recovered tasks that were running when the gateway stopped"
                );
            }
        }

        let strategies = HashMap::from([
            (InstanceKind::Image, settings.balancing.image),
            (InstanceKind::Speech, settings.balancing.speech),
        ]);

        let (dispatcher_store, queue_db) = (store.clone(), db.clone());
        let (queue_settings, queue_cluster) = (settings.clone(), cluster.clone());
        let dispatcher = Supervisor::start(move |_| {
            Dispatcher::new(dispatcher_store, queue_db, &queue_settings, queue_cluster)
        });
        let (worker_dispatcher, worker_store) = (dispatcher.clone(), store.clone());
        let (task_timeout, max_wait) = (settings.task_timeout(), settings.queue_max_wait());
        let (instances, health) = (settings.instances.clone(), settings.health.clone());
        let (workers, registry_db) = (settings.workers.clone(), db.clone());
        let slots = match cluster.clone() {
            Some(cluster) => {
                let leases = store::connect_leases(&settings.database).await?;
                Some(SharedSlots::new(
                    cluster,
                    leases,
                    dispatcher.clone().recipient(),
                ))
            }
            None => None,
        };
        let registry = Supervisor::start(move |ctx: &mut Context<InstanceRegistry>| {
            // Workers lease instances from the registry and the registry sizes the pool of
            // workers: each needs the other's address.
            let deps = WorkerDeps {
                dispatcher: worker_dispatcher,
                store: worker_store,
                registry: ctx.address(),
                task_timeout,
                max_wait,
                max_response_bytes: workers.max_response_bytes,
                max_attempts,
                retry_base: Duration::from_millis(workers.retry_base_ms),
            };
            let pool = WorkerPool::new(deps, workers).start();
            InstanceRegistry::new(
                instances,
                strategies,
                health,
                registry_db,
                pool.recipient(),
                slots,
            )
        });
        let standing = web::Data::new(UserStanding::new(
            db.clone(),
            Duration::from_secs(settings.auth.user_cache_secs),
        ));
        if cluster.is_some() {
            let (listener_db, listener_dispatcher, listener_registry, listener_hub) = (
                db.clone(),
                dispatcher.clone(),
                registry.clone(),
                hub.clone(),
            );
            let listener_standing = standing.clone().into_inner();
            Supervisor::start(move |_| {
                Listener::new(
                    listener_db,
                    listener_dispatcher,
                    listener_registry,
                    listener_hub,
                    listener_standing,
                )
            });
        }
        let (progress_hub, progress_db, progress_dispatcher) =
            (hub.clone(), db.clone(), dispatcher.clone());
        Supervisor::start(move |_| Progress::new(progress_hub, progress_db, progress_dispatcher));
        // Alone on the database, no delivery is under way: those a stopped process had
        // claimed are sent again now (with several gateways, once their claims run out).
        if cluster.is_none() {
            let released = store::webhooks::release_all(&db).await?;
            if released > 0 {
                tracing::warn!(
                    released,
                    "webhook deliveries cut short by the last stop go out again"
                );
            }
        }
        let (webhook_db, webhook_settings, webhook_hub) =
            (db.clone(), settings.webhooks.clone(), hub.clone());
        let deliverer =
            Supervisor::start(move |_| Deliverer::new(webhook_db, webhook_settings, webhook_hub));
        actix_web::rt::spawn(prune_events(
            db.clone(),
            Duration::from_secs(settings.events.retention_hours * 3600),
        ));
        actix_web::rt::spawn(depth_history::run(
            db.clone(),
            Duration::from_secs(settings.stats.depth_sample_secs),
        ));
        let clock = Clock::default();
        actix_web::rt::spawn(retention::run(
            db.clone(),
            settings.retention.clone(),
            clock.clone(),
        ));

        let max_json = settings.server.max_json_bytes;
        let shutdown_grace = settings.shutdown_grace();
        let drain = dispatcher.clone();
        let limits = web::Data::new(Limits::new(&settings.limits));
        let hasher = web::Data::new(HashPool::new(
            settings.auth.max_concurrent_hashes,
            settings.auth.max_queued_hashes,
        ));
        tracing::info!(threads = hasher.threads(), "password hashing threads");
        let speech = web::Data::new(SpeechService::new(
            registry.clone(),
            settings.speech.clone(),
        ));
        let generation = web::Data::new(GenerationService::new(
            dispatcher.clone(),
            store.clone(),
            db.clone(),
            settings.openai_wait(),
        ));
        actix_web::rt::spawn(forget_idle_clients(limits.clone().into_inner()));
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
        let app_hub = web::Data::new(hub.clone());
        let api_doc = web::Data::new(http::docs::ApiDocument::new(&settings));
        let body_deadline = web::Data::new(BodyDeadline {
            total: Duration::from_secs(settings.server.body_timeout_secs),
        });
        let connections = Arc::new(ConnectionCounts::default());
        let per_address = settings.server.max_connections_per_address;
        // The global cap is actix's, per worker thread: split evenly (rounded up).
        let max_connections = settings.server.max_connections;
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(max_connections);
        let per_worker = max_connections.div_ceil(workers);
        let server = HttpServer::new(move || {
            App::new()
                .wrap(from_fn(slow_clients::guard_connection))
                .wrap(from_fn(http::metrics::record))
                .wrap(TracingLogger::<HttpSpan>::new())
                .app_data(body_deadline.clone())
                .app_data(api_doc.clone())
                .app_data(http::extract::json_config(max_json))
                .app_data(http::extract::query_config())
                .app_data(http::extract::path_config())
                .app_data(db.clone())
                .app_data(keys.clone())
                .app_data(settings.clone())
                .app_data(limits.clone())
                .app_data(hasher.clone())
                .app_data(standing.clone())
                .app_data(store.clone())
                .app_data(dispatcher.clone())
                .app_data(app_registry.clone())
                .app_data(speech.clone())
                .app_data(generation.clone())
                .app_data(app_hub.clone())
                .configure(http::configure)
                .default_service(web::to(http::no_route))
        })
        .workers(workers)
        .max_connections(per_worker)
        .on_connect(move |connection, data| {
            slow_clients::count_connection(&connections, per_address, connection, data)
        })
        // Signals are ours: tasks must drain before the HTTP server stops.
        .disable_signals()
        .shutdown_timeout(10)
        .listen(listener)?
        .run();
        tracing::info!(port, "listening");
        Ok(Application {
            port,
            server,
            hub,
            dispatcher: drain,
            deliverer,
            shutdown_grace,
            store_thread,
            _lock: lock,
            stop: Arc::new(tokio::sync::Notify::new()),
            clock,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn stopper(&self) -> Stopper {
        Stopper(self.stop.clone())
    }

    /// The clock retention judges age by (tests move it).
    pub fn clock(&self) -> Clock {
        self.clock.clone()
    }

    /// Serves until SIGTERM or SIGINT, then shuts down gracefully: submissions get 503,
    /// running tasks get `server.shutdown_grace_secs` to finish, the rest stay QUEUED for
    /// the next start, and the HTTP server stops last.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let handle = self.server.handle();
        let mut server = actix_web::rt::spawn(self.server);
        tokio::select! {
            result = &mut server => return result.unwrap_or_else(|e| Err(std::io::Error::other(e))),
            signal = shutdown_signal() => tracing::info!(signal, "shutting down"),
            _ = self.stop.notified() => tracing::info!("shutting down on request"),
        }
        let drain = Drain {
            grace: self.shutdown_grace,
        };
        if let Err(e) = self.dispatcher.send(drain).await {
            tracing::error!(error = %e, "dispatcher did not drain");
        }
        // Deliveries still due stay in the outbox for the next start.
        if let Err(e) = self.deliverer.send(StopDelivering).await {
            tracing::error!(error = %e, "webhook deliverer did not stop");
        }
        // Open event streams would hold the HTTP server's stop: they end here, and
        // their clients resume from their last event elsewhere or after the restart.
        self.hub.close_all();
        handle.stop(true).await;
        let served = server
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        self.store_thread.stop();
        served
    }
}

/// Deletes events older than the retention, and expired stream tickets, a batch at a
/// time.
async fn prune_events(db: DatabaseConnection, retention: Duration) {
    const BATCH: u64 = 1000;
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        let before = chrono::Utc::now() - retention;
        loop {
            match store::events::prune(&db, before, BATCH).await {
                Ok(n) if n == BATCH => tokio::task::yield_now().await,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot prune old task events; trying again later");
                    break;
                }
            }
        }
        if let Err(e) = store::tickets::prune(&db).await {
            tracing::warn!(error = %e, "cannot prune expired stream tickets");
        }
    }
}

/// Keeps the rate limiters' memory to the clients seen lately.
async fn forget_idle_clients(limits: Arc<Limits>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        limits.forget_idle();
    }
}

async fn shutdown_signal() -> &'static str {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}
