//! The Markdown report, ready to paste into BENCHMARKS.md: a summary table
//! (medians of repeated runs, with the range of the headline figure), the
//! raw CoAP ceiling (libcoap's coap-server) in a table of its own, the
//! ratios of group commit to the baseline and to libcoap per engine, every
//! run's raw figures, what the servers logged, the machine and the exact
//! command.

use crate::cli::SUSTAINED_SHARE;
use crate::database::Engine;
use crate::dbcheck::DbCheck;
use crate::gateway::LogSummary;
use crate::machine::Machine;
use crate::plan::MAX_FIND_MAX_STEPS;
use crate::run::{RunResult, Variant};
use crate::stats::{median, ratio, Spread};
use std::fmt::Write;
use std::time::Duration;

/// What the report says about the invocation besides the runs.
#[derive(Clone, Debug)]
pub struct Context {
    pub command_line: String,
    pub machine: Machine,
    pub postgres_version: Option<String>,
    pub locks: usize,
    pub duration: Duration,
    pub warmup_share: f64,
    pub find_max: bool,
    /// `--insecure`: requests were not OSCORE-protected.
    pub insecure: bool,
    /// The libcoap server measured, if any (not `--no-libcoap`).
    pub libcoap: Option<LibcoapInfo>,
}

/// Which libcoap server the libcoap runs used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LibcoapInfo {
    /// The binary's file name, e.g. `coap-server-notls`.
    pub binary: String,
    /// libcoap's version as the binary reports it, e.g. `4.3.1`.
    pub version: Option<String>,
}

impl LibcoapInfo {
    fn describe(&self) -> String {
        match &self.version {
            Some(v) => format!("`{}` (libcoap {v})", self.binary),
            None => format!("`{}`", self.binary),
        }
    }
}

/// Runs of one engine and configuration at one offered rate.
struct Group<'a> {
    engine: Engine,
    variant: Variant,
    rate: f64,
    runs: Vec<&'a RunResult>,
}

fn groups(results: &[RunResult]) -> Vec<Group<'_>> {
    let mut out: Vec<Group<'_>> = Vec::new();
    for r in results {
        let s = &r.spec;
        match out
            .iter_mut()
            .find(|g| g.engine == s.engine && g.variant == s.variant && g.rate == s.rate)
        {
            Some(g) => g.runs.push(r),
            None => out.push(Group {
                engine: s.engine,
                variant: s.variant,
                rate: s.rate,
                runs: vec![r],
            }),
        }
    }
    out.sort_by(|a, b| {
        a.engine
            .cmp(&b.engine)
            .then(a.rate.total_cmp(&b.rate))
            .then(a.variant.cmp(&b.variant))
    });
    out
}

fn med(runs: &[&RunResult], f: impl Fn(&RunResult) -> Option<f64>) -> Option<f64> {
    median(runs.iter().filter_map(|r| f(r)))
}

fn num(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.decimals$}"))
}

/// The whole report.
pub fn markdown(ctx: &Context, results: &[RunResult]) -> String {
    let mut out = String::new();
    let o = &mut out;
    let runs_per = groups(results)
        .iter()
        .map(|g| g.runs.len())
        .max()
        .unwrap_or(0);
    let _ = writeln!(
        o,
        "### Acknowledged heartbeats per second ({} locks on CoAP, {}, 1 h heartbeat, {:.0} s per run, first {:.0} % not counted{})\n",
        ctx.locks,
        if ctx.insecure {
            "unprotected (--insecure)"
        } else {
            "OSCORE-protected"
        },
        ctx.duration.as_secs_f64(),
        ctx.warmup_share * 100.0,
        if ctx.find_max { ", --find-max: one run per step".to_string() } else { format!(", median of {runs_per} runs") },
    );
    summary_table(o, results);
    libcoap_table(o, ctx, results);
    ratios(o, results, ctx.find_max);
    if ctx.find_max {
        highest_sustained(o, results);
    }
    runs_table(o, results);
    notes(o, ctx, results);
    machine(o, ctx);
    out
}

