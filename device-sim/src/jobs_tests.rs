//! Unit tests of the job memory: applying each action, at most once, the
//! limits, hard resets, and the bytes the state file keeps.

use super::*;
use crate::pins::MAX_PINS;

/// The server's clock in the job tests (Unix seconds); the lock's
/// conversation tests (`lock_jobs_tests`) use the same jobs.
pub(crate) const T0: u64 = 1_800_000_000;

/// A Custom PIN job valid from `T0` (for an hour if a duration PIN),
/// issued before it.
pub(crate) fn create(id: u64, access: &str, digits: &str, pin_type: PinType) -> DeviceJob {
    DeviceJob {
        id,
        attempt: 1,
        action: JobAction::CreatePin,
        access: Some(access.into()),
        pin: Some(digits.into()),
        pin_type: Some(pin_type),
        start: Some(T0),
        end: (pin_type == PinType::Duration).then_some(T0 + 3600),
        heartbeat_interval: None,
        activity_log_interval: None,
        issued: T0 - 100,
    }
}

/// A job deleting `access`.
pub(crate) fn delete(id: u64, access: &str) -> DeviceJob {
    DeviceJob {
        action: JobAction::DeletePin,
        pin: None,
        pin_type: None,
        start: None,
        end: None,
        ..create(id, access, "0000", PinType::Permanent)
    }
}

fn set_intervals(id: u64, hb: Option<u16>, log: Option<u16>) -> DeviceJob {
    DeviceJob {
        action: JobAction::SetIntervals,
        access: None,
        pin: None,
        pin_type: None,
        start: None,
        end: None,
        heartbeat_interval: hb.map(|h| HeartbeatInterval::from_hours(h).unwrap()),
        activity_log_interval: log.map(|m| ActivityLogInterval::from_minutes(m).unwrap()),
        ..create(id, "x", "0000", PinType::Permanent)
    }
}

fn outcome(m: &mut JobMemory, job: &DeviceJob) -> JobOutcome {
    m.handle(job).result.outcome
}

#[test]
fn create_pin_stores_the_pin_and_reports_done() {
    let mut m = JobMemory::default();
    let h = m.handle(&create(1, "acc-1", "482916", PinType::Permanent));
    assert_eq!(
        h,
        Handled {
            result: JobResult {
                id: 1,
                attempt: 1,
                outcome: JobOutcome::Done,
                detail: None
            },
            repeat: false,
            effect: Effect::None,
        }
    );
    let pin = m.pins().get("acc-1").unwrap();
    assert_eq!(
        (pin.digits.as_str(), pin.pin_type, pin.start, pin.end),
        ("482916", PinType::Permanent, T0, None)
    );
    // Re-creating the access replaces its PIN.
    assert_eq!(
        outcome(&mut m, &create(2, "acc-1", "1111", PinType::OneTime)),
        JobOutcome::Done
    );
    assert_eq!(m.pins().len(), 1);
    assert_eq!(m.pins().get("acc-1").unwrap().digits, "1111");
}

#[test]
fn a_job_delivered_again_gets_its_remembered_result_and_is_not_applied_again() {
    let mut m = JobMemory::default();
    let job = create(7, "acc-7", "482916", PinType::Permanent);
    assert!(!m.handle(&job).repeat);
    // Meanwhile the PIN was deleted by a later job.
    assert_eq!(outcome(&mut m, &delete(8, "acc-7")), JobOutcome::Done);
    let again = m.handle(&job);
    assert!(again.repeat);
    assert_eq!(again.result.outcome, JobOutcome::Done);
    assert!(m.pins().is_empty(), "not applied a second time");
    // A recreated job (attempt 2) is a new job.
    let recreated = DeviceJob { attempt: 2, ..job };
    assert!(!m.handle(&recreated).repeat);
    assert_eq!(m.pins().len(), 1);
    assert_eq!(m.remembered_count(), 3);
}

#[test]
fn a_failure_is_remembered_too() {
    let mut m = JobMemory::default();
    let bad = create(3, "a", "12", PinType::Permanent);
    let first = m.handle(&bad);
    assert_eq!(first.result.outcome, JobOutcome::InvalidPin);
    let again = m.handle(&bad);
    assert!(again.repeat);
    assert_eq!(again.result, first.result);
}

