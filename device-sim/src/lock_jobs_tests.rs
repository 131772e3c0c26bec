//! Unit tests of the lock's job conversation, keypad and reset button,
//! driven by a scripted server and a fake clock.

use super::tests::{clock, inb1, spec};
use super::*;
use crate::jobs::tests::{create, delete, immediate, T0};
use schemas::device::{
    DeviceJob, JobAction, JobOutcome, JobReport, JobResult, PinType, MAX_RESULTS_PER_REPORT,
};
use schemas::{ActivityKind, LockState};
use std::collections::VecDeque;

fn downlink(seq: u32, jobs: Vec<DeviceJob>, more: bool) -> Downlink {
    Downlink {
        server_time: T0,
        heartbeat_interval: HeartbeatInterval::DEFAULT,
        activity_log_interval: ActivityLogInterval::DEFAULT,
        seq,
        jobs,
        more,
        next_heartbeat_at: None,
    }
}

/// A server that answers heartbeats and job reports with the next scripted
/// jobs (then none) and keeps every job report it receives.
#[derive(Default)]
struct Script {
    answers: VecDeque<(Vec<DeviceJob>, bool)>,
    reports: Vec<JobReport>,
    /// The kinds of the reports it received, in order.
    kinds: Vec<UplinkKind>,
}

impl Script {
    fn new(answers: Vec<(Vec<DeviceJob>, bool)>) -> Self {
        Script {
            answers: answers.into(),
            ..Script::default()
        }
    }

    fn answer(&mut self, o: &Outgoing) -> Answer {
        self.kinds.push(o.kind);
        match o.kind {
            UplinkKind::ActivityLog => Answer::LogAck(LogAck {
                server_time: T0,
                stored: 0,
                seq: o.seq,
            }),
            kind => {
                if kind == UplinkKind::JobReport {
                    self.reports.push(JobReport::decode(&o.payload).unwrap());
                }
                let (jobs, more) = self.answers.pop_front().unwrap_or_default();
                Answer::Downlink(downlink(o.seq, jobs, more))
            }
        }
    }

    fn results(&self) -> Vec<(u64, JobOutcome)> {
        self.reports
            .iter()
            .flat_map(|r| r.results.iter().map(|x| (x.id, x.outcome)))
            .collect()
    }
}

/// Sends everything the lock has at `t`, answered by `server`.
fn converse(lock: &mut Lock, c: &SimClock, t: Instant, server: &mut Script) {
    while let Some(o) = lock.poll_send() {
        let answer = server.answer(&o);
        lock.on_acked(o.seq, &answer, t, c);
    }
}

/// A lock with no visitors (no random activity), its heartbeat sent now
/// and its conversation with `server` held.
fn talked(server: &mut Script) -> (Lock, SimClock, Instant) {
    let (mut lock, c) = inb1(None);
    lock.visits_per_hour = 0.0;
    let t = c.start() + Duration::from_secs(1);
    lock.heartbeat_now(t, &c);
    converse(&mut lock, &c, t, server);
    (lock, c, t)
}

#[test]
fn jobs_in_a_heartbeat_answer_are_applied_and_their_report_goes_next_under_the_next_seq() {
    let (mut lock, c) = inb1(None);
    lock.visits_per_hour = 0.0;
    let t = c.start() + Duration::from_secs(1);
    let hb = lock.heartbeat_now(t, &c).heartbeat.unwrap();
    let o = lock.poll_send().unwrap();
    assert_eq!((o.kind, o.seq), (UplinkKind::Heartbeat, hb));
    let jobs = vec![
        create(1, "acc-1", "482916", PinType::Permanent),
        create(2, "acc-2", "1234", PinType::OneTime),
    ];
    let acked = lock.on_acked(hb, &Answer::Downlink(downlink(hb, jobs, false)), t, &c);
    assert_eq!(acked.report.unwrap().kind, UplinkKind::Heartbeat);
    assert_eq!(acked.queued.created, 1, "one job report");
    assert_eq!(lock.pin_count(), 2);
    assert!(lock.conversation_open());

    let jr = lock.poll_send().unwrap();
    assert_eq!((jr.kind, jr.seq), (UplinkKind::JobReport, hb + 1));
    assert!(jr.first_attempt);
    let report = JobReport::decode(&jr.payload).unwrap();
    assert_eq!(report.lock_id, "L000001");
    assert_eq!(report.seq, hb + 1);
    let done = |id| JobResult {
        id,
        attempt: 1,
        outcome: JobOutcome::Done,
        detail: None,
    };
    assert_eq!(report.results, vec![done(1), done(2)]);

    // Its answer carries no jobs: the conversation is over.
    let acked = lock.on_acked(
        jr.seq,
        &Answer::Downlink(downlink(jr.seq, vec![], false)),
        t,
        &c,
    );
    assert_eq!(acked.queued.created, 0);
    assert!(!lock.conversation_open());
    assert_eq!(lock.poll_send(), None);
    assert_eq!(lock.counters().next_seq, hb + 2);
}

