//! `loadtest`: drives the device simulator against a real gateway process at
//! a target rate and reports throughput, latency percentiles and resource
//! use, beside a baseline measured in the same invocation.
//!
//! `loadtest ingest` measures acknowledged heartbeats per second. Each run
//! gets a fresh database (SQLite in a temporary directory, or a new
//! PostgreSQL database), imports a generated fleet of INB1 locks on CoAP
//! with 1 h heartbeats into it (their pairing secrets included), starts
//! `gateway serve` on ephemeral ports, and runs the simulator in this
//! process at the speed-up that offers the requested rate. Every request is
//! OSCORE-protected unless `--insecure` runs both sides without security. The baseline is the same gateway with group commit
//! disabled (`--commit-max-batch 1`); the ceiling is libcoap's
//! `coap-server` driven by the same simulator at the same rate (answers of
//! any code counted, no database; `--no-libcoap` skips it). The runs of the
//! three alternate so that drift on a shared machine hits all alike, and
//! the report gives the median of each figure and the ratios.
//!
//! Modules, in the order a run uses them:
//! * [`cli`]: options, defaults and their validation;
//! * [`workload`]: the heartbeat-heavy fleet and the speed-up for a rate;
//! * [`database`]: a fresh database per run, removed afterwards;
//! * [`gateway`]: the gateway process (import, serve, listen addresses from
//!   its log, `/readyz`, SIGTERM) and [`http`] for its endpoints;
//! * [`libcoap`]: libcoap's `coap-server` process, the raw CoAP baseline;
//! * [`run`]: one measured run; [`plan`]: their order (and `--find-max`);
//! * [`procfs`], [`prom`], [`stats`]: CPU and memory from `/proc`, the
//!   gateway's `/metrics`, and the arithmetic (steady window, medians);
//! * [`report`] and [`machine`]: the Markdown for BENCHMARKS.md;
//! * [`timeline`]: each run second by second; [`json`] (`--json`) and
//!   [`chart`] (`--chart`, a PNG): the files written beside the Markdown.
//!
//! `loadtest bridges` ([`bridges`]) measures MQTT bridge reports, beside a
//! private Mosquitto under the same simulated bridges in the same run.
//!
//! ## The default offered rate
//!
//! [`cli::default_rate`] is per engine, about 1.25 times the highest rate
//! group commit sustained on this 2-core machine with the simulator beside
//! the gateway, so the acked rate is the capacity of the configuration, not
//! an echo of the offered rate, without pushing it into the collapse seen
//! far beyond capacity: see the crate's README.md for the probes behind it.
//! `--find-max` gives the highest rate sustained instead.

pub mod bridges;
pub mod chart;
pub mod cli;
pub mod dashboard;
pub mod database;
pub mod dbcheck;
pub mod error;
pub mod gateway;
pub mod hbjobs;
pub mod http;
pub mod jobs;
pub mod json;
pub mod libcoap;
pub mod machine;
pub mod memory;
pub mod plan;
pub mod procfs;
pub mod prom;
pub mod report;
pub mod run;
pub mod stats;
pub mod timeline;
pub mod twofa;
pub mod wakeup;
pub mod workload;

