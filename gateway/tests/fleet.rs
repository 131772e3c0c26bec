//! The simulator's fleet against the real server, over real sockets: 1 000
//! locks and 50 bridges on CoAP and MQTT, with 5 % of datagrams and publishes
//! lost and 5 % duplicated. Whatever the network does, every report the
//! simulator saw acknowledged is in the database exactly once, and the
//! dashboard saw each stored report announced exactly once. Run against
//! SQLite and PostgreSQL.

mod common;

use common::{Dashboard, Engine, Harness};
use device_sim::fleet::{generate, FleetSpec};
use device_sim::net::NetFaults;
use device_sim::run::{self, RunReport, SimConfig};
use schemas::device::UplinkKind;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// The fleet: 1 000 locks, 50 bridges.
const LOCKS: usize = 1_000;
const BRIDGES: usize = 50;
/// How long the fleet generates reports; retries continue after it.
const RUN_FOR: Duration = Duration::from_secs(8);
/// Ample for every lost report to be retried to success on a loaded machine.
const DRAIN: Duration = Duration::from_secs(60);

type Key = (String, u32);

async fn lossy_duplicating_fleet_is_stored_and_announced_exactly_once(engine: Engine) {
    let fleet = generate(&FleetSpec {
        locks: LOCKS,
        bridges: BRIDGES,
        orgs: 4,
        mqtt_share: 0.1,
        seed: 11,
    })
    .unwrap();
    // Register it the way an operator does: through the fleet file.
    let mut csv = Vec::new();
    fleet.write_to(&mut csv).unwrap();
    let parsed =
        dispatcher::import::read_fleet(&csv[..], &dispatcher::Registry::default()).unwrap();
    let h = Harness::start(engine, &parsed).await;
    let dash = Dashboard::subscribe(h.server.mqtt_addr, &["events/v1/#"]).await;

    let config = SimConfig {
        gateway: "127.0.0.1".into(),
        coap_port: h.server.coap_addr.port(),
        mqtt_port: h.server.mqtt_addr.port(),
        speedup: 600.0,
        duration: Some(RUN_FOR),
        drain_timeout: DRAIN,
        faults: NetFaults::new(0.05, 0.05).unwrap(),
        seed: 5,
        ack_timeout: Duration::from_millis(300),
        mqtt_ack_timeout: Duration::from_secs(1),
        ..SimConfig::default()
    };
    let report = run::run(config, fleet).await.unwrap();
    let s = &report.stats;
    assert!(
        report.all_acknowledged(),
        "every report is acknowledged in the end: {s}\n{:?}",
        &report.unacknowledged[..report.unacknowledged.len().min(5)]
    );
    assert!(
        s.dropped > 0 && s.dup_injected > 0,
        "faults were injected: {s}"
    );
    // A report dropped from a full outbox may have been stored without its
    // ack reaching the lock; the comparison below needs none.
    assert_eq!(s.abandoned, 0, "no lock's outbox overflowed: {s}");
    assert!(
        report.acknowledged.len() > 1_000,
        "a meaningful volume: {s}"
    );

    let (acked_heartbeats, acked_events) = acknowledged(&report);
    // The bridges' goodbyes are still in the pipeline when the run returns:
    // wait until the dashboard has seen everything before auditing.
    dash.wait_for(60, "an event for every stored report", |m| {
        let count = |suffix: &str| m.iter().filter(|(t, _)| t.ends_with(suffix)).count();
        count("/heartbeat") >= acked_heartbeats.len() && count("/connectivity") >= 2 * BRIDGES
    })
    .await;
    let audit = h.server.store.audit().await.unwrap();
    let stored_heartbeats = unique("stored heartbeat", audit.heartbeats.iter().cloned());
    let stored_events = unique("stored event", audit.events.iter().cloned());
    assert_eq!(
        stored_heartbeats, acked_heartbeats,
        "heartbeats stored = heartbeats acknowledged"
    );
    assert_eq!(
        stored_events, acked_events,
        "activity events stored = events acknowledged"
    );
    // Each bridge came online and said goodbye.
    assert_eq!(audit.bridge_changes, 2 * BRIDGES as u64);

    // The dashboard: one heartbeat event per stored heartbeat, each stored
    // activity event inside exactly one activity event, one connectivity
    // event per change.
    // Late duplicates, if any, would arrive right behind.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let published_heartbeats = unique(
        "heartbeat event",
        dash.with_suffix("/heartbeat").iter().map(|e| {
            (
                e["lock_id"].as_str().unwrap().to_string(),
                e["seq"].as_u64().unwrap() as u32,
            )
        }),
    );
    assert_eq!(published_heartbeats, stored_heartbeats);
    let published_events = unique(
        "activity entry",
        dash.with_suffix("/activity").iter().flat_map(|e| {
            let lock = e["lock_id"].as_str().unwrap().to_string();
            e["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |x| (lock.clone(), x["seq"].as_u64().unwrap() as u32))
                .collect::<Vec<_>>()
        }),
    );
    assert_eq!(published_events, stored_events);
    let connectivity = dash.with_suffix("/connectivity");
    assert_eq!(connectivity.len(), 2 * BRIDGES);
    assert_eq!(
        connectivity.iter().filter(|e| e["online"] == true).count(),
        BRIDGES
    );
    dash.assert_all_valid();

    // The server saw the faults and said so.
    let (_, metrics) = common::http_get(h.server.http_addr, "/metrics")
        .await
        .unwrap();
    for needle in [
        "lockfleet_coap_retransmissions_total",
        "lockfleet_devices_online{kind=\"lock\"}",
        "lockfleet_mqtt_connections",
        "lockfleet_oscore_requests_verified_total",
    ] {
        assert!(metrics.contains(needle), "{needle} is exported:\n{metrics}");
    }
    // A duplicated MQTT publish carries the same OSCORE sequence number as
    // its first copy: a replay, refused (the first copy was stored and
    // acknowledged). A report resent after a lost answer is protected
    // afresh and is a duplicate by its device sequence number.
    assert!(
        metrics.contains("lockfleet_uplinks_duplicate_total")
            || metrics.contains("reason=\"replay\""),
        "duplicates or replays are counted:\n{metrics}"
    );
    dash.close().await;
    h.stop().await;
}

