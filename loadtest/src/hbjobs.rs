//! `loadtest heartbeat-jobs`: heartbeat answer latency when every lock of a
//! large fleet has a pending job, beside the same fleet with none, measured
//! in the same invocation.
//!
//! Each run: a fresh database, the fleet imported (all INB1 on CoAP with
//! OSCORE), and for the "pending" runs one pending job per lock written
//! before the gateway starts (an AlgoPIN deletion, the lightest real job:
//! nothing to unseal, nothing in the lock's row to change). The simulator
//! then offers heartbeats at `--rate` for `--duration`; in a pending run
//! each answer carries its lock's job, which the lock applies and reports on
//! `/jr` while awake, as in production. The figure is the client-side round
//! trip of the heartbeat exchange (request to verified answer), whose
//! server part now includes reading the lock's pending jobs among a million
//! and recording the delivery before answering. Runs alternate (none,
//! pending, none, ...) so both see the same machine; medians are reported.

use crate::cli::parse_duration;
use crate::database::{self, Engine, DEFAULT_POSTGRES_URL};
use crate::error::{LoadtestError, Result};
use crate::run::{self, RunResult, RunSpec, Variant};
use crate::{gateway, machine, procfs, workload};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Options of `loadtest heartbeat-jobs`.
#[derive(clap::Args, Debug, Clone)]
pub struct HeartbeatJobsArgs {
    /// Storage engine
    #[arg(long, value_enum, default_value = "sqlite")]
    pub engine: crate::cli::EngineChoice,
    /// Locks in the fleet; in a pending run each has one pending job
    #[arg(long, default_value_t = 1_000_000)]
    pub locks: usize,
    /// Offered heartbeats per second (below saturation: this measures latency)
    #[arg(long, default_value_t = 1_000.0)]
    pub rate: f64,
    /// Runs of each kind (none, pending, alternating)
    #[arg(long, default_value_t = 2)]
    pub runs: u32,
    /// How long each run offers heartbeats
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// The gateway binary [default: `gateway` beside this executable]
    #[arg(long)]
    pub gateway_bin: Option<PathBuf>,
    /// Admin URL of PostgreSQL; each run creates and drops its own database there
    #[arg(long, default_value = DEFAULT_POSTGRES_URL)]
    pub postgres_url: String,
    /// Seed of the fleet and the simulator
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Runs `loadtest heartbeat-jobs` and returns the Markdown report.
pub async fn run(
    args: &HeartbeatJobsArgs,
    command_line: String,
    cancel: CancellationToken,
) -> Result<String> {
    if args.locks == 0 || args.runs == 0 || args.duration.is_zero() {
        return Err(LoadtestError::InvalidOption(
            "--locks, --runs and --duration must be above zero".into(),
        ));
    }
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err(LoadtestError::InvalidOption(format!(
            "--rate must be a positive number, got {}",
            args.rate
        )));
    }
    let engine = match args.engine {
        crate::cli::EngineChoice::Sqlite => Engine::Sqlite,
        crate::cli::EngineChoice::Postgres => Engine::Postgres,
        crate::cli::EngineChoice::Both => {
            return Err(LoadtestError::InvalidOption(
                "--engine takes sqlite or postgres here, one per invocation".into(),
            ))
        }
    };
    let gateway_bin = gateway::locate(args.gateway_bin.as_deref())?;
    let scratch = tempfile::Builder::new()
        .prefix("loadtest_")
        .tempdir()
        .map_err(|e| LoadtestError::io("create a scratch directory", e))?;
    eprintln!(
        "loadtest heartbeat-jobs: {} locks, {:.0} heartbeats/s for {} s per run, {} runs of each, {engine}",
        args.locks,
        args.rate,
        args.duration.as_secs(),
        args.runs
    );
    let fleet = workload::heartbeat_heavy_fleet(args.locks, args.seed)?;
    let fleet_file = scratch.path().join("fleet.csv");
    workload::write_fleet(&fleet, &fleet_file)?;
    // A million devices take minutes to import (an Argon2id hash each): on
    // SQLite, import once and give every run a copy.
    let imported_sqlite = match engine {
        Engine::Sqlite => {
            let dir = scratch.path().join("imported");
            std::fs::create_dir_all(&dir)
                .map_err(|e| LoadtestError::io("create the import directory", e))?;
            let file = dir.join("lockfleet.db");
            let started = std::time::Instant::now();
            eprintln!("  importing the fleet once (copied for every run) ...");
            let gateway_bin = gateway::locate(args.gateway_bin.as_deref())?;
            gateway::import(
                &gateway_bin,
                scratch.path(),
                &fleet_file,
                &format!("sqlite://{}", file.display()),
            )
            .await?;
            eprintln!(
                "  imported {} locks in {:.0} s",
                args.locks,
                started.elapsed().as_secs_f64()
            );
            Some(file)
        }
        Engine::Postgres => None,
    };
    let setup = run::Setup {
        gateway_bin,
        coap_server_bin: None,
        scratch: scratch.path().to_path_buf(),
        fleet,
        fleet_file,
        postgres_url: args.postgres_url.clone(),
        duration: args.duration,
        warmup_share: crate::cli::DEFAULT_WARMUP_SHARE,
        drain_timeout: Duration::from_secs(10),
        sockets: device_sim::run::DEFAULT_SOCKETS,
        seed: args.seed,
        clock_ticks: procfs::clock_ticks(),
        progress_every: Duration::from_secs(5),
        insecure: false,
        imported_sqlite,
        cancel,
    };
    let mut none = Vec::new();
    let mut pending = Vec::new();
    let mut number = 0;
    for round in 1..=args.runs {
        for with_jobs in [false, true] {
            number += 1;
            eprintln!(
                "  run {round}/{}: {}",
                args.runs,
                if with_jobs {
                    "one pending job per lock"
                } else {
                    "no pending jobs"
                }
            );
            let r = run::run(
                &setup,
                RunSpec {
                    engine,
                    variant: Variant::Candidate,
                    rate: args.rate,
                    number,
                    pending_jobs: with_jobs,
                },
            )
            .await?;
            eprintln!(
                "    acked {:.0} hb/s, p50 {} ms, p99 {} ms, jobs delivered {}, completed {}",
                r.acked_heartbeats_per_s,
                fmt_ms(r.latency_ms.map(|q| q.p50)),
                fmt_ms(r.latency_ms.map(|q| q.p99)),
                r.jobs_delivered.unwrap_or(0.0),
                r.jobs_completed.unwrap_or(0.0),
            );
            if with_jobs {
                pending.push(r);
            } else {
                none.push(r);
            }
        }
    }
    let machine = machine::Machine::detect();
    let postgres_version = match engine {
        Engine::Postgres => Some(database::postgres_version(&args.postgres_url).await?),
        Engine::Sqlite => None,
    };
    let _ = scratch.close();
    Ok(markdown(
        &command_line,
        &machine,
        postgres_version.as_deref(),
        args,
        &none,
        &pending,
    ))
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"))
}

