//! The JSON report (`--json PATH`): everything the Markdown shows, and each
//! run's time line, for a program to read. [`IngestJson`] is the document
//! of `ingest`; [`write`] writes any serde document, so another mix writes
//! its own with the same [`crate::timeline::TimeLine`]s and
//! [`crate::machine::Machine`]. The fields are described in README.md;
//! [`SCHEMA_VERSION`] changes whenever one changes meaning or goes away.

use crate::cli::Settings;
use crate::database::Engine;
use crate::error::{LoadtestError, Result};
use crate::machine::Machine;
use crate::report::Context;
use crate::run::{RunResult, Variant};
use crate::stats::{median, ratio, Spread};
use crate::timeline::TimeLine;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// The version of the document's shape. Adding a field keeps it; renaming,
/// removing or changing the meaning of one bumps it.
pub const SCHEMA_VERSION: u32 = 1;

/// `loadtest ingest --json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IngestJson {
    pub schema_version: u32,
    /// `"ingest"`.
    pub mix: String,
    /// The exact command line.
    pub command: String,
    pub settings: IngestSettings,
    pub machine: Machine,
    pub postgres_version: Option<String>,
    /// Every run, in the order run.
    pub runs: Vec<JsonRun>,
    /// Medians per engine, configuration and offered rate: the summary table.
    pub summary: Vec<JsonGroup>,
    /// Each configuration against the baseline per engine (none with
    /// `--find-max`).
    pub ratios: Vec<JsonRatio>,
    /// With `--find-max`: the highest offered rate each configuration sustained.
    pub highest_sustained: Vec<JsonSustained>,
}

/// The options of the invocation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IngestSettings {
    pub engines: Vec<String>,
    pub runs_per_config: u32,
    /// Offered heartbeats per second by engine (the first step with
    /// `--find-max`).
    pub offered_heartbeats_per_s: BTreeMap<String, f64>,
    pub locks: usize,
    pub duration_s: f64,
    pub warmup_share: f64,
    pub drain_timeout_s: f64,
    pub sockets: usize,
    pub seed: u64,
    /// `--find-max-factor` when stepping, `None` for fixed-rate runs.
    pub find_max_factor: Option<f64>,
    /// Requests were not OSCORE-protected (`--insecure`).
    pub insecure: bool,
}

/// One run's figures, as in the report's table of every run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JsonRun {
    /// 1-based, in the order run.
    pub number: u32,
    pub engine: String,
    /// The configuration's id (`baseline`, `candidate`) and its label.
    pub config: String,
    pub config_label: String,
    pub offered_heartbeats_per_s: f64,
    pub speedup: f64,
    pub acked_heartbeats_per_s: f64,
    pub acked_logs_per_s: f64,
    pub acked_heartbeats: u64,
    pub acked_logs: u64,
    /// Heartbeat round trip over the whole run, ms.
    pub latency_ms: Option<JsonQuantiles>,
    /// Heartbeat exchanges answered per second with any code (the headline
    /// of a libcoap run, which acknowledges nothing).
    pub answered_heartbeats_per_s: f64,
    pub answered_logs_per_s: f64,
    /// Round trip of heartbeat exchanges answered with any code, ms.
    pub answer_latency_ms: Option<JsonQuantiles>,
    /// What the run served per second: acknowledged heartbeats, or for
    /// libcoap answered ones.
    pub served_heartbeats_per_s: f64,
    pub retransmitted: u64,
    pub gave_up: u64,
    pub rejected: u64,
    pub abandoned: u64,
    pub unacknowledged: usize,
    /// Simulator errors by code.
    pub errors: BTreeMap<String, u64>,
    pub gateway_cpu_s: f64,
    pub gateway_peak_rss_mib: f64,
    pub sim_cpu_s: f64,
    pub mean_batch: Option<f64>,
    pub mean_commit_ms: Option<f64>,
    pub committed_heartbeats: Option<f64>,
    pub gateway_log_warnings: u64,
    pub gateway_log_errors: u64,
    pub wall_s: f64,
    /// At least 95 % of the offered heartbeats acknowledged, nothing left.
    pub sustained: bool,
    /// Second by second.
    pub timeline: TimeLine,
    /// Every acknowledged report's rows in the database after the run
    /// (absent for libcoap).
    pub db_check: Option<crate::dbcheck::DbCheck>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct JsonQuantiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: Option<f64>,
}

