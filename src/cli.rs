//! The `infergate` command line: serve, migrate, manage users, run the simulated backend.

use std::io::BufRead;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::auth::accounts::{self, AccountError};
use crate::auth::HashPool;
use crate::domain::{
    InstanceKind, InstanceSpec, NewUser, Protocol, RegisterRequest, Role, ValidationError,
};
use crate::settings::{Settings, SettingsError};
use crate::simulator::{SimBackend, SimConfig};
use crate::startup::{Application, StartupError};
use crate::store::{self, users, StoreError};
use crate::telemetry;

/// Why a command failed; `main` prints it after `infergate: `.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Startup(#[from] StartupError),
    #[error(transparent)]
    Telemetry(#[from] telemetry::TelemetryError),
    #[error("database: {0}")]
    Migration(#[from] sea_orm::DbErr),
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error(transparent)]
    Account(#[from] AccountError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("passwords do not match")]
    PasswordMismatch,
    #[error(
        "there is no terminal to ask for the password on ({0}); pipe it in with --password-stdin"
    )]
    NoTerminal(std::io::Error),
    #[error("no user named {0}")]
    NoSuchUser(String),
    #[error(transparent)]
    Lock(#[from] store::LockError),
    #[error("compact is for an SQLite database.url; on PostgreSQL, autovacuum reuses the space")]
    NotSqlite,
}

#[derive(Parser)]
#[command(
    name = "infergate",
    version,
    about = "Asynchronous task gateway for GPU inference backends"
)]
pub struct Cli {
    /// Settings file (default: ./settings.toml when present).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the gateway (the default command).
    Serve {
        /// Also start simulated image and speech backends in-process, so a task completes
        /// with no GPU.
        #[arg(long)]
        demo: bool,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// With the gateway stopped: rewrite the SQLite file, giving every free page back and
    /// turning on the incremental auto-vacuum retention needs on a file made without it.
    Compact,
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Run the simulated backend on its own: it speaks qwen, fastwhisper, openai (images,
    /// transcriptions) and a1111 at once.
    Simulate {
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, default_value_t = 8000)]
        port: u16,
        #[command(flatten)]
        config: SimConfig,
    },
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user, asking for the password (or reading one line from stdin).
    Add {
        name: String,
        /// Give the user the admin role.
        #[arg(long)]
        admin: bool,
        /// Read the password from standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change a user's role.
    Promote {
        name: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
    },
    /// Delete a user with everything of theirs: tasks (unfinished ones too), images and
    /// device keys. Their tokens and keys stop working.
    Remove { name: String },
    /// Shut a user out (tokens, device keys, logins) and keep their data.
    Disable { name: String },
    /// Let a disabled user back in.
    Enable { name: String },
}

fn parse_role(raw: &str) -> Result<Role, String> {
    match raw {
        "user" => Ok(Role::User),
        "vip" => Ok(Role::Vip),
        "admin" => Ok(Role::Admin),
        _ => Err("role must be user, vip or admin".into()),
    }
}

/// Runs the parsed command; errors are printed by `main`.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let settings = Settings::load(cli.config.as_deref())?;
    // Kept until the command ends, so the last spans are exported.
    let _telemetry = telemetry::init(&settings.log, &settings.telemetry)?;
    match cli.command.unwrap_or(Command::Serve { demo: false }) {
        Command::Serve { demo } => serve(settings, demo).await,
        Command::Migrate => {
            let db = store::connect(&settings.database).await?;
            store::migrate(&db).await?;
            println!("database is up to date");
            Ok(())
        }
        Command::Compact => compact(settings).await,
        Command::User { command } => user(settings, command).await,
        Command::Simulate { host, port, config } => {
            let sim = SimBackend::start(config, &host, port)?;
            tracing::info!(url = %sim.url(), "simulated backend listening");
            tokio::signal::ctrl_c().await?;
            sim.stop().await;
            Ok(())
        }
    }
}

async fn serve(mut settings: Settings, demo: bool) -> Result<(), CliError> {
    // Kept alive for as long as the gateway runs.
    let mut simulators = Vec::new();
    if demo {
        // Only the simulators: an instance of settings.toml that is not there would hold
        // a worker slot and a task waiting for it.
        settings.instances.clear();
        // Demo mode registers anyone: this machine only, unless a host was asked for.
        if settings.server.host.is_empty() {
            settings.server.host = "127.0.0.1".into();
        }
        for (kind, protocol, latency_ms) in [
            (InstanceKind::Image, Protocol::Qwen, 2000),
            (InstanceKind::Speech, Protocol::Fastwhisper, 300),
        ] {
            let config = SimConfig {
                latency_ms,
                ..SimConfig::default()
            };
            let sim = SimBackend::start(config, "127.0.0.1", 0)?;
            tracing::info!(url = %sim.url(), ?kind, "demo: simulated backend started");
            settings.instances.push(InstanceSpec {
                protocol: Some(protocol),
                ..InstanceSpec::new(kind, sim.url())
            });
            simulators.push(sim);
        }
    }
    let app = Application::build(settings).await?;
    Ok(app.run_until_stopped().await?)
}

