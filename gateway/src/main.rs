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
    /// Manage registered locks and bridges and their keys
    Devices {
        #[command(subcommand)]
        command: DevicesCommand,
    },
    /// Server key and password tools
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new random server key (64 hex characters) for LOCKFLEET_SERVER_KEY or --server-key-file; keep it in a secret store
    NewServerKey,
    /// Read a password from standard input (one line) and print its Argon2id
    /// hash for --backend-password-hash / LOCKFLEET_BACKEND_PASSWORD_HASH
    HashPassword,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Kind {
    Lock,
    Bridge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Lock => "lock",
            Kind::Bridge => "bridge",
        }
    }
}

/// Where the database and server key come from, for every operator command.
#[derive(clap::Args)]
struct Target {
    #[command(flatten)]
    settings: Settings,
    /// TOML file with the same keys as the flags
    #[arg(long, env = "LOCKFLEET_CONFIG")]
    config: Option<PathBuf>,
}

impl Target {
    fn resolve(self) -> anyhow::Result<Config> {
        Ok(Config::resolve(self.settings, self.config.as_deref())?)
    }
}

#[derive(Subcommand)]
enum DevicesCommand {
    /// Register the locks and bridges of a fleet file (CSV); all or nothing
    Import {
        /// The fleet file, as `device-sim fleet` writes it
        file: PathBuf,
        /// Generate a master secret for each new device the file gives none, and write them to this new file (mode 0600), once
        #[arg(long)]
        secrets_out: Option<PathBuf>,
        #[command(flatten)]
        target: Target,
    },
    /// Give a device a new key; the old one fails from its next message
    RotateKey {
        /// The lock or bridge id
        id: String,
        /// Whether `id` is a lock or a bridge, when both exist
        #[arg(long, value_enum)]
        kind: Option<Kind>,
        /// Write the new master secret to this new file (mode 0600)
        #[arg(long)]
        secrets_out: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Deregister a device: its key fails from its next message; its history stays
    Remove {
        id: String,
        #[arg(long, value_enum)]
        kind: Option<Kind>,
        #[command(flatten)]
        target: Target,
    },
    /// List registered devices and their key generations (never a secret)
    List {
        #[command(flatten)]
        target: Target,
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
        Command::Devices { command } => devices(command).await,
        Command::Keys {
            command: KeysCommand::NewServerKey,
        } => {
            println!("{}", gateway::keys::ServerKey::generate_hex().as_str());
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::HashPassword,
        } => {
            let mut line = zeroize::Zeroizing::new(String::new());
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            let password = line.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                anyhow::bail!("no password on standard input: pipe it in, e.g. `printf %s \"$PW\" | gateway keys hash-password`");
            }
            println!(
                "{}",
                gateway::keys::password::hash(password, gateway::keys::password::OPERATOR_COST)
            );
            Ok(())
        }
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

async fn open(config: &Config) -> anyhow::Result<gateway::store::Store> {
    gateway::store::Store::open(&config.database_url)
        .await
        .with_context(|| {
            format!(
                "opening the database {}",
                gateway::server::redact(&config.database_url)
            )
        })
}

async fn devices(command: DevicesCommand) -> anyhow::Result<()> {
    use dispatcher::keys::DeviceRef;
    use gateway::admin;
    match command {
        DevicesCommand::Import {
            file,
            secrets_out,
            target,
        } => {
            let config = target.resolve()?;
            let store = open(&config).await?;
            let server_key = config.server_key()?;
            let existing = store.load_registry().await?;
            let input = std::fs::File::open(&file)
                .with_context(|| format!("cannot open the fleet file {}", file.display()))?;
            let fleet = dispatcher::import::read_fleet(std::io::BufReader::new(input), &existing)?;
            eprintln!(
                "{}: {} locks and {} bridges are valid; registering...",
                file.display(),
                fleet.locks.len(),
                fleet.bridges.len()
            );
            let report = admin::import(&store, &server_key, fleet, secrets_out.as_deref()).await?;
            eprintln!("registered: {}", report.summary);
            if let Some((n, path)) = report.generated {
                eprintln!("wrote {n} generated master secret(s) to {}: give each device its secret; they are kept nowhere else in the clear", path.display());
            }
            store.close().await;
        }
        DevicesCommand::RotateKey {
            id,
            kind,
            secrets_out,
            target,
        } => {
            let config = target.resolve()?;
            let store = open(&config).await?;
            let server_key = config.server_key()?;
            let device = admin::find(&store.load_registry().await?, &id, kind.map(Kind::as_str))?;
            let generation = admin::rotate(&store, &server_key, &device, &secrets_out).await?;
            eprintln!("{device}: key generation {generation}; the new master secret is in {}; the old key fails from the device's next message", secrets_out.display());
            store.close().await;
        }
        DevicesCommand::Remove { id, kind, target } => {
            let config = target.resolve()?;
            let store = open(&config).await?;
            let device = admin::find(&store.load_registry().await?, &id, kind.map(Kind::as_str))?;
            store.deregister(&device).await?;
            eprintln!("{device}: deregistered; its key fails from its next message; its history stays until retention removes it");
            store.close().await;
        }
        DevicesCommand::List { target } => {
            let config = target.resolve()?;
            let store = open(&config).await?;
            let registry = store.load_registry().await?;
            let generations: std::collections::HashMap<_, _> = store
                .load_keys()
                .await?
                .into_iter()
                .map(|k| (k.device, k.generation))
                .collect();
            let generation = |d: DeviceRef| {
                generations
                    .get(&d)
                    .map_or("none".to_string(), |g| g.to_string())
            };
            println!("kind\tid\torg\treports\tkey_generation");
            for b in registry.bridges() {
                println!(
                    "bridge\t{}\t{}\tmqtt\t{}",
                    b.id,
                    b.org,
                    generation(DeviceRef::Bridge(b.id.clone()))
                );
            }
            for l in registry.locks() {
                println!(
                    "lock\t{}\t{}\t{}\t{}",
                    l.id,
                    l.org,
                    l.path.as_str(),
                    generation(DeviceRef::Lock(l.id.clone()))
                );
            }
            store.close().await;
        }
    }
    Ok(())
}
