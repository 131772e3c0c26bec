//! One measured run: a fresh database, the fleet imported, a gateway
//! started on it, the simulator driven at the offered rate for the
//! duration (and drained), the figures read from the simulator's report,
//! the gateway's `/metrics` and `/proc`, and everything stopped and removed
//! again, on error too.
//!
//! A [`Variant::Libcoap`] run drives the same simulator, fleet and requests
//! at the same rate against libcoap's `coap-server` instead ([`libcoap`]):
//! no database, no import, no `/metrics`; its figures are the answers,
//! whatever their code, and the server's CPU and memory from `/proc`.

use crate::database::{Engine, FreshDatabase};
use crate::dbcheck::{self, DbCheck};
use crate::error::{LoadtestError, Result};
use crate::gateway::{self, Gateway, LogSummary};
use crate::libcoap::CoapServer;
use crate::stats::Window;
use crate::timeline::{Recorder, Sample, TimeLine, SAMPLE_EVERY};
use crate::{http, libcoap, procfs, prom, workload};
use device_sim::fleet::Fleet;
use device_sim::run::SimConfig;
use schemas::device::UplinkKind;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The gateway's histogram of reports per group commit.
pub const BATCH_SIZE_METRIC: &str = "lockfleet_commit_batch_size";
/// The gateway's histogram of group-commit durations.
pub const COMMIT_DURATION_METRIC: &str = "lockfleet_commit_duration_seconds";
/// The gateway's counter of committed reports, by `kind`.
pub const COMMITTED_METRIC: &str = "lockfleet_reports_committed_total";
/// The gateway's counter of job changes, by `change`.
pub const JOB_CHANGES_METRIC: &str = "lockfleet_job_changes_total";

/// `serve --commit-max-batch` of the baseline: one report per transaction,
/// i.e. group commit disabled.
pub const BASELINE_MAX_BATCH: usize = 1;

/// The `serve` flag of `--insecure` runs: device security off.
pub const INSECURE_SERVE_FLAG: &str = "--insecure-dev";

const MIB: f64 = 1024.0 * 1024.0;

/// The server configuration a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Variant {
    /// Group commit disabled (`--commit-max-batch 1`).
    Baseline,
    /// The gateway as shipped (group commit with its default batch limit).
    Candidate,
    /// Not the gateway: libcoap's `coap-server`, the raw CoAP ceiling.
    Libcoap,
}