/// Medians of the runs of one engine, configuration and offered rate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JsonGroup {
    pub engine: String,
    pub config: String,
    pub offered_heartbeats_per_s: f64,
    pub runs: usize,
    /// Median, min and max of the headline figure.
    pub acked_heartbeats_per_s: JsonSpread,
    pub acked_logs_per_s: Option<f64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub gateway_cpu_s: Option<f64>,
    pub gateway_peak_rss_mib: Option<f64>,
    pub mean_batch: Option<f64>,
    pub sim_cpu_s: Option<f64>,
    pub errors: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct JsonSpread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// `config` / `baseline` of acknowledged heartbeats per second on one engine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JsonRatio {
    pub engine: String,
    pub config: String,
    pub baseline: String,
    /// Of the medians.
    pub ratio: f64,
    /// Range over back-to-back pairs (run i of each).
    pub pairs_min: Option<f64>,
    pub pairs_max: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JsonSustained {
    pub engine: String,
    pub config: String,
    /// `None`: none of the rates tried.
    pub offered_heartbeats_per_s: Option<f64>,
    pub acked_heartbeats_per_s: Option<f64>,
}

/// The configuration's id in the document: its variant's name.
fn config_id(v: Variant) -> String {
    format!("{v:?}").to_lowercase()
}

impl IngestJson {
    /// The document of an `ingest` invocation.
    pub fn new(settings: &Settings, ctx: &Context, results: &[RunResult]) -> IngestJson {
        IngestJson {
            schema_version: SCHEMA_VERSION,
            mix: "ingest".into(),
            command: ctx.command_line.clone(),
            settings: IngestSettings {
                engines: settings.engines.iter().map(|e| e.to_string()).collect(),
                runs_per_config: settings.runs,
                offered_heartbeats_per_s: settings
                    .engines
                    .iter()
                    .map(|&e| {
                        let rate = match settings.find_max {
                            Some(_) => settings.find_max_start(),
                            None => settings.rate_for(e),
                        };
                        (e.to_string(), rate)
                    })
                    .collect(),
                locks: ctx.locks,
                duration_s: ctx.duration.as_secs_f64(),
                warmup_share: ctx.warmup_share,
                drain_timeout_s: settings.drain_timeout.as_secs_f64(),
                sockets: settings.sockets,
                seed: settings.seed,
                find_max_factor: settings.find_max,
                insecure: ctx.insecure,
            },
            machine: ctx.machine.clone(),
            postgres_version: ctx.postgres_version.clone(),
            runs: results.iter().enumerate().map(|(i, r)| run(i, r)).collect(),
            summary: summary(results),
            ratios: if ctx.find_max {
                Vec::new()
            } else {
                ratios(results)
            },
            highest_sustained: if ctx.find_max {
                highest_sustained(results)
            } else {
                Vec::new()
            },
        }
    }
}

