//! The Markdown report, ready to paste into BENCHMARKS.md: a summary table
//! (medians of repeated runs, with the range of the headline figure), the
//! ratio of group commit to the baseline per engine, every run's raw
//! figures, what the gateway logged, the machine and the exact command.

use crate::database::Engine;
use crate::machine::Machine;
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
    ratios(o, results, ctx.find_max);
    if ctx.find_max {
        highest_sustained(o, results);
    }
    runs_table(o, results);
    notes(o, results);
    machine(o, ctx);
    out
}

fn summary_table(o: &mut String, results: &[RunResult]) {
    let _ = writeln!(
        o,
        "| engine | config | offered hb/s | acked hb/s median (min–max) | acked logs/s | p50 / p99 ms | gateway CPU s | RSS MiB | mean batch | sim CPU s | errors |"
    );
    let _ = writeln!(o, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for g in groups(results) {
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

fn ratios(o: &mut String, results: &[RunResult], find_max: bool) {
    if find_max {
        return;
    }
    let mut engines: Vec<Engine> = results.iter().map(|r| r.spec.engine).collect();
    engines.dedup();
    for engine in engines {
        let of = |v: Variant| -> Vec<f64> {
            results
                .iter()
                .filter(|r| r.spec.engine == engine && r.spec.variant == v)
                .map(|r| r.acked_heartbeats_per_s)
                .collect()
        };
        let (base, cand) = (of(Variant::Baseline), of(Variant::Candidate));
        let (Some(b), Some(c)) = (median(base.clone()), median(cand.clone())) else {
            continue;
        };
        let Some(r) = ratio(c, b) else { continue };
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
    o.push('\n');
}

fn highest_sustained(o: &mut String, results: &[RunResult]) {
    let _ = writeln!(
        o,
        "Highest offered rate sustained (≥ 95 % acknowledged in the steady window):\n"
    );
    let mut keys: Vec<(Engine, Variant)> = results
        .iter()
        .map(|r| (r.spec.engine, r.spec.variant))
        .collect();
    keys.sort();
    keys.dedup();
    for (engine, variant) in keys {
        let best = results
            .iter()
            .filter(|r| r.spec.engine == engine && r.spec.variant == variant && r.sustained())
            .max_by(|a, b| a.spec.rate.total_cmp(&b.spec.rate));
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
    o.push('\n');
}

fn runs_table(o: &mut String, results: &[RunResult]) {
    let _ = writeln!(
        o,
        "<details><summary>Every run, in the order run</summary>\n"
    );
    let _ = writeln!(
        o,
        "| # | engine | config | offered hb/s | speed-up | acked hb/s | acked logs/s | p50 / p95 / p99 ms | retx | gave up | rejected | abandoned | unacked | gateway CPU s | sim CPU s | RSS MiB | mean batch | mean commit ms | committed hb (gateway) / acked hb |"
    );
    let _ = writeln!(
        o,
        "|--:|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    );
    for (i, r) in results.iter().enumerate() {
        let lat = r.latency_ms.map_or_else(
            || "–".into(),
            |q| format!("{:.1} / {:.1} / {:.1}", q.p50, q.p95, q.p99),
        );
        let _ = writeln!(
            o,
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {lat} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.0} | {} | {} | {} / {} |",
            i + 1,
            r.spec.engine,
            r.spec.variant,
            r.spec.rate,
            r.speedup,
            r.acked_heartbeats_per_s,
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
        );
    }
    let _ = writeln!(o, "\n</details>\n");
}

fn notes(o: &mut String, results: &[RunResult]) {
    let hb: u64 = results.iter().map(|r| r.acked_heartbeats).sum();
    let logs: u64 = results.iter().map(|r| r.acked_logs).sum();
    let _ = writeln!(o, "Notes:\n");
    let _ = writeln!(
        o,
        "- Offered and acked rates count heartbeats only. Each heartbeat also uploads the activity logged since the previous one, so the gateway stored {:.2} log batches per heartbeat as well.",
        if hb > 0 { logs as f64 / hb as f64 } else { 0.0 }
    );
    let _ = writeln!(o, "- Latency is the simulated lock's round trip from a heartbeat's first transmission to its acknowledgement (retransmission waits included), over the whole run. CPU is from `/proc/PID/stat` between the gateway being ready and just before SIGTERM; RSS is its VmHWM. Sim CPU is the load generator (this process), on the same cores.");
    let errors: Vec<String> = {
        let mut all = std::collections::BTreeMap::<&str, u64>::new();
        for r in results {
            for (k, v) in &r.errors {
                *all.entry(k).or_default() += v;
            }
        }
        all.iter().map(|(k, v)| format!("{k}: {v}")).collect()
    };
    if !errors.is_empty() {
        let _ = writeln!(
            o,
            "- Simulator errors by code, all runs: {}.",
            errors.join(", ")
        );
    }
    let short: Vec<String> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            r.committed_heartbeats
                .is_some_and(|c| c < r.acked_heartbeats as f64)
        })
        .map(|(i, _)| format!("#{}", i + 1))
        .collect();
    if !short.is_empty() {
        let _ = writeln!(o, "- **The gateway counted fewer committed heartbeats than the simulator saw acknowledged** in runs {}: an acknowledgement without a commit?", short.join(", "));
    }
    let backlog: Vec<String> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.unacknowledged > 0)
        .map(|(i, r)| format!("#{} ({})", i + 1, r.unacknowledged))
        .collect();
    if !backlog.is_empty() {
        let _ = writeln!(o, "- Reports still in the simulated locks' outboxes at the end (offered above capacity; a lock keeps them and retries, 5.03 after its Max-Age): runs {}.", backlog.join(", "));
    }
    let warnings: u64 = results.iter().map(|r| r.gateway_log.warnings).sum();
    let errors: u64 = results.iter().map(|r| r.gateway_log.errors).sum();
    let _ = writeln!(
        o,
        "- The gateway logged {warnings} WARN and {errors} ERROR lines over all runs."
    );
    let mut samples: Vec<&String> = results
        .iter()
        .flat_map(|r| &r.gateway_log.samples)
        .collect();
    samples.dedup();
    if !samples.is_empty() {
        let _ = writeln!(o, "\n```");
        for s in samples.iter().take(8) {
            let _ = writeln!(o, "{s}");
        }
        let _ = writeln!(o, "```");
    }
    o.push('\n');
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
    use crate::gateway::LogSummary;
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
            retransmitted: 0,
            gave_up: 0,
            rejected: 0,
            abandoned: 0,
            errors: BTreeMap::new(),
            unacknowledged: 0,
            gateway_cpu_s: 10.0,
            gateway_rss_mib: 50.0,
            sim_cpu_s: 5.0,
            mean_batch: Some(7.5),
            mean_commit_ms: Some(0.5),
            committed_heartbeats: Some(100.0),
            jobs_delivered: None,
            jobs_completed: None,
            latency_p999_ms: None,
            gateway_log: LogSummary::default(),
            wall: Duration::from_secs(30),
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
        let ctx = Context {
            command_line: "loadtest ingest".into(),
            machine: Machine::default(),
            postgres_version: None,
            locks: 1000,
            duration: Duration::from_secs(20),
            warmup_share: 0.2,
            find_max: false,
            insecure: false,
        };
        let md = markdown(&ctx, &results);
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
    }
}