#[test]
fn the_lock_reports_again_while_answers_carry_jobs_and_stops_at_the_first_without() {
    let mut server = Script::new(vec![
        (
            vec![
                create(1, "a", "1111", PinType::Permanent),
                create(2, "b", "2222", PinType::Permanent),
            ],
            true,
        ),
        (
            vec![
                create(3, "c", "3333", PinType::Permanent),
                create(4, "d", "4444", PinType::Permanent),
            ],
            true,
        ),
        (vec![create(5, "e", "5555", PinType::Permanent)], false),
        (vec![], false),
        // Never asked for: the lock stopped at the answer without jobs.
        (vec![create(6, "f", "6666", PinType::Permanent)], false),
    ]);
    let (lock, _, _) = talked(&mut server);
    let jr = UplinkKind::JobReport;
    assert_eq!(
        server
            .kinds
            .iter()
            .filter(|k| **k != UplinkKind::ActivityLog)
            .collect::<Vec<_>>(),
        vec![&UplinkKind::Heartbeat, &jr, &jr, &jr]
    );
    assert_eq!(
        server
            .reports
            .iter()
            .map(|r| r.results.len())
            .collect::<Vec<_>>(),
        vec![2, 2, 1]
    );
    let seqs: Vec<u32> = server.reports.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![seqs[0], seqs[0] + 1, seqs[0] + 2]);
    assert_eq!(lock.pin_count(), 5);
    assert_eq!(server.answers.len(), 1);
    assert!(!lock.conversation_open());
}

#[test]
fn a_job_delivered_again_is_reported_with_its_remembered_outcome_and_not_applied_again() {
    let mut server = Script::new(vec![
        (vec![create(1, "a", "482916", PinType::Permanent)], false),
        // The server sends job 1 again (its result was lost) behind a delete.
        (
            vec![delete(2, "a"), create(1, "a", "482916", PinType::Permanent)],
            false,
        ),
        // Every job a repeat: the lock still reports.
        (vec![create(1, "a", "482916", PinType::Permanent)], false),
    ]);
    let (lock, _, _) = talked(&mut server);
    assert_eq!(
        server.results(),
        vec![
            (1, JobOutcome::Done),
            (2, JobOutcome::Done),
            (1, JobOutcome::Done),
            (1, JobOutcome::Done),
        ]
    );
    assert_eq!(server.reports.len(), 3);
    assert_eq!(
        lock.pin_count(),
        0,
        "job 1 was not applied after the delete"
    );
}

#[test]
fn a_downlink_with_more_than_32_jobs_gets_32_results_and_the_rest_come_again() {
    let jobs: Vec<DeviceJob> = (1..=40)
        .map(|i| create(i, &format!("a{i}"), "1234", PinType::Permanent))
        .collect();
    let rest = jobs[32..].to_vec();
    let mut server = Script::new(vec![(jobs, false), (rest, false)]);
    let (lock, _, _) = talked(&mut server);
    assert_eq!(
        server
            .reports
            .iter()
            .map(|r| r.results.len())
            .collect::<Vec<_>>(),
        vec![MAX_RESULTS_PER_REPORT, 8]
    );
    assert_eq!(lock.pin_count(), 40);
    assert!(server
        .reports
        .iter()
        .all(|r| encode(r).len() <= MAX_UPLINK_BYTES));
}

