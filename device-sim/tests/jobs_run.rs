//! Locks that execute jobs, against the test CoAP peer (OSCORE included)
//! that delivers each lock's pending jobs in its answers: a lock stepped
//! through [`device_sim::LockHandle`] applies its jobs, reports them on
//! `/jr` until an answer carries none, opens with its PINs, forgets them
//! at a hard reset (failing the jobs issued before it), and keeps its PIN
//! table in the state file across runs and crashes.

mod common;

use common::{coap_fleet, unix_now, Behaviour, CoapServer};
use device_sim::persist::StateOptions;
use device_sim::run::{self, SimConfig};
use device_sim::state::StateFile;
use device_sim::{ControlError, Reporting};
use schemas::device::{DeviceJob, JobAction, JobOutcome, PinType, UplinkKind};
use schemas::{ActivityKind, ActivityLogInterval, HeartbeatInterval, LockState};
use std::path::Path;
use std::time::Duration;

/// Ample for a few exchanges on the loopback.
const TALK: Duration = Duration::from_secs(10);

fn config(server: &CoapServer) -> SimConfig {
    SimConfig {
        gateway: server.addr.ip().to_string(),
        coap_port: server.addr.port(),
        speedup: 600.0,
        ack_timeout: Duration::from_millis(100),
        drain_timeout: Duration::from_secs(10),
        reporting: Reporting::OnDemand,
        // Nobody comes by: the logs hold what the tests type, nothing else.
        visits_per_hour: Some(0.0),
        ..SimConfig::default()
    }
}

fn create(id: u64, access: &str, digits: &str, pin_type: PinType, now: u64) -> DeviceJob {
    DeviceJob {
        id,
        attempt: 1,
        action: JobAction::CreatePin,
        access: Some(access.into()),
        pin: Some(digits.into()),
        pin_type: Some(pin_type),
        start: Some(now - 5),
        end: (pin_type == PinType::Duration).then_some(now + 3600),
        heartbeat_interval: None,
        activity_log_interval: None,
        issued: now - 1,
    }
}

fn delete(id: u64, access: &str, now: u64) -> DeviceJob {
    DeviceJob {
        access: Some(access.into()),
        ..job(id, JobAction::DeletePin, now)
    }
}

fn job(id: u64, action: JobAction, now: u64) -> DeviceJob {
    DeviceJob {
        action,
        access: None,
        pin: None,
        pin_type: None,
        start: None,
        ..create(id, "", "", PinType::Permanent, now)
    }
}

