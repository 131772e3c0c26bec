//! The Markdown report of `loadtest bridges`, ready for BENCHMARKS.md: a
//! summary table (medians of repeated runs, the headline's range), the
//! gateway's figures as ratios to Mosquitto's, the highest rates sustained
//! with `--find-max`, every run's figures and database check, what went
//! wrong, the machine and the exact command.

use super::run::{RunResult, Target};
use crate::machine::Machine;
use crate::stats::{median, ratio, Spread};
use std::fmt::Write;
use std::time::Duration;

/// What the report says about the invocation besides the runs.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Context {
    pub command_line: String,
    pub machine: Machine,
    pub postgres_version: Option<String>,
    pub mosquitto_version: Option<String>,
    pub bridges: usize,
    pub locks_per_bridge: usize,
    pub visits_per_hour: f64,
    pub duration: Duration,
    pub warmup_share: f64,
    /// `--find-max`: one run per step.
    pub find_max: bool,
    pub p99_bound: Duration,
    pub insecure: bool,
    /// The configurations measured, in the order they ran.
    pub targets: Vec<Target>,
}

/// Runs of one target at one offered rate.
struct Group<'a> {
    target: Target,
    rate: f64,
    runs: Vec<&'a RunResult>,
}

fn groups(results: &[RunResult]) -> Vec<Group<'_>> {
    let mut out: Vec<Group<'_>> = Vec::new();
    for r in results {
        let s = &r.spec;
        match out
            .iter_mut()
            .find(|g| g.target == s.target && g.rate == s.rate)
        {
            Some(g) => g.runs.push(r),
            None => out.push(Group {
                target: s.target,
                rate: s.rate,
                runs: vec![r],
            }),
        }
    }
    out.sort_by(|a, b| a.rate.total_cmp(&b.rate).then(a.target.cmp(&b.target)));
    out
}

fn med(runs: &[&RunResult], f: impl Fn(&RunResult) -> Option<f64>) -> Option<f64> {
    median(runs.iter().filter_map(|r| f(r)))
}

fn num(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.decimals$}"))
}

fn label(target: Target, ctx: &Context) -> String {
    match (target, &ctx.mosquitto_version) {
        (Target::Mosquitto, Some(v)) => format!("mosquitto {v} (PUBACK)"),
        _ => target.label(),
    }
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
        "### MQTT bridge reports per second ({} bridges × {} locks, {}, visits per lock-hour {}, {:.0} s per run, first {:.0} % not counted{})\n",
        ctx.bridges,
        ctx.locks_per_bridge,
        if ctx.insecure { "unprotected (--insecure)" } else { "OSCORE-protected" },
        ctx.visits_per_hour,
        ctx.duration.as_secs_f64(),
        ctx.warmup_share * 100.0,
        if ctx.find_max {
            ", --find-max: one run per step".to_string()
        } else {
            format!(", median of {runs_per} runs")
        },
    );
    summary_table(o, ctx, results);
    ratios(o, ctx, results);
    if ctx.find_max {
        highest(o, ctx, results);
    }
    runs_table(o, ctx, results);
    notes(o, ctx, results);
    machine(o, ctx);
    out
}