#[test]
fn the_200th_pin_of_a_long_conversation_finds_the_slots_full() {
    let jobs: Vec<DeviceJob> = (1..=200)
        .map(|i| create(i, &format!("acc-{i}"), "1234", PinType::Permanent))
        .collect();
    let answers = jobs
        .chunks(30)
        .enumerate()
        .map(|(n, chunk)| (chunk.to_vec(), (n + 1) * 30 < 200))
        .collect();
    let mut server = Script::new(answers);
    let (lock, _, _) = talked(&mut server);
    let results = server.results();
    assert_eq!(results.len(), 200);
    assert!(results[..199].iter().all(|(_, o)| *o == JobOutcome::Done));
    assert_eq!(results[199], (200, JobOutcome::SlotsFull));
    assert_eq!(lock.pin_count(), crate::pins::MAX_PINS);
}

#[test]
fn an_invalid_pin_fails_with_invalid_pin_and_the_others_go_ahead() {
    let mut server = Script::new(vec![(
        vec![
            create(1, "a", "12", PinType::Permanent),
            create(2, "b", "5678", PinType::Permanent),
        ],
        false,
    )]);
    let (lock, _, _) = talked(&mut server);
    assert_eq!(
        server.results(),
        vec![(1, JobOutcome::InvalidPin), (2, JobOutcome::Done)]
    );
    let detail = server.reports[0].results[0].detail.clone().unwrap();
    assert_eq!(detail, "a PIN is 4 to 10 digits 0-9");
    assert_eq!(lock.pin_count(), 1);
}

#[test]
fn set_intervals_switches_the_intervals_the_next_heartbeat_reports() {
    let (mut lock, c) = inb1(None);
    let t = c.start() + Duration::from_secs(1);
    let hb = lock.heartbeat_now(t, &c).heartbeat.unwrap();
    while let Some(o) = lock.poll_send() {
        if o.kind == UplinkKind::Heartbeat {
            break;
        }
        lock.on_acked(
            o.seq,
            &Answer::LogAck(LogAck {
                server_time: T0,
                stored: 0,
                seq: o.seq,
            }),
            t,
            &c,
        );
    }
    let job = DeviceJob {
        action: JobAction::SetIntervals,
        access: None,
        pin: None,
        pin_type: None,
        start: None,
        heartbeat_interval: Some(HeartbeatInterval::from_hours(2).unwrap()),
        activity_log_interval: Some(ActivityLogInterval::from_minutes(10).unwrap()),
        ..create(9, "x", "0000", PinType::Permanent)
    };
    lock.on_acked(hb, &Answer::Downlink(downlink(hb, vec![job], false)), t, &c);
    let (h, l) = lock.intervals();
    assert_eq!((h.hours(), l.minutes()), (2, 10));
    // 2 h at 600x is 12 s: the next heartbeat is one new interval away.
    assert_eq!(lock.next_heartbeat, t + Duration::from_secs(12));
    let later = t + Duration::from_secs(2);
    let next = lock.heartbeat_now(later, &c).heartbeat.unwrap();
    let sent = lock.report(next).unwrap();
    let hb = Heartbeat::decode(&sent.payload).unwrap();
    assert_eq!(
        (
            hb.heartbeat_interval.hours(),
            hb.activity_log_interval.minutes()
        ),
        (2, 10)
    );
}

