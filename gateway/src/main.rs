//! `gateway`: the lock-fleet gateway server and its operator commands.

use anyhow::Context;
use clap::{Parser, Subcommand};
use gateway::config::{Config, Settings};
use std::path::PathBuf;

/// Log filter when `RUST_LOG` is unset. rumqttd is off: it logs every clean
/// client disconnect at ERROR ("no-connection id N is already gone",
/// "router-drop"), and what matters about it is exported as metrics
/// (`lockfleet_mqtt_*`) or checked by us (its listener). `RUST_LOG=info,rumqttd=info`
/// shows it again.
const DEFAULT_LOG_FILTER: &str = "info,rumqttd=off,rumqttc=warn,sqlx=warn";

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "Device gateway for a smart-lock fleet: CoAP and MQTT ingest, storage, dashboard events"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (CoAP, embedded MQTT broker, /metrics) until SIGTERM or Ctrl-C
    Serve {
        #[command(flatten)]
        settings: Settings,
        /// TOML file with the same keys as the flags (coap_listen = "0.0.0.0:5683", ...)
        #[arg(long, env = "LOCKFLEET_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Manage registered locks and bridges
    Devices {
        #[command(subcommand)]
        command: DevicesCommand,
    },
}

#[derive(Subcommand)]
enum DevicesCommand {
    /// Register the locks and bridges of a fleet file (CSV); all or nothing
    Import {
        /// The fleet file, as `device-sim fleet` writes it
        file: PathBuf,
        #[command(flatten)]
        settings: Settings,
        #[arg(long, env = "LOCKFLEET_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| DEFAULT_LOG_FILTER.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve { settings, config } => {
            serve(Config::resolve(settings, config.as_deref())?).await
        }
        Command::Devices {
            command:
                DevicesCommand::Import {
                    file,
                    settings,
                    config,
                },
        } => import(&file, Config::resolve(settings, config.as_deref())?).await,
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let running = gateway::server::start(config).await?;
    wait_for_signal().await;
    running.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! { _ = term.recv() => {}, _ = tokio::signal::ctrl_c() => {} }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn import(file: &std::path::Path, config: Config) -> anyhow::Result<()> {
    let store = gateway::store::Store::open(&config.database_url)
        .await
        .with_context(|| {
            format!(
                "opening the database {}",
                gateway::server::redact(&config.database_url)
            )
        })?;
    let existing = store.load_registry().await?;
    let input = std::fs::File::open(file)
        .with_context(|| format!("cannot open the fleet file {}", file.display()))?;
    let fleet = dispatcher::import::read_fleet(std::io::BufReader::new(input), &existing)?;
    eprintln!(
        "{}: {} locks and {} bridges are valid; registering...",
        file.display(),
        fleet.locks.len(),
        fleet.bridges.len()
    );
    let summary = store.import_fleet(&fleet).await?;
    eprintln!("registered: {summary}");
    store.close().await;
    Ok(())
}