fn summary_table(o: &mut String, results: &[RunResult]) {
    let _ = writeln!(
        o,
        "| engine | config | offered hb/s | acked hb/s median (min–max) | acked logs/s | p50 / p99 ms | gateway CPU s | RSS MiB | mean batch | sim CPU s | errors |"
    );
    let _ = writeln!(o, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for g in groups(results)
        .into_iter()
        .filter(|g| g.variant != Variant::Libcoap)
    {
        let runs = &g.runs;
        let acked = Spread::of(runs.iter().map(|r| r.acked_heartbeats_per_s));
        let acked = acked.map_or_else(
            || "–".into(),
            |s| format!("**{:.0}** ({:.0}–{:.0})", s.median, s.min, s.max),
        );
        let _ = writeln!(
            o,
            "| {} | {} | {:.0} | {acked} | {} | {} / {} | {} | {} | {} | {} | {} |",
            g.engine,
            g.variant,
            g.rate,
            num(med(runs, |r| Some(r.acked_logs_per_s)), 0),
            num(med(runs, |r| r.latency_ms.map(|q| q.p50)), 1),
            num(med(runs, |r| r.latency_ms.map(|q| q.p99)), 1),
            num(med(runs, |r| Some(r.gateway_cpu_s)), 1),
            num(med(runs, |r| Some(r.gateway_rss_mib)), 0),
            num(med(runs, |r| r.mean_batch), 1),
            num(med(runs, |r| Some(r.sim_cpu_s)), 1),
            num(med(runs, |r| Some(r.error_total() as f64)), 0),
        );
    }
    o.push('\n');
}

/// The libcoap runs: answers of any code per second, round trip to any
/// answer, coap-server's CPU and memory, and the simulator's CPU (so a
/// reader can tell when the generator, on the same cores, was the limit).
fn libcoap_table(o: &mut String, ctx: &Context, results: &[RunResult]) {
    let gs: Vec<Group<'_>> = groups(results)
        .into_iter()
        .filter(|g| g.variant == Variant::Libcoap)
        .collect();
    if gs.is_empty() {
        return;
    }
    let server = ctx
        .libcoap
        .as_ref()
        .map_or_else(|| "`coap-server`".to_string(), LibcoapInfo::describe);
    let _ = writeln!(
        o,
        "Raw CoAP ceiling: libcoap's {server} driven by the same simulator, fleet and {} requests at the same offered rate, in the same rotation. No database: every answer counts, whatever its code (it answers with 4.xx).\n",
        if ctx.insecure { "unprotected" } else { "OSCORE-protected" },
    );
    let _ = writeln!(
        o,
        "| rotation of | offered hb/s | answered hb/s median (min–max) | answered logs/s | answer codes | p50 / p99 ms | coap-server CPU s | RSS MiB | sim CPU s | sim cores | unanswered |"
    );
    let _ = writeln!(o, "|---|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|");
    for g in gs {
        let runs = &g.runs;
        let answered = Spread::of(runs.iter().map(|r| r.answered_heartbeats_per_s)).map_or_else(
            || "–".into(),
            |s| format!("**{:.0}** ({:.0}–{:.0})", s.median, s.min, s.max),
        );
        let mut codes: Vec<&str> = runs
            .iter()
            .flat_map(|r| r.errors.keys().map(String::as_str))
            .collect();
        codes.sort_unstable();
        codes.dedup();
        let codes = if codes.is_empty() {
            "2.xx".to_string()
        } else {
            codes.join(", ")
        };
        let _ = writeln!(
            o,
            "| {} | {:.0} | {answered} | {} | {codes} | {} / {} | {} | {} | {} | {} | {} |",
            g.engine,
            g.rate,
            num(med(runs, |r| Some(r.answered_logs_per_s)), 0),
            num(med(runs, |r| r.answer_latency_ms.map(|q| q.p50)), 1),
            num(med(runs, |r| r.answer_latency_ms.map(|q| q.p99)), 1),
            num(med(runs, |r| Some(r.gateway_cpu_s)), 1),
            num(med(runs, |r| Some(r.gateway_rss_mib)), 1),
            num(med(runs, |r| Some(r.sim_cpu_s)), 1),
            num(med(runs, RunResult::sim_cores), 2),
            num(med(runs, |r| Some(r.unacknowledged as f64)), 0),
        );
    }
    o.push('\n');
}

/// Served heartbeats per second of `engine`'s `variant` runs, in the order
/// run (acknowledged by the gateway, answered by libcoap).
fn served(results: &[RunResult], engine: Engine, variant: Variant) -> Vec<f64> {
    results
        .iter()
        .filter(|r| r.spec.engine == engine && r.spec.variant == variant)
        .map(RunResult::served_heartbeats_per_s)
        .collect()
}

fn ratios(o: &mut String, results: &[RunResult], find_max: bool) {
    if find_max {
        return;
    }
    let engines = engines_in_order(results);
    for engine in engines {
        let base = served(results, engine, Variant::Baseline);
        let cand = served(results, engine, Variant::Candidate);
        let lib = served(results, engine, Variant::Libcoap);
        let Some(c) = median(cand.clone()) else {
            continue;
        };
        if let Some(r) = median(base.clone()).and_then(|b| ratio(c, b)) {
            // Runs were interleaved: baseline i and candidate i ran back to back.
            let pairs = Spread::of(base.iter().zip(&cand).filter_map(|(b, c)| ratio(*c, *b)));
            let pairs = pairs.map_or_else(String::new, |p| {
                format!(" (back-to-back pairs: {:.2}×–{:.2}×)", p.min, p.max)
            });
            let _ = writeln!(
                o,
                "**{engine}: group commit / baseline = {r:.2}×** acknowledged heartbeats per second (medians){pairs}.  "
            );
        }
        let Some(l) = median(lib.clone()) else {
            continue;
        };
        let Some(r) = ratio(c, l) else { continue };
        let pairs = Spread::of(cand.iter().zip(&lib).filter_map(|(c, l)| ratio(*c, *l)));
        let pairs = pairs.map_or_else(String::new, |p| {
            format!(" (same rotation: {:.2}×–{:.2}×)", p.min, p.max)
        });
        let rate = results
            .iter()
            .find(|x| x.spec.engine == engine && x.spec.variant == Variant::Libcoap)
            .map_or(0.0, |x| x.spec.rate);
        let below_ceiling = if l >= SUSTAINED_SHARE * rate {
            format!(
                " libcoap answered {:.0} % of the offered rate, so its ceiling is higher and this overstates the ratio to it; `--find-max` measures the ceiling.",
                100.0 * l / rate
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            o,
            "**{engine}: group commit / libcoap raw = {r:.2}×** acknowledged heartbeats per second against heartbeats libcoap answered at the same offered rate (medians){pairs}.{below_ceiling}  "
        );
    }
    o.push('\n');
}

/// The sustained run of the highest offered rate among `runs`.
fn best<'a>(runs: impl Iterator<Item = &'a RunResult>) -> Option<&'a RunResult> {
    runs.filter(|r| r.sustained())
        .max_by(|a, b| a.spec.rate.total_cmp(&b.spec.rate))
}