#[test]
fn a_hard_reset_wipes_the_lock_and_fails_jobs_issued_before_it_but_not_after() {
    let mut server = Script::new(vec![(
        vec![
            create(1, "a", "1111", PinType::Permanent),
            delete(2, "algo-1"),
        ],
        false,
    )]);
    let (mut lock, c, t) = talked(&mut server);
    assert_eq!(lock.pin_count(), 1);
    lock.set_intervals(
        Some(HeartbeatInterval::from_hours(1).unwrap()),
        Some(ActivityLogInterval::from_minutes(10).unwrap()),
        t,
        &c,
    );
    assert!(lock.take_memory_changed());
    lock.hard_reset_as_of(T0 + 10, t, &c);
    assert!(lock.take_memory_changed(), "the state file hears of it");
    assert_eq!(lock.pin_count(), 0);
    assert_eq!(lock.last_hard_reset(), Some(T0 + 10));
    assert_eq!(lock.memory().remembered_count(), 0);
    assert_eq!(lock.memory().blocked_algo_pins().count(), 0);
    assert_eq!(
        lock.intervals(),
        (HeartbeatInterval::DEFAULT, ActivityLogInterval::DEFAULT)
    );

    let issued = |job: DeviceJob, issued| DeviceJob { issued, ..job };
    let mut server = Script::new(vec![(
        vec![
            // Job 1 again: applied before the reset, its memory wiped.
            create(1, "a", "1111", PinType::Permanent),
            issued(create(3, "b", "2222", PinType::Permanent), T0 + 9),
            issued(create(4, "c", "3333", PinType::Permanent), T0 + 10),
            issued(create(5, "d", "4444", PinType::Permanent), T0 + 60),
        ],
        false,
    )]);
    lock.heartbeat_now(t, &c);
    converse(&mut lock, &c, t, &mut server);
    assert_eq!(
        server.results(),
        vec![
            (1, JobOutcome::HardReset),
            (3, JobOutcome::HardReset),
            (4, JobOutcome::Done),
            (5, JobOutcome::Done),
        ]
    );
    assert_eq!(
        server.reports[0].results[0].detail.as_deref(),
        Some("lock was hard reset at 1800000010")
    );
    assert_eq!(lock.pin_count(), 2);
    // The counters never go back.
    assert!(lock.counters().next_seq > server.reports[0].seq);
}

#[test]
fn hard_reset_records_the_lock_s_wall_clock() {
    let mut server = Script::default();
    let (mut lock, c, t) = talked(&mut server);
    let later = t + Duration::from_secs(5);
    assert_eq!(lock.hard_reset(later, &c), T0 + 5);
    assert_eq!(lock.last_hard_reset(), Some(T0 + 5));
}

#[test]
fn a_valid_pin_opens_the_lock_and_logs_its_access_never_the_digits() {
    let mut server = Script::new(vec![(
        vec![create(1, "acc-1", "482916", PinType::Permanent)],
        false,
    )]);
    let (mut lock, c, t) = talked(&mut server);
    assert_eq!(lock.physical().lock, LockState::Locked);
    assert!(!lock.enter_pin("000000", t, &c));
    assert_eq!(lock.physical().lock, LockState::Locked);
    assert!(lock.enter_pin("482916", t, &c));
    assert_eq!(lock.physical().lock, LockState::Unlocked);
    assert!(
        lock.enter_pin("482916", t, &c),
        "a permanent PIN opens again"
    );

    let events: Vec<(ActivityKind, Option<String>)> = lock
        .pending
        .iter()
        .map(|e| (e.kind, e.actor.clone()))
        .collect();
    assert_eq!(
        events,
        vec![
            (ActivityKind::WrongPin, None),
            (ActivityKind::UnlockedPin, Some("acc-1".into())),
            (ActivityKind::UnlockedPin, Some("acc-1".into())),
        ]
    );
    // The next heartbeat uploads them first and reports the lock unlocked.
    let later = t + Duration::from_secs(1);
    let hb = lock.heartbeat_now(later, &c).heartbeat.unwrap();
    let batch = lock
        .outbox()
        .find(|r| r.kind == UplinkKind::ActivityLog)
        .unwrap();
    assert!(batch.seq < hb);
    let decoded = ActivityLogBatch::decode(&batch.payload).unwrap();
    assert_eq!(decoded.events.len(), 3);
    assert!(decoded.events.iter().all(|e| e.time == c.device_time(t)));
    assert!(!batch.payload.windows(6).any(|w| w == b"482916"));
    let hb = Heartbeat::decode(&lock.report(hb).unwrap().payload).unwrap();
    assert_eq!(hb.lock_state, LockState::Unlocked);
}

