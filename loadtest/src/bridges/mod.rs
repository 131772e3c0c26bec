//! `loadtest bridges`: MQTT bridge reports against the gateway, beside
//! Mosquitto under the same generator in the same invocation.
//!
//! A generated fleet of `--bridges` bridges, each linked to
//! `--locks-per-bridge` Bluetooth locks that reach the gateway only through
//! it ([`workload`]), relays its locks' heartbeats and activity-log batches
//! at the speed-up that offers `--rate` reports per second. Each round runs
//! every configuration once, in turn ([`plan`]):
//!
//! * **mosquitto**: a private Mosquitto ([`mosquitto`]) on an ephemeral
//!   port; the same simulated bridges, logins and OSCORE-protected payloads
//!   at the same offered rate, each report ending at its PUBACK
//!   ([`device_sim::MqttAcks::Puback`]), since no answer would ever come;
//! * **gateway**: a fresh database (SQLite or PostgreSQL), the fleet
//!   imported, `gateway serve` on ephemeral ports; each report ends at the
//!   gateway's answer, sent after the durable group commit, and its PUBACK
//!   is timed too, like for like with Mosquitto's. Afterwards the database
//!   is checked against every report acknowledged ([`crate::dbcheck`]).
//!
//! [`run`](mod@run) measures one run; [`report`] writes the Markdown with
//! the gateway's figures as ratios to Mosquitto's. `--find-max` steps the
//! rate up instead, until each configuration fails a step.

pub mod mosquitto;
pub mod plan;
pub mod report;
pub mod run;
pub mod workload;

use crate::cli::{
    parse_duration, EngineChoice, DEFAULT_FIND_MAX_FACTOR, DEFAULT_WARMUP_SHARE, MAX_WARMUP_SHARE,
};
use crate::database::{self, Engine, DEFAULT_POSTGRES_URL};
use crate::error::{LoadtestError, Result};
use crate::{gateway, machine, procfs};
use run::{RunResult, Setup, Target};
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Offered reports per second when `--rate` is not given: the issue's
/// target for MQTT bridge reports, so a run answers "is it met?" directly
/// (acked equal to offered, or not); `--find-max` gives the ceiling.
pub const DEFAULT_RATE: f64 = 50_000.0;

/// First `--find-max` step when `--rate` is not given: a fifth of the
/// target, sustained by both brokers on this machine, so each gets a
/// highest sustained rate.
pub const DEFAULT_FIND_MAX_START: f64 = 10_000.0;

/// Bridges in the fleet. With two locks each, 2 000 locks share the
/// offered rate: at 50 000 reports/s each lock reports every 40 ms, and as
/// a lock has one report in flight (NSTART 1), the fleet can carry
/// 2 000 / latency reports per second: 200 000/s at 10 ms. Enough headroom
/// that a broker's capacity, not the fleet's size, limits the rate, and
/// few enough connections for the generator, the broker and the database
/// to share two cores.
pub const DEFAULT_BRIDGES: usize = 1000;

/// Locks per bridge: the guide's most.
pub const DEFAULT_LOCKS_PER_BRIDGE: usize = device_sim::fleet::MAX_LOCKS_PER_BRIDGE;

/// `--p99-bound` when not given: a `--find-max` step fails when the p99 of
/// due-to-acknowledged exceeds it. The latency target is p99 under
/// 10 ms at *half* the maximum rate, so the bound that defines the maximum
/// must be looser than that; 50 ms is five times it, well above what a
/// broker keeping up shows on this machine (a few ms, with scheduling
/// hiccups of 10–20 ms on two shared cores), and far below what a broker
/// falling behind shows within a 20 s run (open loop: the queue, and the
/// latency, grow for the whole run, to hundreds of ms and seconds).
pub const DEFAULT_P99_BOUND: &str = "50ms";

