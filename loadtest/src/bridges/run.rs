//! One measured run of `loadtest bridges`: a broker started (a private
//! Mosquitto, or the gateway on a fresh database with the fleet imported),
//! the simulated bridges driven at the offered rate for the duration (and
//! drained), the figures taken from the simulator's ledger, the broker's
//! `/proc` (and the gateway's `/metrics`), everything stopped, and for the
//! gateway the database checked against what was acknowledged, then
//! removed, on error too.

use super::mosquitto::Mosquitto;
use super::workload;
use crate::database::{Engine, FreshDatabase};
use crate::dbcheck::{self as check, DbCheck};
use crate::error::{LoadtestError, Result};
use crate::gateway::{self, Gateway, LogSummary};
use crate::stats::Window;
use crate::{http, procfs, prom};
use device_sim::fleet::Fleet;
use device_sim::run::{MqttAcks, SimConfig};
use device_sim::RunReport;
use hdrhistogram::Histogram;
use schemas::device::UplinkKind;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// `serve --mqtt-connects-per-second` of the gateway under test. Every
/// simulated bridge connects from 127.0.0.1, which the front would hold to
/// 10 a second (a thousand bridges: a minute and a half); this lets a fleet
/// of any size the machine can hold connect within the warm-up.
pub const GATEWAY_CONNECTS_PER_SECOND: f64 = 100_000.0;

/// The gateway's histogram of reports per group commit.
const BATCH_SIZE_METRIC: &str = crate::run::BATCH_SIZE_METRIC;

const MIB: f64 = 1024.0 * 1024.0;

/// The broker a run measures.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// A private Mosquitto: each report ends at its PUBACK.
    Mosquitto,
    /// The gateway on `engine`: each report ends at its answer, sent after
    /// the durable commit.
    Gateway(Engine),
}

impl Target {
    pub fn label(self) -> String {
        match self {
            Target::Mosquitto => "mosquitto (PUBACK)".into(),
            Target::Gateway(e) => format!("gateway, {e} (durable ack)"),
        }
    }

    /// What ends a report's exchange for the simulated bridges.
    pub fn acks(self) -> MqttAcks {
        match self {
            Target::Mosquitto => MqttAcks::Puback,
            Target::Gateway(_) => MqttAcks::ApplicationAndPuback,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// What every run of an invocation shares.
pub struct Setup {
    pub gateway_bin: PathBuf,
    /// `None` with `--no-mosquitto`.
    pub mosquitto_bin: Option<PathBuf>,
    /// Scratch directory: fleet file, SQLite databases, brokers' cwd.
    pub scratch: PathBuf,
    pub fleet: Fleet,
    pub fleet_file: PathBuf,
    pub postgres_url: String,
    pub duration: Duration,
    pub warmup_share: f64,
    pub drain_timeout: Duration,
    pub visits_per_hour: f64,
    pub seed: u64,
    pub clock_ticks: u64,
    pub progress_every: Duration,
    /// No device security (`--insecure`): plain payloads, anonymous MQTT,
    /// the gateway with `--insecure-dev`.
    pub insecure: bool,
    /// Cancelled on Ctrl-C: the run in progress ends early and cleans up.
    pub cancel: CancellationToken,
}

/// Which run to do.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunSpec {
    pub target: Target,
    /// Offered reports per second.
    pub rate: f64,
    /// Unique per invocation: names the database.
    pub number: u32,
}

/// Latency quantiles, milliseconds, from HDR histograms of reports due in
/// the steady window, each from its due time.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Latency {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    /// The quantiles of `samples`; `None` for none.
    pub fn of(samples: impl IntoIterator<Item = Duration>) -> Option<Latency> {
        // Infallible: 3 significant digits is within hdrhistogram's 0..=5.
        let mut h = Histogram::<u64>::new(3).expect("3 significant digits");
        for d in samples {
            let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
            // Auto-resizing: recording cannot run out of range.
            let _ = h.record(us);
        }
        let ms = |us: u64| us as f64 / 1000.0;
        (!h.is_empty()).then(|| Latency {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        })
    }
}

/// The figures of one run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunResult {
    pub spec: RunSpec,
    pub speedup: f64,
    /// Reports the locks generated per second in the steady window.
    pub offered_per_s: f64,
    /// Reports acknowledged per second in the steady window (Mosquitto:
    /// PUBACKed; the gateway: answered after the durable commit).
    pub acked_per_s: f64,
    pub acked_heartbeats_per_s: f64,
    pub acked_logs_per_s: f64,
    /// Reports whose first PUBACK came in the steady window, per second.
    pub pubacked_per_s: f64,
    /// Due to acknowledged, reports due in the steady window.
    pub ack_latency: Option<Latency>,
    /// Due to first PUBACK, reports due in the steady window.
    pub puback_latency: Option<Latency>,
    /// Acknowledged over the whole run (warm-up and drain too).
    pub acked_total: u64,
    pub retransmitted: u64,
    pub gave_up: u64,
    pub rejected: u64,
    pub abandoned: u64,
    pub errors: BTreeMap<String, u64>,
    pub unacknowledged: usize,
    /// Bridges connected when the steady window began.
    pub connected_at_window: u64,
    /// Bridges in the fleet.
    #[serde(default)]
    pub bridges: u64,
    /// The broker's CPU from its start to just before SIGTERM.
    pub server_cpu_s: f64,
    /// The broker's peak RSS (VmHWM).
    pub server_rss_mib: f64,
    /// This process (the simulator) over the run.
    pub sim_cpu_s: f64,
    /// Gateway only: mean reports per group commit.
    pub mean_batch: Option<f64>,
    /// Gateway only: the database against the acknowledged reports.
    pub db_check: Option<DbCheck>,
    pub gateway_log: Option<LogSummary>,
    pub wall: Duration,
}