fn highest_sustained(o: &mut String, results: &[RunResult]) {
    let _ = writeln!(
        o,
        "Highest offered rate sustained (≥ 95 % acknowledged in the steady window; libcoap: answered):\n"
    );
    let mut keys: Vec<(Engine, Variant)> = results
        .iter()
        .filter(|r| r.spec.variant != Variant::Libcoap)
        .map(|r| (r.spec.engine, r.spec.variant))
        .collect();
    keys.sort();
    keys.dedup();
    for (engine, variant) in keys {
        let best = best(
            results
                .iter()
                .filter(|r| r.spec.engine == engine && r.spec.variant == variant),
        );
        let text = best.map_or_else(
            || "none of the rates tried".to_string(),
            |r| {
                format!(
                    "{:.0} heartbeats/s (acked {:.0}/s)",
                    r.spec.rate, r.acked_heartbeats_per_s
                )
            },
        );
        let _ = writeln!(o, "- {engine}, {variant}: {text}");
    }
    // libcoap steps once, whatever the engines: one ceiling for all.
    let libcoap: Vec<&RunResult> = results
        .iter()
        .filter(|r| r.spec.variant == Variant::Libcoap)
        .collect();
    let ceiling = best(libcoap.iter().copied());
    if !libcoap.is_empty() {
        let text = ceiling.map_or_else(
            || "none of the rates tried".to_string(),
            |r| {
                let never_failed = libcoap.iter().all(|x| x.sustained());
                format!(
                    "{:.0} heartbeats/s (answered {:.0}/s; simulator at {} cores){}",
                    r.spec.rate,
                    r.answered_heartbeats_per_s,
                    num(r.sim_cores(), 2),
                    if never_failed {
                        format!(
                            ". Every step tried was sustained (at most {MAX_FIND_MAX_STEPS}): the ceiling is higher than this"
                        )
                    } else {
                        String::new()
                    }
                )
            },
        );
        let _ = writeln!(o, "- {}: {text}", Variant::Libcoap);
    }
    o.push('\n');
    let Some(ceiling) = ceiling else { return };
    let engines = engines_in_order(results);
    for engine in engines {
        let cand = best(
            results
                .iter()
                .filter(|r| r.spec.engine == engine && r.spec.variant == Variant::Candidate),
        );
        let Some(c) = cand else { continue };
        let Some(r) = ratio(c.spec.rate, ceiling.spec.rate) else {
            continue;
        };
        let _ = writeln!(
            o,
            "**{engine}: group commit / libcoap raw = {r:.2}×** (highest sustained offered rates: {:.0} / {:.0} heartbeats/s).  ",
            c.spec.rate, ceiling.spec.rate
        );
    }
    o.push('\n');
}

