//! The command line: `loadtest ingest [OPTIONS]`, its defaults and their
//! validation into a [`Settings`] the rest of the crate uses.

use crate::database::{self, Engine, DEFAULT_POSTGRES_URL};
use crate::error::{LoadtestError, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// Offered heartbeats per second on SQLite when `--rate` is not given:
/// about 1.25 times the highest rate group commit sustained on SQLite on the
/// 2-core machine the benchmarks run on (5 000–5 300/s, simulator and
/// gateway sharing it), so the candidate is saturated and the table shows
/// its capacity, not an echo of the offered rate. Far beyond capacity the
/// gateway spends its CPU on 5.03 answers and the acked rate falls (about
/// 20 % lower at 12 000/s), which is why the rate is not simply "very high".
/// The baseline saturates near 1 000/s at any of these rates. See README.md.
pub const DEFAULT_RATE_SQLITE: f64 = 6500.0;

/// Offered heartbeats per second on PostgreSQL when `--rate` is not given:
/// about 1.25 times the highest rate group commit sustained there (9 766/s
/// sustained, 12 207/s not). See [`DEFAULT_RATE_SQLITE`].
pub const DEFAULT_RATE_POSTGRES: f64 = 12_000.0;

/// First `--find-max` step when `--rate` is not given: about what the
/// baseline sustains, so both configurations get a highest sustained rate.
pub const DEFAULT_FIND_MAX_START: f64 = 1000.0;

/// The offered rate of `engine` when `--rate` is not given.
pub fn default_rate(engine: Engine) -> f64 {
    match engine {
        Engine::Sqlite => DEFAULT_RATE_SQLITE,
        Engine::Postgres => DEFAULT_RATE_POSTGRES,
    }
}

/// Locks in the generated fleet. With a 1 h heartbeat at the default rate
/// each lock reports every few seconds of real time, long compared with an
/// exchange, so the offered load is nearly open-loop (a lock waits for its
/// own answer before its next report: NSTART 1).
pub const DEFAULT_LOCKS: usize = 20_000;

/// Share of each run's duration treated as warm-up and not counted.
pub const DEFAULT_WARMUP_SHARE: f64 = 0.2;

/// Most the warm-up may be: something must be left to measure.
pub const MAX_WARMUP_SHARE: f64 = 0.9;

/// Each `--find-max` step offers this many times the previous rate.
pub const DEFAULT_FIND_MAX_FACTOR: f64 = 1.25;

/// A step "sustains" its rate when at least this share of the offered
/// heartbeats per second are acknowledged in the steady window.
pub const SUSTAINED_SHARE: f64 = 0.95;

#[derive(Parser, Debug)]
#[command(
    name = "loadtest",
    version,
    about = "Drive the device simulator against a real gateway process and report throughput, \
             latency and resource use beside a baseline measured in the same invocation"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Acknowledged heartbeats per second: group commit (the default) against
    /// a baseline with group commit disabled (`serve --commit-max-batch 1`)
    /// and against libcoap's coap-server (the raw CoAP ceiling), runs
    /// interleaved, medians reported
    Ingest(IngestArgs),
    /// Durable job creations per second through the dashboard's MQTT
    /// command API, beside get_job reads on the same path, runs repeated,
    /// medians reported
    Jobs(crate::jobs::JobsArgs),
    /// A fleet powered on together, and how the gateway's wake-up phases
    /// spread its heartbeats: heartbeats per simulated minute per interval,
    /// peak-to-mean before (the burst) and after
    Wakeup(crate::wakeup::WakeupArgs),
    /// Heartbeat answer latency with one pending job per lock (a million by
    /// default) beside the same fleet with none, runs alternating, medians
    HeartbeatJobs(crate::hbjobs::HeartbeatJobsArgs),
    /// 2FA unlocks: challenge latency (lock request to notifier call) at
    /// 1 000 challenges/s and OTP verification throughput, beside heartbeats
    /// on the same locks and gateway, runs repeated, medians reported
    Twofa(crate::twofa::TwoFactorArgs),
    /// Resident memory per registered lock: the gateway with a million
    /// locks against the same gateway with a small fleet, when registered
    /// and after one heartbeat each (issue 6: at most 512 bytes a lock)
    Memory(crate::memory::MemoryArgs),
    /// MQTT bridge reports acknowledged after the durable commit, beside a
    /// private Mosquitto under the same simulated bridges (PUBACKs), runs
    /// interleaved, medians and ratios reported, the database checked
    Bridges(crate::bridges::BridgesArgs),
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineChoice {
    Sqlite,
    Postgres,
    Both,
}

#[derive(clap::Args, Debug, Clone)]
pub struct IngestArgs {
    /// Storage engine(s) to measure
    #[arg(long, value_enum, default_value = "sqlite")]
    pub engine: EngineChoice,
    /// Runs of each configuration (baseline and candidate alternate)
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// How long each run generates load (e.g. 20s, 1m, 500ms)
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Offered heartbeats per second, every engine [default: 6500 on sqlite, 12000 on
    /// postgres: above what this 2-core machine sustains; with --find-max: 1000, the first step]
    #[arg(long)]
    pub rate: Option<f64>,
    /// Locks in the fleet (all INB1 on CoAP, 1 h heartbeat, 24 h logs)
    #[arg(long, default_value_t = DEFAULT_LOCKS)]
    pub locks: usize,
    /// Share of each run not counted (warm-up), 0 to 0.9
    #[arg(long, default_value_t = DEFAULT_WARMUP_SHARE)]
    pub warmup_share: f64,
    /// The gateway binary [default: `gateway` beside this executable]
    #[arg(long)]
    pub gateway_bin: Option<PathBuf>,
    /// Admin URL of PostgreSQL; each run creates and drops its own database there
    #[arg(long, default_value = DEFAULT_POSTGRES_URL)]
    pub postgres_url: String,
    /// After each run, how long the simulator may retry what is unacknowledged
    /// (a saturated run leaves a backlog this does not clear: it is reported)
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// UDP sockets the simulated locks share
    #[arg(long, default_value_t = device_sim::run::DEFAULT_SOCKETS)]
    pub sockets: usize,
    /// Seed of the fleet and the simulator
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Instead of one rate: step the offered rate up from --rate by
    /// --find-max-factor until less than 95 % is acknowledged, one run per
    /// step and configuration, and report the highest rate sustained
    #[arg(long)]
    pub find_max: bool,
    /// Ratio between two --find-max steps
    #[arg(long, default_value_t = DEFAULT_FIND_MAX_FACTOR)]
    pub find_max_factor: f64,
    /// How often a progress line is printed during a run
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub progress_every: Duration,
    /// Without device security: the gateway runs with --insecure-dev and the
    /// simulated locks send unprotected requests (default: every request is
    /// OSCORE-protected with the lock's pairing secret, as in production).
    /// Comparing the two measures the cost of OSCORE
    #[arg(long)]
    pub insecure: bool,
    /// Also write the whole result as JSON to PATH: settings, machine, every
    /// run's figures and second-by-second time line, the medians and ratios
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Also draw a PNG chart to PATH: acknowledged heartbeats per second and
    /// heartbeat latency p50/p99 over time, one line per run
    #[arg(long, value_name = "PATH")]
    pub chart: Option<PathBuf>,
    /// TrueType font of the chart's text (Debian: fonts-dejavu-core)
    #[arg(long, value_name = "PATH", default_value = crate::chart::DEFAULT_FONT)]
    pub chart_font: PathBuf,
    /// Skip the raw CoAP baseline: libcoap's coap-server (Debian libcoap3-bin)
    /// under the same simulator, fleet, requests and offered rate, every
    /// answer counted (it answers with 4.xx), no database
    #[arg(long)]
    pub no_libcoap: bool,
}

/// Validated settings of an `ingest` invocation.
#[derive(Clone, Debug)]
pub struct Settings {
    pub engines: Vec<Engine>,
    pub runs: u32,
    pub duration: Duration,
    /// `--rate`; `None`: [`default_rate`] per engine.
    pub rate: Option<f64>,
    pub locks: usize,
    pub warmup_share: f64,
    pub gateway_bin: Option<PathBuf>,
    pub postgres_url: String,
    pub drain_timeout: Duration,
    pub sockets: usize,
    pub seed: u64,
    pub find_max: Option<f64>,
    pub progress_every: Duration,
    /// `--insecure`: no OSCORE, gateway with `--insecure-dev`.
    pub insecure: bool,
    /// `--json`: where the JSON report goes.
    pub json: Option<PathBuf>,
    /// `--chart`: where the PNG chart goes, and `--chart-font`.
    pub chart: Option<PathBuf>,
    pub chart_font: PathBuf,
    /// Measure libcoap's coap-server too (not `--no-libcoap`).
    pub libcoap: bool,
}

impl IngestArgs {
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
        if self.locks == 0 {
            return bad("--locks must be at least 1".into());
        }
        if !(0.0..=MAX_WARMUP_SHARE).contains(&self.warmup_share) {
            return bad(format!(
                "--warmup-share must be between 0 and {MAX_WARMUP_SHARE}, got {}",
                self.warmup_share
            ));
        }
        if self.sockets == 0 {
            return bad("--sockets must be at least 1".into());
        }
        if self.progress_every.is_zero() {
            return bad("--progress-every must be longer than zero".into());
        }
        if self.find_max && !(self.find_max_factor.is_finite() && self.find_max_factor >= 1.05) {
            return bad(format!(
                "--find-max-factor must be at least 1.05, got {}",
                self.find_max_factor
            ));
        }
        for (option, path) in [("--json", &self.json), ("--chart", &self.chart)] {
            if let Some(path) = path {
                check_output(option, path)?;
            }
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
        Ok(Settings {
            engines,
            runs: self.runs,
            duration: self.duration,
            rate: self.rate,
            locks: self.locks,
            warmup_share: self.warmup_share,
            gateway_bin: self.gateway_bin.clone(),
            postgres_url: self.postgres_url.clone(),
            drain_timeout: self.drain_timeout,
            sockets: self.sockets,
            seed: self.seed,
            find_max: self.find_max.then_some(self.find_max_factor),
            progress_every: self.progress_every,
            insecure: self.insecure,
            json: self.json.clone(),
            chart: self.chart.clone(),
            chart_font: self.chart_font.clone(),
            libcoap: !self.no_libcoap,
        })
    }
}

impl Settings {
    /// The offered heartbeats per second of a fixed-rate run on `engine`.
    pub fn rate_for(&self, engine: Engine) -> f64 {
        self.rate.unwrap_or_else(|| default_rate(engine))
    }

    /// The first `--find-max` step.
    pub fn find_max_start(&self) -> f64 {
        self.rate.unwrap_or(DEFAULT_FIND_MAX_START)
    }
}

/// Fails when `path`, an output file of `option`, could not be written at
/// the end of the invocation because its directory does not exist (or is a
/// directory itself): checked before the runs, not after them.
pub fn check_output(option: &str, path: &std::path::Path) -> Result<()> {
    let bad = |why: String| {
        Err(LoadtestError::InvalidOption(format!(
            "{option} {}: {why}",
            path.display()
        )))
    };
    if path.is_dir() {
        return bad("is a directory; give a file name".into());
    }
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) if !dir.is_dir() => {
            bad(format!("the directory {} does not exist", dir.display()))
        }
        _ => Ok(()),
    }
}