#[test]
fn the_200th_pin_finds_the_slots_full() {
    let mut m = JobMemory::default();
    for i in 0..MAX_PINS as u64 {
        let job = create(i + 1, &format!("acc-{i}"), "1234", PinType::Permanent);
        assert_eq!(outcome(&mut m, &job), JobOutcome::Done, "{i}");
    }
    let h = m.handle(&create(500, "acc-200", "1234", PinType::Permanent));
    assert_eq!(h.result.outcome, JobOutcome::SlotsFull);
    assert_eq!(
        h.result.detail.as_deref(),
        Some("all 199 PIN slots are taken")
    );
    assert_eq!(m.pins().len(), MAX_PINS);
    // Replacing one that exists still works; after a delete there is room.
    assert_eq!(
        outcome(&mut m, &create(501, "acc-3", "9999", PinType::OneTime)),
        JobOutcome::Done
    );
    assert_eq!(outcome(&mut m, &delete(502, "acc-4")), JobOutcome::Done);
    assert_eq!(
        outcome(&mut m, &create(503, "acc-200", "1234", PinType::Permanent)),
        JobOutcome::Done
    );
}

#[test]
fn invalid_pins_are_refused_without_naming_the_digits() {
    let mut m = JobMemory::default();
    let base = create(1, "a", "482916", PinType::Permanent);
    let cases: Vec<(DeviceJob, &str)> = vec![
        (
            DeviceJob {
                pin: Some("123".into()),
                ..base.clone()
            },
            "a PIN is 4 to 10 digits 0-9",
        ),
        (
            DeviceJob {
                pin: Some("12345678901".into()),
                ..base.clone()
            },
            "a PIN is 4 to 10 digits 0-9",
        ),
        (
            DeviceJob {
                pin: Some("12ab".into()),
                ..base.clone()
            },
            "a PIN is 4 to 10 digits 0-9",
        ),
        (
            DeviceJob {
                pin: None,
                ..base.clone()
            },
            "create_pin without a PIN",
        ),
        (
            DeviceJob {
                access: None,
                ..base.clone()
            },
            "create_pin without an access",
        ),
        (
            DeviceJob {
                access: Some("a".repeat(65)),
                ..base.clone()
            },
            "access id longer than 64 bytes",
        ),
        (
            DeviceJob {
                pin_type: None,
                ..base.clone()
            },
            "create_pin without a PIN type",
        ),
        (
            DeviceJob {
                start: None,
                ..base.clone()
            },
            "create_pin without a start",
        ),
        (
            DeviceJob {
                pin_type: Some(PinType::Duration),
                end: None,
                ..base.clone()
            },
            "a duration PIN needs an end",
        ),
        (
            DeviceJob {
                pin_type: Some(PinType::Duration),
                end: Some(T0),
                ..base.clone()
            },
            "a duration PIN ends after its start",
        ),
    ];
    for (i, (job, detail)) in cases.into_iter().enumerate() {
        let job = DeviceJob {
            id: 100 + i as u64,
            ..job
        };
        let h = m.handle(&job);
        assert_eq!(h.result.outcome, JobOutcome::InvalidPin, "{detail}");
        assert_eq!(h.result.detail.as_deref(), Some(detail));
        if let Some(pin) = &job.pin {
            assert!(!detail.contains(pin.as_str()));
        }
    }
    assert!(m.pins().is_empty());
    // 4 and 10 digits are fine.
    for (id, digits) in [(200, "1234"), (201, "1234567890")] {
        let job = DeviceJob {
            id,
            pin: Some(digits.into()),
            ..base.clone()
        };
        assert_eq!(outcome(&mut m, &job), JobOutcome::Done);
    }
}

