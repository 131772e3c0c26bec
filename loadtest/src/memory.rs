//! `loadtest memory`: resident memory per registered lock.
//!
//! Issue 6's target: a million registered locks tracked (schedules, dedup
//! state, sessions) in at most 512 bytes of resident memory each. What the
//! gateway holds per lock is its registry record, its OSCORE context (the
//! session: derived keys, the in-memory replay window, the MQTT password
//! hash) and, for a while after each exchange, a dedup entry; schedules are
//! not held, a lock's next heartbeat is computed from its id and interval.
//!
//! The figure is a difference measured in the same invocation, so the
//! process's fixed cost (code, runtime, pools, allocator arenas) does not
//! count: the same gateway binary is started on a fresh database holding a
//! small fleet (`--baseline-locks`, the baseline) and on one holding
//! `--locks`, and
//!
//! `bytes per lock = (RSS(large) − RSS(small)) / (locks − baseline locks)`
//!
//! at two moments of each gateway's life:
//! 1. **registered**: after `/readyz` (registry and key ring loaded) and a
//!    settle pause;
//! 2. **after one heartbeat each**: the simulator has offered every lock's
//!    heartbeat once (OSCORE-protected, at `--rate`), so each lock's replay
//!    window has advanced and its exchange sits in the dedup table (an
//!    exchange is remembered for CoAP's EXCHANGE_LIFETIME, 247 s, so this
//!    moment holds every lock's dedup entry at once, more than a real fleet
//!    spread over an hour would).
//!
//! RSS is `VmRSS` of `/proc/PID/status`; the peak (`VmHWM`) is reported too,
//! since start-up holds the stored rows and the built maps at once.

use crate::cli::parse_duration;
use crate::database::{Engine, FreshDatabase, DEFAULT_POSTGRES_URL};
use crate::error::{LoadtestError, Result};
use crate::gateway::{self, Gateway};
use crate::{machine, procfs, workload};
use device_sim::run::SimConfig;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Issue 6: resident bytes a registered lock may cost.
pub const TARGET_BYTES_PER_LOCK: f64 = 512.0;

/// Options of `loadtest memory`.
#[derive(clap::Args, Debug, Clone)]
pub struct MemoryArgs {
    /// Locks in the measured fleet
    #[arg(long, default_value_t = 1_000_000)]
    pub locks: usize,
    /// Locks in the baseline fleet: the same gateway's fixed cost
    #[arg(long, default_value_t = 1_000)]
    pub baseline_locks: usize,
    /// Heartbeats per second offered while every lock sends one
    #[arg(long, default_value_t = 4_000.0)]
    pub rate: f64,
    /// Measure the registered state only (no heartbeat pass)
    #[arg(long)]
    pub no_pass: bool,
    /// Pause after start-up and after the pass before RSS is read (the
    /// allocator returns freed memory, background loads finish)
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub settle: Duration,
    /// Storage engine (the memory measured is the gateway's, either way)
    #[arg(long, value_enum, default_value = "sqlite")]
    pub engine: crate::cli::EngineChoice,
    /// The gateway binary [default: `gateway` beside this executable]
    #[arg(long)]
    pub gateway_bin: Option<PathBuf>,
    /// Admin URL of PostgreSQL; each fleet gets its own database there
    #[arg(long, default_value = DEFAULT_POSTGRES_URL)]
    pub postgres_url: String,
    /// Seed of the fleet and the simulator
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also write the result as JSON to PATH: both fleets' RSS at each
    /// moment, the bytes per lock, import and start-up times
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
}

impl MemoryArgs {
    fn engine(&self) -> Result<Engine> {
        match self.engine {
            crate::cli::EngineChoice::Sqlite => Ok(Engine::Sqlite),
            crate::cli::EngineChoice::Postgres => Ok(Engine::Postgres),
            crate::cli::EngineChoice::Both => Err(LoadtestError::InvalidOption(
                "--engine takes sqlite or postgres here, one per invocation".into(),
            )),
        }
    }