impl RunResult {
    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Why this run does not sustain its offered rate, or `None` if it
    /// does: at least [`crate::cli::SUSTAINED_SHARE`] of the offered
    /// reports acknowledged per second in the steady window, p99 (due to
    /// acknowledged) within `p99_bound`, no error, nothing left
    /// unacknowledged, the database check passed, and every bridge was
    /// connected when the steady window began (else the window measured
    /// the fleet's logins, not the offered rate).
    pub fn unsustained(&self, p99_bound: Duration) -> Option<String> {
        let share = crate::cli::SUSTAINED_SHARE;
        let bound_ms = p99_bound.as_secs_f64() * 1000.0;
        if self.acked_per_s < share * self.spec.rate {
            return Some(format!(
                "acked {:.0}/s < {:.0} % of {:.0}/s",
                self.acked_per_s,
                share * 100.0,
                self.spec.rate
            ));
        }
        match self.ack_latency {
            None => return Some("nothing acknowledged".into()),
            Some(l) if l.p99 > bound_ms => {
                return Some(format!("p99 {:.1} ms > {bound_ms:.0} ms", l.p99))
            }
            Some(_) => {}
        }
        if self.error_total() > 0 {
            return Some(format!("{} errors", self.error_total()));
        }
        if self.unacknowledged > 0 {
            return Some(format!("{} unacknowledged", self.unacknowledged));
        }
        if self.db_check.is_some_and(|c| !c.passed()) {
            return Some("database check failed".into());
        }
        if self.connected_at_window < self.bridges {
            return Some(format!(
                "{} of {} bridges connected when the steady window began: give the fleet's logins more time with a longer --duration or --warmup-share",
                self.connected_at_window, self.bridges
            ));
        }
        None
    }
}

/// Does one run; a gateway run's database is removed afterwards whatever
/// happened.
pub async fn run(setup: &Setup, spec: RunSpec) -> Result<RunResult> {
    match spec.target {
        Target::Mosquitto => on_mosquitto(setup, spec).await,
        Target::Gateway(engine) => {
            let db =
                FreshDatabase::create(engine, &setup.scratch, &setup.postgres_url, spec.number)
                    .await?;
            let result = on_gateway(setup, spec, db.url()).await;
            db.remove_after(result).await
        }
    }
}