impl Variant {
    /// Extra `serve` flags (none for libcoap, which is not the gateway).
    pub fn serve_args(self) -> Vec<String> {
        match self {
            Variant::Baseline => vec![
                "--commit-max-batch".to_string(),
                BASELINE_MAX_BATCH.to_string(),
            ],
            Variant::Candidate | Variant::Libcoap => Vec::new(),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Variant::Baseline => "baseline: --commit-max-batch 1",
            Variant::Candidate => "group commit (defaults)",
            Variant::Libcoap => "libcoap coap-server (raw CoAP, no database)",
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// What every run of an invocation shares.
pub struct Setup {
    pub gateway_bin: PathBuf,
    /// libcoap's server, for [`Variant::Libcoap`] runs ([`libcoap::locate`]).
    pub coap_server_bin: Option<PathBuf>,
    /// Scratch directory: fleet file, SQLite databases, the gateway's cwd.
    pub scratch: PathBuf,
    pub fleet: Fleet,
    pub fleet_file: PathBuf,
    pub postgres_url: String,
    pub duration: Duration,
    pub warmup_share: f64,
    pub drain_timeout: Duration,
    pub sockets: usize,
    pub seed: u64,
    pub clock_ticks: u64,
    pub progress_every: Duration,
    /// No device security on either side (`--insecure`).
    pub insecure: bool,
    /// A SQLite database with the fleet already imported: SQLite runs copy
    /// it instead of importing again (a million devices take minutes).
    pub imported_sqlite: Option<PathBuf>,
    /// Cancelled on Ctrl-C: the run in progress ends early and cleans up.
    pub cancel: CancellationToken,
}

/// Which run to do.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunSpec {
    pub engine: Engine,
    pub variant: Variant,
    /// Offered heartbeats per second.
    pub rate: f64,
    /// Unique per invocation: names the database.
    pub number: u32,
    /// Before the gateway starts, give every lock one pending job (an
    /// AlgoPIN deletion), so each heartbeat answer carries one.
    pub pending_jobs: bool,
}

/// Latency quantiles of heartbeat exchanges, milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Quantiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// The figures of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct RunResult {
    pub spec: RunSpec,
    pub speedup: f64,
    /// Acknowledged heartbeats per second in the steady window.
    pub acked_heartbeats_per_s: f64,
    /// Acknowledged activity-log batches per second in the steady window.
    pub acked_logs_per_s: f64,
    pub acked_heartbeats: u64,
    pub acked_logs: u64,
    /// Client-side round trip of acknowledged heartbeat exchanges, whole run.
    pub latency_ms: Option<Quantiles>,
    /// Heartbeat exchanges answered per second in the steady window, with
    /// any code (acknowledged, refused, 5.03): the request/response rate.
    /// The headline figure of a libcoap run, which acknowledges nothing.
    pub answered_heartbeats_per_s: f64,
    /// Activity-log exchanges answered per second, likewise.
    pub answered_logs_per_s: f64,
    /// Client-side round trip of heartbeat exchanges answered with any code.
    pub answer_latency_ms: Option<Quantiles>,
    pub retransmitted: u64,
    pub gave_up: u64,
    /// Reports the gateway refused (4.xx/5.xx), included in `errors`.
    pub rejected: u64,
    /// Heartbeats a lock dropped from its full outbox (a newer one superseded it).
    pub abandoned: u64,
    pub errors: BTreeMap<String, u64>,
    pub unacknowledged: usize,
    /// Server (the gateway, or coap-server in a libcoap run) CPU from ready
    /// to just before SIGTERM (the load and the drain).
    pub gateway_cpu_s: f64,
    /// Server peak RSS (VmHWM) over its life.
    pub gateway_rss_mib: f64,
    /// This process (the simulator) over the same interval.
    pub sim_cpu_s: f64,
    /// How long the simulator ran (the load and the drain): `sim_cpu_s`
    /// over it is how many cores the generator kept busy.
    pub driven: Duration,
    pub mean_batch: Option<f64>,
    pub mean_commit_ms: Option<f64>,
    /// The gateway's own count of committed heartbeats.
    pub committed_heartbeats: Option<f64>,
    /// Jobs the gateway handed out in answers, and jobs completed.
    pub jobs_delivered: Option<f64>,
    pub jobs_completed: Option<f64>,
    /// Client-side heartbeat round trip p99.9, milliseconds.
    pub latency_p999_ms: Option<f64>,
    /// What the server (gateway or coap-server) logged.
    pub gateway_log: LogSummary,
    pub wall: Duration,
    /// Second by second: offered, acknowledged, latency, gateway CPU and RSS.
    pub timeline: TimeLine,
    /// After a gateway run: every acknowledged report's rows in the
    /// database (`None` for libcoap, which has none).
    pub db_check: Option<DbCheck>,
}

impl RunResult {
    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Heartbeats per second the configuration served: acknowledged by the
    /// gateway, answered (with its 4.xx) by libcoap.
    pub fn served_heartbeats_per_s(&self) -> f64 {
        match self.spec.variant {
            Variant::Baseline | Variant::Candidate => self.acked_heartbeats_per_s,
            Variant::Libcoap => self.answered_heartbeats_per_s,
        }
    }

    /// At least [`crate::cli::SUSTAINED_SHARE`] of the offered heartbeats were
    /// served in the steady window, and nothing was left unsettled.
    pub fn sustained(&self) -> bool {
        self.unacknowledged == 0
            && self.served_heartbeats_per_s() >= crate::cli::SUSTAINED_SHARE * self.spec.rate
    }

