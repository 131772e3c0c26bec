//! Unit tests of the sans-I/O lock: schedule, outbox, seqs and state
//! consistency, driven by a fake clock.

use super::*;
use crate::activity::Physical;

const SPEEDUP: f64 = 600.0;

pub(super) fn spec(id: &str, model: LockModel, transport: Transport) -> LockSpec {
    LockSpec {
        id: id.into(),
        model,
        imei: model.is_nb_iot().then(|| "356938035643809".into()),
        bluetooth_id: "INB102e119b9".into(),
        org: "org-001".into(),
        departments: vec![],
        time_zone: "Asia/Singapore".into(),
        heartbeat_interval: HeartbeatInterval::DEFAULT,
        activity_log_interval: ActivityLogInterval::DEFAULT,
        bridge_id: (transport == Transport::Bridge).then(|| "B00001".into()),
        transport,
        master_secret: crate::fleet::MasterSecret::from_bytes([1; 32]),
    }
}

pub(super) fn clock() -> SimClock {
    SimClock::new(Instant::now(), 1_700_000_000, SPEEDUP)
}

pub(super) fn inb1(max: Option<u32>) -> (Lock, SimClock) {
    let c = clock();
    (
        Lock::new(
            &spec("L000001", LockModel::Inb1, Transport::Coap),
            0,
            7,
            &c,
            max,
        ),
        c,
    )
}

fn downlink(seq: u32, hb: u16, log: u16) -> Answer {
    Answer::Downlink(Downlink {
        server_time: 0,
        heartbeat_interval: HeartbeatInterval::from_hours(hb).unwrap(),
        activity_log_interval: ActivityLogInterval::from_minutes(log).unwrap(),
        seq,
        jobs: vec![],
        more: false,
        next_heartbeat_at: None,
    })
}

fn ack_for(kind: UplinkKind, seq: u32) -> Answer {
    match kind {
        UplinkKind::Heartbeat | UplinkKind::JobReport => downlink(seq, 24, 60),
        UplinkKind::ActivityLog => Answer::LogAck(LogAck {
            server_time: 0,
            stored: 0,
            seq,
        }),
    }
}

/// Runs the lock on a perfect network until `until`, returning every
/// acknowledged report in order.
fn run_perfect(lock: &mut Lock, clock: &SimClock, until: Instant) -> Vec<Report> {
    let mut acked = Vec::new();
    while let Some(t) = lock.next_wake().filter(|t| *t <= until) {
        lock.wake(t, clock, true);
        while let Some(o) = lock.poll_send() {
            let r = lock
                .on_acked(o.seq, &ack_for(o.kind, o.seq), t, clock)
                .report
                .unwrap();
            acked.push(r);
        }
    }
    acked
}

#[test]
fn first_wakes_fall_within_one_interval() {
    let (lock, c) = inb1(None);
    let first = lock.next_wake().unwrap();
    // The activity-log interval (60 min) lasts 6 s at 600x.
    assert!(first >= c.start() && first < c.start() + Duration::from_secs(6));
}

#[test]
fn seq_is_shared_by_heartbeats_and_batches_and_starts_at_1() {
    let (mut lock, c) = inb1(None);
    let acked = run_perfect(&mut lock, &c, c.start() + Duration::from_secs(300));
    let seqs: Vec<u32> = acked.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=acked.len() as u32).collect::<Vec<_>>());
    let hbs = acked
        .iter()
        .filter(|r| r.kind == UplinkKind::Heartbeat)
        .count();
    let logs = acked.len() - hbs;
    // 300 s at 600x: 50 h, so 2 or 3 heartbeats and about 50 log uploads.
    assert!((2..=3).contains(&hbs), "{hbs}");
    assert!((49..=60).contains(&logs), "{logs}");
}

#[test]
fn heartbeat_follows_a_log_upload_of_what_accumulated() {
    let (mut lock, c) = inb1(None);
    let acked = run_perfect(&mut lock, &c, c.start() + Duration::from_secs(600));
    for (i, r) in acked
        .iter()
        .enumerate()
        .filter(|(_, r)| r.kind == UplinkKind::Heartbeat)
    {
        // Whatever happened before the heartbeat was uploaded before it.
        let hb = Heartbeat::decode(&r.payload).unwrap();
        assert!(i > 0 && acked[i - 1].kind == UplinkKind::ActivityLog || hb.seq == 1);
    }
}