#[test]
fn each_pin_type_opens_in_its_own_window_and_a_one_time_pin_only_once() {
    let mut server = Script::new(vec![(
        vec![
            create(1, "once", "1111", PinType::OneTime),
            create(2, "span", "2222", PinType::Duration),
            create(3, "always", "3333", PinType::Permanent),
        ],
        false,
    )]);
    let (mut lock, c, t) = talked(&mut server);
    lock.take_memory_changed();
    let mut at = |digits: &str, wall_s: u64| lock.enter_pin_at(digits, wall_s, t, &c);
    for digits in ["1111", "2222", "3333"] {
        assert!(!at(digits, T0 - 1), "{digits} before its start");
    }
    assert!(at("2222", T0 + 3599));
    assert!(!at("2222", T0 + 3600), "a duration PIN ends");
    assert!(at("3333", T0 + 365 * 86_400));
    assert!(!at("1111", T0 + 86_400), "a one-time PIN lasts 24 h");
    assert!(at("1111", T0 + 86_399));
    assert!(!at("1111", T0 + 86_399), "and opens once");
    assert_eq!(lock.pin_count(), 2);
    assert!(lock.take_memory_changed(), "a used one-time PIN is saved");
}

#[test]
fn the_wall_clock_follows_the_server_time_of_the_last_downlink() {
    let (lock, c) = inb1(None);
    let t = c.start() + Duration::from_secs(3);
    assert_eq!(lock.wall_clock(t, &c), c.real_unix(t));
    let mut server = Script::default();
    let (lock, c, t) = talked(&mut server);
    assert_eq!(lock.wall_clock(t, &c), T0);
    // Real seconds, not the simulated ones (600x) of the event clock.
    assert_eq!(lock.wall_clock(t + Duration::from_secs(7), &c), T0 + 7);
}

#[test]
fn next_heartbeat_at_sets_the_next_heartbeat_within_a_minute_and_one_and_a_half_intervals() {
    let (mut lock, c) = inb1(None);
    let t = c.start() + Duration::from_secs(1);
    // The 24 h lock: a slot 30 h ahead is kept (within 1.5 intervals), ten
    // days ahead is cut to 36 h.
    for (ahead, sim) in [
        (600, 600),
        (1, 60),
        (30 * 3600, 30 * 3600),
        (10 * 86_400, 36 * 3600),
    ] {
        let hb = lock.heartbeat_now(t, &c).heartbeat.unwrap();
        while let Some(o) = lock.poll_send() {
            let answer = match o.kind {
                UplinkKind::ActivityLog => Answer::LogAck(LogAck {
                    server_time: T0,
                    stored: 0,
                    seq: o.seq,
                }),
                _ => Answer::Downlink(Downlink {
                    next_heartbeat_at: Some(T0 + ahead),
                    ..downlink(o.seq, vec![], false)
                }),
            };
            lock.on_acked(o.seq, &answer, t, &c);
        }
        assert!(lock.report(hb).is_none());
        let expected = t + c.real_interval(Duration::from_secs(sim));
        assert_eq!(lock.next_heartbeat, expected, "{ahead} s ahead");
    }
}

#[test]
fn a_bridged_lock_applies_no_jobs() {
    let c = clock();
    let mut lock = Lock::new(
        &spec("L7", LockModel::Sp2e, Transport::Bridge),
        0,
        1,
        &c,
        None,
    );
    let t = c.start() + Duration::from_secs(1);
    let hb = lock.heartbeat_now(t, &c).heartbeat.unwrap();
    let jobs = vec![create(1, "a", "1234", PinType::Permanent)];
    let acked = lock.on_acked(hb, &Answer::Downlink(downlink(hb, jobs, false)), t, &c);
    assert!(acked.report.is_some());
    assert_eq!(acked.queued.created, 0);
    assert_eq!(lock.pin_count(), 0);
}

#[test]
fn a_duplicate_answer_applies_nothing() {
    let (mut lock, c) = inb1(None);
    let t = c.start() + Duration::from_secs(1);
    let hb = lock.heartbeat_now(t, &c).heartbeat.unwrap();
    let answer = Answer::Downlink(downlink(
        hb,
        vec![create(1, "a", "1234", PinType::Permanent)],
        false,
    ));
    assert_eq!(lock.on_acked(hb, &answer, t, &c).queued.created, 1);
    let again = lock.on_acked(hb, &answer, t, &c);
    assert_eq!(again, Acked::default());
    assert_eq!(
        lock.outbox()
            .filter(|r| r.kind == UplinkKind::JobReport)
            .count(),
        1
    );
}