/// A duration such as `20s`, `1m`, `1.5m`, `500ms` or `1h`; a bare number
/// is seconds.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration; use e.g. 20s, 1m or 500ms"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?}; use ms, s, m or h"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("20"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    fn args(extra: &[&str]) -> IngestArgs {
        let mut argv = vec!["loadtest", "ingest"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Ingest(a) => a,
            other => unreachable!("parsed `ingest`, got {other:?}"),
        }
    }

    #[test]
    fn heartbeat_jobs_measures_a_million_locks_by_default() {
        let Command::HeartbeatJobs(a) = Cli::try_parse_from(["loadtest", "heartbeat-jobs"])
            .unwrap()
            .command
        else {
            panic!("parsed another command")
        };
        assert_eq!(a.locks, 1_000_000);
        assert_eq!(a.runs, 2);
        assert!(a.rate > 0.0);
    }

    #[test]
    fn jobs_has_defaults_for_everything() {
        let Command::Jobs(a) = Cli::try_parse_from(["loadtest", "jobs"]).unwrap().command else {
            panic!("not jobs");
        };
        assert_eq!((a.runs, a.window, a.locks), (3, 64, 5_000));
        assert_eq!(a.duration, Duration::from_secs(10));
    }

    #[test]
    fn defaults_validate_and_both_means_sqlite_then_postgres() {
        let s = args(&[]).validate().unwrap();
        assert_eq!(s.engines, vec![Engine::Sqlite]);
        assert_eq!(s.runs, 3);
        assert_eq!(s.rate_for(Engine::Sqlite), DEFAULT_RATE_SQLITE);
        assert_eq!(s.rate_for(Engine::Postgres), DEFAULT_RATE_POSTGRES);
        assert_eq!(s.find_max_start(), DEFAULT_FIND_MAX_START);
        assert_eq!(s.duration, Duration::from_secs(20));
        assert_eq!(s.find_max, None);
        assert!(!s.insecure, "device security is the default");
        assert!(s.libcoap, "the libcoap baseline is on by default");
        assert!(!args(&["--no-libcoap"]).validate().unwrap().libcoap);
        assert!(args(&["--insecure"]).validate().unwrap().insecure);
        assert_eq!((s.json.as_deref(), s.chart.as_deref()), (None, None));
        assert_eq!(s.chart_font, PathBuf::from(crate::chart::DEFAULT_FONT));
        let s = args(&["--json", "r.json", "--chart", "r.png"])
            .validate()
            .unwrap();
        assert_eq!(s.json, Some(PathBuf::from("r.json")));
        assert_eq!(s.chart, Some(PathBuf::from("r.png")));
        let s = args(&["--engine", "both", "--find-max"])
            .validate()
            .unwrap();
        assert_eq!(s.engines, vec![Engine::Sqlite, Engine::Postgres]);
        assert_eq!(s.find_max, Some(DEFAULT_FIND_MAX_FACTOR));
        let s = args(&["--rate", "300"]).validate().unwrap();
        assert_eq!(s.rate_for(Engine::Postgres), 300.0);
        assert_eq!(s.find_max_start(), 300.0);
    }

    #[test]
    fn bad_options_are_named() {
        let cases: [(&[&str], &str); 8] = [
            (&["--json", "/nonexistent/dir/r.json"], "--json"),
            (&["--chart", "/"], "--chart"),
            (&["--rate", "0"], "--rate"),
            (&["--runs", "0"], "--runs"),
            (&["--warmup-share", "0.95"], "--warmup-share"),
            (&["--locks", "0"], "--locks"),
            (
                &["--engine", "postgres", "--postgres-url", "mysql://x"],
                "--postgres-url",
            ),
            (
                &["--find-max", "--find-max-factor", "1"],
                "--find-max-factor",
            ),
        ];
        for (argv, name) in cases {
            let err = args(argv).validate().unwrap_err().to_string();
            assert!(err.contains(name), "{argv:?}: {err}");
        }
    }
}