#[test]
fn only_one_report_in_flight() {
    let (mut lock, c) = inb1(None);
    let t = c.start() + Duration::from_secs(150); // past the first heartbeat
    lock.wake(t, &c, true);
    assert!(lock.outbox().count() >= 2);
    let first = lock.poll_send().unwrap();
    assert_eq!(lock.poll_send(), None, "NSTART 1");
    lock.on_acked(first.seq, &ack_for(first.kind, first.seq), t, &c);
    assert_eq!(lock.poll_send().unwrap().seq, first.seq + 1);
}

#[test]
fn a_report_that_gave_up_is_resent_at_the_next_wake_with_the_same_seq_and_bytes() {
    let (mut lock, c) = inb1(None);
    let t1 = lock.next_wake().unwrap();
    lock.wake(t1, &c, true);
    let sent = lock.poll_send().unwrap();
    assert!(sent.first_attempt);
    lock.on_gave_up(sent.seq);
    assert_eq!(lock.poll_send(), None, "asleep until the next wake");
    assert_eq!(lock.outbox().count(), 1);

    let t2 = lock.next_wake().unwrap();
    assert!(t2 > t1);
    lock.wake(t2, &c, true);
    let again = lock.poll_send().unwrap();
    assert_eq!(again.seq, sent.seq);
    assert_eq!(again.payload, sent.payload);
    assert!(!again.first_attempt);
    lock.on_acked(again.seq, &ack_for(again.kind, again.seq), t2, &c);
    // The report of the second wake follows with the next seq.
    assert_eq!(lock.poll_send().unwrap().seq, sent.seq + 1);
}

#[test]
fn duplicate_and_late_acks_are_recognised() {
    let (mut lock, c) = inb1(None);
    let t = lock.next_wake().unwrap();
    lock.wake(t, &c, true);
    let o = lock.poll_send().unwrap();
    lock.on_gave_up(o.seq);
    // The answer to the given-up attempt arrives late: still acknowledged.
    assert!(lock
        .on_acked(o.seq, &ack_for(o.kind, o.seq), t, &c)
        .report
        .is_some());
    assert!(lock
        .on_acked(o.seq, &ack_for(o.kind, o.seq), t, &c)
        .report
        .is_none());
}

#[test]
fn refused_reports_are_not_retried() {
    let (mut lock, c) = inb1(None);
    let t = lock.next_wake().unwrap();
    lock.wake(t, &c, true);
    let o = lock.poll_send().unwrap();
    assert!(lock.on_refused(o.seq).is_some());
    assert_eq!(lock.outbox().count(), 0);
}

#[test]
fn downlink_intervals_are_adopted() {
    let (mut lock, c) = inb1(None);
    let t = c.start() + Duration::from_secs(150);
    lock.wake(t, &c, true);
    while let Some(o) = lock.poll_send() {
        let answer = match o.kind {
            UplinkKind::Heartbeat => downlink(o.seq, 1, 10),
            kind => ack_for(kind, o.seq),
        };
        lock.on_acked(o.seq, &answer, t, &c);
    }
    assert_eq!(lock.intervals().0.hours(), 1);
    assert_eq!(lock.intervals().1.minutes(), 10);
    // 10 min at 600x is 1 s: the next wake comes within it.
    assert!(lock.next_wake().unwrap() <= t + Duration::from_secs(1));
    let acked = run_perfect(&mut lock, &c, t + Duration::from_secs(60));
    let hb = acked
        .iter()
        .find(|r| r.kind == UplinkKind::Heartbeat)
        .unwrap();
    let hb = Heartbeat::decode(&hb.payload).unwrap();
    assert_eq!(hb.heartbeat_interval.hours(), 1);
}

