//! `loadtest`: see the library docs. Progress on stderr, the Markdown report
//! on stdout (`loadtest ingest ... > result.md`).

use clap::Parser;
use loadtest::cli::{Cli, Command};
use loadtest::machine::shell_line;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command_line = shell_line(std::env::args());
    // First Ctrl-C: finish the run in progress (drain, SIGTERM, drop the
    // database). Second: abandon it at once; dropping it kills the gateway.
    let cancel = CancellationToken::new();
    let abandon = CancellationToken::new();
    {
        let (cancel, abandon) = (cancel.clone(), abandon.clone());
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\ninterrupted: finishing the run in progress and cleaning up (Ctrl-C again to quit at once)");
                cancel.cancel();
                if tokio::signal::ctrl_c().await.is_ok() {
                    abandon.cancel();
                }
            }
        });
    }
    match cli.command {
        Command::Wakeup(args) => {
            let report = tokio::select! {
                report = loadtest::wakeup::run(&args, command_line.clone()) => report?,
                _ = abandon.cancelled() => anyhow::bail!("quit at once: the gateway was killed"),
            };
            print!("{report}");
        }
        Command::HeartbeatJobs(args) => {
            let report = tokio::select! {
                report = loadtest::hbjobs::run(&args, command_line.clone(), cancel.clone()) => report?,
                _ = abandon.cancelled() => anyhow::bail!("quit at once: the gateway was killed"),
            };
            print!("{report}");
        }
        Command::Twofa(args) => {
            let report = tokio::select! {
                report = loadtest::twofa::run(&args, command_line.clone()) => report?,
                _ = abandon.cancelled() => anyhow::bail!("quit at once: the gateway was killed"),
            };
            print!("{report}");
        }
        Command::Memory(args) => {
            let report = tokio::select! {
                report = loadtest::memory::run(&args, command_line.clone(), cancel.clone()) => report?,
                _ = abandon.cancelled() => anyhow::bail!("quit at once: the gateway was killed"),
            };
            print!("{report}");
        }
        Command::Bridges(args) => {
            let report = tokio::select! {
                report = loadtest::bridges::run(&args, command_line.clone(), cancel.clone()) => report?,
                _ = abandon.cancelled() => anyhow::bail!(
                    "quit at once: the gateway or Mosquitto was killed; a PostgreSQL database \
                     loadtest_{}_* may be left behind",
                    std::process::id()
                ),
            };
            print!("{report}");
        }
        Command::Jobs(args) => {
            let report = tokio::select! {
                report = loadtest::jobs::run(&args, command_line) => report?,
                _ = abandon.cancelled() => anyhow::bail!("quit at once: the gateway was killed"),
            };
            print!("{report}");
        }
        Command::Ingest(args) => {
            let report = tokio::select! {
                report = loadtest::ingest(&args, command_line, cancel) => report?,
                _ = abandon.cancelled() => anyhow::bail!(
                    "quit at once: the gateway was killed; a PostgreSQL database \
                     loadtest_{}_* may be left behind",
                    std::process::id()
                ),
            };
            print!("{report}");
        }
    }
    Ok(())
}