#[test]
fn heartbeat_now_reports_at_once_outside_the_schedule_and_the_budget() {
    let (mut lock, c) = inb1(Some(1));
    let scheduled = (lock.next_heartbeat, lock.next_log);
    let t = c.start() + Duration::from_millis(10);
    let out = lock.heartbeat_now(t, &c);
    assert!(out.created >= 1);
    let hb = out.heartbeat.unwrap();
    assert_eq!(lock.report(hb).unwrap().kind, UplinkKind::Heartbeat);
    assert_eq!(
        (lock.next_heartbeat, lock.next_log),
        scheduled,
        "schedule kept"
    );
    assert!(!lock.finished(), "not counted against the budget");
    // A second one, even with a budget reached, still goes.
    let mut server = Script::default();
    converse(&mut lock, &c, t, &mut server);
    let (mut lock, c) = inb1(Some(1));
    let run_to = c.start() + Duration::from_secs(200);
    while let Some(w) = lock.next_wake().filter(|w| *w <= run_to) {
        lock.wake(w, &c, true);
        converse(&mut lock, &c, w, &mut server);
    }
    assert!(lock.finished());
    assert!(lock.heartbeat_now(run_to, &c).heartbeat.is_some());
}

#[test]
fn an_on_demand_lock_reports_only_when_told_and_retries_what_gave_up() {
    let (lock, c) = inb1(None);
    let mut lock = lock.with_reporting(Reporting::OnDemand);
    assert_eq!(lock.next_wake(), None);
    let far = c.start() + Duration::from_secs(10_000);
    assert_eq!(lock.wake(far, &c, true).created, 0);
    let hb = lock.heartbeat_now(far, &c).heartbeat.unwrap();
    let o = loop {
        let o = lock.poll_send().unwrap();
        if o.seq == hb {
            break o;
        }
        lock.on_acked(
            o.seq,
            &Answer::LogAck(LogAck {
                server_time: T0,
                stored: 0,
                seq: o.seq,
            }),
            far,
            &c,
        );
    };
    lock.on_gave_up(o.seq);
    let retry = lock.next_wake().expect("a wake to resend");
    let out = lock.wake(retry.max(far), &c, true);
    assert_eq!(out.created, 0, "nothing new on demand");
    assert_eq!(lock.poll_send().unwrap().seq, hb);
}

#[test]
fn with_a_hard_reset_chance_of_1_every_scheduled_heartbeat_follows_a_reset() {
    let (lock, c) = inb1(None);
    let mut lock = lock.with_hard_reset_chance(1.0);
    let mut server = Script::default();
    let mut resets = 0;
    let mut heartbeats = 0;
    let until = c.start() + Duration::from_secs(400);
    while let Some(w) = lock.next_wake().filter(|w| *w <= until) {
        let out = lock.wake(w, &c, true);
        resets += u32::from(out.hard_reset);
        heartbeats += u32::from(out.heartbeat.is_some());
        assert_eq!(out.hard_reset, out.heartbeat.is_some());
        converse(&mut lock, &c, w, &mut server);
    }
    assert!(heartbeats >= 2, "{heartbeats}");
    assert_eq!(resets, heartbeats);
    assert!(lock.last_hard_reset().is_some());
    // Without the knob no lock is ever reset.
    let (mut lock, c) = inb1(None);
    while let Some(w) = lock.next_wake().filter(|w| *w <= until) {
        assert!(!lock.wake(w, &c, true).hard_reset);
        converse(&mut lock, &c, w, &mut server);
    }
    assert_eq!(lock.last_hard_reset(), None);
}

#[test]
fn job_state_changes_are_flagged_once_for_the_state_file() {
    let mut server = Script::new(vec![(
        vec![create(1, "a", "1234", PinType::Permanent)],
        false,
    )]);
    let (mut lock, c, t) = talked(&mut server);
    assert!(lock.take_memory_changed());
    assert!(!lock.take_memory_changed());
    // Repeats only: nothing new to save.
    let mut server = Script::new(vec![(
        vec![create(1, "a", "1234", PinType::Permanent)],
        false,
    )]);
    lock.heartbeat_now(t, &c);
    converse(&mut lock, &c, t, &mut server);
    assert_eq!(server.results(), vec![(1, JobOutcome::Done)]);
    assert!(!lock.take_memory_changed());
    // A saved memory comes back with the lock.
    let memory = lock.memory().clone();
    let (fresh, _) = inb1(None);
    let restored = fresh.with_memory(memory);
    assert_eq!(restored.pin_count(), 1);
    assert!(restored.memory().remembered(1, 1).is_some());
}