async fn compact(mut settings: Settings) -> Result<(), CliError> {
    if !settings.database.url.starts_with("sqlite:") {
        return Err(CliError::NotSqlite);
    }
    // The gateway's own lock: a running gateway would hold the file's pages meanwhile.
    let _lock = store::lock(&settings.database.url)?;
    // Alone on the file: leaving WAL needs every other connection gone.
    settings.database.max_connections = 1;
    let db = store::connect(&settings.database).await?;
    store::migrate(&db).await?;
    let (before, after) = store::space::compact(&db).await?;
    let incremental = store::space::incremental(&db).await?;
    println!(
        "database compacted: {} bytes before, {} after; incremental auto-vacuum {}",
        before.bytes,
        after.bytes,
        if incremental { "on" } else { "off" }
    );
    Ok(())
}

/// Asks on the terminal, without echo.
fn ask_password(prompt: &str) -> Result<String, CliError> {
    rpassword::prompt_password(prompt).map_err(CliError::NoTerminal)
}

async fn user(settings: Settings, command: UserCommand) -> Result<(), CliError> {
    let db = store::connect(&settings.database).await?;
    store::migrate(&db).await?;
    match command {
        UserCommand::Add {
            name,
            admin,
            password_stdin,
        } => {
            let password = if password_stdin {
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line)?;
                line.trim_end_matches(['\r', '\n']).to_string()
            } else {
                let first = ask_password("password: ")?;
                let again = ask_password("again: ")?;
                if first != again {
                    return Err(CliError::PasswordMismatch);
                }
                first
            };
            let request = RegisterRequest {
                username: Some(name),
                password: Some(password),
                email: None,
                phone: None,
            };
            let new_user = NewUser::try_from(request)?;
            let role = if admin { Role::Admin } else { Role::User };
            let hasher = HashPool::new(1, 0);
            let created = accounts::create_user(&db, &hasher, new_user, role).await?;
            println!(
                "created user {} (id {}, role {})",
                created.username, created.id, created.role
            );
            let change = serde_json::json!({ "role": created.role });
            audit(&db, "user.add", created.username, change).await
        }
        UserCommand::Promote { name, role } => {
            if users::set_role(&db, &name, role).await? {
                println!("{name} is now {role}");
                audit(
                    &db,
                    "user.update",
                    name,
                    serde_json::json!({ "role": role }),
                )
                .await
            } else {
                Err(CliError::NoSuchUser(name))
            }
        }
        UserCommand::Remove { name } => {
            let removed = users::remove(&db, &name)
                .await?
                .ok_or_else(|| CliError::NoSuchUser(name.clone()))?;
            println!(
                "removed user {name} (id {}) with {} tasks, {} images and {} device keys",
                removed.user_id, removed.tasks, removed.images, removed.keys
            );
            let what = serde_json::json!({ "tasks": removed.tasks, "images": removed.images });
            audit(&db, "user.remove", name, what).await
        }
        UserCommand::Disable { name } => set_disabled(&db, name, true).await,
        UserCommand::Enable { name } => set_disabled(&db, name, false).await,
    }
}

async fn set_disabled(
    db: &sea_orm::DatabaseConnection,
    name: String,
    disabled: bool,
) -> Result<(), CliError> {
    let user = users::set_disabled(db, &name, disabled)
        .await?
        .ok_or(CliError::NoSuchUser(name))?;
    let state = if disabled { "disabled" } else { "enabled" };
    println!("{} is now {state}", user.username);
    let change = serde_json::json!({ "disabled": disabled });
    audit(db, "user.update", user.username, change).await
}

/// The audit log's entry for a change made from the command line (actor `cli`, id 0).
async fn audit(
    db: &sea_orm::DatabaseConnection,
    action: &'static str,
    target: String,
    change: serde_json::Value,
) -> Result<(), CliError> {
    let entry = store::audit::Entry {
        actor_id: 0,
        actor_name: "cli".into(),
        action,
        target: Some(target),
        filter: Some(change.to_string()),
        count: None,
    };
    store::audit::append(db, entry).await?;
    Ok(())
}