#[test]
fn deleting_an_access_the_lock_does_not_hold_is_done_and_blocks_it_as_an_algo_pin() {
    let mut m = JobMemory::default();
    outcome(&mut m, &create(1, "custom", "482916", PinType::Permanent));
    assert_eq!(outcome(&mut m, &delete(2, "custom")), JobOutcome::Done);
    assert!(m.pins().is_empty());
    assert!(!m.is_blocked("custom"), "a custom PIN is simply gone");
    assert_eq!(outcome(&mut m, &delete(3, "algo-9")), JobOutcome::Done);
    assert_eq!(outcome(&mut m, &delete(4, "algo-9")), JobOutcome::Done);
    assert_eq!(m.blocked_algo_pins().collect::<Vec<_>>(), vec!["algo-9"]);
    let no_access = DeviceJob {
        access: None,
        ..delete(5, "")
    };
    assert_eq!(outcome(&mut m, &no_access), JobOutcome::Rejected);
    // Creating a PIN under the access unblocks it.
    outcome(&mut m, &create(6, "algo-9", "1234", PinType::Permanent));
    assert!(!m.is_blocked("algo-9"));
}

#[test]
fn blocked_algo_pins_and_remembered_outcomes_are_bounded() {
    let mut m = JobMemory::default();
    for i in 0..(MAX_BLOCKED_ALGO_PINS + MAX_REMEMBERED_JOBS) as u64 {
        outcome(&mut m, &delete(i + 1, &format!("algo-{i}")));
    }
    assert_eq!(m.blocked_algo_pins().count(), MAX_BLOCKED_ALGO_PINS);
    assert!(!m.is_blocked("algo-0"), "the oldest went first");
    assert_eq!(m.remembered_count(), MAX_REMEMBERED_JOBS);
    assert!(m.remembered(1, 1).is_none());
    let last = (MAX_BLOCKED_ALGO_PINS + MAX_REMEMBERED_JOBS) as u64;
    assert!(m.remembered(last, 1).is_some());
}

#[test]
fn set_intervals_asks_the_lock_to_switch() {
    let mut m = JobMemory::default();
    let h = m.handle(&set_intervals(1, Some(1), None));
    assert_eq!(h.result.outcome, JobOutcome::Done);
    assert_eq!(
        h.effect,
        Effect::SetIntervals {
            heartbeat: Some(HeartbeatInterval::from_hours(1).unwrap()),
            activity_log: None
        }
    );
    assert_eq!(
        m.handle(&set_intervals(1, Some(1), None)).effect,
        Effect::None,
        "a repeat changes nothing"
    );
    assert_eq!(
        outcome(&mut m, &set_intervals(2, None, None)),
        JobOutcome::Rejected
    );
}

#[test]
fn a_hard_reset_wipes_everything_and_fails_jobs_issued_before_it() {
    let mut m = JobMemory::default();
    outcome(&mut m, &create(1, "a", "482916", PinType::Permanent));
    outcome(&mut m, &delete(2, "algo-1"));
    m.hard_reset(T0);
    assert!(m.pins().is_empty());
    assert_eq!(m.remembered_count(), 0);
    assert_eq!(m.blocked_algo_pins().count(), 0);
    assert_eq!(m.hard_reset_at(), Some(T0));

    // Job 1 delivered again (its result was lost before the reset).
    let h = m.handle(&create(1, "a", "482916", PinType::Permanent));
    assert_eq!(h.result.outcome, JobOutcome::HardReset);
    assert_eq!(
        h.result.detail.as_deref(),
        Some("lock was hard reset at 1800000000")
    );
    assert!(m.pins().is_empty(), "not applied");
    let before = DeviceJob {
        issued: T0 - 1,
        ..set_intervals(3, Some(1), None)
    };
    let h = m.handle(&before);
    assert_eq!(
        (h.result.outcome, h.effect),
        (JobOutcome::HardReset, Effect::None)
    );
    // Issued at or after the reset: applied.
    for (id, issued) in [(4, T0), (5, T0 + 30)] {
        let job = DeviceJob {
            issued,
            ..create(id, &format!("b{id}"), "1234", PinType::Permanent)
        };
        assert_eq!(outcome(&mut m, &job), JobOutcome::Done);
    }
    assert_eq!(m.pins().len(), 2);
}