async fn on_mosquitto(setup: &Setup, spec: RunSpec) -> Result<RunResult> {
    let started = Instant::now();
    let bin = setup.mosquitto_bin.as_deref().ok_or_else(|| {
        LoadtestError::InvalidOption("a Mosquitto run without a mosquitto binary".into())
    })?;
    let dir = tempfile::Builder::new()
        .prefix(&format!("mosquitto_{}_", spec.number))
        .tempdir_in(&setup.scratch)
        .map_err(|e| LoadtestError::io("create Mosquitto's directory", e))?;
    let broker = Mosquitto::start(bin, dir.path()).await?;
    // On error `broker` is dropped, which kills the process.
    let measured = drive(setup, spec, broker.addr.port(), broker.pid()).await?;
    broker.stop().await?;
    let _ = dir.close();
    if setup.cancel.is_cancelled() {
        return Err(LoadtestError::Interrupted);
    }
    Ok(measured.finish(setup, spec, None, None, None, started.elapsed()))
}

async fn on_gateway(setup: &Setup, spec: RunSpec, url: &str) -> Result<RunResult> {
    let started = Instant::now();
    gateway::import(&setup.gateway_bin, &setup.scratch, &setup.fleet_file, url).await?;
    if setup.cancel.is_cancelled() {
        return Err(LoadtestError::Interrupted);
    }
    let mut serve_args = vec![
        "--mqtt-connects-per-second".to_string(),
        GATEWAY_CONNECTS_PER_SECOND.to_string(),
    ];
    if setup.insecure {
        serve_args.push(crate::run::INSECURE_SERVE_FLAG.to_string());
    }
    let gw = Gateway::start(&setup.gateway_bin, &setup.scratch, url, &serve_args).await?;
    // On error `gw` is dropped, which kills the process.
    let measured = drive(setup, spec, gw.listeners.mqtt.port(), gw.pid()).await?;
    let (_, metrics) = http::get(gw.listeners.http, "/metrics").await?;
    let log = gw.stop().await?;
    if setup.cancel.is_cancelled() {
        return Err(LoadtestError::Interrupted);
    }
    let db_check = check::run(url, &measured.report.acknowledged, "bridge").await?;
    let mean_batch = prom::histogram_mean(&metrics, BATCH_SIZE_METRIC);
    Ok(measured.finish(
        setup,
        spec,
        Some(db_check),
        Some(log),
        mean_batch,
        started.elapsed(),
    ))
}

/// What [`drive`] measured before the broker is stopped.
struct Measured {
    speedup: f64,
    report: RunReport,
    /// Reports generated in the steady window.
    created_in_window: u64,
    connected_at_window: u64,
    server: procfs::Usage,
    server_cpu: Duration,
    sim_cpu: Duration,
}