/// A bridged SP2E lock nobody visits, linked to bridge B00001.
fn bridged() -> (Lock, SimClock) {
    let c = clock();
    let lock = Lock::new(
        &spec("L7", LockModel::Sp2e, Transport::Bridge),
        0,
        1,
        &c,
        None,
    )
    .with_visits_per_hour(0.0);
    (lock, c)
}

/// The job report at the front of the outbox.
fn front_report(lock: &Lock) -> (u32, JobReport) {
    let r = lock.outbox().next().unwrap();
    assert_eq!(r.kind, UplinkKind::JobReport);
    (r.seq, JobReport::decode(&r.payload).unwrap())
}

#[test]
fn a_bridge_command_moves_the_bolt_logs_it_and_queues_its_report_under_the_next_seq() {
    let (mut lock, c) = bridged();
    let t = c.start() + Duration::from_secs(1);
    assert_eq!(lock.physical().lock, LockState::Locked);
    let seq = lock.counters().next_seq;
    let done = lock.apply_bridge_job(&immediate(1, JobAction::Unlock), t, &c);
    assert_eq!(
        (done.result.outcome, done.repeat, done.queued.created),
        (JobOutcome::Done, false, 1)
    );
    assert_eq!(lock.physical().lock, LockState::Unlocked);
    let (report_seq, report) = front_report(&lock);
    assert_eq!(report_seq, seq, "the lock's own report counter");
    assert_eq!(
        report,
        JobReport {
            lock_id: "L7".into(),
            seq,
            results: vec![done.result.clone()],
        }
    );
    assert_eq!(lock.counters().next_seq, seq + 1);
    let o = lock.poll_send().unwrap();
    assert_eq!((o.kind, o.seq), (UplinkKind::JobReport, seq));
    assert!(lock.conversation_open());

    // The unlock is in the activity log; so is the lock that follows.
    let locked = lock.apply_bridge_job(&immediate(2, JobAction::Lock), t, &c);
    assert_eq!(locked.result.outcome, JobOutcome::Done);
    assert_eq!(lock.physical().lock, LockState::Locked);
    let kinds: Vec<ActivityKind> = lock.pending.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![ActivityKind::UnlockedBluetooth, ActivityKind::Locked]
    );
    // A sync, and a lock of a locked lock, change nothing and log nothing.
    for (id, action) in [(3, JobAction::Sync), (4, JobAction::Lock)] {
        let r = lock.apply_bridge_job(&immediate(id, action), t, &c);
        assert_eq!(r.result.outcome, JobOutcome::Done, "{action:?}");
    }
    assert_eq!(lock.physical().lock, LockState::Locked);
    assert_eq!(lock.pending.len(), 2);
    assert_eq!(lock.outbox().count(), 4, "one report per command");
}

#[test]
fn a_bridge_command_delivered_again_is_answered_from_memory_and_not_applied_twice() {
    let (mut lock, c) = bridged();
    let t = c.start() + Duration::from_secs(1);
    let job = create(5, "acc-5", "482916", PinType::Permanent);
    let first = lock.apply_bridge_job(&job, t, &c);
    assert_eq!(
        (first.result.outcome, first.repeat),
        (JobOutcome::Done, false)
    );
    assert!(lock.take_memory_changed());
    lock.apply_bridge_job(&delete(6, "acc-5"), t, &c);
    assert_eq!(lock.pin_count(), 0);
    lock.take_memory_changed();

    // The create again (its report was lost): the remembered result, and
    // the PIN deleted since stays deleted.
    let again = lock.apply_bridge_job(&job, t, &c);
    assert_eq!(again.result, first.result);
    assert!(again.repeat);
    assert_eq!(again.queued.created, 1, "answered all the same");
    assert_eq!(lock.pin_count(), 0);
    assert!(!lock.take_memory_changed());
    let (_, report) = front_report(&lock);
    assert_eq!(report.results, vec![first.result]);

    // An unlock repeated does not log a second unlock.
    let unlock = immediate(7, JobAction::Unlock);
    lock.apply_bridge_job(&unlock, t, &c);
    lock.apply_bridge_job(&unlock, t, &c);
    assert_eq!(lock.pending.len(), 1);
}