#[tokio::test]
async fn a_lock_applies_its_jobs_reports_them_until_none_are_left_and_opens_with_its_pins() {
    let fleet = coap_fleet(2, 21);
    let server = CoapServer::secure(
        Behaviour {
            jobs_per_downlink: Some(2),
            ..Behaviour::default()
        },
        &fleet,
    )
    .await;
    let id = fleet.locks[0].id.clone();
    let now = unix_now();
    let set_intervals = DeviceJob {
        heartbeat_interval: Some(HeartbeatInterval::from_hours(1).unwrap()),
        activity_log_interval: Some(ActivityLogInterval::from_minutes(10).unwrap()),
        ..job(4, JobAction::SetIntervals, now)
    };
    let delete_algo = delete(5, "algo-7", now);
    server.seen.lock().unwrap().add_jobs(
        &id,
        [
            create(1, "acc-1", "482916", PinType::Permanent, now),
            create(2, "acc-2", "1111", PinType::OneTime, now),
            create(3, "acc-3", "12", PinType::Permanent, now),
            set_intervals,
            delete_algo,
        ],
    );

    let sim = run::start(config(&server), fleet.clone()).await.unwrap();
    assert!(sim.lock("NOT-IN-FLEET").is_none());
    let lock = sim.lock(&id).unwrap();
    let talk = tokio::time::timeout(TALK, lock.heartbeat_now())
        .await
        .unwrap()
        .unwrap();

    // Two jobs per downlink: three reports, the last answer had none left.
    assert_eq!(
        talk.job_reports
            .iter()
            .map(|r| r.results.len())
            .collect::<Vec<_>>(),
        vec![2, 2, 1]
    );
    let outcomes: Vec<(u64, JobOutcome)> = talk.results().map(|r| (r.id, r.outcome)).collect();
    assert_eq!(
        outcomes,
        vec![
            (1, JobOutcome::Done),
            (2, JobOutcome::Done),
            (3, JobOutcome::InvalidPin),
            (4, JobOutcome::Done),
            (5, JobOutcome::Done),
        ]
    );
    let seqs: Vec<u32> = talk.job_reports.iter().map(|r| r.seq).collect();
    let hb = talk.heartbeat_seq;
    assert_eq!(
        seqs,
        vec![hb + 1, hb + 2, hb + 3],
        "the heartbeats' counter"
    );
    let status = &talk.status;
    assert_eq!(status.pin_count, 2);
    assert_eq!(status.pin_accesses, vec!["acc-1", "acc-2"]);
    assert_eq!(status.blocked_algo_pins, vec!["algo-7"]);
    assert_eq!(status.heartbeat_interval.hours(), 1);
    assert_eq!(status.activity_log_interval.minutes(), 10);
    assert!(!status.conversation_open);
    {
        let seen = server.seen.lock().unwrap();
        assert!(seen.jobs[&id].is_empty(), "every job got its result");
        assert_eq!(seen.job_results.len(), 5);
        // The reports went to POST /jr, protected like the others.
        let paths: Vec<&str> = seen
            .datagrams
            .iter()
            .map(|d| d.2.as_str())
            .filter(|p| *p != "log")
            .collect();
        assert_eq!(paths, vec!["hb", "jr", "jr", "jr"]);
        assert!(seen.security_refusals.is_empty());
        assert_eq!(seen.oscore.len(), seen.datagrams.len());
    }

    // The keypad.
    assert!(lock.enter_pin("482916").await.unwrap());
    assert!(!lock.enter_pin("999999").await.unwrap());
    assert!(lock.enter_pin("1111").await.unwrap());
    assert!(!lock.enter_pin("1111").await.unwrap(), "one-time: used up");
    assert!(
        !lock.enter_pin("12").await.unwrap(),
        "refused, never stored"
    );
    let status = lock.status().await.unwrap();
    assert_eq!(status.lock_state, LockState::Unlocked);
    assert_eq!(status.pin_count, 1);

    // The next heartbeat uploads what the keypad logged; no jobs are left.
    let talk = tokio::time::timeout(TALK, lock.heartbeat_now())
        .await
        .unwrap()
        .unwrap();
    assert!(talk.job_reports.is_empty());
    {
        let seen = server.seen.lock().unwrap();
        let keypad: Vec<(ActivityKind, Option<&str>)> = seen
            .activity
            .iter()
            .filter(|(l, k, _)| {
                *l == id && matches!(k, ActivityKind::UnlockedPin | ActivityKind::WrongPin)
            })
            .map(|(_, k, a)| (*k, a.as_deref()))
            .collect();
        assert_eq!(
            keypad,
            vec![
                (ActivityKind::UnlockedPin, Some("acc-1")),
                (ActivityKind::WrongPin, None),
                (ActivityKind::UnlockedPin, Some("acc-2")),
                (ActivityKind::WrongPin, None),
                (ActivityKind::WrongPin, None),
            ]
        );
        assert_eq!(seen.intervals[&id].0.hours(), 1);
        // The other lock, never told, never reported.
        let other = &fleet.locks[1].id;
        assert!(seen.delivered.keys().all(|(l, _)| l != other));
    }

    sim.stop();
    let report = sim.finish().await.unwrap();
    assert!(report.all_acknowledged(), "{:?}", report.unacknowledged);
    let job_reports = report
        .acknowledged
        .iter()
        .filter(|r| r.kind == UplinkKind::JobReport)
        .count();
    assert_eq!(job_reports, 3);
    assert_eq!(report.ack_latency.count(UplinkKind::JobReport), 3);
    assert_eq!(lock.status().await, Err(ControlError::Ended));
}

