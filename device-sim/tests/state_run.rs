//! The state file across runs, against the test CoAP peer that stores each
//! (lock, seq) once and keeps each lock's OSCORE replay window as the
//! gateway does: a second run continues where the first ended (report seqs
//! and OSCORE sequence numbers), a crashed run leaves a reservation the next
//! one starts beyond, devices outside the fleet are kept, a file from before
//! OSCORE loads, a lost file means replays the gateway refuses, and a
//! malformed file stops the run before any report.

mod common;

use common::{coap_fleet, Behaviour, CoapServer};
use device_sim::lock::Counters;
use device_sim::persist::{StateError, StateOptions};
use device_sim::run::{self, RunError, RunReport, SimConfig};
use device_sim::state::{self, StateFile, RESERVATION};
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

/// 1 h of simulated time per 0.1 s: a 60-minute log interval every 100 ms.
const FAST: f64 = 36_000.0;

fn config(server: &CoapServer, state: &Path) -> SimConfig {
    SimConfig {
        gateway: server.addr.ip().to_string(),
        coap_port: server.addr.port(),
        speedup: FAST,
        ack_timeout: Duration::from_millis(40),
        drain_timeout: Duration::from_secs(20),
        duration: Some(Duration::from_secs(30)),
        state: Some(StateOptions::at(state)),
        ..SimConfig::default()
    }
}

fn read_state(path: &Path) -> StateFile {
    StateFile::parse(&std::fs::read(path).unwrap()).unwrap()
}

/// The acknowledged seqs of `lock`, in order.
fn seqs(report: &RunReport, lock: &str) -> Vec<u32> {
    let mut seqs: Vec<u32> = report
        .acknowledged
        .iter()
        .filter(|r| r.lock_id == lock)
        .map(|r| r.seq)
        .collect();
    seqs.sort_unstable();
    seqs
}

/// The acknowledged activity-event seqs of `lock`.
fn event_seqs(report: &RunReport, lock: &str) -> Vec<u32> {
    report
        .acknowledged
        .iter()
        .filter(|r| r.lock_id == lock)
        .flat_map(|r| r.event_seqs.clone())
        .collect()
}

#[tokio::test]
async fn a_second_run_continues_every_lock_s_seqs_and_the_peer_stores_all_of_it() {
    let fleet = coap_fleet(4, 9);
    let server = CoapServer::secure(Behaviour::default(), &fleet).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.csv.state");
    let cfg = || SimConfig {
        max_reports_per_device: Some(3),
        ..config(&server, &path)
    };

    let first = run::run(cfg(), fleet.clone()).await.unwrap();
    let second = run::run(cfg(), fleet.clone()).await.unwrap();

    assert!(first.all_acknowledged(), "{:?}", first.unacknowledged);
    assert!(second.all_acknowledged(), "{:?}", second.unacknowledged);
    for lock in &fleet.locks {
        let id = lock.id.as_str();
        let ended = first.counters[id];
        assert_eq!(seqs(&first, id), vec![1, 2, 3], "{id}");
        assert_eq!(ended.next_seq, 4, "{id}");
        assert_eq!(seqs(&second, id), vec![4, 5, 6], "{id}");
        let events_before = event_seqs(&first, id);
        let events_after = event_seqs(&second, id);
        assert!(
            events_after.iter().all(|e| *e >= ended.next_event_seq),
            "{id}: {events_before:?} then {events_after:?} from {ended:?}"
        );
        assert!(events_before.iter().all(|e| *e < ended.next_event_seq));
    }
    // Nothing was taken for a duplicate: every (lock, seq) reached the peer
    // once, and every event of both runs was stored.
    let seen = server.seen.lock().unwrap();
    assert_eq!(seen.delivered.len(), 4 * 6);
    assert!(seen.delivered.values().all(|n| *n == 1), "{seen:?}");
    let acked_events: HashSet<(String, u32)> = first
        .acknowledged
        .iter()
        .chain(&second.acknowledged)
        .flat_map(|r| r.event_seqs.clone().map(|e| (r.lock_id.clone(), e)))
        .collect();
    assert_eq!(acked_events, seen.events);
    // A clean end leaves the exact counters, no margin.
    let file = read_state(&path);
    assert_eq!(file.len(), 4);
    for (id, c) in &second.counters {
        assert_eq!(file.get(id), Some(*c), "{id}");
        assert_eq!(c.next_seq, 7);
        // One OSCORE sequence number per exchange, continued across runs.
        assert_eq!(c.next_oscore_seq, 7);
    }
    assert!(
        seen.security_refusals.is_empty(),
        "{:?}",
        seen.security_refusals
    );
}