use cli::IngestArgs;
use database::Engine;
use error::{LoadtestError, Result};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Runs `loadtest ingest` and returns the Markdown report. Progress goes to
/// stderr as it happens, and so do the paths of the JSON report and the
/// chart when `--json` and `--chart` ask for them. `cancel` ends the run in progress early (Ctrl-C);
/// the result is then [`LoadtestError::Interrupted`].
pub async fn ingest(
    args: &IngestArgs,
    command_line: String,
    cancel: CancellationToken,
) -> Result<String> {
    let settings = args.validate()?;
    if settings.chart.is_some() {
        // Before any run: a missing font found after an hour of runs would
        // lose the chart.
        chart::load_font(&settings.chart_font)?;
    }
    let gateway_bin = gateway::locate(settings.gateway_bin.as_deref())?;
    // Before anything else: a missing baseline fails before any run.
    let coap_server_bin = settings.libcoap.then(libcoap::locate).transpose()?;
    let libcoap_version = coap_server_bin.as_deref().and_then(libcoap::version);
    let scratch = tempfile::Builder::new()
        .prefix("loadtest_")
        .tempdir()
        .map_err(|e| LoadtestError::io("create a scratch directory", e))?;
    let fleet = workload::heartbeat_heavy_fleet(settings.locks, settings.seed)?;
    let fleet_file = scratch.path().join("fleet.csv");
    workload::write_fleet(&fleet, &fleet_file)?;
    // Checked first so that an unreachable server fails before any run.
    let postgres_version = if settings.engines.contains(&Engine::Postgres) {
        Some(database::postgres_version(&settings.postgres_url).await?)
    } else {
        None
    };
    let heartbeat = Duration::from_secs(workload::shortest_heartbeat().as_secs());
    eprintln!(
        "loadtest ingest: gateway {}, {} locks, {} s per run, warm-up {:.0} %, {}",
        gateway_bin.display(),
        settings.locks,
        settings.duration.as_secs_f64(),
        settings.warmup_share * 100.0,
        if settings.insecure {
            "insecure (gateway --insecure-dev, unprotected requests)"
        } else {
            "OSCORE-protected requests"
        },
    );
    if let Some(bin) = &coap_server_bin {
        eprintln!(
            "  raw CoAP baseline: {} (libcoap {}), same simulator and rate, no database",
            bin.display(),
            libcoap_version.as_deref().unwrap_or("version unknown"),
        );
    }
    for &engine in &settings.engines {
        let rate = match settings.find_max {
            Some(_) => settings.find_max_start(),
            None => settings.rate_for(engine),
        };
        let speedup = workload::speedup(rate, settings.locks, heartbeat).ok_or_else(|| {
            LoadtestError::InvalidOption(format!("no speed-up gives {rate} heartbeats/s"))
        })?;
        eprintln!(
            "  {engine}: offered {rate:.0} heartbeats/s{} (speed-up {speedup:.0}: each lock every {:.1} s)",
            if settings.find_max.is_some() { " at the first step" } else { "" },
            workload::real_heartbeat_period(heartbeat, speedup).as_secs_f64(),
        );
    }
    let setup = run::Setup {
        gateway_bin,
        coap_server_bin: coap_server_bin.clone(),
        scratch: scratch.path().to_path_buf(),
        fleet,
        fleet_file,
        postgres_url: settings.postgres_url.clone(),
        duration: settings.duration,
        warmup_share: settings.warmup_share,
        drain_timeout: settings.drain_timeout,
        sockets: settings.sockets,
        seed: settings.seed,
        clock_ticks: procfs::clock_ticks(),
        progress_every: settings.progress_every,
        insecure: settings.insecure,
        imported_sqlite: None,
        cancel,
    };
    let machine = machine::Machine::detect();
    let results = match settings.find_max {
        Some(factor) => {
            plan::find_max(
                &setup,
                &settings.engines,
                settings.find_max_start(),
                factor,
                settings.libcoap,
            )
            .await?
        }
        None => {
            let specs = plan::schedule(&settings.engines, settings.runs, settings.libcoap, |e| {
                settings.rate_for(e)
            });
            plan::fixed(&setup, &specs).await?
        }
    };
    let ctx = report::Context {
        command_line,
        machine,
        postgres_version,
        locks: settings.locks,
        duration: settings.duration,
        warmup_share: settings.warmup_share,
        find_max: settings.find_max.is_some(),
        insecure: settings.insecure,
        libcoap: coap_server_bin.map(|bin| report::LibcoapInfo {
            binary: bin.file_name().map_or_else(
                || bin.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            ),
            version: libcoap_version,
        }),
    };
    let _ = scratch.close();
    if let Some(path) = &settings.json {
        json::write(path, &json::IngestJson::new(&settings, &ctx, &results))?;
        eprintln!("JSON report: {}", path.display());
    }
    if let Some(path) = &settings.chart {
        chart::render(&ingest_chart(&ctx, &results), path, &settings.chart_font)?;
        eprintln!("chart: {}", path.display());
    }
    Ok(report::markdown(&ctx, &results))
}

/// The chart of an `ingest` invocation: acknowledged heartbeats per second
/// and heartbeat latency, one line per run.
fn ingest_chart(ctx: &report::Context, results: &[run::RunResult]) -> chart::Chart {
    let mut rates: Vec<f64> = results.iter().map(|r| r.spec.rate).collect();
    rates.sort_by(f64::total_cmp);
    rates.dedup();
    let mut engines: Vec<Engine> = results.iter().map(|r| r.spec.engine).collect();
    engines.sort();
    engines.dedup();
    let engines: Vec<&str> = engines.iter().map(|e| e.as_str()).collect();
    let offered = match rates.as_slice() {
        [rate] => format!(" · offered {rate:.0} heartbeats/s"),
        _ => String::new(),
    };
    let series = results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut label = format!("#{} {} · {}", i + 1, r.spec.engine, r.spec.variant);
            if rates.len() > 1 {
                label.push_str(&format!(" · {:.0}/s", r.spec.rate));
            }
            // libcoap acknowledges nothing: its line is what it answered.
            let libcoap = r.spec.variant == run::Variant::Libcoap;
            chart::Series::from_timeline(label, &r.timeline, move |p| {
                if libcoap {
                    p.answered_heartbeats_per_s
                } else {
                    p.acked_heartbeats_per_s
                }
            })
        })
        .collect();
    chart::Chart {
        title: format!(
            "loadtest ingest · {} · {} locks{offered} · {:.0} s per run · {}",
            engines.join(" + "),
            ctx.locks,
            ctx.duration.as_secs_f64(),
            if ctx.insecure {
                "unprotected"
            } else {
                "OSCORE"
            },
        ),
        acked_axis: "acknowledged heartbeats/s (libcoap: answered)".into(),
        latency_axis: "heartbeat round trip, ms".into(),
        series,
    }
}