/// Options of `loadtest bridges`.
#[derive(clap::Args, Debug, Clone)]
pub struct BridgesArgs {
    /// Storage engine(s) of the gateway
    #[arg(long, value_enum, default_value = "sqlite")]
    pub engine: EngineChoice,
    /// Rounds: each runs Mosquitto, then the gateway (on each engine)
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// How long each run generates load (e.g. 20s, 1m, 500ms)
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Offered reports (heartbeats and log batches) per second [default:
    /// 50000, the target; with --find-max: 10000, the first step]
    #[arg(long)]
    pub rate: Option<f64>,
    /// Bridges in the fleet, each an MQTT connection
    #[arg(long, default_value_t = DEFAULT_BRIDGES)]
    pub bridges: usize,
    /// Locks linked to each bridge (1 or 2), reaching the gateway only through it
    #[arg(long, default_value_t = DEFAULT_LOCKS_PER_BRIDGE)]
    pub locks_per_bridge: usize,
    /// People per simulated hour at each lock; their activity fills the log batches
    #[arg(long, default_value_t = workload::DEFAULT_VISITS_PER_HOUR)]
    pub visits_per_hour: f64,
    /// Share of each run not counted (warm-up, connections), 0 to 0.9
    #[arg(long, default_value_t = DEFAULT_WARMUP_SHARE)]
    pub warmup_share: f64,
    /// The gateway binary [default: `gateway` beside this executable]
    #[arg(long)]
    pub gateway_bin: Option<PathBuf>,
    /// The mosquitto binary [default: `mosquitto` on the PATH, else /usr/sbin/mosquitto]
    #[arg(long, conflicts_with = "no_mosquitto")]
    pub mosquitto_bin: Option<PathBuf>,
    /// Measure the gateway only, without the Mosquitto baseline
    #[arg(long)]
    pub no_mosquitto: bool,
    /// Admin URL of PostgreSQL; each gateway run creates and drops its own database there
    #[arg(long, default_value = DEFAULT_POSTGRES_URL)]
    pub postgres_url: String,
    /// After each run, how long the simulator may resend what is unacknowledged
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Seed of the fleet and the simulator
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Instead of one rate: step the offered rate up from --rate by
    /// --find-max-factor, one run per step and configuration, until a step
    /// fails (acked under 95 % of offered, p99 over --p99-bound, an error, a
    /// backlog, a failed database check); report the highest rate sustained
    #[arg(long)]
    pub find_max: bool,
    /// Ratio between two --find-max steps
    #[arg(long, default_value_t = DEFAULT_FIND_MAX_FACTOR)]
    pub find_max_factor: f64,
    /// Most p99 latency (due to acknowledged) a sustained --find-max step may have
    #[arg(long, default_value = DEFAULT_P99_BOUND, value_parser = parse_duration)]
    pub p99_bound: Duration,
    /// How often a progress line is printed during a run
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub progress_every: Duration,
    /// Without device security: plain payloads, anonymous MQTT, the gateway
    /// with --insecure-dev (no MQTT front); Mosquitto gets the same
    #[arg(long)]
    pub insecure: bool,
    /// Also write the whole result as JSON to PATH: the settings, the
    /// machine, every run's figures (latency quantiles, PUBACKs, CPU and
    /// RSS, the database check) and why each was or was not sustained
    #[arg(long, value_name = "PATH")]
    pub json: Option<std::path::PathBuf>,
}

/// Validated settings of a `bridges` invocation.
#[derive(Clone, Debug)]
pub struct Settings {
    pub engines: Vec<Engine>,
    pub runs: u32,
    pub duration: Duration,
    pub rate: f64,
    pub bridges: usize,
    pub locks_per_bridge: usize,
    pub visits_per_hour: f64,
    pub warmup_share: f64,
    pub mosquitto: bool,
    pub find_max: Option<f64>,
    pub p99_bound: Duration,
}

impl BridgesArgs {
    /// Checks every option; the error names the option and what is allowed.
    pub fn validate(&self) -> Result<Settings> {
        let bad = |s: String| Err(LoadtestError::InvalidOption(s));
        if let Some(rate) = self.rate.filter(|r| !(r.is_finite() && *r > 0.0)) {
            return bad(format!("--rate must be a positive number, got {rate}"));
        }
        if self.runs == 0 {
            return bad("--runs must be at least 1".into());
        }
        if self.duration.is_zero() {
            return bad("--duration must be longer than zero".into());
        }
        if self.bridges == 0 {
            return bad("--bridges must be at least 1".into());
        }
        let max_k = device_sim::fleet::MAX_LOCKS_PER_BRIDGE;
        if !(1..=max_k).contains(&self.locks_per_bridge) {
            return bad(format!(
                "--locks-per-bridge must be 1 to {max_k} (the guide's limit), got {}",
                self.locks_per_bridge
            ));
        }
        if !(self.visits_per_hour.is_finite() && self.visits_per_hour >= 0.0) {
            return bad(format!(
                "--visits-per-hour must be a number from 0 up, got {}",
                self.visits_per_hour
            ));
        }
        if !(0.0..=MAX_WARMUP_SHARE).contains(&self.warmup_share) {
            return bad(format!(
                "--warmup-share must be between 0 and {MAX_WARMUP_SHARE}, got {}",
                self.warmup_share
            ));
        }
        if self.progress_every.is_zero() {
            return bad("--progress-every must be longer than zero".into());
        }
        if self.p99_bound.is_zero() {
            return bad("--p99-bound must be longer than zero".into());
        }
        if self.find_max && !(self.find_max_factor.is_finite() && self.find_max_factor >= 1.05) {
            return bad(format!(
                "--find-max-factor must be at least 1.05, got {}",
                self.find_max_factor
            ));
        }
        let engines = match self.engine {
            EngineChoice::Sqlite => vec![Engine::Sqlite],
            EngineChoice::Postgres => vec![Engine::Postgres],
            EngineChoice::Both => vec![Engine::Sqlite, Engine::Postgres],
        };
        if engines.contains(&Engine::Postgres) && !database::is_postgres_url(&self.postgres_url) {
            return bad(format!(
                "--postgres-url must start with postgres:// or postgresql://, got {}",
                database::redact(&self.postgres_url)
            ));
        }
        let rate = self.rate.unwrap_or(if self.find_max {
            DEFAULT_FIND_MAX_START
        } else {
            DEFAULT_RATE
        });
        Ok(Settings {
            engines,
            runs: self.runs,
            duration: self.duration,
            rate,
            bridges: self.bridges,
            locks_per_bridge: self.locks_per_bridge,
            visits_per_hour: self.visits_per_hour,
            warmup_share: self.warmup_share,
            mosquitto: !self.no_mosquitto,
            find_max: self.find_max.then_some(self.find_max_factor),
            p99_bound: self.p99_bound,
        })
    }
}

impl Settings {
    /// The configurations of a round, in order: Mosquitto first (unless
    /// `--no-mosquitto`), then the gateway on each engine.
    pub fn targets(&self) -> Vec<Target> {
        self.mosquitto
            .then_some(Target::Mosquitto)
            .into_iter()
            .chain(self.engines.iter().map(|e| Target::Gateway(*e)))
            .collect()
    }
}

/// Runs `loadtest bridges` and returns the Markdown report; progress goes
/// to stderr. `cancel` ends the run in progress early (Ctrl-C).
pub async fn run(
    args: &BridgesArgs,
    command_line: String,
    cancel: CancellationToken,
) -> Result<String> {
    let settings = args.validate()?;
    // Every missing piece is found before any run.
    let gateway_bin = gateway::locate(args.gateway_bin.as_deref())?;
    let mosquitto_bin = match settings.mosquitto {
        true => Some(mosquitto::locate(args.mosquitto_bin.as_deref())?),
        false => None,
    };
    let postgres_version = if settings.engines.contains(&Engine::Postgres) {
        Some(database::postgres_version(&args.postgres_url).await?)
    } else {
        None
    };
    let mosquitto_version = match &mosquitto_bin {
        Some(bin) => mosquitto::version(bin).await,
        None => None,
    };
    let scratch = tempfile::Builder::new()
        .prefix("loadtest_bridges_")
        .tempdir()
        .map_err(|e| LoadtestError::io("create a scratch directory", e))?;
    let fleet = workload::bridge_fleet(settings.bridges, settings.locks_per_bridge, args.seed)?;
    let fleet_file = scratch.path().join("fleet.csv");
    crate::workload::write_fleet(&fleet, &fleet_file)?;
    let targets = settings.targets();
    let speedup = workload::speedup(settings.rate, fleet.locks.len(), settings.visits_per_hour)
        .ok_or_else(|| {
            LoadtestError::InvalidOption(format!("no speed-up gives {} reports/s", settings.rate))
        })?;
    eprintln!(
        "loadtest bridges: gateway {}, {}; {} bridges × {} locks, {:.2} reports per lock-hour, \
         offered {:.0} reports/s{} (speed-up {speedup:.0}: each lock's heartbeat every {:.0} ms), \
         {} s per run, warm-up {:.0} %, {}",
        gateway_bin.display(),
        mosquitto_bin.as_ref().map_or_else(
            || "no Mosquitto baseline".to_string(),
            |b| format!(
                "mosquitto {} {}",
                b.display(),
                mosquitto_version.as_deref().unwrap_or("(version unknown)")
            )
        ),
        settings.bridges,
        settings.locks_per_bridge,
        workload::reports_per_lock_hour(settings.visits_per_hour),
        settings.rate,
        if settings.find_max.is_some() {
            " at the first step"
        } else {
            ""
        },
        workload::real_heartbeat_period(speedup).as_secs_f64() * 1000.0,
        settings.duration.as_secs_f64(),
        settings.warmup_share * 100.0,
        if args.insecure {
            "insecure (plain payloads, gateway --insecure-dev)"
        } else {
            "OSCORE-protected reports"
        },
    );
    let setup = Setup {
        gateway_bin,
        mosquitto_bin,
        scratch: scratch.path().to_path_buf(),
        fleet,
        fleet_file,
        postgres_url: args.postgres_url.clone(),
        duration: settings.duration,
        warmup_share: settings.warmup_share,
        drain_timeout: args.drain_timeout,
        visits_per_hour: settings.visits_per_hour,
        seed: args.seed,
        clock_ticks: procfs::clock_ticks(),
        progress_every: args.progress_every,
        insecure: args.insecure,
        cancel,
    };
    let machine = machine::Machine::detect();
    let results = match settings.find_max {
        Some(factor) => {
            plan::find_max(&setup, &targets, settings.rate, factor, settings.p99_bound).await?
        }
        None => {
            let specs = plan::schedule(&targets, settings.runs, settings.rate);
            plan::fixed(&setup, &specs, settings.p99_bound).await?
        }
    };
    let ctx = report::Context {
        command_line,
        machine,
        postgres_version,
        mosquitto_version,
        bridges: settings.bridges,
        locks_per_bridge: settings.locks_per_bridge,
        visits_per_hour: settings.visits_per_hour,
        duration: settings.duration,
        warmup_share: settings.warmup_share,
        find_max: settings.find_max.is_some(),
        p99_bound: settings.p99_bound,
        insecure: args.insecure,
        targets,
    };
    let _ = scratch.close();
    if let Some(path) = &args.json {
        let document = BridgesJson {
            schema_version: crate::json::SCHEMA_VERSION,
            mix: "bridges",
            context: &ctx,
            runs: results
                .iter()
                .map(|r| JsonRun {
                    unsustained: r.unsustained(settings.p99_bound),
                    result: r,
                })
                .collect(),
        };
        crate::json::write(path, &document)?;
        eprintln!("JSON report: {}", path.display());
    }
    Ok(report::markdown(&ctx, &results))
}

/// `loadtest bridges --json`: the report's context and every run.
#[derive(serde::Serialize)]
struct BridgesJson<'a> {
    schema_version: u32,
    mix: &'static str,
    context: &'a report::Context,
    runs: Vec<JsonRun<'a>>,
}