/// Each engine once, in the order of its first run. (Not `dedup`: a
/// `--find-max` invocation's libcoap steps, under the first engine, run on
/// after the second engine's.)
fn engines_in_order(results: &[RunResult]) -> Vec<Engine> {
    let mut engines = Vec::new();
    for r in results {
        if !engines.contains(&r.spec.engine) {
            engines.push(r.spec.engine);
        }
    }
    engines
}

fn runs_table(o: &mut String, results: &[RunResult]) {
    let _ = writeln!(
        o,
        "<details><summary>Every run, in the order run</summary>\n"
    );
    let _ = writeln!(
        o,
        "| # | engine | config | offered hb/s | speed-up | acked hb/s | answered hb/s | acked logs/s | p50 / p95 / p99 ms | retx | gave up | rejected | abandoned | unacked | gateway CPU s | sim CPU s | RSS MiB | mean batch | mean commit ms | committed hb (gateway) / acked hb | database check |"
    );
    let _ = writeln!(
        o,
        "|--:|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"
    );
    for (i, r) in results.iter().enumerate() {
        // libcoap acknowledges nothing: its round trip is to any answer.
        let lat = match r.spec.variant {
            Variant::Libcoap => r.answer_latency_ms,
            Variant::Baseline | Variant::Candidate => r.latency_ms,
        };
        let lat = lat.map_or_else(
            || "–".into(),
            |q| format!("{:.1} / {:.1} / {:.1}", q.p50, q.p95, q.p99),
        );
        let _ = writeln!(
            o,
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {lat} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.0} | {} | {} | {} / {} | {} |",
            i + 1,
            r.spec.engine,
            r.spec.variant,
            r.spec.rate,
            r.speedup,
            r.acked_heartbeats_per_s,
            r.answered_heartbeats_per_s,
            r.acked_logs_per_s,
            r.retransmitted,
            r.gave_up,
            r.rejected,
            r.abandoned,
            r.unacknowledged,
            r.gateway_cpu_s,
            r.sim_cpu_s,
            r.gateway_rss_mib,
            num(r.mean_batch, 1),
            num(r.mean_commit_ms, 2),
            num(r.committed_heartbeats, 0),
            r.acked_heartbeats,
            db_check_cell(r.db_check.as_ref()),
        );
    }
    let _ = writeln!(o, "\n</details>\n");
}