    /// Cores the simulator kept busy on average while it ran.
    pub fn sim_cores(&self) -> Option<f64> {
        crate::stats::ratio(self.sim_cpu_s, self.driven.as_secs_f64())
    }
}

/// Does one run; the database is removed afterwards whatever happened.
pub async fn run(setup: &Setup, spec: RunSpec) -> Result<RunResult> {
    if spec.variant == Variant::Libcoap {
        return on_libcoap(setup, spec).await;
    }
    let db = FreshDatabase::create(
        spec.engine,
        &setup.scratch,
        &setup.postgres_url,
        spec.number,
    )
    .await?;
    let result = on_database(setup, spec, db.url()).await;
    db.remove_after(result).await
}

async fn on_database(setup: &Setup, spec: RunSpec, url: &str) -> Result<RunResult> {
    let started = Instant::now();
    match (&setup.imported_sqlite, url.strip_prefix("sqlite://")) {
        (Some(template), Some(file)) => {
            std::fs::copy(template, file)
                .map_err(|e| LoadtestError::io("copy the imported SQLite database", e))?;
            // A write-ahead log not yet checkpointed holds committed rows.
            let wal = |p: &str| PathBuf::from(format!("{p}-wal"));
            let template_wal = wal(&template.to_string_lossy());
            if template_wal.exists() {
                std::fs::copy(&template_wal, wal(file))
                    .map_err(|e| LoadtestError::io("copy the imported SQLite log", e))?;
            }
        }
        _ => gateway::import(&setup.gateway_bin, &setup.scratch, &setup.fleet_file, url).await?,
    }
    if spec.pending_jobs {
        let started = Instant::now();
        let n = crate::database::seed_pending_jobs(url).await?;
        eprintln!(
            "    seeded {n} pending jobs in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    if setup.cancel.is_cancelled() {
        return Err(LoadtestError::Interrupted);
    }
    let mut serve_args = spec.variant.serve_args();
    if setup.insecure {
        serve_args.push(INSECURE_SERVE_FLAG.to_string());
    }
    let gw = Gateway::start(&setup.gateway_bin, &setup.scratch, url, &serve_args).await?;
    let target = Target {
        coap: gw.listeners.coap,
        mqtt_port: Some(gw.listeners.mqtt.port()),
        pid: gw.pid(),
        metrics: Some(gw.listeners.http),
    };
    // On error `gw` is dropped, which kills the process.
    let measured = drive(setup, spec, &target).await?;
    let log = gw.stop().await?;
    if setup.cancel.is_cancelled() {
        return Err(LoadtestError::Interrupted);
    }
    // With the gateway stopped: every acknowledged report is in the
    // database, once.
    let db_check = dbcheck::run(url, &measured.report.acknowledged, "coap").await?;
    let mut result = measured.finish(spec, log, started.elapsed());
    result.db_check = Some(db_check);
    Ok(result)
}

/// A libcoap run: coap-server on a free port, the simulator against it, no
/// database and no `/metrics`.
async fn on_libcoap(setup: &Setup, spec: RunSpec) -> Result<RunResult> {
    let started = Instant::now();
    let bin = setup
        .coap_server_bin
        .as_deref()
        .ok_or_else(|| LoadtestError::LibcoapMissing {
            searched: libcoap::BINARIES.join(", "),
        })?;
    if setup.cancel.is_cancelled() {
        return Err(LoadtestError::Interrupted);
    }
    let server = CoapServer::start(bin, &setup.scratch).await?;
    let target = Target {
        coap: server.addr,
        mqtt_port: None,
        pid: server.pid(),
        metrics: None,
    };
    // On error `server` is dropped, which kills the process.
    let measured = drive(setup, spec, &target).await?;
    let log = server.stop().await?;
    if setup.cancel.is_cancelled() {
        return Err(LoadtestError::Interrupted);
    }
    Ok(measured.finish(spec, log, started.elapsed()))
}

/// The server a run drives.
struct Target {
    coap: SocketAddr,
    /// The gateway's MQTT port (a CoAP fleet never connects to it).
    mqtt_port: Option<u16>,
    pid: u32,
    /// The gateway's metrics endpoint; libcoap has none.
    metrics: Option<SocketAddr>,
}

/// What [`drive`] measured before the server is stopped.
struct Measured {
    speedup: f64,
    report: device_sim::RunReport,
    window: Window,
    gateway: procfs::Usage,
    gateway_cpu: Duration,
    sim_cpu: Duration,
    driven: Duration,
    /// The gateway's `/metrics` text; empty for libcoap.
    metrics: String,
    timeline: TimeLine,
}

async fn drive(setup: &Setup, spec: RunSpec, target: &Target) -> Result<Measured> {
    let heartbeat = Duration::from_secs(workload::shortest_heartbeat().as_secs());
    let speedup =
        workload::speedup(spec.rate, setup.fleet.locks.len(), heartbeat).ok_or_else(|| {
            LoadtestError::InvalidOption(format!("no speed-up gives {} heartbeats/s", spec.rate))
        })?;
    let pid = target.pid.to_string();
    let gw_before = procfs::read(&pid, setup.clock_ticks)?;
    let sim_before = procfs::read("self", setup.clock_ticks)?;
    let config = SimConfig {
        gateway: target.coap.ip().to_string(),
        coap_port: target.coap.port(),
        mqtt_port: target.mqtt_port.unwrap_or(SimConfig::default().mqtt_port),
        speedup,
        duration: Some(setup.duration),
        drain_timeout: setup.drain_timeout,
        seed: setup.seed,
        sockets: setup.sockets,
        progress: None,
        cancel: setup.cancel.child_token(),
        state: None,
        // The fleet's pairing secrets, imported into the gateway above
        // (libcoap has none: it refuses the protected requests with 4.02).
        security: !setup.insecure,
        // Open loop: each lock keeps its own schedule. Following the
        // `next_heartbeat_at` of each answer (as locks in the field do)
        // ties a lock's next report to when its last was answered and
        // bunches the offered load (3 500/s in one second of a 2 500/s run).
        follow_server_schedule: false,
        ..SimConfig::default()
    };
    let handle = device_sim::run::start(config, setup.fleet.clone()).await?;
    let stats = handle.stats().clone();
    let begun = Instant::now();
    // The time line's clock is the simulator's, the origin of the ledger's
    // acknowledgement times.
    let sim_started = handle.started_at();
    let sample = || -> Result<Sample> {
        let gateway = procfs::read(&pid, setup.clock_ticks)?;
        Ok(Sample::of(
            &stats.snapshot(sim_started.elapsed()),
            Some(gateway),
        ))
    };
    let mut timeline = Recorder::new(sample()?);
    let mut sampling =
        tokio::time::interval_at(tokio::time::Instant::now() + SAMPLE_EVERY, SAMPLE_EVERY);
    // After a stall, one interval as long as the stall, not a burst of short ones.
    sampling.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let finish = handle.finish();
    tokio::pin!(finish);
    let mut progress = tokio::time::interval_at(
        tokio::time::Instant::now() + setup.progress_every,
        setup.progress_every,
    );
    let (mut last_acked, mut last_answered) = (0, 0);
    let every = setup.progress_every.as_secs_f64();
    let report = loop {
        tokio::select! {
            r = &mut finish => break r?,
            _ = sampling.tick() => timeline.record(sample()?),
            _ = progress.tick() => {
                let s = stats.snapshot(begun.elapsed());
                let acked_per_s = (s.acked - last_acked) as f64 / every;
                let answered_per_s = (s.answered - last_answered) as f64 / every;
                (last_acked, last_answered) = (s.acked, s.answered);
                let phase = if s.elapsed > setup.duration { "draining" } else { "running" };
                eprintln!(
                    "    [{:>5.1}s] {phase}: acked {} ({acked_per_s:.0} reports/s) answered {} ({answered_per_s:.0}/s) retx {} in-flight {} outstanding {} errors {}",
                    s.elapsed.as_secs_f64(), s.acked, s.answered, s.retransmitted, s.in_flight, s.outstanding,
                    s.errors.values().sum::<u64>(),
                );
            }
        }
    };
    timeline.record(sample()?);
    let timeline = timeline
        .finish(&report.acknowledged)
        .with_answered(&report.answered);
    let driven = begun.elapsed();
    let metrics = match target.metrics {
        Some(http_addr) => http::get(http_addr, "/metrics").await?.1,
        None => String::new(),
    };
    let gw_after = procfs::read(&pid, setup.clock_ticks)?;
    let sim_after = procfs::read("self", setup.clock_ticks)?;
    Ok(Measured {
        speedup,
        report,
        window: Window::steady(setup.duration, setup.warmup_share),
        gateway: gw_after,
        gateway_cpu: gw_after.cpu.saturating_sub(gw_before.cpu),
        sim_cpu: sim_after.cpu.saturating_sub(sim_before.cpu),
        driven,
        metrics,
        timeline,
    })
}

impl Measured {
    fn finish(self, spec: RunSpec, gateway_log: LogSummary, wall: Duration) -> RunResult {
        let r = &self.report;
        let times = |kind: UplinkKind| {
            r.acknowledged
                .iter()
                .filter(move |a| a.kind == kind)
                .map(|a| a.acked_after)
        };
        let q = |lat: &device_sim::latency::AckLatency, p: f64| {
            lat.quantile(UplinkKind::Heartbeat, p)
                .map(|d| d.as_secs_f64() * 1000.0)
        };
        let quantiles = |lat| match (q(lat, 0.5), q(lat, 0.95), q(lat, 0.99)) {
            (Some(p50), Some(p95), Some(p99)) => Some(Quantiles { p50, p95, p99 }),
            _ => None,
        };
        let answered = |kind: UplinkKind| {
            r.answered
                .iter()
                .filter(move |a| a.kind == kind)
                .map(|a| a.answered_after)
        };
        RunResult {
            spec,
            speedup: self.speedup,
            acked_heartbeats_per_s: self.window.rate(times(UplinkKind::Heartbeat)),
            acked_logs_per_s: self.window.rate(times(UplinkKind::ActivityLog)),
            acked_heartbeats: times(UplinkKind::Heartbeat).count() as u64,
            acked_logs: times(UplinkKind::ActivityLog).count() as u64,
            latency_ms: quantiles(&r.ack_latency),
            answered_heartbeats_per_s: self.window.rate(answered(UplinkKind::Heartbeat)),
            answered_logs_per_s: self.window.rate(answered(UplinkKind::ActivityLog)),
            answer_latency_ms: quantiles(&r.answer_latency),
            retransmitted: r.stats.retransmitted,
            gave_up: r.stats.gave_up,
            rejected: r.stats.rejected,
            abandoned: r.stats.abandoned,
            errors: r.stats.errors.clone(),
            unacknowledged: r.unacknowledged.len(),
            gateway_cpu_s: self.gateway_cpu.as_secs_f64(),
            gateway_rss_mib: self.gateway.peak_rss_bytes as f64 / MIB,
            sim_cpu_s: self.sim_cpu.as_secs_f64(),
            driven: self.driven,
            mean_batch: prom::histogram_mean(&self.metrics, BATCH_SIZE_METRIC),
            mean_commit_ms: prom::histogram_mean(&self.metrics, COMMIT_DURATION_METRIC)
                .map(|s| s * 1000.0),
            committed_heartbeats: prom::sum(
                &self.metrics,
                COMMITTED_METRIC,
                Some(("kind", "heartbeat")),
            ),
            jobs_delivered: prom::sum(
                &self.metrics,
                JOB_CHANGES_METRIC,
                Some(("change", "delivered")),
            ),
            jobs_completed: prom::sum(
                &self.metrics,
                JOB_CHANGES_METRIC,
                Some(("change", "completed")),
            ),
            latency_p999_ms: q(&r.ack_latency, 0.999),
            gateway_log,
            wall,
            timeline: self.timeline,
            db_check: None,
        }
    }
}