#[derive(serde::Serialize)]
struct JsonRun<'a> {
    #[serde(flatten)]
    result: &'a RunResult,
    /// Why the run did not sustain its offered rate; absent if it did.
    unsustained: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn args(extra: &[&str]) -> BridgesArgs {
        let mut argv = vec!["loadtest", "bridges"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Bridges(a) => a,
            _ => unreachable!("parsed `bridges`"),
        }
    }

    #[test]
    fn defaults_offer_the_target_to_mosquitto_then_the_gateway() {
        let s = args(&[]).validate().unwrap();
        assert_eq!(s.rate, DEFAULT_RATE);
        assert_eq!((s.bridges, s.locks_per_bridge, s.runs), (1000, 2, 3));
        assert_eq!(s.p99_bound, Duration::from_millis(50));
        assert_eq!(
            s.targets(),
            vec![Target::Mosquitto, Target::Gateway(Engine::Sqlite)]
        );
        let s = args(&["--find-max", "--engine", "both", "--no-mosquitto"])
            .validate()
            .unwrap();
        assert_eq!(s.rate, DEFAULT_FIND_MAX_START);
        assert_eq!(s.find_max, Some(DEFAULT_FIND_MAX_FACTOR));
        assert_eq!(
            s.targets(),
            vec![
                Target::Gateway(Engine::Sqlite),
                Target::Gateway(Engine::Postgres)
            ]
        );
    }

    #[test]
    fn bad_options_are_named() {
        let cases: [(&[&str], &str); 8] = [
            (&["--rate", "0"], "--rate"),
            (&["--runs", "0"], "--runs"),
            (&["--bridges", "0"], "--bridges"),
            (&["--locks-per-bridge", "3"], "--locks-per-bridge"),
            (&["--visits-per-hour=-1"], "--visits-per-hour"),
            (&["--warmup-share", "0.95"], "--warmup-share"),
            (&["--p99-bound", "0s"], "--p99-bound"),
            (
                &["--find-max", "--find-max-factor", "1"],
                "--find-max-factor",
            ),
        ];
        for (argv, name) in cases {
            let err = args(argv).validate().unwrap_err().to_string();
            assert!(err.contains(name), "{argv:?}: {err}");
        }
        assert!(Cli::try_parse_from([
            "loadtest",
            "bridges",
            "--no-mosquitto",
            "--mosquitto-bin",
            "/x"
        ])
        .is_err());
    }
}