fn run(i: usize, r: &RunResult) -> JsonRun {
    JsonRun {
        number: i as u32 + 1,
        engine: r.spec.engine.to_string(),
        config: config_id(r.spec.variant),
        config_label: r.spec.variant.label().to_string(),
        offered_heartbeats_per_s: r.spec.rate,
        speedup: r.speedup,
        acked_heartbeats_per_s: r.acked_heartbeats_per_s,
        acked_logs_per_s: r.acked_logs_per_s,
        acked_heartbeats: r.acked_heartbeats,
        acked_logs: r.acked_logs,
        latency_ms: r.latency_ms.map(|q| JsonQuantiles {
            p50: q.p50,
            p95: q.p95,
            p99: q.p99,
            p999: r.latency_p999_ms,
        }),
        answered_heartbeats_per_s: r.answered_heartbeats_per_s,
        answered_logs_per_s: r.answered_logs_per_s,
        answer_latency_ms: r.answer_latency_ms.map(|q| JsonQuantiles {
            p50: q.p50,
            p95: q.p95,
            p99: q.p99,
            p999: None,
        }),
        served_heartbeats_per_s: r.served_heartbeats_per_s(),
        retransmitted: r.retransmitted,
        gave_up: r.gave_up,
        rejected: r.rejected,
        abandoned: r.abandoned,
        unacknowledged: r.unacknowledged,
        errors: r.errors.clone(),
        gateway_cpu_s: r.gateway_cpu_s,
        gateway_peak_rss_mib: r.gateway_rss_mib,
        sim_cpu_s: r.sim_cpu_s,
        mean_batch: r.mean_batch,
        mean_commit_ms: r.mean_commit_ms,
        committed_heartbeats: r.committed_heartbeats,
        gateway_log_warnings: r.gateway_log.warnings,
        gateway_log_errors: r.gateway_log.errors,
        wall_s: r.wall.as_secs_f64(),
        sustained: r.sustained(),
        timeline: r.timeline.clone(),
        db_check: r.db_check,
    }
}

/// Engine, offered rate and configuration: what the summary groups by.
type GroupKey = (Engine, f64, Variant);

/// Runs grouped by [`GroupKey`], in the summary table's order.
fn groups(results: &[RunResult]) -> Vec<(GroupKey, Vec<&RunResult>)> {
    let mut out: Vec<(GroupKey, Vec<&RunResult>)> = Vec::new();
    for r in results {
        let key = (r.spec.engine, r.spec.rate, r.spec.variant);
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, runs)) => runs.push(r),
            None => out.push((key, vec![r])),
        }
    }
    out.sort_by(|(a, _), (b, _)| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(&b.2)));
    out
}

fn summary(results: &[RunResult]) -> Vec<JsonGroup> {
    groups(results)
        .into_iter()
        .filter_map(|((engine, rate, variant), runs)| {
            let med =
                |f: &dyn Fn(&RunResult) -> Option<f64>| median(runs.iter().filter_map(|r| f(r)));
            let acked = Spread::of(runs.iter().map(|r| r.served_heartbeats_per_s()))?;
            Some(JsonGroup {
                engine: engine.to_string(),
                config: config_id(variant),
                offered_heartbeats_per_s: rate,
                runs: runs.len(),
                acked_heartbeats_per_s: JsonSpread {
                    median: acked.median,
                    min: acked.min,
                    max: acked.max,
                },
                acked_logs_per_s: med(&|r| Some(r.acked_logs_per_s)),
                latency_p50_ms: med(&|r| r.latency_ms.map(|q| q.p50)),
                latency_p99_ms: med(&|r| r.latency_ms.map(|q| q.p99)),
                gateway_cpu_s: med(&|r| Some(r.gateway_cpu_s)),
                gateway_peak_rss_mib: med(&|r| Some(r.gateway_rss_mib)),
                mean_batch: med(&|r| r.mean_batch),
                sim_cpu_s: med(&|r| Some(r.sim_cpu_s)),
                errors: med(&|r| Some(r.error_total() as f64)),
            })
        })
        .collect()
}