/// A run's database check: the acknowledged heartbeats and events found,
/// or what is missing.
pub fn db_check_cell(check: Option<&DbCheck>) -> String {
    match check {
        None => "–".into(),
        Some(c) if c.passed() => format!(
            "passed: {} + {} of {} + {}",
            c.acked_heartbeats - c.missing_heartbeats,
            c.acked_events - c.missing_events,
            c.acked_heartbeats,
            c.acked_events
        ),
        Some(c) => format!(
            "**FAILED**: {} heartbeats, {} events missing, {} of another transport",
            c.missing_heartbeats, c.missing_events, c.wrong_transport
        ),
    }
}

fn notes(o: &mut String, ctx: &Context, results: &[RunResult]) {
    let all = results;
    let (libcoap, results): (Vec<&RunResult>, Vec<&RunResult>) =
        all.iter().partition(|r| r.spec.variant == Variant::Libcoap);
    let hb: u64 = results.iter().map(|r| r.acked_heartbeats).sum();
    let logs: u64 = results.iter().map(|r| r.acked_logs).sum();
    let _ = writeln!(o, "Notes:\n");
    let _ = writeln!(
        o,
        "- Offered and acked rates count heartbeats only. Each heartbeat also uploads the activity logged since the previous one, so the gateway stored {:.2} log batches per heartbeat as well.",
        if hb > 0 { logs as f64 / hb as f64 } else { 0.0 }
    );
    let _ = writeln!(o, "- Latency is the simulated lock's round trip from a heartbeat's first transmission to its acknowledgement (retransmission waits included), over the whole run. CPU is from `/proc/PID/stat` between the gateway being ready and just before SIGTERM; RSS is its VmHWM. Sim CPU is the load generator (this process), on the same cores.");
    if !libcoap.is_empty() {
        let server = ctx
            .libcoap
            .as_ref()
            .map_or_else(|| "`coap-server`".to_string(), LibcoapInfo::describe);
        let _ = writeln!(o, "- libcoap rows: {server} on a loopback port, started and stopped like the gateway (SIGTERM, exit 0). It has no OSCORE context and no `/hb` resource, so it answers each request at once with a 4.xx (4.02 Bad Option for the OSCORE option; 4.04 without security), and the simulated locks count that answer as a round trip, settle the report and keep to their schedule: its rate is \"answered\", not \"acknowledged\", and its latency (in every table) is to any answer. No database and no `/metrics` (no mean batch, no commit check). Its CPU and RSS are coap-server's, from `/proc` as for the gateway. At high offered rates the simulator, on the same cores, may be the limit rather than coap-server: sim cores near the machine's core count (less coap-server's share) say so.");
        let (warnings, errors) = libcoap.iter().fold((0, 0), |(w, e), r| {
            (w + r.gateway_log.warnings, e + r.gateway_log.errors)
        });
        let _ = writeln!(
            o,
            "- coap-server logged {warnings} WARN and {errors} ERR (or worse) lines over all its runs."
        );
    }
    let errors: Vec<String> = {
        let mut all = std::collections::BTreeMap::<&str, u64>::new();
        for r in &results {
            for (k, v) in &r.errors {
                *all.entry(k).or_default() += v;
            }
        }
        all.iter().map(|(k, v)| format!("{k}: {v}")).collect()
    };
    if !errors.is_empty() {
        let _ = writeln!(
            o,
            "- Simulator errors by code, all gateway runs: {}.",
            errors.join(", ")
        );
    }
    let short: Vec<String> = all
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            r.committed_heartbeats
                .is_some_and(|c| c < r.acked_heartbeats as f64)
        })
        .map(|(i, _)| format!("#{}", i + 1))
        .collect();
    let failed: Vec<String> = all
        .iter()
        .enumerate()
        .filter(|(_, r)| r.db_check.is_some_and(|c| !c.passed()))
        .map(|(i, _)| format!("#{}", i + 1))
        .collect();
    if failed.is_empty() {
        let _ = writeln!(o, "- Database check: after every gateway run, with the gateway stopped, every heartbeat the simulator saw acknowledged is a row of `heartbeats` and every event of every acknowledged log batch a row of `activity_events`, with transport `coap` (the primary keys make a second copy impossible); the runs table gives the counts.");
    } else {
        let _ = writeln!(o, "- **The database check failed** in runs {}: an acknowledged report is not in the database.", failed.join(", "));
    }
    if !short.is_empty() {
        let _ = writeln!(o, "- **The gateway counted fewer committed heartbeats than the simulator saw acknowledged** in runs {}: an acknowledgement without a commit?", short.join(", "));
    }
    let backlog: Vec<String> = all
        .iter()
        .enumerate()
        .filter(|(_, r)| r.unacknowledged > 0)
        .map(|(i, r)| format!("#{} ({})", i + 1, r.unacknowledged))
        .collect();
    if !backlog.is_empty() {
        let _ = writeln!(o, "- Reports still in the simulated locks' outboxes at the end (offered above capacity; a lock keeps them and retries, 5.03 after its Max-Age): runs {}.", backlog.join(", "));
    }
    let logs: Vec<&LogSummary> = results.iter().map(|r| &r.gateway_log).collect();
    gateway_log_notes(o, &logs);
    o.push('\n');
}