fn summary_table(o: &mut String, ctx: &Context, results: &[RunResult]) {
    let _ = writeln!(
        o,
        "| configuration | offered reports/s (generated) | acked reports/s median (min–max) | heartbeats + logs /s | PUBACKs/s | ack p50 / p90 / p99 / p99.9 ms | PUBACK p50 / p99 ms | server CPU s | server RSS MiB | sim CPU s | errors | database check |"
    );
    let _ = writeln!(o, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|");
    for g in groups(results) {
        let runs = &g.runs;
        let acked = Spread::of(runs.iter().map(|r| r.acked_per_s)).map_or_else(
            || "–".into(),
            |s| format!("**{:.0}** ({:.0}–{:.0})", s.median, s.min, s.max),
        );
        let lat = |f: fn(&super::run::Latency) -> f64| med(runs, |r| r.ack_latency.as_ref().map(f));
        let plat =
            |f: fn(&super::run::Latency) -> f64| med(runs, |r| r.puback_latency.as_ref().map(f));
        let check = db_check_cell(runs);
        let _ = writeln!(
            o,
            "| {} | {:.0} ({}) | {acked} | {} + {} | {} | {} / {} / {} / {} | {} / {} | {} | {} | {} | {} | {check} |",
            label(g.target, ctx),
            g.rate,
            num(med(runs, |r| Some(r.offered_per_s)), 0),
            num(med(runs, |r| Some(r.acked_heartbeats_per_s)), 0),
            num(med(runs, |r| Some(r.acked_logs_per_s)), 0),
            num(med(runs, |r| Some(r.pubacked_per_s)), 0),
            num(lat(|l| l.p50), 1),
            num(lat(|l| l.p90), 1),
            num(lat(|l| l.p99), 1),
            num(lat(|l| l.p999), 1),
            num(plat(|l| l.p50), 1),
            num(plat(|l| l.p99), 1),
            num(med(runs, |r| Some(r.server_cpu_s)), 1),
            num(med(runs, |r| Some(r.server_rss_mib)), 0),
            num(med(runs, |r| Some(r.sim_cpu_s)), 1),
            num(med(runs, |r| Some(r.error_total() as f64)), 0),
        );
    }
    o.push('\n');
}

fn db_check_cell(runs: &[&RunResult]) -> String {
    let checked: Vec<_> = runs.iter().filter_map(|r| r.db_check).collect();
    if checked.is_empty() {
        return "–".into();
    }
    let failed = checked.iter().filter(|c| !c.passed()).count();
    if failed == 0 {
        format!("passed ({}/{})", checked.len(), checked.len())
    } else {
        format!("**FAILED** in {failed} of {}", checked.len())
    }
}

fn ratios(o: &mut String, ctx: &Context, results: &[RunResult]) {
    if ctx.find_max {
        return;
    }
    let of = |t: Target, f: fn(&RunResult) -> f64| -> Vec<f64> {
        results
            .iter()
            .filter(|r| r.spec.target == t)
            .map(f)
            .collect()
    };
    let base_acked = of(Target::Mosquitto, |r| r.acked_per_s);
    let base_pubacks = of(Target::Mosquitto, |r| r.pubacked_per_s);
    let Some(base) = median(base_acked.iter().copied()) else {
        return;
    };
    for &t in ctx.targets.iter().filter(|t| **t != Target::Mosquitto) {
        let acked = of(t, |r| r.acked_per_s);
        let pubacks = of(t, |r| r.pubacked_per_s);
        let Some(r) = median(acked.iter().copied()).and_then(|c| ratio(c, base)) else {
            continue;
        };
        // Runs were interleaved: Mosquitto's run i and this one's ran back to back.
        let pairs = Spread::of(
            base_acked
                .iter()
                .zip(&acked)
                .filter_map(|(b, c)| ratio(*c, *b)),
        )
        .map_or_else(String::new, |p| {
            format!(" (back-to-back pairs: {:.2}×–{:.2}×)", p.min, p.max)
        });
        let puback = median(pubacks)
            .zip(median(base_pubacks.iter().copied()))
            .and_then(|(c, b)| ratio(c, b))
            .map_or_else(String::new, |p| {
                format!("; PUBACKs per second, like for like: **{p:.2}×**")
            });
        let _ = writeln!(
            o,
            "**{} / mosquitto = {r:.2}×** acknowledged reports per second (the gateway's durable acks over Mosquitto's PUBACKs, medians){pairs}{puback}.  ",
            t.label()
        );
    }
    o.push('\n');
}

fn highest(o: &mut String, ctx: &Context, results: &[RunResult]) {
    let _ = writeln!(
        o,
        "Highest offered rate sustained (≥ 95 % acknowledged in the steady window, p99 due-to-ack ≤ {:.0} ms, no error, nothing left unacknowledged, database check passed, every bridge connected when the window began):\n",
        ctx.p99_bound.as_secs_f64() * 1000.0
    );
    let best = super::plan::highest_sustained(&ctx.targets, results, ctx.p99_bound);
    let base = best
        .iter()
        .find(|(t, _)| *t == Target::Mosquitto)
        .and_then(|(_, r)| *r)
        .map(|r| r.spec.rate);
    for (t, r) in &best {
        let text = r.map_or_else(
            || "none of the rates tried".to_string(),
            |r| {
                let vs = match (t, base) {
                    (Target::Gateway(_), Some(b)) => ratio(r.spec.rate, b)
                        .map_or_else(String::new, |x| format!(", {x:.2}× Mosquitto's")),
                    _ => String::new(),
                };
                format!(
                    "{:.0} reports/s (acked {:.0}/s, p99 {} ms){vs}",
                    r.spec.rate,
                    r.acked_per_s,
                    num(r.ack_latency.map(|l| l.p99), 1)
                )
            },
        );
        let _ = writeln!(o, "- {}: {text}", label(*t, ctx));
    }
    o.push('\n');
}

fn runs_table(o: &mut String, ctx: &Context, results: &[RunResult]) {
    let _ = writeln!(
        o,
        "<details><summary>Every run, in the order run</summary>\n"
    );
    let _ = writeln!(
        o,
        "| # | configuration | offered /s | generated /s | speed-up | acked /s | heartbeats /s | logs /s | PUBACKs /s | ack p50 / p90 / p99 / p99.9 / max ms | PUBACK p50 / p99 ms | resent | gave up | rejected | abandoned | unacked | bridges up | server CPU s | sim CPU s | RSS MiB | mean batch | DB heartbeats acked / rows | DB events acked / rows | DB missing | sustained |"
    );
    let _ = writeln!(
        o,
        "|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"
    );
    for (i, r) in results.iter().enumerate() {
        let lat = r.ack_latency.map_or_else(
            || "–".into(),
            |q| {
                format!(
                    "{:.1} / {:.1} / {:.1} / {:.1} / {:.1}",
                    q.p50, q.p90, q.p99, q.p999, q.max
                )
            },
        );
        let plat = r
            .puback_latency
            .map_or_else(|| "–".into(), |q| format!("{:.1} / {:.1}", q.p50, q.p99));
        let (hb, ev, missing) = r.db_check.map_or_else(
            || ("–".into(), "–".into(), "–".into()),
            |c| {
                (
                    format!("{} / {}", c.acked_heartbeats, c.heartbeat_rows),
                    format!("{} / {}", c.acked_events, c.event_rows),
                    if c.passed() {
                        "0".to_string()
                    } else {
                        format!(
                            "**{} heartbeats, {} events, {} not bridged**",
                            c.missing_heartbeats, c.missing_events, c.wrong_transport
                        )
                    },
                )
            },
        );
        let sustained = r
            .unsustained(ctx.p99_bound)
            .map_or_else(|| "yes".to_string(), |why| format!("no: {why}"));
        let _ = writeln!(
            o,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {lat} | {plat} | {} | {} | {} | {} | {} | {}/{} | {:.1} | {:.1} | {:.0} | {} | {hb} | {ev} | {missing} | {sustained} |",
            i + 1,
            label(r.spec.target, ctx),
            r.spec.rate,
            r.offered_per_s,
            r.speedup,
            r.acked_per_s,
            r.acked_heartbeats_per_s,
            r.acked_logs_per_s,
            r.pubacked_per_s,
            r.retransmitted,
            r.gave_up,
            r.rejected,
            r.abandoned,
            r.unacknowledged,
            r.connected_at_window,
            ctx.bridges,
            r.server_cpu_s,
            r.sim_cpu_s,
            r.server_rss_mib,
            num(r.mean_batch, 1),
        );
    }
    let _ = writeln!(o, "\n</details>\n");
}

fn notes(o: &mut String, ctx: &Context, results: &[RunResult]) {
    let _ = writeln!(o, "Notes:\n");
    let _ = writeln!(o, "- The same simulated bridges, payloads and offered rate for every configuration: each bridge relays its locks' heartbeats and activity-log batches on `br/{{bridge}}/up/...` at QoS 1{}. Acknowledged: for the gateway, its answer on `br/{{bridge}}/ack/{{lock}}/...`, sent after the durable group commit (the headline); for Mosquitto, which has no application behind it, the PUBACK, which ends the report's exchange there (without that, every report would wait for an answer that never comes and be resent). PUBACKs are counted for both, like for like.",
        if ctx.insecure { "" } else { ", each protected with OSCORE under the bridge's context" });
    let _ = writeln!(o, "- Open loop: each lock reports on its own schedule whatever the answers (it ignores the gateway's wake-up time), and latency runs from the moment a report was due to its acknowledgement (or PUBACK), so a broker or generator that falls behind shows (coordinated omission accounted for). Quantiles from HDR histograms of the reports due in the steady window; rates count acknowledgements in it. \"Generated\" is what the locks produced in the window: below the offered rate, the generator itself fell behind.");
    let _ = writeln!(o, "- Server CPU is the broker process's (`/proc/PID/stat`) from its start to just before SIGTERM, RSS its VmHWM; sim CPU is this process, the load generator, on the same cores.");
    let checked: Vec<(usize, &RunResult)> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.db_check.is_some())
        .collect();
    if !checked.is_empty() {
        let failed: Vec<String> = checked
            .iter()
            .filter(|(_, r)| r.db_check.is_some_and(|c| !c.passed()))
            .map(|(i, _)| format!("#{}", i + 1))
            .collect();
        if failed.is_empty() {
            let extra: u64 = checked
                .iter()
                .filter_map(|(_, r)| r.db_check.map(|c| c.unacknowledged_rows()))
                .sum();
            let _ = writeln!(o, "- Database check after every gateway run: every acknowledged heartbeat is its row of `heartbeats` and every event of every acknowledged log batch its row of `activity_events` (their keys allow one copy), stored as a bridge's report: **passed** in all {} runs ({extra} rows stored whose answer the simulator did not see, e.g. the last ones before it stopped listening).", checked.len());
        } else {
            let _ = writeln!(o, "- **DATABASE CHECK FAILED** in runs {}: acknowledged reports missing from the database (see the runs table).", failed.join(", "));
        }
    }
    let mut all = std::collections::BTreeMap::<&str, u64>::new();
    for r in results {
        for (k, v) in &r.errors {
            *all.entry(k).or_default() += v;
        }
    }
    if !all.is_empty() {
        let list: Vec<String> = all.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let _ = writeln!(
            o,
            "- Simulator errors by code, all runs: {}.",
            list.join(", ")
        );
    }
    let short: Vec<String> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| (r.connected_at_window as usize) < ctx.bridges)
        .map(|(i, r)| format!("#{} ({}/{})", i + 1, r.connected_at_window, ctx.bridges))
        .collect();
    if !short.is_empty() {
        let _ = writeln!(
            o,
            "- Not every bridge was connected when the steady window began in runs {}.",
            short.join(", ")
        );
    }
    let backlog: Vec<String> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.unacknowledged > 0)
        .map(|(i, r)| format!("#{} ({})", i + 1, r.unacknowledged))
        .collect();
    if !backlog.is_empty() {
        let _ = writeln!(o, "- Reports still in the locks' outboxes after the drain (offered above capacity): runs {}.", backlog.join(", "));
    }
    let logs: Vec<_> = results
        .iter()
        .filter_map(|r| r.gateway_log.as_ref())
        .collect();
    if !logs.is_empty() {
        crate::report::gateway_log_notes(o, &logs);
    }
    o.push('\n');
}