#[tokio::test]
async fn after_a_crash_the_next_run_starts_beyond_the_reservation() {
    let fleet = coap_fleet(3, 4);
    let server = CoapServer::secure(Behaviour::default(), &fleet).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.csv.state");

    let handle = run::start(
        SimConfig {
            duration: None,
            ..config(&server, &path)
        },
        fleet.clone(),
    )
    .await
    .unwrap();
    // The reservation is on disk before any report goes out.
    let reserved = read_state(&path);
    let ceiling = state::reserve(Counters::START);
    assert_eq!(ceiling.next_seq, 1 + RESERVATION);
    assert_eq!(ceiling.next_oscore_seq, 1 + u64::from(RESERVATION));
    for lock in &fleet.locks {
        assert_eq!(reserved.get(&lock.id), Some(ceiling), "{}", lock.id);
    }
    assert!(
        handle.wait_acked_per_lock(2, Duration::from_secs(20)).await,
        "{}",
        handle.snapshot()
    );
    handle.abort().await;
    assert_eq!(read_state(&path), reserved, "no final save after a crash");
    let crashed: Vec<(String, u32)> = server
        .seen
        .lock()
        .unwrap()
        .delivered
        .keys()
        .cloned()
        .collect();
    assert!(crashed.len() >= 6);

    let next = run::run(
        SimConfig {
            max_reports_per_device: Some(2),
            ..config(&server, &path)
        },
        fleet.clone(),
    )
    .await
    .unwrap();
    assert!(next.all_acknowledged(), "{:?}", next.unacknowledged);
    for lock in &fleet.locks {
        let id = lock.id.as_str();
        let after = seqs(&next, id);
        assert_eq!(after, vec![ceiling.next_seq, ceiling.next_seq + 1], "{id}");
        let before_max = crashed
            .iter()
            .filter(|(l, _)| l == id)
            .map(|(_, s)| *s)
            .max();
        assert!(before_max.is_some_and(|m| m < ceiling.next_seq), "{id}");
        assert!(event_seqs(&next, id)
            .iter()
            .all(|e| *e >= ceiling.next_event_seq));
    }
    let seen = server.seen.lock().unwrap();
    assert!(seen.delivered.values().all(|n| *n == 1), "no seq reused");
    // Nor an OSCORE sequence number: the next run's start past the reservation.
    assert!(
        seen.security_refusals.is_empty(),
        "{:?}",
        seen.security_refusals
    );
    let after_crash: Vec<u64> = seen
        .oscore
        .iter()
        .filter(|(_, seq)| *seq >= ceiling.next_oscore_seq)
        .map(|(_, seq)| *seq)
        .collect();
    assert_eq!(after_crash.len(), 3 * 2, "{:?}", seen.oscore);
}