    fn validate(&self) -> Result<()> {
        if self.baseline_locks == 0 || self.locks <= self.baseline_locks {
            return Err(LoadtestError::InvalidOption(format!(
                "--locks ({}) must be above --baseline-locks ({}), which must be above zero: \
                 the figure is the difference between the two fleets",
                self.locks, self.baseline_locks
            )));
        }
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err(LoadtestError::InvalidOption(format!(
                "--rate must be a positive number, got {}",
                self.rate
            )));
        }
        Ok(())
    }
}

/// Resident memory of one gateway at one moment, bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rss {
    pub current: u64,
    pub peak: u64,
}

/// What one fleet size measured.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FleetMemory {
    pub locks: usize,
    pub import: Duration,
    pub start: Duration,
    pub registered: Rss,
    /// After the heartbeat pass (`None` with `--no-pass`).
    pub after_pass: Option<Rss>,
    /// Locks heard at least once in the pass.
    pub locks_heard: usize,
    pub pass: Duration,
}

/// `(large − small) / (large locks − small locks)`, bytes per lock.
pub fn bytes_per_lock(small: (usize, u64), large: (usize, u64)) -> Option<f64> {
    let locks = large.0.checked_sub(small.0).filter(|&n| n > 0)?;
    Some((large.1 as f64 - small.1 as f64) / locks as f64)
}

/// Runs `loadtest memory` and returns the Markdown report.
pub async fn run(
    args: &MemoryArgs,
    command_line: String,
    cancel: CancellationToken,
) -> Result<String> {
    args.validate()?;
    let engine = args.engine()?;
    let gateway_bin = gateway::locate(args.gateway_bin.as_deref())?;
    let scratch = tempfile::Builder::new()
        .prefix("loadtest_")
        .tempdir()
        .map_err(|e| LoadtestError::io("create a scratch directory", e))?;
    eprintln!(
        "loadtest memory: {} locks against a baseline of {}, {engine}, {}",
        args.locks,
        args.baseline_locks,
        if args.no_pass {
            "registered state only".to_string()
        } else {
            format!("then one heartbeat each at {:.0}/s", args.rate)
        }
    );
    let mut measured = Vec::new();
    for (number, locks) in [(1, args.baseline_locks), (2, args.locks)] {
        if cancel.is_cancelled() {
            return Err(LoadtestError::Interrupted);
        }
        eprintln!("  fleet of {locks} locks:");
        let m = fleet_memory(
            args,
            engine,
            &gateway_bin,
            scratch.path(),
            number,
            locks,
            &cancel,
        )
        .await?;
        measured.push(m);
    }
    let postgres_version = match engine {
        Engine::Postgres => Some(crate::database::postgres_version(&args.postgres_url).await?),
        Engine::Sqlite => None,
    };
    let _ = scratch.close();
    if let Some(path) = &args.json {
        let (small, large) = (&measured[0], &measured[1]);
        let per = |a: Option<Rss>, b: Option<Rss>, peak: bool| {
            let pick = |r: Rss| if peak { r.peak } else { r.current };
            bytes_per_lock((small.locks, pick(a?)), (large.locks, pick(b?)))
        };
        let document = serde_json::json!({
            "schema_version": crate::json::SCHEMA_VERSION,
            "mix": "memory",
            "command": command_line,
            "machine": machine::Machine::detect(),
            "target_bytes_per_lock": TARGET_BYTES_PER_LOCK,
            "fleets": [small, large],
            "bytes_per_lock": {
                "registered": per(Some(small.registered), Some(large.registered), false),
                "after_one_heartbeat_each": per(small.after_pass, large.after_pass, false),
                "peak": per(
                    Some(small.after_pass.unwrap_or(small.registered)),
                    Some(large.after_pass.unwrap_or(large.registered)),
                    true,
                ),
            },
        });
        crate::json::write(path, &document)?;
        eprintln!("JSON report: {}", path.display());
    }
    Ok(markdown(
        &command_line,
        &machine::Machine::detect(),
        postgres_version.as_deref(),
        args,
        &measured[0],
        &measured[1],
    ))
}

