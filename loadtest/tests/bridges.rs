//! `loadtest bridges` end to end, as a user runs it: the real binary drives
//! a private Mosquitto and a real gateway process (SQLite) with the same
//! simulated bridges, one run each, and prints a report with both rows,
//! their ratio and the database check of the gateway run.
//!
//! Needs Debian's `mosquitto` (`.ci/run` installs it) and the gateway
//! binary of the same profile (see `tests/common`).

mod common;

use common::run_loadtest;
use std::process::Command;
use std::time::Duration;

/// Two runs of 2 s each plus start-ups, an import, drains and stops.
/// Normally ~15 s; generous for a loaded 2-core machine.
const INVOCATION_TIMEOUT: Duration = Duration::from_secs(240);

/// The bold median of an `acked` cell (`**123** (100–130)`).
fn bold_number(cell: &str) -> f64 {
    cell.trim_start_matches("**")
        .split("**")
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number in {cell:?}"))
}

#[test]
fn a_tiny_invocation_reports_mosquitto_and_the_gateway_with_the_database_checked() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let json_path = dir.path().join("bridges.json");
    let out = run_loadtest(
        &[
            "bridges",
            "--json",
            json_path.to_str().expect("a UTF-8 path"),
            "--bridges",
            "2",
            "--rate",
            "100",
            "--duration",
            "2s",
            "--runs",
            "1",
            "--progress-every",
            "1s",
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

    // Progress named each run, Mosquitto first, and printed progress lines.
    let m = stderr.find("run 1/2: mosquitto (PUBACK)").expect(&stderr);
    let g = stderr
        .find("run 2/2: gateway, sqlite (durable ack)")
        .expect(&stderr);
    assert!(m < g, "{stderr}");
    assert!(stderr.contains("] running: offered "), "{stderr}");

    // One row per configuration, each with acknowledged reports and PUBACKs.
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.starts_with("| mosquitto ") || l.starts_with("| gateway, sqlite"))
        .map(|l| l.split('|').map(str::trim).collect())
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    for cells in &rows {
        // | configuration | offered (generated) | acked | hb + logs | PUBACKs | ...
        assert!(bold_number(cells[3]) > 0.0, "{cells:?}");
        let pubacks: f64 = cells[5].parse().expect("a PUBACK rate");
        assert!(pubacks > 0.0, "{cells:?}");
    }
    assert!(rows[0][1].starts_with("mosquitto "), "{stdout}");
    assert_eq!(rows[0][12], "–", "Mosquitto has no database: {stdout}");
    assert_eq!(rows[1][12], "passed (1/1)", "{stdout}");
    for needle in [
        "gateway, sqlite (durable ack) / mosquitto = ",
        "PUBACKs per second, like for like",
        "**passed** in all 1 runs",
        "Machine: ",
        "Command: `",
        "--bridges 2",
    ] {
        assert!(stdout.contains(needle), "no {needle:?} in:\n{stdout}");
    }

    // The JSON report: both runs, with what the Markdown shows.
    assert!(
        stderr.contains(&format!("JSON report: {}", json_path.display())),
        "{stderr}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).expect("the JSON report"))
            .expect("the JSON report parses");
    assert_eq!(json["schema_version"], 1, "{json}");
    assert_eq!(json["mix"], "bridges", "{json}");
    assert_eq!(json["context"]["bridges"], 2, "{json}");
    let runs = json["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "{json}");
    assert_eq!(runs[0]["spec"]["target"], "mosquitto", "{json}");
    assert_eq!(runs[1]["spec"]["target"]["gateway"], "sqlite", "{json}");
    for run in runs {
        assert!(run["acked_per_s"].as_f64() > Some(0.0), "{run}");
        assert!(run["ack_latency"]["p99"].as_f64() > Some(0.0), "{run}");
    }
    assert!(runs[0]["db_check"].is_null(), "{json}");
    let check = &runs[1]["db_check"];
    assert_eq!(check["missing_heartbeats"], 0, "{json}");
    assert!(check["acked_heartbeats"].as_u64() > Some(0), "{json}");
}

#[test]
fn a_missing_mosquitto_fails_before_any_run_saying_what_to_do() {
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args([
            "bridges",
            "--gateway-bin",
            common::gateway_bin().to_str().expect("a UTF-8 path"),
            "--mosquitto-bin",
            "/nonexistent/mosquitto",
        ])
        .output()
        .expect("the loadtest binary runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("apt-get install mosquitto"), "{stderr}");
    assert!(stderr.contains("--no-mosquitto"), "{stderr}");
    assert!(!stderr.contains("run 1/"), "no run started: {stderr}");
}