#[tokio::test]
async fn a_hard_reset_wipes_the_pins_and_fails_the_jobs_issued_before_it() {
    let fleet = coap_fleet(1, 22);
    let server = CoapServer::secure(Behaviour::default(), &fleet).await;
    let id = fleet.locks[0].id.clone();
    let now = unix_now();
    server
        .seen
        .lock()
        .unwrap()
        .add_jobs(&id, [create(1, "acc-1", "482916", PinType::Permanent, now)]);
    let sim = run::start(config(&server), fleet).await.unwrap();
    let lock = sim.lock(&id).unwrap();
    let talk = tokio::time::timeout(TALK, lock.heartbeat_now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(talk.status.pin_count, 1);

    // A job waits at the server when the lock is reset; another is issued
    // after the reset.
    let reset_at = now + 100;
    let before = DeviceJob {
        issued: reset_at - 1,
        ..create(2, "acc-2", "2222", PinType::Permanent, now)
    };
    let after = DeviceJob {
        issued: reset_at,
        ..create(3, "acc-3", "3333", PinType::Permanent, now)
    };
    server.seen.lock().unwrap().add_jobs(&id, [before]);
    assert_eq!(lock.hard_reset_as_of(reset_at).await.unwrap(), reset_at);
    let status = lock.status().await.unwrap();
    assert_eq!(status.pin_count, 0);
    assert_eq!(status.last_hard_reset, Some(reset_at));
    assert_eq!(status.heartbeat_interval, HeartbeatInterval::DEFAULT);
    assert!(!lock.enter_pin("482916").await.unwrap());
    server.seen.lock().unwrap().add_jobs(&id, [after]);

    let talk = tokio::time::timeout(TALK, lock.heartbeat_now())
        .await
        .unwrap()
        .unwrap();
    let results: Vec<_> = talk.results().cloned().collect();
    assert_eq!(
        results
            .iter()
            .map(|r| (r.id, r.outcome))
            .collect::<Vec<_>>(),
        vec![(2, JobOutcome::HardReset), (3, JobOutcome::Done)]
    );
    assert_eq!(
        results[0].detail,
        Some(format!("lock was hard reset at {reset_at}"))
    );
    assert!(!lock.enter_pin("2222").await.unwrap());
    assert!(lock.enter_pin("3333").await.unwrap());
    // A reset now (the lock's own clock) is recorded at the server's time.
    let at = lock.hard_reset().await.unwrap();
    assert!(at.abs_diff(unix_now()) <= 2, "{at}");

    sim.stop();
    let report = sim.finish().await.unwrap();
    assert_eq!(report.stats.hard_resets, 2);
}

/// The job state column of `lock` in the state file at `path`.
fn saved_pins(path: &Path, lock: &str) -> usize {
    let Ok(bytes) = std::fs::read(path) else {
        return 0;
    };
    StateFile::parse(&bytes)
        .unwrap()
        .memory(lock)
        .map_or(0, |m| m.pins().len())
}

#[tokio::test]
async fn the_pin_table_survives_a_clean_end_and_a_crash_in_the_state_file() {
    let fleet = coap_fleet(1, 23);
    let server = CoapServer::secure(Behaviour::default(), &fleet).await;
    let id = fleet.locks[0].id.clone();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.csv.state");
    let cfg = || SimConfig {
        state: Some(StateOptions::at(&path)),
        ..config(&server)
    };
    let now = unix_now();
    server
        .seen
        .lock()
        .unwrap()
        .add_jobs(&id, [create(1, "acc-1", "482916", PinType::Permanent, now)]);

    // First run: a PIN, then a crash once the periodic save has it.
    let sim = run::start(cfg(), fleet.clone()).await.unwrap();
    let lock = sim.lock(&id).unwrap();
    tokio::time::timeout(TALK, lock.heartbeat_now())
        .await
        .unwrap()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while saved_pins(&path, &id) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never saved");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sim.abort().await;

    // Second run: the PIN opens; a job delivered again is not applied again.
    server.seen.lock().unwrap().add_jobs(
        &id,
        [
            delete(2, "acc-1", now),
            create(1, "acc-1", "482916", PinType::Permanent, now),
        ],
    );
    let sim = run::start(cfg(), fleet.clone()).await.unwrap();
    let lock = sim.lock(&id).unwrap();
    assert_eq!(lock.status().await.unwrap().pin_count, 1);
    assert!(lock.enter_pin("482916").await.unwrap());
    let talk = tokio::time::timeout(TALK, lock.heartbeat_now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        talk.results()
            .map(|r| (r.id, r.outcome))
            .collect::<Vec<_>>(),
        vec![(2, JobOutcome::Done), (1, JobOutcome::Done)]
    );
    assert_eq!(talk.status.pin_count, 0, "job 1 remembered, not re-applied");
    lock.hard_reset_as_of(now + 7).await.unwrap();
    sim.stop();
    sim.finish().await.unwrap();

    // A clean end writes the last state: no PINs, the reset remembered.
    let file = StateFile::parse(&std::fs::read(&path).unwrap()).unwrap();
    let memory = file.memory(&id).unwrap();
    assert_eq!(memory.pins().len(), 0);
    assert_eq!(memory.hard_reset_at(), Some(now + 7));
    let sim = run::start(cfg(), fleet).await.unwrap();
    let status = sim.lock(&id).unwrap().status().await.unwrap();
    assert_eq!(status.last_hard_reset, Some(now + 7));
    sim.stop();
    sim.finish().await.unwrap();
}

#[tokio::test]
async fn with_a_hard_reset_chance_locks_are_reset_before_heartbeats() {
    let fleet = coap_fleet(2, 24);
    let server = CoapServer::secure(Behaviour::default(), &fleet).await;
    let cfg = SimConfig {
        speedup: 36_000.0,
        ack_timeout: Duration::from_millis(40),
        max_reports_per_device: Some(30),
        duration: Some(Duration::from_secs(30)),
        reporting: Reporting::Scheduled,
        hard_reset_chance: 1.0,
        ..config(&server)
    };
    let report = run::run(cfg, fleet).await.unwrap();
    assert!(report.all_acknowledged(), "{:?}", report.unacknowledged);
    let heartbeats = report
        .acknowledged
        .iter()
        .filter(|r| r.kind == UplinkKind::Heartbeat)
        .count() as u64;
    assert!(heartbeats >= 2, "{}", report.stats);
    // A reset comes before each heartbeat (one more may precede a heartbeat
    // the report budget did not allow).
    let resets = report.stats.hard_resets;
    assert!(
        (heartbeats..=heartbeats + 2).contains(&resets),
        "{}",
        report.stats
    );

    let bad = SimConfig {
        hard_reset_chance: 1.5,
        ..config(&server)
    };
    let err = run::start(bad, coap_fleet(1, 1)).await.err().unwrap();
    assert_eq!(
        err.to_string(),
        "hard reset chance must be a probability from 0 to 1, got 1.5"
    );
}