/// Group commit against each other configuration (the baseline, libcoap's
/// raw ceiling), per engine, as the report's ratio lines: served heartbeats
/// per second (acknowledged; for libcoap answered).
fn ratios(results: &[RunResult]) -> Vec<JsonRatio> {
    let mut keys: Vec<(Engine, Variant)> = results
        .iter()
        .map(|r| (r.spec.engine, r.spec.variant))
        .filter(|(_, v)| *v != Variant::Candidate)
        .collect();
    keys.sort();
    keys.dedup();
    let of = |engine: Engine, v: Variant| -> Vec<f64> {
        results
            .iter()
            .filter(|r| r.spec.engine == engine && r.spec.variant == v)
            .map(|r| r.served_heartbeats_per_s())
            .collect()
    };
    keys.into_iter()
        .filter_map(|(engine, baseline)| {
            let variant = Variant::Candidate;
            let (base, other) = (of(engine, baseline), of(engine, variant));
            let r = ratio(median(other.clone())?, median(base.clone())?)?;
            // Runs were interleaved: baseline i and the other i ran back to back.
            let pairs = Spread::of(base.iter().zip(&other).filter_map(|(b, c)| ratio(*c, *b)));
            Some(JsonRatio {
                engine: engine.to_string(),
                config: config_id(variant),
                baseline: config_id(baseline),
                ratio: r,
                pairs_min: pairs.map(|p| p.min),
                pairs_max: pairs.map(|p| p.max),
            })
        })
        .collect()
}

fn highest_sustained(results: &[RunResult]) -> Vec<JsonSustained> {
    let mut keys: Vec<(Engine, Variant)> = results
        .iter()
        .map(|r| (r.spec.engine, r.spec.variant))
        .collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|(engine, variant)| {
            let best = results
                .iter()
                .filter(|r| r.spec.engine == engine && r.spec.variant == variant && r.sustained())
                .max_by(|a, b| a.spec.rate.total_cmp(&b.spec.rate));
            JsonSustained {
                engine: engine.to_string(),
                config: config_id(variant),
                offered_heartbeats_per_s: best.map(|r| r.spec.rate),
                acked_heartbeats_per_s: best.map(|r| r.served_heartbeats_per_s()),
            }
        })
        .collect()
}

