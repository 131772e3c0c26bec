//! `loadtest ingest` end to end, as a user runs it: the real binary drives a
//! real gateway process (SQLite) through one baseline and one candidate run
//! of a tiny fleet, and prints a report with both and their ratio, and
//! writes the JSON report and the PNG chart asked for.
//!
//! The gateway binary is the one Cargo built for this workspace in the same
//! profile (`target/<profile>/gateway`, beside this crate's binaries). It is
//! built by `cargo build` / `cargo nextest run --workspace`; when only this
//! crate was built, the test fails saying to run `cargo build -p gateway`.

mod common;

use common::run_loadtest;
use std::process::Command;
use std::time::Duration;

/// The whole invocation: two runs of 2 s each plus imports, start-ups,
/// drains and stops. Normally ~10 s; generous for a loaded 2-core machine.
const INVOCATION_TIMEOUT: Duration = Duration::from_secs(240);

#[test]
fn a_tiny_sqlite_invocation_reports_baseline_and_group_commit() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let json_path = dir.path().join("result.json");
    let chart_path = dir.path().join("result.png");
    let out = run_loadtest(
        &[
            "ingest",
            "--engine",
            "sqlite",
            "--runs",
            "1",
            "--locks",
            "50",
            "--rate",
            "100",
            "--duration",
            "2s",
            "--progress-every",
            "1s",
            "--json",
            json_path.to_str().expect("a UTF-8 temporary path"),
            "--chart",
            chart_path.to_str().expect("a UTF-8 temporary path"),
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

    // Progress named each run.
    assert!(stderr.contains("run 1/2: sqlite · baseline"), "{stderr}");
    assert!(
        stderr.contains("run 2/2: sqlite · group commit"),
        "{stderr}"
    );
    // The report: one row per configuration, the ratio, the machine and command.
    for needle in [
        "| sqlite | baseline: --commit-max-batch 1 | 100 |",
        "| sqlite | group commit (defaults) | 100 |",
        "sqlite: group commit / baseline = ",
        "Machine: ",
        "Command: `",
        "--rate 100",
    ] {
        assert!(stdout.contains(needle), "no {needle:?} in:\n{stdout}");
    }
    // Both runs acknowledged heartbeats in the steady window, and the
    // baseline committed one report per transaction.
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("| sqlite |"))
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    for row in &rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // | engine | config | offered | acked median (range) | ...
        let acked: f64 = cells[4]
            .trim_start_matches("**")
            .split("**")
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("acked cell {:?} in {row}", cells[4]));
        assert!(acked > 0.0, "{row}");
    }
    let baseline_batch = rows[0].split('|').map(str::trim).nth(9);
    assert_eq!(baseline_batch, Some("1.0"), "{}", rows[0]);

    // The files asked for, named on stderr.
    assert!(
        stderr.contains(&format!("JSON report: {}", json_path.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("chart: {}", chart_path.display())),
        "{stderr}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).expect("the JSON report"))
            .expect("the JSON report parses");
    assert_eq!(json["schema_version"], 1, "{json}");
    assert_eq!(json["settings"]["locks"], 50, "{json}");
    let runs = json["runs"].as_array().expect("runs");
    let configs: Vec<&str> = runs.iter().filter_map(|r| r["config"].as_str()).collect();
    assert_eq!(configs, ["baseline", "candidate"], "{json}");
    for run in runs {
        // A 2 s run sampled every second, its drain after it.
        let timeline = run["timeline"].as_array().expect("a time line");
        assert!(timeline.len() >= 2, "{run}");
        let acked: f64 = timeline
            .iter()
            .filter_map(|p| p["acked_heartbeats_per_s"].as_f64())
            .sum();
        assert!(acked > 0.0, "{run}");
        assert!(
            timeline
                .iter()
                .all(|p| p["gateway_rss_mib"].as_f64() > Some(0.0)),
            "{run}"
        );
        assert!(
            timeline
                .iter()
                .any(|p| p["latency_p50_ms"].as_f64() > Some(0.0)),
            "{run}"
        );
    }
    assert_eq!(json["ratios"][0]["config"], "candidate", "{json}");
    let png = std::fs::read(&chart_path).expect("the chart");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
}

#[test]
fn a_missing_gateway_binary_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["ingest", "--gateway-bin", "/nonexistent/gateway"])
        .output()
        .expect("the loadtest binary runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cargo build --release -p gateway"),
        "{stderr}"
    );
}