/// (lock, seq) of acknowledged heartbeats and (lock, event seq) of the
/// events in acknowledged log batches.
fn acknowledged(report: &RunReport) -> (HashSet<Key>, HashSet<Key>) {
    let mut heartbeats = HashSet::new();
    let mut events = HashSet::new();
    for r in &report.acknowledged {
        match r.kind {
            UplinkKind::Heartbeat => {
                assert!(
                    heartbeats.insert((r.lock_id.clone(), r.seq)),
                    "the ledger lists each report once"
                );
            }
            UplinkKind::ActivityLog => {
                events.extend(r.event_seqs.clone().map(|s| (r.lock_id.clone(), s)))
            }
            // Job reports store no telemetry rows (no jobs in this run).
            UplinkKind::JobReport => {}
        }
    }
    (heartbeats, events)
}

/// The keys as a set, failing on the first one seen twice.
fn unique(what: &str, keys: impl Iterator<Item = Key>) -> HashSet<Key> {
    let mut seen = HashMap::new();
    for k in keys {
        *seen.entry(k).or_insert(0u32) += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "{what} appears more than once: {twice:?}");
    seen.into_keys().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_lossy_duplicating_fleet_is_stored_and_announced_exactly_once() {
    lossy_duplicating_fleet_is_stored_and_announced_exactly_once(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lossy_duplicating_fleet_is_stored_and_announced_exactly_once() {
    lossy_duplicating_fleet_is_stored_and_announced_exactly_once(Engine::Postgres).await;
}
