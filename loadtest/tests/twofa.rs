//! `loadtest twofa` end to end, as a user runs it: the real binary sets up
//! a few dozen people through a real gateway's command API, drives their
//! 2FA locks over OSCORE-protected CoAP with OTPs delivered through the
//! gateway's webhook to a real HTTP server, and reports latency and
//! throughput beside heartbeats, with the database check of every run.

mod common;

use common::run_loadtest;
use std::time::Duration;

/// One run: import, 120 commands of set-up, four phases of at most 2 s and
/// the stop. Normally ~15 s in a debug build; generous for a loaded machine.
const INVOCATION_TIMEOUT: Duration = Duration::from_secs(300);

#[test]
fn a_tiny_invocation_measures_challenges_and_verifications_and_checks_the_database() {
    let out = run_loadtest(
        &[
            "twofa",
            "--runs",
            "1",
            "--people",
            "40",
            "--rate",
            "20",
            "--duration",
            "2s",
            "--window",
            "8",
        ],
        INVOCATION_TIMEOUT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "loadtest failed ({}):\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("40 people set up through the command API"),
        "{stderr}"
    );
    for needle in [
        "## 2FA unlock: challenge latency at 20 challenges/s",
        "| heartbeat answer (baseline) |",
        "| **challenge: lock request to notifier call** |",
        "| **OTP verifications** (`/otp` answered `allowed`) |",
        "Command: `",
        "Machine: ",
    ] {
        assert!(stdout.contains(needle), "no {needle:?} in:\n{stdout}");
    }
    // Every leg was measured.
    for row in stdout.lines().filter(|l| {
        l.starts_with("| heartbeat answer")
            || l.starts_with("| `/2fa` answer")
            || l.starts_with("| **challenge")
            || l.starts_with("| `/otp` answer")
    }) {
        let p50 = row.split('|').map(str::trim).nth(2).unwrap_or("-");
        assert!(p50.parse::<f64>().is_ok_and(|v| v > 0.0), "no p50 in {row}");
    }
    // The run's row: nothing failed, and every allowed answer is one
    // allowed challenge and one log entry (40 unlocks + 40 verifications).
    let run = stdout
        .lines()
        .find(|l| l.starts_with("| 1 |"))
        .unwrap_or_else(|| panic!("no run row in:\n{stdout}"));
    assert!(run.contains("| none |"), "{run}");
    assert!(run.contains("| 80 / 80 / 80 |"), "{run}");
    assert!(!stdout.contains("MISMATCH"), "{stdout}");
}

#[test]
fn too_few_people_for_the_rate_is_refused_before_anything_starts() {
    let out = run_loadtest(
        &[
            "twofa",
            "--people",
            "10",
            "--rate",
            "100",
            "--duration",
            "1s",
        ],
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--people to at least 25"), "{stderr}");
}
