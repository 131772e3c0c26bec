//! The order of runs. Baseline, candidate and libcoap alternate (A B C A B
//! C ...) within each engine, so drift on a shared machine (another tenant,
//! thermal limits, the page cache filling) hits every configuration alike.
//! libcoap has no database, yet it runs in each engine's rotation, at that
//! engine's offered rate: its ratio to the candidate is then taken under the
//! same load and the same drift.
//! `--find-max` steps the offered rate up, every configuration still
//! sustaining at each step, until none does. libcoap steps with the first
//! engine only: the steps are the same for every engine and its ceiling does
//! not depend on one, and it needs the most steps.

use crate::database::Engine;
use crate::error::Result;
use crate::run::{self, RunResult, RunSpec, Setup, Variant};

/// Most `--find-max` steps per engine: with the default factor the last
/// offers about 70 times the first (from 1 000/s: beyond anything a 2-core
/// machine sustains).
pub const MAX_FIND_MAX_STEPS: u32 = 20;

/// The configurations of an invocation, in the order they alternate.
pub fn variants(libcoap: bool) -> Vec<Variant> {
    let mut v = vec![Variant::Baseline, Variant::Candidate];
    if libcoap {
        v.push(Variant::Libcoap);
    }
    v
}

/// Runs of a fixed-rate invocation, in order; `rate` gives each engine's
/// offered heartbeats per second; `libcoap` adds its runs to the rotation.
pub fn schedule(
    engines: &[Engine],
    runs: u32,
    libcoap: bool,
    rate: impl Fn(Engine) -> f64,
) -> Vec<RunSpec> {
    let mut out = Vec::new();
    for &engine in engines {
        let rate = rate(engine);
        for _ in 0..runs {
            for variant in variants(libcoap) {
                out.push(RunSpec {
                    engine,
                    variant,
                    rate,
                    number: out.len() as u32 + 1,
                    pending_jobs: false,
                });
            }
        }
    }
    out
}

/// The offered rate of `--find-max` step `step` (0 is `start`).
pub fn step_rate(start: f64, factor: f64, step: u32) -> f64 {
    (start * factor.powi(step as i32)).round()
}

fn label(spec: &RunSpec, of: &str) -> String {
    format!(
        "run {of}: {} · {} · offered {:.0} heartbeats/s",
        spec.engine, spec.variant, spec.rate
    )
}

/// Does every run of `specs`; fails at the first run that fails. Reports
/// still unacknowledged at the end are a figure, not a failure: a rate above
/// capacity leaves a backlog in the locks' outboxes (where a real lock keeps
/// them too), and measuring capacity means offering more than it.
pub async fn fixed(setup: &Setup, specs: &[RunSpec]) -> Result<Vec<RunResult>> {
    let mut results = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        eprintln!("\n{}", label(spec, &format!("{}/{}", i + 1, specs.len())));
        let r = run::run(setup, *spec).await?;
        print_result(&r);
        results.push(r);
    }
    Ok(results)
}

/// The configurations `--find-max` steps for the `nth` engine (0 first):
/// libcoap only with the first.
pub fn find_max_variants(nth: usize, libcoap: bool) -> Vec<Variant> {
    variants(libcoap && nth == 0)
}

/// `--find-max`: per engine, from `start` up by `factor`, one run of each
/// configuration still sustaining; stops when none sustains a step.
/// Returns every run done.
pub async fn find_max(
    setup: &Setup,
    engines: &[Engine],
    start: f64,
    factor: f64,
    libcoap: bool,
) -> Result<Vec<RunResult>> {
    let mut results = Vec::new();
    let mut number = 0;
    for (nth, &engine) in engines.iter().enumerate() {
        let mut alive = find_max_variants(nth, libcoap);
        for step in 0..MAX_FIND_MAX_STEPS {
            let rate = step_rate(start, factor, step);
            let mut still = Vec::new();
            for &variant in &alive {
                number += 1;
                let spec = RunSpec {
                    engine,
                    variant,
                    rate,
                    number,
                    pending_jobs: false,
                };
                eprintln!("\n{}", label(&spec, &format!("find-max step {}", step + 1)));
                let r = run::run(setup, spec).await?;
                print_result(&r);
                if r.sustained() {
                    still.push(variant);
                } else {
                    eprintln!("    not sustained: this configuration stops stepping");
                }
                results.push(r);
            }
            alive = still;
            if alive.is_empty() {
                break;
            }
        }
    }
    Ok(results)
}