/// The median of `f` over `runs` (the upper one of an even count).
fn median(runs: &[RunResult], f: impl Fn(&RunResult) -> Option<f64>) -> Option<f64> {
    let mut v: Vec<f64> = runs.iter().filter_map(f).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

fn markdown(
    command_line: &str,
    machine: &machine::Machine,
    postgres_version: Option<&str>,
    args: &HeartbeatJobsArgs,
    none: &[RunResult],
    pending: &[RunResult],
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Heartbeat answer latency with {} pending jobs over {} locks\n",
        args.locks, args.locks
    );
    machine::report_header(&mut out, command_line, machine, postgres_version);
    let _ = writeln!(
        out,
        "Offered {:.0} heartbeats/s (OSCORE-protected CoAP) for {} s per run, {} runs of each kind, alternating; medians of the runs. Latency: the simulator's round trip of each heartbeat exchange.\n",
        args.rate,
        args.duration.as_secs(),
        args.runs
    );
    let _ = writeln!(
        out,
        "| | no pending jobs (baseline) | one pending job per lock | ratio |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|");
    let row = |out: &mut String, name: &str, f: &dyn Fn(&RunResult) -> Option<f64>| {
        let (a, b) = (median(none, f), median(pending, f));
        let ratio = match (a, b) {
            (Some(a), Some(b)) if a > 0.0 => format!("{:.2}x", b / a),
            _ => "-".to_string(),
        };
        let _ = writeln!(out, "| {name} | {} | {} | {ratio} |", fmt_ms(a), fmt_ms(b));
    };
    row(&mut out, "heartbeat answer p50, ms", &|r| {
        r.latency_ms.map(|q| q.p50)
    });
    row(&mut out, "heartbeat answer p95, ms", &|r| {
        r.latency_ms.map(|q| q.p95)
    });
    row(&mut out, "heartbeat answer p99, ms", &|r| {
        r.latency_ms.map(|q| q.p99)
    });
    row(&mut out, "heartbeat answer p99.9, ms", &|r| {
        r.latency_p999_ms
    });
    row(&mut out, "acknowledged heartbeats/s", &|r| {
        Some(r.acked_heartbeats_per_s)
    });
    row(&mut out, "jobs delivered in answers", &|r| {
        r.jobs_delivered.or(Some(0.0))
    });
    row(&mut out, "jobs completed (lock's /jr report)", &|r| {
        r.jobs_completed.or(Some(0.0))
    });
    row(&mut out, "gateway peak RSS, MiB", &|r| {
        Some(r.gateway_rss_mib)
    });
    row(&mut out, "gateway CPU, s", &|r| Some(r.gateway_cpu_s));
    out
}