async fn fleet_memory(
    args: &MemoryArgs,
    engine: Engine,
    gateway_bin: &Path,
    scratch: &Path,
    number: u32,
    locks: usize,
    cancel: &CancellationToken,
) -> Result<FleetMemory> {
    let fleet = workload::heartbeat_heavy_fleet(locks, args.seed)?;
    let fleet_file = scratch.join(format!("fleet_{number}.csv"));
    workload::write_fleet(&fleet, &fleet_file)?;
    let db = FreshDatabase::create(engine, scratch, &args.postgres_url, number).await?;
    let result = async {
        let started = Instant::now();
        eprintln!("    importing (an Argon2id hash per device: a million take minutes) ...");
        gateway::import(gateway_bin, scratch, &fleet_file, db.url()).await?;
        let import = started.elapsed();
        eprintln!("    imported in {:.1} s", import.as_secs_f64());
        let started = Instant::now();
        let gw = Gateway::start(gateway_bin, scratch, db.url(), &[]).await?;
        let start = started.elapsed();
        tokio::time::sleep(args.settle).await;
        let pid = gw.pid().to_string();
        let registered = rss(&pid)?;
        eprintln!(
            "    ready in {:.1} s; registered: RSS {:.1} MiB (peak {:.1} MiB)",
            start.as_secs_f64(),
            mib(registered.current),
            mib(registered.peak)
        );
        let (after_pass, locks_heard, pass) = if args.no_pass {
            (None, 0, Duration::ZERO)
        } else {
            let started = Instant::now();
            let heard = heartbeat_pass(args, &gw, &fleet, cancel).await?;
            let pass = started.elapsed();
            tokio::time::sleep(args.settle).await;
            let after = rss(&pid)?;
            eprintln!(
                "    {heard} of {locks} locks heard in {:.1} s; RSS {:.1} MiB (peak {:.1} MiB)",
                pass.as_secs_f64(),
                mib(after.current),
                mib(after.peak)
            );
            (Some(after), heard, pass)
        };
        gw.stop().await?;
        Ok(FleetMemory {
            locks,
            import,
            start,
            registered,
            after_pass,
            locks_heard,
            pass,
        })
    }
    .await;
    db.remove_after(result).await
}

/// Every lock offers one heartbeat: the simulator runs for one heartbeat
/// interval of simulated time (each lock's phase falls once inside it) at
/// the speed-up that spreads the fleet over `locks / rate` seconds, then
/// drains. Returns the locks heard at least once.
async fn heartbeat_pass(
    args: &MemoryArgs,
    gw: &Gateway,
    fleet: &device_sim::fleet::Fleet,
    cancel: &CancellationToken,
) -> Result<usize> {
    let heartbeat = Duration::from_secs(workload::shortest_heartbeat().as_secs());
    let speedup = workload::speedup(args.rate, fleet.locks.len(), heartbeat).ok_or_else(|| {
        LoadtestError::InvalidOption(format!("no speed-up gives {} heartbeats/s", args.rate))
    })?;
    let config = SimConfig {
        gateway: gw.listeners.coap.ip().to_string(),
        coap_port: gw.listeners.coap.port(),
        mqtt_port: gw.listeners.mqtt.port(),
        speedup,
        duration: Some(workload::real_heartbeat_period(heartbeat, speedup)),
        drain_timeout: Duration::from_secs(30),
        seed: args.seed,
        progress: Some(Duration::from_secs(10)),
        cancel: cancel.child_token(),
        security: true,
        ..SimConfig::default()
    };
    let report = device_sim::run::run(config, fleet.clone()).await?;
    if cancel.is_cancelled() {
        return Err(LoadtestError::Interrupted);
    }
    Ok(report.acknowledged_by_lock().len())
}