/// The notes' line on what the gateway logged over the runs of `logs`, with
/// its first WARN/ERROR lines (coap-server's have a line of their own).
pub fn gateway_log_notes(o: &mut String, logs: &[&LogSummary]) {
    let warnings: u64 = logs.iter().map(|l| l.warnings).sum();
    let errors: u64 = logs.iter().map(|l| l.errors).sum();
    let _ = writeln!(
        o,
        "- The gateway logged {warnings} WARN and {errors} ERROR lines over all runs."
    );
    let mut samples: Vec<&String> = logs.iter().flat_map(|l| &l.samples).collect();
    samples.dedup();
    if !samples.is_empty() {
        let _ = writeln!(o, "\n```");
        for s in samples.iter().take(8) {
            let _ = writeln!(o, "{s}");
        }
        let _ = writeln!(o, "```");
    }
}

fn machine(o: &mut String, ctx: &Context) {
    let m = &ctx.machine;
    let _ = writeln!(
        o,
        "Machine: {} cores ({}), {} GiB, Linux {}{}{}; simulator and gateway on the same machine.  ",
        m.cores,
        m.cpu_model,
        m.memory_gib.map_or_else(|| "?".into(), |g| g.to_string()),
        m.kernel,
        ctx.postgres_version
            .as_ref()
            .map_or_else(String::new, |v| format!(", PostgreSQL {v}")),
        m.date.as_ref().map_or_else(String::new, |d| format!(", {d}")),
    );
    let _ = writeln!(o, "Command: `{}`", ctx.command_line);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{Quantiles, RunSpec};
    use std::collections::BTreeMap;

    fn result(engine: Engine, variant: Variant, acked: f64, number: u32) -> RunResult {
        RunResult {
            spec: RunSpec {
                engine,
                variant,
                rate: 1000.0,
                number,
                pending_jobs: false,
            },
            speedup: 180.0,
            acked_heartbeats_per_s: acked,
            acked_logs_per_s: acked / 2.0,
            acked_heartbeats: 100,
            acked_logs: 50,
            latency_ms: Some(Quantiles {
                p50: 1.0,
                p95: 2.0,
                p99: 3.0,
            }),
            answered_heartbeats_per_s: acked,
            answered_logs_per_s: acked / 2.0,
            answer_latency_ms: Some(Quantiles {
                p50: 1.0,
                p95: 2.0,
                p99: 3.0,
            }),
            retransmitted: 0,
            gave_up: 0,
            rejected: 0,
            abandoned: 0,
            errors: BTreeMap::new(),
            unacknowledged: 0,
            gateway_cpu_s: 10.0,
            gateway_rss_mib: 50.0,
            sim_cpu_s: 5.0,
            driven: Duration::from_secs(25),
            mean_batch: Some(7.5),
            mean_commit_ms: Some(0.5),
            committed_heartbeats: Some(100.0),
            jobs_delivered: None,
            jobs_completed: None,
            latency_p999_ms: None,
            gateway_log: LogSummary::default(),
            wall: Duration::from_secs(30),
            db_check: None,
            timeline: crate::timeline::TimeLine::default(),
        }
    }

    #[test]
    fn the_table_shows_medians_ranges_and_the_ratio() {
        use Engine::Sqlite;
        let results = vec![
            result(Sqlite, Variant::Baseline, 100.0, 1),
            result(Sqlite, Variant::Candidate, 400.0, 2),
            result(Sqlite, Variant::Baseline, 120.0, 3),
            result(Sqlite, Variant::Candidate, 390.0, 4),
            result(Sqlite, Variant::Baseline, 90.0, 5),
            result(Sqlite, Variant::Candidate, 410.0, 6),
        ];
        let md = markdown(&context(false), &results);
        assert!(md.contains("1000 locks on CoAP, OSCORE-protected,"), "{md}");
        assert!(md.contains("**100** (90–120)"), "{md}");
        assert!(md.contains("**400** (390–410)"), "{md}");
        assert!(md.contains("group commit / baseline = 4.00×"), "{md}");
        // Pairs: 400/100, 390/120, 410/90.
        assert!(md.contains("3.25×–4.56×"), "{md}");
        assert!(md.contains("median of 3 runs"), "{md}");
        assert!(md.contains("Command: `loadtest ingest`"), "{md}");
        // Baseline row before the candidate row.
        let b = md.find("| sqlite | baseline").unwrap();
        let c = md.find("| sqlite | group commit").unwrap();
        assert!(b < c);
        // Without libcoap runs: no ceiling table, no ratio to it.
        assert!(!md.contains("libcoap"), "{md}");
    }

    fn context(find_max: bool) -> Context {
        Context {
            command_line: "loadtest ingest".into(),
            machine: Machine::default(),
            postgres_version: None,
            locks: 1000,
            duration: Duration::from_secs(20),
            warmup_share: 0.2,
            find_max,
            insecure: false,
            libcoap: Some(LibcoapInfo {
                binary: "coap-server-notls".into(),
                version: Some("4.3.1".into()),
            }),
        }
    }

    /// A libcoap run: nothing acknowledged, `answered` heartbeats per
    /// second answered with 4.02.
    fn libcoap(engine: Engine, rate: f64, answered: f64, number: u32) -> RunResult {
        let mut r = result(engine, Variant::Libcoap, 0.0, number);
        r.spec.rate = rate;
        r.answered_heartbeats_per_s = answered;
        r.answered_logs_per_s = answered;
        r.latency_ms = None;
        r.answer_latency_ms = Some(Quantiles {
            p50: 0.2,
            p95: 0.4,
            p99: 0.6,
        });
        r.errors = BTreeMap::from([("4.02".to_string(), 1000)]);
        r.mean_batch = None;
        r.mean_commit_ms = None;
        r.committed_heartbeats = None;
        r.acked_heartbeats = 0;
        r.acked_logs = 0;
        r
    }

    #[test]
    fn libcoap_rows_and_the_ratio_to_them_sit_beside_the_gateway_s() {
        use Engine::Sqlite;
        let mut results = Vec::new();
        for (i, (b, c, l)) in [
            (100.0, 400.0, 900.0),
            (110.0, 390.0, 1000.0),
            (90.0, 410.0, 950.0),
        ]
        .into_iter()
        .enumerate()
        {
            let n = 3 * i as u32;
            results.push(result(Sqlite, Variant::Baseline, b, n + 1));
            results.push(result(Sqlite, Variant::Candidate, c, n + 2));
            results.push(libcoap(Sqlite, 1000.0, l, n + 3));
        }
        let md = markdown(&context(false), &results);
        // The gateway's table keeps its two rows; libcoap has its own.
        assert!(md.contains("group commit / baseline = 4.00×"), "{md}");
        let summary = md.split("Raw CoAP ceiling").next().unwrap();
        assert!(!summary.contains("libcoap coap-server"), "{md}");
        assert!(md.contains("`coap-server-notls` (libcoap 4.3.1)"), "{md}");
        // | rotation of | offered | answered median (range) | logs/s | codes | p50 / p99 | CPU | RSS | sim CPU | sim cores | unanswered |
        assert!(
            md.contains("| sqlite | 1000 | **950** (900–1000) | 950 | 4.02 | 0.2 / 0.6 | 10.0 | 50.0 | 5.0 | 0.20 | 0 |"),
            "{md}"
        );
        // 400 / 950, and per rotation 400/900, 390/1000, 410/950.
        assert!(
            md.contains("**sqlite: group commit / libcoap raw = 0.42×**"),
            "{md}"
        );
        assert!(md.contains("(same rotation: 0.39×–0.44×)"), "{md}");
        // libcoap answered 95 % of the offered 1000/s: the ceiling is higher.
        assert!(
            md.contains("libcoap answered 95 % of the offered rate"),
            "{md}"
        );
        // In the runs table, libcoap's latency is to any answer.
        assert!(
            md.contains("| 3 | sqlite | libcoap coap-server (raw CoAP, no database) | 1000 | 180 | 0 | 900 | 0 | 0.2 / 0.4 / 0.6 |"),
            "{md}"
        );
        assert!(md.contains("coap-server logged 0 WARN"), "{md}");
        // libcoap's 4.02s are its answers, not gateway errors.
        assert!(!md.contains("all gateway runs: 4.02"), "{md}");
    }

    #[test]
    fn find_max_reports_libcoap_s_ceiling_and_the_ratio_to_it() {
        use Engine::{Postgres, Sqlite};
        let step = |engine, variant, rate: f64, served: f64, n| {
            let mut r = match variant {
                Variant::Libcoap => libcoap(engine, rate, served, n),
                v => result(engine, v, served, n),
            };
            r.spec.rate = rate;
            r
        };
        use Variant::*;
        let results = vec![
            step(Sqlite, Candidate, 1000.0, 1000.0, 1),
            step(Sqlite, Libcoap, 1000.0, 1000.0, 2),
            step(Sqlite, Candidate, 2000.0, 1500.0, 3),
            step(Sqlite, Libcoap, 2000.0, 2000.0, 4),
            step(Sqlite, Libcoap, 4000.0, 3990.0, 5),
            step(Sqlite, Libcoap, 8000.0, 5000.0, 6),
            step(Postgres, Candidate, 1000.0, 1000.0, 7),
            step(Postgres, Candidate, 2000.0, 2000.0, 8),
            step(Postgres, Candidate, 4000.0, 3000.0, 9),
            // libcoap steps on after the last engine's (a real invocation's order).
            step(Sqlite, Libcoap, 16000.0, 8000.0, 10),
        ];
        let md = markdown(&context(true), &results);
        assert!(
            md.contains("- libcoap coap-server (raw CoAP, no database): 4000 heartbeats/s (answered 3990/s; simulator at 0.20 cores)
"),
            "{md}"
        );
        assert!(
            md.contains("- sqlite, group commit (defaults): 1000 heartbeats/s"),
            "{md}"
        );
        assert!(md.contains("**sqlite: group commit / libcoap raw = 0.25×** (highest sustained offered rates: 1000 / 4000"), "{md}");
        assert!(
            md.contains("**postgres: group commit / libcoap raw = 0.50×**"),
            "{md}"
        );
        // One ratio line per engine, however the runs interleave.
        assert_eq!(
            md.matches("group commit / libcoap raw = ").count(),
            2,
            "{md}"
        );
        // No fixed-rate ratio lines in a --find-max report.
        assert!(!md.contains("at the same offered rate (medians)"), "{md}");
    }

    #[test]
    fn a_ceiling_never_reached_says_so() {
        let results = vec![
            libcoap(Engine::Sqlite, 1000.0, 1000.0, 1),
            libcoap(Engine::Sqlite, 2000.0, 2000.0, 2),
        ];
        let md = markdown(&context(true), &results);
        assert!(md.contains("Every step tried was sustained"), "{md}");
    }
}