#[tokio::test]
async fn devices_outside_the_fleet_are_kept_an_old_file_loads_and_fresh_state_starts_over() {
    let fleet = coap_fleet(2, 6);
    let server = CoapServer::secure(Behaviour::default(), &fleet).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("subset.state");
    let (known, new) = (fleet.locks[0].id.clone(), fleet.locks[1].id.clone());
    // A state file from before OSCORE: no next_oscore_seq column.
    std::fs::write(
        &path,
        format!("lock_id,next_seq,next_event_seq\nNOT-IN-FLEET,777,888\n{known},100,200\n"),
    )
    .unwrap();
    let cfg = SimConfig {
        max_reports_per_device: Some(2),
        ..config(&server, &path)
    };

    let handle = run::start(cfg.clone(), fleet.clone()).await.unwrap();
    assert_eq!(
        handle.state_origin().unwrap().to_string(),
        format!(
            "device counters read from {}: 1 of 2 devices found, 1 other devices kept",
            path.display()
        )
    );
    let report = handle.finish().await.unwrap();
    assert_eq!(seqs(&report, &known), vec![100, 101]);
    assert_eq!(seqs(&report, &new), vec![1, 2]);
    let file = read_state(&path);
    assert_eq!(
        file.iter()
            .map(|(id, _)| id.to_string())
            .collect::<Vec<_>>(),
        vec!["NOT-IN-FLEET".to_string(), known.clone(), new.clone()]
    );
    assert_eq!(
        file.get("NOT-IN-FLEET"),
        Some(Counters {
            next_seq: 777,
            next_event_seq: 888,
            next_oscore_seq: 1,
        })
    );
    assert_eq!(file.get(&known), Some(report.counters[&known]));
    assert_eq!(report.counters[&known].next_oscore_seq, 3, "started at 1");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with(state::HEADER),
        "rewritten in the new format: {text}"
    );

    // Fresh state is for a fresh gateway database (a new peer here): the old
    // one would refuse the restarted OSCORE sequence numbers as replays.
    let fresh_server = CoapServer::secure(Behaviour::default(), &fleet).await;
    let fresh = SimConfig {
        state: Some(StateOptions {
            path: path.clone(),
            fresh: true,
        }),
        gateway: fresh_server.addr.ip().to_string(),
        coap_port: fresh_server.addr.port(),
        ..cfg
    };
    let report = run::run(fresh, fleet).await.unwrap();
    assert_eq!(seqs(&report, &known), vec![1, 2]);
    // The file is replaced by this fleet's counters alone.
    let file = read_state(&path);
    assert_eq!(file.len(), 2);
    assert_eq!(file.get(&known), Some(report.counters[&known]));
}

#[tokio::test]
async fn a_malformed_state_file_stops_the_run_before_any_report() {
    let server = CoapServer::insecure(Behaviour::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.csv.state");
    let garbage = "lock_id,next_seq,next_event_seq\nL000001,12,13\nL000002,twelve,13\n";
    std::fs::write(&path, garbage).unwrap();

    let err = run::start(config(&server, &path), coap_fleet(2, 1))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, RunError::State(StateError::Malformed { .. })),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "the state file {} is malformed at line 3: next_seq \"twelve\" is not a number from 1 to 4294967295; fix that line, delete the file, or pass --fresh-state to start every device at seq 1",
            path.display()
        )
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), garbage);
    assert!(server.seen.lock().unwrap().datagrams.is_empty());
}

#[tokio::test]
async fn start_counters_carry_a_run_on_without_any_file() {
    let fleet = coap_fleet(2, 8);
    let server = CoapServer::secure(Behaviour::default(), &fleet).await;
    let cfg = SimConfig {
        max_reports_per_device: Some(2),
        state: None,
        ..config(&server, Path::new("unused"))
    };
    let first = run::run(cfg.clone(), fleet.clone()).await.unwrap();
    let second = run::run(
        SimConfig {
            start_counters: first.counters.clone().into_iter().collect(),
            ..cfg
        },
        fleet.clone(),
    )
    .await
    .unwrap();
    for lock in &fleet.locks {
        assert_eq!(seqs(&first, &lock.id), vec![1, 2]);
        assert_eq!(seqs(&second, &lock.id), vec![3, 4]);
    }
    assert!(!Path::new("unused").exists());
}

/// What the state file is for: a device that loses its counters restarts
/// its OSCORE sequence at 1, and a gateway that saw those numbers refuses
/// them as replays (4.01), as it must. `--fresh-state` belongs with a fresh
/// gateway database.
#[tokio::test]
async fn a_lost_state_file_restarts_oscore_sequences_and_the_gateway_refuses_the_replays() {
    let fleet = coap_fleet(2, 10);
    let server = CoapServer::secure(Behaviour::default(), &fleet).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.csv.state");
    let cfg = SimConfig {
        max_reports_per_device: Some(2),
        ..config(&server, &path)
    };
    let first = run::run(cfg.clone(), fleet.clone()).await.unwrap();
    assert_eq!(first.acknowledged.len(), 4);

    std::fs::remove_file(&path).unwrap();
    let second = run::run(cfg, fleet).await.unwrap();
    let s = &second.stats;
    assert!(second.acknowledged.is_empty(), "{s}");
    assert_eq!(s.errors.get("4.01"), Some(&4), "{s}");
    assert_eq!(s.rejected, 4, "refusals, not retried: {s}");
    let seen = server.seen.lock().unwrap();
    assert_eq!(seen.security_refusals.get("replay"), Some(&4));
}