fn print_result(r: &RunResult) {
    let lat = |q: Option<crate::run::Quantiles>| {
        q.map(|q| format!("p50 {:.1} ms p99 {:.1} ms", q.p50, q.p99))
            .unwrap_or_else(|| "no latency".into())
    };
    if r.spec.variant == Variant::Libcoap {
        eprintln!(
            "  => answered {:.0} heartbeats/s + {:.0} logs/s (any code), {}, coap-server CPU {:.1} s, \
             RSS {:.1} MiB, simulator CPU {:.1} s ({}), unanswered {} ({:.0} s)",
            r.answered_heartbeats_per_s,
            r.answered_logs_per_s,
            lat(r.answer_latency_ms),
            r.gateway_cpu_s,
            r.gateway_rss_mib,
            r.sim_cpu_s,
            r.sim_cores()
                .map_or_else(|| "-".into(), |c| format!("{c:.2} cores")),
            r.unacknowledged,
            r.wall.as_secs_f64(),
        );
        return;
    }
    let lat = lat(r.latency_ms);
    eprintln!(
        "  => acked {:.0} heartbeats/s + {:.0} logs/s, {lat}, gateway CPU {:.1} s, \
         RSS {:.0} MiB, mean batch {}, errors {}, unacknowledged {} ({:.0} s)",
        r.acked_heartbeats_per_s,
        r.acked_logs_per_s,
        r.gateway_cpu_s,
        r.gateway_rss_mib,
        r.mean_batch
            .map(|b| format!("{b:.1}"))
            .unwrap_or_else(|| "-".into()),
        r.error_total(),
        r.unacknowledged,
        r.wall.as_secs_f64(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_and_candidate_alternate_within_each_engine() {
        let s = schedule(&[Engine::Sqlite, Engine::Postgres], 3, false, |e| match e {
            Engine::Sqlite => 100.0,
            Engine::Postgres => 200.0,
        });
        let order: Vec<(Engine, Variant)> = s.iter().map(|r| (r.engine, r.variant)).collect();
        use Engine::*;
        use Variant::*;
        assert_eq!(
            order,
            vec![
                (Sqlite, Baseline),
                (Sqlite, Candidate),
                (Sqlite, Baseline),
                (Sqlite, Candidate),
                (Sqlite, Baseline),
                (Sqlite, Candidate),
                (Postgres, Baseline),
                (Postgres, Candidate),
                (Postgres, Baseline),
                (Postgres, Candidate),
                (Postgres, Baseline),
                (Postgres, Candidate),
            ]
        );
        assert!(s[..6].iter().all(|r| r.rate == 100.0) && s[6..].iter().all(|r| r.rate == 200.0));
        let numbers: Vec<u32> = s.iter().map(|r| r.number).collect();
        assert_eq!(numbers, (1..=12).collect::<Vec<_>>());
    }

    #[test]
    fn libcoap_joins_the_rotation_of_every_engine_at_its_rate() {
        let s = schedule(&[Engine::Sqlite, Engine::Postgres], 2, true, |e| match e {
            Engine::Sqlite => 100.0,
            Engine::Postgres => 200.0,
        });
        use Variant::*;
        let order: Vec<Variant> = s.iter().map(|r| r.variant).collect();
        let abc = [Baseline, Candidate, Libcoap];
        assert_eq!(order, abc.repeat(4));
        let libcoap: Vec<(Engine, f64)> = s
            .iter()
            .filter(|r| r.variant == Libcoap)
            .map(|r| (r.engine, r.rate))
            .collect();
        assert_eq!(
            libcoap,
            vec![
                (Engine::Sqlite, 100.0),
                (Engine::Sqlite, 100.0),
                (Engine::Postgres, 200.0),
                (Engine::Postgres, 200.0)
            ]
        );
        let numbers: Vec<u32> = s.iter().map(|r| r.number).collect();
        assert_eq!(numbers, (1..=12).collect::<Vec<_>>());
    }

    #[test]
    fn find_max_steps_libcoap_with_the_first_engine_only() {
        use Variant::*;
        assert_eq!(
            find_max_variants(0, true),
            vec![Baseline, Candidate, Libcoap]
        );
        assert_eq!(find_max_variants(1, true), vec![Baseline, Candidate]);
        assert_eq!(find_max_variants(0, false), vec![Baseline, Candidate]);
    }

    #[test]
    fn find_max_steps_grow_geometrically() {
        assert_eq!(step_rate(1000.0, 1.25, 0), 1000.0);
        assert_eq!(step_rate(1000.0, 1.25, 1), 1250.0);
        assert_eq!(step_rate(1000.0, 1.25, 2), 1563.0);
    }
}