/// Writes `document` as pretty-printed JSON to `path`.
pub fn write(path: &Path, document: &impl Serialize) -> Result<()> {
    let what = || format!("write the JSON report {}", path.display());
    let file = std::fs::File::create(path).map_err(|e| LoadtestError::io(what(), e))?;
    let mut out = std::io::BufWriter::new(file);
    serde_json::to_writer_pretty(&mut out, document)
        .map_err(|e| LoadtestError::io(what(), e.into()))?;
    out.write_all(b"\n")
        .and_then(|()| out.flush())
        .map_err(|e| LoadtestError::io(what(), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use crate::gateway::LogSummary;
    use crate::run::{Quantiles, RunSpec};
    use crate::timeline::Point;
    use clap::Parser;
    use std::time::Duration;

    fn result(variant: Variant, acked: f64, number: u32) -> RunResult {
        RunResult {
            spec: RunSpec {
                engine: Engine::Sqlite,
                variant,
                rate: 1000.0,
                number,
                pending_jobs: false,
            },
            speedup: 72.0,
            acked_heartbeats_per_s: acked,
            acked_logs_per_s: acked / 2.0,
            acked_heartbeats: 100,
            acked_logs: 50,
            latency_ms: Some(Quantiles {
                p50: 1.5,
                p95: 2.5,
                p99: 4.0,
            }),
            answered_heartbeats_per_s: acked,
            answered_logs_per_s: acked / 2.0,
            answer_latency_ms: None,
            retransmitted: 3,
            gave_up: 0,
            rejected: 1,
            abandoned: 0,
            errors: BTreeMap::from([("5.03".to_string(), 1)]),
            unacknowledged: 0,
            gateway_cpu_s: 2.5,
            gateway_rss_mib: 48.0,
            sim_cpu_s: 1.25,
            driven: Duration::from_secs(10),
            mean_batch: (variant == Variant::Candidate).then_some(8.5),
            mean_commit_ms: Some(0.5),
            committed_heartbeats: Some(100.0),
            jobs_delivered: None,
            jobs_completed: None,
            latency_p999_ms: Some(9.5),
            gateway_log: LogSummary::default(),
            wall: Duration::from_secs(12),
            db_check: None,
            timeline: TimeLine {
                points: vec![Point {
                    t_s: 1.0,
                    interval_s: 1.0,
                    offered_per_s: 1500.0,
                    acked_heartbeats_per_s: acked,
                    latency_p50_ms: Some(1.5),
                    latency_p99_ms: Some(4.0),
                    gateway_cpu_percent: Some(25.0),
                    gateway_rss_mib: Some(40.0),
                    ..Point::default()
                }],
            },
        }
    }

    fn document(extra: &[&str]) -> IngestJson {
        let mut argv = vec!["loadtest", "ingest", "--runs", "2", "--rate", "1000"];
        argv.extend_from_slice(extra);
        let Command::Ingest(args) = Cli::try_parse_from(argv).unwrap().command else {
            panic!("parsed ingest");
        };
        let settings = args.validate().unwrap();
        let ctx = Context {
            command_line: "loadtest ingest --runs 2 --rate 1000".into(),
            machine: Machine {
                cores: 2,
                cpu_model: "AMD EPYC".into(),
                kernel: "6.1".into(),
                memory_gib: Some(8),
                date: None,
            },
            postgres_version: None,
            libcoap: None,
            locks: settings.locks,
            duration: settings.duration,
            warmup_share: settings.warmup_share,
            find_max: settings.find_max.is_some(),
            insecure: settings.insecure,
        };
        let results = [
            result(Variant::Baseline, 100.0, 1),
            result(Variant::Candidate, 400.0, 2),
            result(Variant::Baseline, 200.0, 3),
            result(Variant::Candidate, 500.0, 4),
        ];
        IngestJson::new(&settings, &ctx, &results)
    }

    #[test]
    fn the_document_has_every_run_the_medians_and_the_ratio() {
        let d = document(&[]);
        assert_eq!(d.schema_version, SCHEMA_VERSION);
        assert_eq!(d.runs.len(), 4);
        assert_eq!(d.runs[1].number, 2);
        assert_eq!(d.runs[1].config, "candidate");
        assert_eq!(d.runs[1].timeline.len(), 1);
        assert_eq!(d.settings.offered_heartbeats_per_s["sqlite"], 1000.0);
        assert_eq!(d.summary.len(), 2);
        let (base, cand) = (&d.summary[0], &d.summary[1]);
        assert_eq!((base.config.as_str(), base.runs), ("baseline", 2));
        assert_eq!(
            cand.acked_heartbeats_per_s,
            JsonSpread {
                median: 450.0,
                min: 400.0,
                max: 500.0
            }
        );
        assert_eq!(base.mean_batch, None);
        assert_eq!(d.ratios.len(), 1);
        let r = &d.ratios[0];
        assert_eq!(r.ratio, 3.0, "450 / 150");
        assert_eq!((r.pairs_min, r.pairs_max), (Some(2.5), Some(4.0)));
        assert!(d.highest_sustained.is_empty());
        // --find-max: the highest sustained rates instead of ratios.
        let f = document(&["--find-max"]);
        assert!(f.ratios.is_empty());
        assert_eq!(f.highest_sustained.len(), 2);
        assert_eq!(f.settings.find_max_factor, Some(1.25));
    }

    #[test]
    fn the_document_round_trips_and_names_its_schema_version() {
        let d = document(&[]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        write(&path, &d).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["schema_version"], 1);
        assert_eq!(value["mix"], "ingest");
        assert_eq!(value["machine"]["cores"], 2);
        assert_eq!(value["runs"][0]["errors"]["5.03"], 1);
        assert_eq!(value["runs"][0]["timeline"][0]["gateway_cpu_percent"], 25.0);
        assert_eq!(value["runs"][0]["latency_ms"]["p999"], 9.5);
        let back: IngestJson = serde_json::from_str(&text).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn an_unwritable_path_is_an_error_naming_it() {
        let err = write(Path::new("/nonexistent/dir/report.json"), &1).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/dir/report.json"),
            "{err}"
        );
    }
}