#[test]
fn heartbeats_report_the_state_the_event_log_leads_to() {
    for (i, model) in [LockModel::Inb1, LockModel::Sp2e, LockModel::Padlock2]
        .into_iter()
        .enumerate()
    {
        let c = clock();
        let transport = if model.is_nb_iot() {
            Transport::Coap
        } else {
            Transport::Bridge
        };
        let mut lock = Lock::new(&spec("L1", model, transport), i, 11, &c, None);
        let acked = run_perfect(&mut lock, &c, c.start() + Duration::from_secs(3000));
        let mut replay = Physical::initial(model);
        let mut next_event = 1;
        let mut heartbeats = 0;
        for r in &acked {
            match r.kind {
                UplinkKind::ActivityLog => {
                    let b = ActivityLogBatch::decode(&r.payload).unwrap();
                    assert!(b.events.len() <= MAX_EVENTS_PER_BATCH);
                    if !b.events.is_empty() {
                        assert_eq!(r.event_seqs, next_event..next_event + b.events.len() as u32);
                    }
                    for e in &b.events {
                        assert_eq!(e.seq, next_event, "no gap, no repeat");
                        next_event += 1;
                        replay.apply(e.kind).unwrap();
                    }
                }
                UplinkKind::Heartbeat => {
                    let hb = Heartbeat::decode(&r.payload).unwrap();
                    assert_eq!((hb.lock_state, hb.door_state), (replay.lock, replay.door));
                    heartbeats += 1;
                }
                UplinkKind::JobReport => unreachable!("no jobs were sent"),
            }
        }
        assert!(heartbeats >= 20, "{heartbeats}");
        assert!(next_event > 100, "{model}: {next_event} events");
    }
}

#[test]
fn big_backlogs_are_split_into_batches_of_at_most_64() {
    let c = clock();
    let mut s = spec("L1", LockModel::Inb1, Transport::Coap);
    s.activity_log_interval = ActivityLogInterval::from_minutes(1440).unwrap();
    let mut lock = Lock::new(&s, 3, 1, &c, None);
    lock.visits_per_hour = 20.0;
    let t = c.start() + Duration::from_secs(600);
    lock.wake(t, &c, true);
    let batches: Vec<&Report> = lock
        .outbox()
        .filter(|r| r.kind == UplinkKind::ActivityLog)
        .collect();
    assert!(batches.len() >= 2, "{}", batches.len());
    for b in batches {
        let decoded = ActivityLogBatch::decode(&b.payload).unwrap();
        assert!(decoded.events.len() <= MAX_EVENTS_PER_BATCH);
        assert!(b.payload.len() <= MAX_UPLINK_BYTES);
    }
}

#[test]
fn report_budget_is_respected() {
    let (mut lock, c) = inb1(Some(5));
    let acked = run_perfect(&mut lock, &c, c.start() + Duration::from_secs(3000));
    assert_eq!(acked.len(), 5);
    assert!(lock.finished());
    assert_eq!(lock.next_wake(), None);
}

#[test]
fn bridged_locks_have_no_carrier_or_channel_and_sp2e_reports_percent() {
    let c = clock();
    let mut lock = Lock::new(
        &spec("L9", LockModel::Sp2e, Transport::Bridge),
        9,
        1,
        &c,
        None,
    );
    let acked = run_perfect(&mut lock, &c, c.start() + Duration::from_secs(200));
    let hb = acked
        .iter()
        .find(|r| r.kind == UplinkKind::Heartbeat)
        .unwrap();
    let hb = Heartbeat::decode(&hb.payload).unwrap();
    assert_eq!(hb.carrier, "");
    assert_eq!(hb.channel, None);
    assert!(matches!(hb.battery, Battery::Percent(_)));
    assert_eq!(hb.signal_quality, SignalQuality::from_db(hb.signal_db));

    let (mut lock, c) = inb1(None);
    let acked = run_perfect(&mut lock, &c, c.start() + Duration::from_secs(200));
    let hb = acked
        .iter()
        .find(|r| r.kind == UplinkKind::Heartbeat)
        .unwrap();
    let hb = Heartbeat::decode(&hb.payload).unwrap();
    assert!(matches!(hb.battery, Battery::Level(_)));
    assert!(hb.channel.is_some() && !hb.carrier.is_empty());
}

#[test]
fn some_locks_go_low_during_a_run() {
    let c = clock();
    let mut went_low = 0;
    for i in 0..400 {
        let mut lock = Lock::new(
            &spec("L1", LockModel::Sp2e, Transport::Bridge),
            i,
            5,
            &c,
            None,
        );
        let before = lock.battery().is_low();
        run_perfect(&mut lock, &c, c.start() + Duration::from_secs(600));
        if !before && lock.battery().is_low() {
            went_low += 1;
        }
    }
    assert!((1..100).contains(&went_low), "{went_low}");
}