/// Runs the simulated bridges against the broker on `port` (process
/// `pid`), printing progress, and takes the counters at the steady
/// window's edges.
async fn drive(setup: &Setup, spec: RunSpec, port: u16, pid: u32) -> Result<Measured> {
    let locks = setup.fleet.locks.len();
    let speedup = workload::speedup(spec.rate, locks, setup.visits_per_hour).ok_or_else(|| {
        LoadtestError::InvalidOption(format!("no speed-up gives {} reports/s", spec.rate))
    })?;
    let pid = pid.to_string();
    let server_before = procfs::read(&pid, setup.clock_ticks)?;
    let sim_before = procfs::read("self", setup.clock_ticks)?;
    let config = SimConfig {
        gateway: "127.0.0.1".into(),
        mqtt_port: port,
        speedup,
        duration: Some(setup.duration),
        drain_timeout: setup.drain_timeout,
        seed: setup.seed,
        progress: None,
        cancel: setup.cancel.child_token(),
        state: None,
        security: !setup.insecure,
        visits_per_hour: Some(setup.visits_per_hour),
        mqtt_acks: spec.target.acks(),
        // Open loop: each lock on its own schedule, whatever the answers say.
        follow_server_schedule: false,
        ..SimConfig::default()
    };
    let handle = device_sim::run::start(config, setup.fleet.clone()).await?;
    let stats = handle.stats().clone();
    // The simulator's clock, which the ledger's times count from.
    let begun = tokio::time::Instant::now() - handle.snapshot().elapsed;
    let window = Window::steady(setup.duration, setup.warmup_share);
    let finish = handle.finish();
    tokio::pin!(finish);
    let mut progress = tokio::time::interval_at(begun + setup.progress_every, setup.progress_every);
    let at_start = tokio::time::sleep_until(begun + window.start);
    let at_end = tokio::time::sleep_until(begun + window.end);
    tokio::pin!(at_start, at_end);
    let (mut created_start, mut created_end, mut connected) = (None, None, 0);
    let (mut last_acked, mut last_created) = (0, 0);
    let bridges = setup.fleet.bridges.len();
    let report = loop {
        tokio::select! {
            r = &mut finish => break r?,
            _ = &mut at_start, if created_start.is_none() => {
                let s = stats.snapshot(begun.elapsed());
                created_start = Some(s.created);
                connected = s.mqtt_connected;
            }
            _ = &mut at_end, if created_end.is_none() => {
                created_end = Some(stats.snapshot(begun.elapsed()).created);
            }
            _ = progress.tick() => {
                let s = stats.snapshot(begun.elapsed());
                let every = setup.progress_every.as_secs_f64();
                let acked_per_s = (s.acked - last_acked) as f64 / every;
                let offered_per_s = (s.created - last_created) as f64 / every;
                (last_acked, last_created) = (s.acked, s.created);
                let phase = if s.elapsed > setup.duration { "draining" } else { "running" };
                eprintln!(
                    "    [{:>5.1}s] {phase}: offered {offered_per_s:.0}/s acked {acked_per_s:.0}/s (total {}) connected {}/{bridges} in-flight {} outstanding {} resent {} errors {}",
                    s.elapsed.as_secs_f64(), s.acked, s.mqtt_connected, s.in_flight, s.outstanding,
                    s.retransmitted, s.errors.values().sum::<u64>(),
                );
            }
        }
    };
    let server_after = procfs::read(&pid, setup.clock_ticks)?;
    let sim_after = procfs::read("self", setup.clock_ticks)?;
    // Generation stops at the window's end: a run that drained at once
    // may finish before its timer fired, with its final count.
    let created_end = created_end.unwrap_or(report.stats.created);
    let created_in_window = match created_start {
        Some(a) => created_end.saturating_sub(a),
        // Cancelled before the window began.
        None => 0,
    };
    Ok(Measured {
        speedup,
        report,
        created_in_window,
        connected_at_window: connected,
        server: server_after,
        server_cpu: server_after.cpu.saturating_sub(server_before.cpu),
        sim_cpu: sim_after.cpu.saturating_sub(sim_before.cpu),
    })
}

