//! `loadtest memory` end to end: the real binary imports two small fleets,
//! starts the real gateway on each, has every lock send one heartbeat, and
//! reports bytes per lock in Markdown and JSON. The figures of fleets this
//! small are noise-sized, so the test checks the measurement happened (both
//! fleets, every moment, every lock heard), not its value.

mod common;

use common::run_loadtest;
use std::time::Duration;

/// Two imports, two gateways, two short passes; normally ~15 s.
const INVOCATION_TIMEOUT: Duration = Duration::from_secs(240);

#[test]
fn a_tiny_invocation_measures_both_fleets_at_each_moment() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let json_path = dir.path().join("memory.json");
    let out = run_loadtest(
        &[
            "memory",
            "--locks",
            "300",
            "--baseline-locks",
            "100",
            "--rate",
            "600",
            "--settle",
            "200ms",
            "--json",
            json_path.to_str().expect("a UTF-8 path"),
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
    for needle in [
        "| registered (after /readyz) |",
        "| after one heartbeat each |",
        "| peak over the gateway's life |",
        "* 300 locks: import ",
        "locks heard in the pass",
    ] {
        assert!(stdout.contains(needle), "no {needle:?} in:\n{stdout}");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).expect("the JSON report"))
            .expect("the JSON report parses");
    assert_eq!(json["schema_version"], 1, "{json}");
    assert_eq!(json["mix"], "memory", "{json}");
    let fleets = json["fleets"].as_array().expect("fleets");
    assert_eq!(fleets.len(), 2, "{json}");
    assert_eq!(
        (&fleets[0]["locks"], &fleets[1]["locks"]),
        (&100.into(), &300.into())
    );
    for fleet in fleets {
        assert!(fleet["registered"]["current"].as_u64() > Some(0), "{fleet}");
        assert!(fleet["after_pass"]["current"].as_u64() > Some(0), "{fleet}");
        // A lock whose one heartbeat falls at the very end of the pass
        // may miss it; nearly all are heard.
        let (heard, locks) = (fleet["locks_heard"].as_u64(), fleet["locks"].as_u64());
        assert!(
            heard.zip(locks).is_some_and(|(h, l)| h * 10 >= l * 9),
            "{fleet}"
        );
    }
    for moment in ["registered", "after_one_heartbeat_each", "peak"] {
        assert!(
            json["bytes_per_lock"][moment]
                .as_f64()
                .is_some_and(f64::is_finite),
            "{moment}: {json}"
        );
    }
}