#[test]
fn a_full_outbox_drops_the_oldest_heartbeat_first() {
    let c = clock();
    let mut s = spec("L1", LockModel::Inb1, Transport::Coap);
    s.heartbeat_interval = HeartbeatInterval::from_hours(1).unwrap();
    s.activity_log_interval = ActivityLogInterval::from_minutes(1440).unwrap();
    let mut lock = Lock::new(&s, 0, 1, &c, None);
    lock.visits_per_hour = 0.0;
    let mut abandoned = 0;
    // Never acknowledged: one heartbeat per simulated hour piles up.
    for h in 1..=(MAX_OUTBOX_REPORTS as u64 + 5) {
        let out = lock.wake(c.start() + Duration::from_secs(6 * h), &c, true);
        abandoned += out.abandoned;
    }
    assert_eq!(lock.outbox().count(), MAX_OUTBOX_REPORTS);
    assert!(abandoned >= 5, "{abandoned}");
    let first = lock.outbox().next().unwrap().seq;
    assert!(first > 1, "the oldest went first");
}

#[test]
fn draining_wakes_send_but_create_nothing() {
    let (mut lock, c) = inb1(None);
    let t = lock.next_wake().unwrap();
    lock.wake(t, &c, true);
    let o = lock.poll_send().unwrap();
    lock.on_gave_up(o.seq);
    let later = t + Duration::from_secs(100);
    let out = lock.wake(later, &c, false);
    assert_eq!(out.created, 0);
    assert_eq!(lock.poll_send().unwrap().seq, o.seq);
}

#[test]
fn a_lock_with_saved_counters_continues_from_them_and_reports_where_it_is() {
    let (lock, c) = inb1(None);
    let saved = Counters {
        next_seq: 500,
        next_event_seq: 9000,
        next_oscore_seq: 77,
    };
    let mut lock = lock.with_counters(saved);
    assert_eq!(lock.counters(), saved);
    let acked = run_perfect(&mut lock, &c, c.start() + Duration::from_secs(300));
    let seqs: Vec<u32> = acked.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (500..500 + acked.len() as u32).collect::<Vec<_>>());
    let events: Vec<u32> = acked.iter().flat_map(|r| r.event_seqs.clone()).collect();
    assert!(!events.is_empty());
    assert_eq!(
        events,
        (9000..9000 + events.len() as u32).collect::<Vec<_>>()
    );
    assert_eq!(
        lock.counters(),
        Counters {
            next_seq: 500 + acked.len() as u32,
            next_event_seq: 9000 + events.len() as u32,
            next_oscore_seq: 77,
        }
    );
}

#[test]
fn saved_counters_never_make_a_seq_0_and_wrap_past_u32_max_to_1() {
    let (lock, c) = inb1(None);
    let lock = lock.with_counters(Counters {
        next_seq: 0,
        next_event_seq: 0,
        next_oscore_seq: 0,
    });
    assert_eq!(lock.counters(), Counters::START);

    let mut lock = lock.with_counters(Counters {
        next_seq: u32::MAX,
        next_event_seq: 1,
        next_oscore_seq: 1,
    });
    let acked = run_perfect(&mut lock, &c, c.start() + Duration::from_secs(30));
    let seqs: Vec<u32> = acked.iter().take(3).map(|r| r.seq).collect();
    assert_eq!(seqs, vec![u32::MAX, 1, 2]);
}

#[test]
fn oscore_sequence_numbers_are_drawn_one_by_one_and_end_at_2_pow_40() {
    let (lock, _) = inb1(None);
    let mut lock = lock.with_counters(Counters {
        next_oscore_seq: 41,
        ..Counters::START
    });
    assert_eq!(lock.take_oscore_seq(), Some(41));
    assert_eq!(lock.take_oscore_seq(), Some(42));
    assert_eq!(lock.counters().next_oscore_seq, 43);
    // Drawing never touches the report counters.
    assert_eq!(lock.counters().next_seq, 1);

    let last = lockfleet_oscore::MAX_SEQ;
    let mut lock = lock.with_counters(Counters {
        next_oscore_seq: last,
        ..Counters::START
    });
    assert_eq!(lock.take_oscore_seq(), Some(last));
    assert_eq!(lock.take_oscore_seq(), None, "exhausted: re-key");
    assert_eq!(lock.take_oscore_seq(), None);
    assert_eq!(lock.counters().next_oscore_seq, last + 1);
}
