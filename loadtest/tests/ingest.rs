//! `loadtest ingest` end to end, as a user runs it: the real binary drives a
//! real gateway process (SQLite) through one baseline and one candidate run
//! of a tiny fleet, then libcoap's real coap-server (Debian libcoap3-bin,
//! installed by `.ci/run`) at the same rate, and prints a report with all
//! three and the ratios, and writes the JSON report and the PNG chart asked
//! for.
//!
//! The gateway binary is the one Cargo built for this workspace in the same
//! profile (`target/<profile>/gateway`, beside this crate's binaries). It is
//! built by `cargo build` / `cargo nextest run --workspace`; when only this
//! crate was built, the test fails saying to run `cargo build -p gateway`.

mod common;

use common::run_loadtest;
use std::process::Command;
use std::time::Duration;

/// The whole invocation: three runs of 2 s each plus imports, start-ups,
/// drains and stops. Normally ~15 s; generous for a loaded 2-core machine.
const INVOCATION_TIMEOUT: Duration = Duration::from_secs(240);

/// The number in a bold median cell such as `**97** (97–97)`.
fn bold_median(cell: &str, row: &str) -> f64 {
    cell.trim_start_matches("**")
        .split("**")
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("median cell {cell:?} in {row}"))
}

#[test]
fn a_tiny_sqlite_invocation_reports_baseline_group_commit_and_libcoap() {
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

    // Progress named each run, in rotation.
    assert!(stderr.contains("run 1/3: sqlite · baseline"), "{stderr}");
    assert!(
        stderr.contains("run 2/3: sqlite · group commit"),
        "{stderr}"
    );
    assert!(
        stderr.contains("run 3/3: sqlite · libcoap coap-server"),
        "{stderr}"
    );
    // The report: one row per configuration, the ratios, the machine and command.
    for needle in [
        "| sqlite | baseline: --commit-max-batch 1 | 100 |",
        "| sqlite | group commit (defaults) | 100 |",
        "sqlite: group commit / baseline = ",
        "Raw CoAP ceiling: libcoap's `coap-server",
        "**sqlite: group commit / libcoap raw = ",
        "Machine: ",
        "Command: `",
        "--rate 100",
    ] {
        assert!(stdout.contains(needle), "no {needle:?} in:\n{stdout}");
    }
    // Both gateway runs acknowledged heartbeats in the steady window, and
    // the baseline committed one report per transaction.
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| {
            l.starts_with("| sqlite | baseline") || l.starts_with("| sqlite | group commit")
        })
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    for row in &rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // | engine | config | offered | acked median (range) | ...
        assert!(bold_median(cells[4], row) > 0.0, "{row}");
    }
    let baseline_batch = rows[0].split('|').map(str::trim).nth(9);
    assert_eq!(baseline_batch, Some("1.0"), "{}", rows[0]);

    // Both gateway runs checked the database: every acknowledged report
    // is there.
    assert_eq!(stdout.matches("| passed: ").count(), 2, "{stdout}");
    assert!(!stdout.contains("database check failed"), "{stdout}");

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
    assert_eq!(configs, ["baseline", "candidate", "libcoap"], "{json}");
    for run in runs {
        // A 2 s run sampled every second, its drain after it.
        let timeline = run["timeline"].as_array().expect("a time line");
        assert!(timeline.len() >= 2, "{run}");
        let libcoap = run["config"] == "libcoap";
        // What the run served: acknowledged, or for libcoap answered.
        let served = if libcoap {
            "answered_heartbeats_per_s"
        } else {
            "acked_heartbeats_per_s"
        };
        let per_s: f64 = timeline.iter().filter_map(|p| p[served].as_f64()).sum();
        assert!(per_s > 0.0, "{run}");
        if libcoap {
            // No acknowledgement, so no acknowledged round trip to chart.
            continue;
        }
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
    let against: Vec<&str> = json["ratios"]
        .as_array()
        .expect("ratios")
        .iter()
        .filter_map(|r| r["baseline"].as_str())
        .collect();
    assert_eq!(against, ["baseline", "libcoap"], "{json}");
    let png = std::fs::read(&chart_path).expect("the chart");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");

    // libcoap's row: it answered the same OSCORE-protected heartbeats (with
    // 4.02, having no OSCORE context), at a nonzero rate, and nothing was
    // left unanswered.
    let libcoap: Vec<&str> = stdout
        .split("Raw CoAP ceiling")
        .nth(1)
        .expect("the libcoap table")
        .lines()
        .filter(|l| l.starts_with("| sqlite | 100 |"))
        .collect();
    assert_eq!(libcoap.len(), 1, "{stdout}");
    let cells: Vec<&str> = libcoap[0].split('|').map(str::trim).collect();
    // | rotation of | offered | answered median (range) | logs/s | codes | ... | unanswered |
    assert!(bold_median(cells[3], libcoap[0]) > 0.0, "{}", libcoap[0]);
    assert_eq!(cells[5], "4.02", "{}", libcoap[0]);
    assert_eq!(cells[11], "0", "{}", libcoap[0]);
    // The ratio is a number.
    let ratio: f64 = stdout
        .split("group commit / libcoap raw = ")
        .nth(1)
        .and_then(|r| r.split('×').next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no ratio to libcoap in {stdout}"));
    assert!(ratio > 0.0, "{stdout}");
}

/// `PATH` of a directory with nothing in it: no coap-server to find.
fn empty_path() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temporary directory")
}

#[test]
fn without_coap_server_it_fails_before_any_run_saying_what_to_do() {
    let empty = empty_path();
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args([
            "ingest",
            "--gateway-bin",
            common::gateway_bin().to_str().unwrap(),
        ])
        .env("PATH", empty.path())
        .output()
        .expect("the loadtest binary runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in ["libcoap3-bin", "--no-libcoap"] {
        assert!(stderr.contains(needle), "no {needle:?} in {stderr}");
    }
    assert!(!stderr.contains("run 1/"), "a run started: {stderr}");
}

#[test]
fn no_libcoap_does_not_look_for_coap_server() {
    let empty = empty_path();
    // An unreachable PostgreSQL is the next check: reaching it proves the
    // coap-server lookup was skipped, without any run.
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args([
            "ingest",
            "--no-libcoap",
            "--locks",
            "10",
            "--engine",
            "postgres",
            "--postgres-url",
            "postgres://postgres@127.0.0.1:1/none",
            "--gateway-bin",
            common::gateway_bin().to_str().unwrap(),
        ])
        .env("PATH", empty.path())
        .output()
        .expect("the loadtest binary runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach PostgreSQL"), "{stderr}");
    assert!(!stderr.contains("libcoap3-bin"), "{stderr}");
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