impl Measured {
    fn finish(
        self,
        setup: &Setup,
        spec: RunSpec,
        db_check: Option<DbCheck>,
        gateway_log: Option<LogSummary>,
        mean_batch: Option<f64>,
        wall: Duration,
    ) -> RunResult {
        let window = Window::steady(setup.duration, setup.warmup_share);
        let r = &self.report;
        let acked = |kind: Option<UplinkKind>| {
            r.acknowledged
                .iter()
                .filter(move |a| kind.is_none_or(|k| a.kind == k))
                .map(|a| a.acked_after)
        };
        let window_s = window.len().as_secs_f64();
        RunResult {
            spec,
            speedup: self.speedup,
            offered_per_s: if window_s > 0.0 {
                self.created_in_window as f64 / window_s
            } else {
                0.0
            },
            acked_per_s: window.rate(acked(None)),
            acked_heartbeats_per_s: window.rate(acked(Some(UplinkKind::Heartbeat))),
            acked_logs_per_s: window.rate(acked(Some(UplinkKind::ActivityLog))),
            pubacked_per_s: window.rate(r.pubacked.iter().map(|p| p.pubacked_after)),
            ack_latency: Latency::of(
                r.acknowledged
                    .iter()
                    .filter(|a| window.contains(a.due_after))
                    .map(|a| a.acked_after.saturating_sub(a.due_after)),
            ),
            puback_latency: Latency::of(
                r.pubacked
                    .iter()
                    .filter(|p| window.contains(p.due_after))
                    .map(|p| p.pubacked_after.saturating_sub(p.due_after)),
            ),
            acked_total: r.acknowledged.len() as u64,
            retransmitted: r.stats.retransmitted,
            gave_up: r.stats.gave_up,
            rejected: r.stats.rejected,
            abandoned: r.stats.abandoned,
            errors: r.stats.errors.clone(),
            unacknowledged: r.unacknowledged.len(),
            connected_at_window: self.connected_at_window,
            bridges: setup.fleet.bridges.len() as u64,
            server_cpu_s: self.server_cpu.as_secs_f64(),
            server_rss_mib: self.server.peak_rss_bytes as f64 / MIB,
            sim_cpu_s: self.sim_cpu.as_secs_f64(),
            mean_batch,
            db_check,
            gateway_log,
            wall,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn result(target: Target, rate: f64, acked: f64, p99: f64) -> RunResult {
        RunResult {
            spec: RunSpec {
                target,
                rate,
                number: 1,
            },
            speedup: 100.0,
            offered_per_s: rate,
            acked_per_s: acked,
            acked_heartbeats_per_s: acked / 2.0,
            acked_logs_per_s: acked / 2.0,
            pubacked_per_s: acked,
            ack_latency: Some(Latency {
                count: 100,
                p50: 1.0,
                p90: 2.0,
                p99,
                p999: p99 * 2.0,
                max: p99 * 3.0,
            }),
            puback_latency: None,
            acked_total: 1000,
            retransmitted: 0,
            gave_up: 0,
            rejected: 0,
            abandoned: 0,
            errors: BTreeMap::new(),
            unacknowledged: 0,
            connected_at_window: 10,
            bridges: 10,
            server_cpu_s: 1.0,
            server_rss_mib: 10.0,
            sim_cpu_s: 1.0,
            mean_batch: None,
            db_check: None,
            gateway_log: None,
            wall: Duration::from_secs(5),
        }
    }

    #[test]
    fn a_step_is_sustained_only_with_rate_latency_no_errors_and_a_clean_database() {
        let bound = Duration::from_millis(50);
        let ok = result(Target::Mosquitto, 1000.0, 960.0, 10.0);
        assert_eq!(ok.unsustained(bound), None);
        let slow = result(Target::Mosquitto, 1000.0, 940.0, 10.0);
        assert!(slow.unsustained(bound).unwrap().contains("acked 940/s"));
        let late = result(Target::Mosquitto, 1000.0, 1000.0, 51.0);
        assert!(late.unsustained(bound).unwrap().contains("p99 51.0 ms"));
        let mut failing = result(Target::Gateway(Engine::Sqlite), 1000.0, 1000.0, 1.0);
        failing.errors.insert("mqtt_connection".into(), 1);
        assert!(failing.unsustained(bound).unwrap().contains("1 errors"));
        failing.errors.clear();
        failing.unacknowledged = 3;
        assert!(failing
            .unsustained(bound)
            .unwrap()
            .contains("3 unacknowledged"));
        failing.unacknowledged = 0;
        failing.db_check = Some(DbCheck {
            acked_heartbeats: 1,
            missing_heartbeats: 1,
            ..DbCheck::default()
        });
        assert!(failing.unsustained(bound).unwrap().contains("database"));
        failing.db_check = None;
        failing.connected_at_window = 7;
        let why = failing.unsustained(bound).unwrap();
        assert!(
            why.contains("7 of 10 bridges connected") && why.contains("--duration"),
            "{why}"
        );
        failing.ack_latency = None;
        assert!(failing.unsustained(bound).is_some());
    }

    #[test]
    fn latency_quantiles_come_from_an_hdr_histogram_in_milliseconds() {
        let l = Latency::of((1..=1000).map(Duration::from_micros).map(|d| d * 100)).unwrap();
        assert_eq!(l.count, 1000);
        assert!((l.p50 - 50.0).abs() < 0.1, "{l:?}");
        assert!((l.p99 - 99.0).abs() < 0.1, "{l:?}");
        assert!((l.max - 100.0).abs() < 0.1, "{l:?}");
        assert_eq!(Latency::of([]), None);
    }
}