fn machine(o: &mut String, ctx: &Context) {
    let m = &ctx.machine;
    let _ = writeln!(
        o,
        "Machine: {} cores ({}), {} GiB, Linux {}{}{}{}; simulator and brokers on the same machine.  ",
        m.cores,
        m.cpu_model,
        m.memory_gib.map_or_else(|| "?".into(), |g| g.to_string()),
        m.kernel,
        ctx.postgres_version
            .as_ref()
            .map_or_else(String::new, |v| format!(", PostgreSQL {v}")),
        ctx.mosquitto_version
            .as_ref()
            .map_or_else(String::new, |v| format!(", Mosquitto {v}")),
        m.date.as_ref().map_or_else(String::new, |d| format!(", {d}")),
    );
    let _ = writeln!(o, "Command: `{}`", ctx.command_line);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridges::run::tests::result;
    use crate::database::Engine;
    use crate::dbcheck::DbCheck;

    fn ctx(find_max: bool) -> Context {
        Context {
            command_line: "loadtest bridges".into(),
            machine: Machine::default(),
            postgres_version: None,
            mosquitto_version: Some("2.0.11".into()),
            bridges: 10,
            locks_per_bridge: 2,
            visits_per_hour: 1.0,
            duration: Duration::from_secs(20),
            warmup_share: 0.2,
            find_max,
            p99_bound: Duration::from_millis(50),
            insecure: false,
            targets: vec![Target::Mosquitto, Target::Gateway(Engine::Sqlite)],
        }
    }

    fn gateway(acked: f64) -> RunResult {
        let mut r = result(Target::Gateway(Engine::Sqlite), 1000.0, acked, 5.0);
        r.db_check = Some(DbCheck {
            acked_heartbeats: 10,
            heartbeat_rows: 10,
            ..DbCheck::default()
        });
        r
    }

    #[test]
    fn both_rows_their_medians_and_the_ratio_to_mosquitto() {
        let results = vec![
            result(Target::Mosquitto, 1000.0, 1000.0, 1.0),
            gateway(900.0),
            result(Target::Mosquitto, 1000.0, 980.0, 1.0),
            gateway(950.0),
            result(Target::Mosquitto, 1000.0, 990.0, 1.0),
            gateway(800.0),
        ];
        let md = markdown(&ctx(false), &results);
        assert!(
            md.contains("10 bridges × 2 locks, OSCORE-protected"),
            "{md}"
        );
        assert!(md.contains("median of 3 runs"), "{md}");
        assert!(
            md.contains("| mosquitto 2.0.11 (PUBACK) | 1000 (1000) | **990** (980–1000) |"),
            "{md}"
        );
        assert!(
            md.contains("| gateway, sqlite (durable ack) | 1000 (1000) | **900** (800–950) |"),
            "{md}"
        );
        assert!(
            md.contains("gateway, sqlite (durable ack) / mosquitto = 0.91×"),
            "{md}"
        );
        // Pairs: 900/1000, 950/980, 800/990.
        assert!(md.contains("0.81×–0.97×"), "{md}");
        assert!(md.contains("passed (3/3)"), "{md}");
        assert!(md.contains("**passed** in all 3 runs"), "{md}");
        assert!(md.contains("Command: `loadtest bridges`"), "{md}");
    }

    #[test]
    fn a_failed_database_check_is_flagged() {
        let mut bad = gateway(900.0);
        bad.db_check = Some(DbCheck {
            acked_heartbeats: 10,
            heartbeat_rows: 9,
            missing_heartbeats: 1,
            ..DbCheck::default()
        });
        let results = vec![result(Target::Mosquitto, 1000.0, 1000.0, 1.0), bad];
        let md = markdown(&ctx(false), &results);
        assert!(md.contains("**FAILED** in 1 of 1"), "{md}");
        assert!(md.contains("**DATABASE CHECK FAILED** in runs #2"), "{md}");
    }

    #[test]
    fn find_max_reports_the_highest_rate_each_sustained() {
        let gw = Target::Gateway(Engine::Sqlite);
        let results = vec![
            result(Target::Mosquitto, 1000.0, 1000.0, 1.0),
            result(gw, 1000.0, 1000.0, 5.0),
            result(Target::Mosquitto, 1250.0, 1250.0, 1.0),
            result(gw, 1250.0, 1000.0, 300.0),
            result(Target::Mosquitto, 1563.0, 1100.0, 90.0),
        ];
        let md = markdown(&ctx(true), &results);
        assert!(
            md.contains("- mosquitto 2.0.11 (PUBACK): 1250 reports/s"),
            "{md}"
        );
        assert!(md.contains("- gateway, sqlite (durable ack): 1000 reports/s (acked 1000/s, p99 5.0 ms), 0.80× Mosquitto's"), "{md}");
        assert!(md.contains("no: acked 1000/s < 95 % of 1250/s"), "{md}");
    }
}
