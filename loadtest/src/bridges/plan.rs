//! The order of `loadtest bridges` runs. Mosquitto and the gateway (on
//! each engine) alternate, M G M G ..., so drift on a shared machine
//! (another tenant, thermal limits, the page cache) hits every
//! configuration alike. `--find-max` steps the offered rate up, every
//! configuration still sustaining at each step, until none does.

use super::run::{self, RunResult, RunSpec, Setup, Target};
use crate::error::Result;
use crate::plan::{step_rate, MAX_FIND_MAX_STEPS};
use std::time::Duration;

/// Runs of a fixed-rate invocation, in order: round after round, each
/// round every target once.
pub fn schedule(targets: &[Target], runs: u32, rate: f64) -> Vec<RunSpec> {
    let mut out = Vec::new();
    for _ in 0..runs {
        for &target in targets {
            out.push(RunSpec {
                target,
                rate,
                number: out.len() as u32 + 1,
            });
        }
    }
    out
}

/// The targets still stepping after a step: those whose run sustained it.
pub fn still_sustaining(step: &[RunResult], p99_bound: Duration) -> Vec<Target> {
    step.iter()
        .filter(|r| r.unsustained(p99_bound).is_none())
        .map(|r| r.spec.target)
        .collect()
}

/// The highest offered rate each target sustained among `results`, in
/// the order of `targets`; `None` for one that sustained none.
pub fn highest_sustained<'a>(
    targets: &[Target],
    results: &'a [RunResult],
    p99_bound: Duration,
) -> Vec<(Target, Option<&'a RunResult>)> {
    targets
        .iter()
        .map(|&t| {
            let best = results
                .iter()
                .filter(|r| r.spec.target == t && r.unsustained(p99_bound).is_none())
                .max_by(|a, b| a.spec.rate.total_cmp(&b.spec.rate));
            (t, best)
        })
        .collect()
}

fn label(spec: &RunSpec, of: &str) -> String {
    format!(
        "run {of}: {} · offered {:.0} reports/s",
        spec.target, spec.rate
    )
}

/// Does every run of `specs`; fails at the first run that fails.
pub async fn fixed(
    setup: &Setup,
    specs: &[RunSpec],
    p99_bound: Duration,
) -> Result<Vec<RunResult>> {
    let mut results = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        eprintln!("\n{}", label(spec, &format!("{}/{}", i + 1, specs.len())));
        let r = run::run(setup, *spec).await?;
        print_result(&r, p99_bound);
        results.push(r);
    }
    Ok(results)
}

/// `--find-max`: from `start` up by `factor`, one run of each target
/// still sustaining per step; a target stops at the first step it does not
/// sustain (acked under 95 % of offered, p99 over `p99_bound`, an error,
/// a backlog or a failed database check). Returns every run done.
pub async fn find_max(
    setup: &Setup,
    targets: &[Target],
    start: f64,
    factor: f64,
    p99_bound: Duration,
) -> Result<Vec<RunResult>> {
    let mut results = Vec::new();
    let mut alive = targets.to_vec();
    let mut number = 0;
    for step in 0..MAX_FIND_MAX_STEPS {
        let rate = step_rate(start, factor, step);
        let mut this_step = Vec::new();
        for &target in &alive {
            number += 1;
            let spec = RunSpec {
                target,
                rate,
                number,
            };
            eprintln!("\n{}", label(&spec, &format!("find-max step {}", step + 1)));
            let r = run::run(setup, spec).await?;
            print_result(&r, p99_bound);
            this_step.push(r);
        }
        alive = still_sustaining(&this_step, p99_bound);
        results.extend(this_step);
        if alive.is_empty() {
            break;
        }
    }
    Ok(results)
}

fn print_result(r: &RunResult, p99_bound: Duration) {
    let lat = r.ack_latency.map_or_else(
        || "no latency".into(),
        |q| format!("p50 {:.1} ms p99 {:.1} ms", q.p50, q.p99),
    );
    let check = match r.db_check {
        Some(c) if c.passed() => ", database check passed",
        Some(_) => ", DATABASE CHECK FAILED",
        None => "",
    };
    eprintln!(
        "  => offered {:.0}/s, acked {:.0}/s, PUBACKs {:.0}/s, {lat}, server CPU {:.1} s, \
         RSS {:.0} MiB, sim CPU {:.1} s, errors {}, unacknowledged {}{check} ({:.0} s)",
        r.offered_per_s,
        r.acked_per_s,
        r.pubacked_per_s,
        r.server_cpu_s,
        r.server_rss_mib,
        r.sim_cpu_s,
        r.error_total(),
        r.unacknowledged,
        r.wall.as_secs_f64(),
    );
    if let Some(why) = r.unsustained(p99_bound) {
        eprintln!("    not sustained: {why}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridges::run::tests::result;
    use crate::database::Engine;

    #[test]
    fn mosquitto_and_the_gateway_alternate_round_by_round() {
        let targets = [
            Target::Mosquitto,
            Target::Gateway(Engine::Sqlite),
            Target::Gateway(Engine::Postgres),
        ];
        let s = schedule(&targets, 2, 500.0);
        let order: Vec<Target> = s.iter().map(|r| r.target).collect();
        assert_eq!(order, [targets, targets].concat());
        assert!(s.iter().all(|r| r.rate == 500.0));
        let numbers: Vec<u32> = s.iter().map(|r| r.number).collect();
        assert_eq!(numbers, (1..=6).collect::<Vec<_>>());
    }

    #[test]
    fn a_target_stops_stepping_at_its_first_unsustained_step() {
        let bound = Duration::from_millis(50);
        let gw = Target::Gateway(Engine::Sqlite);
        let step = [
            result(Target::Mosquitto, 2000.0, 1990.0, 2.0),
            result(gw, 2000.0, 1500.0, 400.0),
        ];
        assert_eq!(still_sustaining(&step, bound), vec![Target::Mosquitto]);
        let all = [
            result(Target::Mosquitto, 1000.0, 1000.0, 1.0),
            result(gw, 1000.0, 999.0, 8.0),
            step[0].clone(),
            step[1].clone(),
        ];
        let best = highest_sustained(&[Target::Mosquitto, gw], &all, bound);
        assert_eq!(best[0].1.map(|r| r.spec.rate), Some(2000.0));
        assert_eq!(best[1].1.map(|r| r.spec.rate), Some(1000.0));
        let none = highest_sustained(&[gw], &all[3..], bound);
        assert!(none[0].1.is_none());
    }
}
