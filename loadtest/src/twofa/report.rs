//! The Markdown of `loadtest twofa`: medians over the runs, each run's
//! figures, and the database check.

use super::drive::{Leg, PhaseFigures};
use super::{RunFigures, TwoFactorArgs};
use crate::database::Engine;
use crate::machine::{self, Machine};
use crate::stats::{median, ratio};
use std::fmt::Write as _;

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

fn fmt_ratio(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}x"))
}

fn failures(p: &PhaseFigures) -> String {
    if p.failures.is_empty() {
        return "none".to_string();
    }
    p.failures
        .iter()
        .map(|(why, n)| format!("{why} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One line per run for the progress output.
pub fn run_line(r: &RunFigures) -> String {
    let p = |phase: &PhaseFigures, leg: Leg, f: fn(&super::Quantiles) -> f64| {
        fmt(phase.leg(leg).map(f), 1)
    };
    format!(
        "    heartbeats {:.0}/s (p50 {} ms, p99 {} ms); unlocks {:.0}/s: challenge p50 {} ms, p99 {} ms, \
         /otp p99 {} ms; throughput: {:.0} heartbeats/s, {:.0} challenges/s, {:.0} verifications/s; \
         not ok: {}; allowed {} answered, {} in the database, {} logged",
        r.baseline.ok_per_s,
        p(&r.baseline, Leg::Heartbeat, |q| q.p50),
        p(&r.baseline, Leg::Heartbeat, |q| q.p99),
        r.challenges.ok_per_s,
        p(&r.challenges, Leg::Challenge, |q| q.p50),
        p(&r.challenges, Leg::Challenge, |q| q.p99),
        p(&r.challenges, Leg::Verification, |q| q.p99),
        r.heartbeat_throughput.ok_per_s,
        r.opened.ok_per_s,
        r.verification.ok_per_s,
        r.challenges.failed() + r.baseline.failed() + r.opened.failed() + r.verification.failed(),
        r.allowed_answers,
        r.allowed_in_db,
        r.allowed_logged,
    )
}

/// True when every allowed answer is one allowed challenge and one log entry.
pub fn database_agrees(r: &RunFigures) -> bool {
    i64::try_from(r.allowed_answers).is_ok_and(|a| a == r.allowed_in_db && a == r.allowed_logged)
}

pub fn markdown(
    command_line: &str,
    machine: &Machine,
    postgres_version: Option<&str>,
    args: &TwoFactorArgs,
    engine: Engine,
    runs: &[RunFigures],
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## 2FA unlock: challenge latency at {:.0} challenges/s and verification throughput ({engine})\n",
        args.rate
    );
    machine::report_header(&mut out, command_line, machine, postgres_version);
    let _ = writeln!(
        out,
        "{} people, one INB1-2FA lock each, OSCORE-protected CoAP; the gateway's webhook notifier \
         calls a local SMS provider stand-in (a real HTTP server). {} runs, each on a fresh \
         database and gateway; medians of the runs. Open-loop phases offer {:.0}/s for {} s \
         (the first {:.0} % not counted) and measure every latency from the operation's due time \
         (coordinated omission accounted for); throughput phases keep {} operations outstanding.\n",
        args.people,
        runs.len(),
        args.rate,
        args.duration.as_secs_f64(),
        args.warmup_share * 100.0,
        args.window,
    );
    let med = |f: &dyn Fn(&RunFigures) -> Option<f64>| median(runs.iter().filter_map(f));
    let _ = writeln!(
        out,
        "### Latency at {:.0}/s: heartbeats (baseline), then 2FA unlocks\n",
        args.rate
    );
    let _ = writeln!(
        out,
        "| leg | p50 ms | p90 ms | p99 ms | p99.9 ms | p50 vs heartbeat | p99 vs heartbeat |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    let hb50 = med(&|r| r.baseline.leg(Leg::Heartbeat).map(|q| q.p50));
    let hb99 = med(&|r| r.baseline.leg(Leg::Heartbeat).map(|q| q.p99));
    type Phase = fn(&RunFigures) -> &PhaseFigures;
    let rows: [(&str, Phase, Leg); 5] = [
        (
            "heartbeat answer (baseline)",
            |r| &r.baseline,
            Leg::Heartbeat,
        ),
        (
            "`/2fa` answer (passcode checked, OTP sent)",
            |r| &r.challenges,
            Leg::PasscodeAnswer,
        ),
        (
            "**challenge: lock request to notifier call**",
            |r| &r.challenges,
            Leg::Challenge,
        ),
        (
            "`/otp` answer (verification)",
            |r| &r.challenges,
            Leg::Verification,
        ),
        (
            "whole unlock (passcode due to `allowed`)",
            |r| &r.challenges,
            Leg::Unlock,
        ),
    ];
    for (name, phase, leg) in rows {
        let q = |f: fn(&super::Quantiles) -> f64| med(&|r| phase(r).leg(leg).map(f));
        let (p50, p99) = (q(|q| q.p50), q(|q| q.p99));
        let vs =
            |a: Option<f64>, b: Option<f64>| fmt_ratio(a.zip(b).and_then(|(a, b)| ratio(a, b)));
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {} | {} |",
            fmt(p50, 2),
            fmt(q(|q| q.p90), 2),
            fmt(p99, 2),
            fmt(q(|q| q.p999), 2),
            vs(p50, hb50),
            vs(p99, hb99),
        );
    }
    let hb_rate = med(&|r| Some(r.baseline.ok_per_s));
    let unlock_rate = med(&|r| Some(r.challenges.ok_per_s));
    let _ = writeln!(
        out,
        "\nAchieved in the steady window: {} heartbeats/s and {} unlocks/s (each one challenge \
         and one verification) of {:.0} offered.\n",
        fmt(hb_rate, 0),
        fmt(unlock_rate, 0),
        args.rate
    );

    let _ = writeln!(out, "### Throughput ({} outstanding)\n", args.window);
    let _ = writeln!(out, "| | per second | vs heartbeats |");
    let _ = writeln!(out, "|---|---:|---:|");
    let hb_max = med(&|r| Some(r.heartbeat_throughput.ok_per_s));
    let opened = med(&|r| Some(r.opened.ok_per_s));
    let verified = med(&|r| Some(r.verification.ok_per_s));
    let _ = writeln!(
        out,
        "| heartbeats answered (baseline) | {} | 1.00x |",
        fmt(hb_max, 0)
    );
    let _ = writeln!(
        out,
        "| challenges opened (passcode to OTP at the phone) | {} | {} |",
        fmt(opened, 0),
        fmt_ratio(opened.zip(hb_max).and_then(|(a, b)| ratio(a, b)))
    );
    let _ = writeln!(
        out,
        "| **OTP verifications** (`/otp` answered `allowed`) | {} | {} |",
        fmt(verified, 0),
        fmt_ratio(verified.zip(hb_max).and_then(|(a, b)| ratio(a, b)))
    );

    let _ = writeln!(out, "\n### Cost\n");
    let _ = writeln!(out, "| | median |");
    let _ = writeln!(out, "|---|---:|");
    let _ = writeln!(
        out,
        "| gateway CPU per heartbeat, ms | {} |",
        fmt(med(&|r| Some(r.cpu_ms_per_heartbeat)), 3)
    );
    let _ = writeln!(
        out,
        "| gateway CPU per unlock (challenge + verification), ms | {} |",
        fmt(med(&|r| Some(r.cpu_ms_per_unlock)), 3)
    );
    let _ = writeln!(
        out,
        "| load generator CPU per heartbeat / per unlock, ms | {} / {} |",
        fmt(med(&|r| Some(r.sim_cpu_ms_per_heartbeat)), 3),
        fmt(med(&|r| Some(r.sim_cpu_ms_per_unlock)), 3)
    );
    let _ = writeln!(
        out,
        "| of which Argon2id per passcode (gateway's mean), ms | {} |",
        fmt(med(&|r| r.mean_hash_ms), 3)
    );
    let _ = writeln!(
        out,
        "| webhook call (gateway's mean), ms | {} |",
        fmt(med(&|r| r.mean_notifier_ms), 3)
    );
    let _ = writeln!(
        out,
        "| gateway peak RSS, MiB | {} |",
        fmt(med(&|r| Some(r.gateway_rss_mib)), 1)
    );
    let _ = writeln!(
        out,
        "| setting up the people through the command API, s | {} |",
        fmt(med(&|r| Some(r.setup.as_secs_f64())), 1)
    );

    let _ = writeln!(out, "\n### Each run\n");
    let _ = writeln!(
        out,
        "| run | heartbeats/s | unlocks/s | challenge p99 ms | heartbeat throughput /s | verifications/s | not ok | allowed: answered / in database / logged | gateway WARN/ERROR |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|---|---|");
    for (i, r) in runs.iter().enumerate() {
        let not_ok = [
            ("baseline", &r.baseline),
            ("unlocks", &r.challenges),
            ("heartbeat throughput", &r.heartbeat_throughput),
            ("challenges", &r.opened),
            ("verifications", &r.verification),
        ]
        .iter()
        .filter(|(_, p)| p.failed() > 0)
        .map(|(name, p)| format!("{name}: {}", failures(p)))
        .collect::<Vec<_>>();
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {} | {:.0} | {:.0} | {} | {} / {} / {}{} | {}/{} |",
            i + 1,
            r.baseline.ok_per_s,
            r.challenges.ok_per_s,
            fmt(r.challenges.leg(Leg::Challenge).map(|q| q.p99), 2),
            r.heartbeat_throughput.ok_per_s,
            r.verification.ok_per_s,
            if not_ok.is_empty() {
                "none".to_string()
            } else {
                not_ok.join("; ")
            },
            r.allowed_answers,
            r.allowed_in_db,
            r.allowed_logged,
            if database_agrees(r) {
                ""
            } else {
                " **MISMATCH**"
            },
            r.gateway_warnings,
            r.gateway_errors,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_check_needs_all_three_counts_equal() {
        let mut r = RunFigures {
            allowed_answers: 7,
            allowed_in_db: 7,
            allowed_logged: 7,
            ..RunFigures::default()
        };
        assert!(database_agrees(&r));
        r.allowed_logged = 6;
        assert!(!database_agrees(&r));
        r.allowed_logged = 7;
        r.allowed_in_db = 8;
        assert!(!database_agrees(&r));
    }
}