#[test]
fn bridge_commands_issued_before_a_hard_reset_fail_and_pin_commands_fill_the_table() {
    let (mut lock, c) = bridged();
    let t = c.start() + Duration::from_secs(1);
    lock.hard_reset_as_of(T0, t, &c);
    let stale = lock.apply_bridge_job(&immediate(1, JobAction::Unlock), t, &c);
    assert_eq!(stale.result.outcome, JobOutcome::HardReset);
    assert_eq!(lock.physical().lock, LockState::Locked);
    let pin = DeviceJob {
        issued: T0 + 1,
        ..create(2, "acc-2", "1234", PinType::Permanent)
    };
    assert_eq!(
        lock.apply_bridge_job(&pin, t, &c).result.outcome,
        JobOutcome::Done
    );
    assert_eq!(lock.pin_count(), 1);
    assert!(lock.enter_pin_at("1234", T0 + 10, t, &c));
}

#[test]
fn a_lock_command_with_the_door_open_is_rejected() {
    let (mut lock, c) = bridged();
    let t = c.start() + Duration::from_secs(1);
    lock.apply_bridge_job(&immediate(1, JobAction::Unlock), t, &c);
    lock.physical.apply(ActivityKind::DoorOpened).unwrap();
    let r = lock.apply_bridge_job(&immediate(2, JobAction::Lock), t, &c);
    assert_eq!(r.result.outcome, JobOutcome::Rejected);
    assert_eq!(lock.physical().lock, LockState::Unlocked);
}

#[test]
fn a_resumed_lock_sends_what_its_outbox_holds_without_waiting_for_its_wake() {
    let (mut lock, c) = bridged();
    let t = c.start() + Duration::from_secs(1);
    lock.apply_bridge_job(&immediate(1, JobAction::Sync), t, &c);
    let o = lock.poll_send().unwrap();
    lock.on_gave_up(o.seq);
    assert_eq!(lock.poll_send(), None, "asleep until its next wake");
    lock.resume();
    assert_eq!(lock.poll_send().unwrap().seq, o.seq);
}

#[test]
fn a_lock_off_the_server_schedule_keeps_its_own_heartbeat_time() {
    let (lock, c) = inb1(None);
    let mut lock = lock.with_server_schedule(false);
    let t = c.start() + Duration::from_secs(1);
    let before = lock.next_heartbeat;
    let hb = lock.heartbeat_now(t, &c).heartbeat.unwrap();
    while let Some(o) = lock.poll_send() {
        let answer = match o.kind {
            UplinkKind::ActivityLog => Answer::LogAck(LogAck {
                server_time: T0,
                stored: 0,
                seq: o.seq,
            }),
            _ => Answer::Downlink(Downlink {
                next_heartbeat_at: Some(T0 + 600),
                ..downlink(o.seq, vec![], false)
            }),
        };
        lock.on_acked(o.seq, &answer, t, &c);
    }
    assert!(lock.report(hb).is_none());
    assert_eq!(
        lock.next_heartbeat, before,
        "the answer's wake-up time ignored"
    );
}

#[test]
fn reports_are_due_when_their_timer_was_however_late_the_wake() {
    let (mut lock, c) = inb1(None);
    let due = lock.next_heartbeat;
    lock.next_log = due + Duration::from_secs(3600);
    // The transport woke the lock late: the heartbeat (and the log batch
    // it syncs) was due at its timer.
    let late = due + Duration::from_millis(250);
    let hb = lock
        .wake(late, &c, true)
        .heartbeat
        .expect("a heartbeat was due");
    assert_eq!(lock.report(hb).unwrap().due, due);
    assert!(lock.outbox().all(|r| r.due == due));
    // On demand: due when asked for.
    let t = late + Duration::from_secs(1);
    let now_hb = lock.heartbeat_now(t, &c).heartbeat.unwrap();
    assert_eq!(lock.report(now_hb).unwrap().due, t);
}