fn rss(pid: &str) -> Result<Rss> {
    let status_path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&status_path).map_err(|e| LoadtestError::Proc {
        path: status_path.clone(),
        detail: e.to_string(),
    })?;
    let field = |name: &str| {
        procfs::status_kib(&status, name).ok_or_else(|| LoadtestError::Proc {
            path: status_path.clone(),
            detail: format!("no {name} line"),
        })
    };
    Ok(Rss {
        current: field("VmRSS")? * 1024,
        peak: field("VmHWM")? * 1024,
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn markdown(
    command_line: &str,
    machine: &machine::Machine,
    postgres_version: Option<&str>,
    args: &MemoryArgs,
    small: &FleetMemory,
    large: &FleetMemory,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Resident memory per registered lock: {} locks against {}\n",
        large.locks, small.locks
    );
    machine::report_header(&mut out, command_line, machine, postgres_version);
    let _ = writeln!(
        out,
        "The same gateway binary on a fresh database with each fleet (INB1 locks on CoAP, OSCORE keys, \
         1 h heartbeats); RSS is VmRSS {} s after the moment named, peak is VmHWM. Per lock: the \
         difference of the two gateways' RSS divided by the difference of their fleets.\n",
        args.settle.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "| moment | RSS, {} locks (MiB) | RSS, {} locks (MiB) | bytes per lock | target | within |",
        small.locks, large.locks
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|---|");
    let mut row = |name: &str, a: Option<u64>, b: Option<u64>| {
        let (Some(a), Some(b)) = (a, b) else {
            return;
        };
        let per = bytes_per_lock((small.locks, a), (large.locks, b));
        let _ = writeln!(
            out,
            "| {name} | {:.1} | {:.1} | {} | {TARGET_BYTES_PER_LOCK:.0} | {} |",
            mib(a),
            mib(b),
            per.map_or("-".into(), |p| format!("**{p:.0}**")),
            match per {
                Some(p) if p <= TARGET_BYTES_PER_LOCK => "yes",
                Some(_) => "no",
                None => "-",
            }
        );
    };
    row(
        "registered (after /readyz)",
        Some(small.registered.current),
        Some(large.registered.current),
    );
    row(
        "after one heartbeat each",
        small.after_pass.map(|r| r.current),
        large.after_pass.map(|r| r.current),
    );
    row(
        "peak over the gateway's life",
        Some(small.after_pass.unwrap_or(small.registered).peak),
        Some(large.after_pass.unwrap_or(large.registered).peak),
    );
    let _ = writeln!(out);
    for m in [small, large] {
        let _ = writeln!(
            out,
            "* {} locks: import {:.1} s, gateway ready in {:.1} s{}",
            m.locks,
            m.import.as_secs_f64(),
            m.start.as_secs_f64(),
            if m.after_pass.is_some() {
                format!(
                    ", {} locks heard in the pass ({:.1} s)",
                    m.locks_heard,
                    m.pass.as_secs_f64()
                )
            } else {
                String::new()
            }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_per_lock_is_the_difference_over_the_added_locks() {
        assert_eq!(
            bytes_per_lock((1_000, 50 << 20), (101_000, (50 << 20) + 51_200_000)),
            Some(512.0)
        );
        assert_eq!(bytes_per_lock((10, 5), (10, 9)), None);
        assert_eq!(bytes_per_lock((10, 5), (5, 9)), None);
        // Less memory with more locks is reported as it is, not hidden.
        assert_eq!(bytes_per_lock((0, 100), (10, 50)), Some(-5.0));
    }

    #[test]
    fn the_fleets_must_differ() {
        let args = |locks, baseline_locks| MemoryArgs {
            locks,
            baseline_locks,
            rate: 1000.0,
            no_pass: false,
            settle: Duration::ZERO,
            engine: crate::cli::EngineChoice::Sqlite,
            gateway_bin: None,
            postgres_url: String::new(),
            seed: 1,
            json: None,
        };
        assert!(args(100, 10).validate().is_ok());
        assert!(args(10, 10).validate().is_err());
        assert!(args(10, 0).validate().is_err());
        let mut bad_rate = args(100, 10);
        bad_rate.rate = f64::NAN;
        assert!(bad_rate.validate().is_err());
        assert!(matches!(
            MemoryArgs {
                engine: crate::cli::EngineChoice::Both,
                ..args(100, 10)
            }
            .engine(),
            Err(LoadtestError::InvalidOption(_))
        ));
    }
}