#[test]
fn the_memory_round_trips_through_cbor() {
    let mut m = JobMemory::default();
    assert!(m.is_empty());
    assert_eq!(JobMemory::from_cbor(&m.to_cbor()).unwrap(), m);
    outcome(&mut m, &create(1, "a", "482916", PinType::Duration));
    outcome(&mut m, &create(2, "b", "12", PinType::Permanent));
    outcome(&mut m, &delete(3, "algo-1"));
    m.hard_reset(T0 - 50);
    let after = DeviceJob {
        issued: T0,
        ..create(4, "c", "55555", PinType::OneTime)
    };
    assert_eq!(outcome(&mut m, &after), JobOutcome::Done);
    assert!(!m.is_empty());
    assert_eq!(JobMemory::from_cbor(&m.to_cbor()).unwrap(), m);
    assert!(JobMemory::from_cbor(b"\xff").is_err());
    assert!(!format!("{m:?}").contains("55555"), "Debug hides digits");
}

/// A bridge-only job (`Lock`, `Unlock`, `Sync`) issued before `T0`.
pub(crate) fn immediate(id: u64, action: JobAction) -> DeviceJob {
    DeviceJob {
        action,
        access: None,
        pin: None,
        pin_type: None,
        start: None,
        end: None,
        ..create(id, "x", "0000", PinType::Permanent)
    }
}

#[test]
fn lock_unlock_and_sync_are_done_and_ask_for_the_bolt_or_nothing() {
    let mut m = JobMemory::default();
    let effect = |m: &mut JobMemory, id, action| {
        let h = m.handle(&immediate(id, action));
        assert_eq!(h.result.outcome, JobOutcome::Done, "{action:?}");
        assert!(!h.repeat);
        h.effect
    };
    assert_eq!(
        effect(&mut m, 1, JobAction::Unlock),
        Effect::Bolt { locked: false }
    );
    assert_eq!(
        effect(&mut m, 2, JobAction::Lock),
        Effect::Bolt { locked: true }
    );
    assert_eq!(effect(&mut m, 3, JobAction::Sync), Effect::Sync);
    assert!(m.pins().is_empty());
    assert_eq!(m.remembered_count(), 3);
}

#[test]
fn an_unlock_delivered_again_moves_nothing_and_gets_the_same_result() {
    let mut m = JobMemory::default();
    let job = immediate(1, JobAction::Unlock);
    let first = m.handle(&job);
    let again = m.handle(&job);
    assert_eq!(again.result, first.result);
    assert!(again.repeat);
    assert_eq!(again.effect, Effect::None, "the bolt is not moved twice");
    // Another attempt of the same job is a new delivery.
    let retry = m.handle(&DeviceJob { attempt: 2, ..job });
    assert!(!retry.repeat);
    assert_eq!(retry.effect, Effect::Bolt { locked: false });
}

#[test]
fn a_lock_job_with_the_door_open_is_rejected_and_remembered() {
    let mut m = JobMemory::default();
    let job = immediate(1, JobAction::Lock);
    let h = m.handle_at(&job, DoorState::Open);
    assert_eq!(
        (h.result.outcome, h.result.detail.as_deref(), h.effect),
        (JobOutcome::Rejected, Some("the door is open"), Effect::None)
    );
    // Repeated after the door closed: still the remembered result.
    let again = m.handle_at(&job, DoorState::Closed);
    assert!(again.repeat);
    assert_eq!(again.result.outcome, JobOutcome::Rejected);
    // An unlock does not care about the door.
    let unlock = m.handle_at(&immediate(2, JobAction::Unlock), DoorState::Open);
    assert_eq!(unlock.result.outcome, JobOutcome::Done);
}

#[test]
fn lock_and_unlock_issued_before_a_hard_reset_fail_without_moving_the_bolt() {
    let mut m = JobMemory::default();
    m.hard_reset(T0);
    let h = m.handle(&immediate(1, JobAction::Unlock));
    assert_eq!(
        (h.result.outcome, h.effect),
        (JobOutcome::HardReset, Effect::None)
    );
    let after = m.handle(&DeviceJob {
        issued: T0,
        ..immediate(2, JobAction::Unlock)
    });
    assert_eq!(after.effect, Effect::Bolt { locked: false });
}
