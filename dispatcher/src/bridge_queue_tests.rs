use super::*;
use std::collections::HashSet;

const T0: u64 = 1_700_000_000_000;
const TIMEOUT_MS: u64 = DEFAULT_TIMEOUT_MS;

fn queue() -> BridgeQueue {
    BridgeQueue::new(BridgeQueueConfig::default()).unwrap()
}
fn bridge(s: &str) -> BridgeId {
    BridgeId::new(s)
}
fn cmd(id: u64, lock: &str, via: &str) -> Command {
    Command {
        id,
        attempt: 1,
        lock: LockId::new(lock),
        bridge: bridge(via),
    }
}
fn online(q: &mut BridgeQueue, b: &str) {
    assert!(q.bridge_online(&bridge(b), T0));
}
fn ids(sends: &[Transmit]) -> Vec<u64> {
    sends.iter().map(|t| t.id).collect()
}

impl BridgeQueue {
    /// Every internal invariant the methods rely on, checked in full.
    fn check(&self) {
        let mut queued = 0;
        let mut flying = 0;
        for (lock, ls) in &self.locks {
            assert!(!ls.entries.is_empty(), "{lock} kept without commands");
            queued += ls.entries.len();
            for e in &ls.entries {
                assert_eq!(self.lock_of.get(&e.id), Some(lock));
            }
            let bs = &self.bridges[&ls.bridge];
            assert!(bs.locks.contains(lock), "{lock} missing on its bridge");
            if let Some(d) = ls.deadline_ms {
                flying += 1;
                assert!(bs.online, "{lock} in flight to an offline bridge");
                assert!(self.deadlines.contains(&(d, ls.entries[0].id)));
            }
        }
        assert_eq!(self.lock_of.len(), queued);
        assert_eq!(self.deadlines.len(), flying);
        let ring: HashSet<&BridgeId> = self.ring.iter().collect();
        assert_eq!(ring.len(), self.ring.len(), "a bridge twice in the ring");
        for (id, bs) in &self.bridges {
            assert!(bs.locks.len() <= MAX_LOCKS_PER_BRIDGE);
            assert_eq!(bs.in_ring, ring.contains(id));
            for l in &bs.locks {
                assert_eq!(self.locks[l].bridge, *id);
            }
            let can_send = bs.online && bs.locks.iter().any(|l| self.locks[l].eligible());
            assert!(
                !can_send || bs.in_ring,
                "{id} can send but waits outside the ring"
            );
        }
    }
}

#[test]
fn command_goes_out_at_once_to_an_online_bridge() {
    let mut q = queue();
    online(&mut q, "B1");
    q.enqueue(cmd(7, "L1", "B1")).unwrap();
    assert_eq!(
        q.next_sends(T0, 10),
        vec![Transmit {
            id: 7,
            attempt: 1,
            lock: LockId::new("L1"),
            bridge: bridge("B1"),
            try_no: 1,
        }]
    );
    assert_eq!(q.next_deadline_ms(), Some(T0 + TIMEOUT_MS));
    assert_eq!((q.queued(), q.in_flight(), q.depth("B1")), (0, 1, 1));
    q.check();
}

#[test]
fn one_in_flight_per_lock_while_the_other_lock_of_the_bridge_proceeds() {
    let mut q = queue();
    online(&mut q, "B1");
    for (id, lock) in [(1, "L1"), (2, "L1"), (3, "L2"), (4, "L2")] {
        q.enqueue(cmd(id, lock, "B1")).unwrap();
    }
    assert_eq!(ids(&q.next_sends(T0, 10)), vec![1, 3]);
    assert_eq!(q.next_sends(T0, 10), vec![]);
    assert_eq!((q.queued(), q.in_flight(), q.depth("B1")), (2, 2, 4));
    assert!(q.on_result("L2", 3, 1).is_some());
    assert_eq!(ids(&q.next_sends(T0 + 1, 10)), vec![4]);
    assert_eq!(q.next_sends(T0 + 1, 10), vec![], "L1 still waits for 1");
    q.check();
}

#[test]
fn lock_commands_go_in_enqueue_order() {
    let mut q = queue();
    online(&mut q, "B1");
    for id in [30, 10, 20] {
        q.enqueue(cmd(id, "L1", "B1")).unwrap();
    }
    let mut order = Vec::new();
    while let [t] = q.next_sends(T0, 10).as_slice() {
        order.push(t.id);
        q.on_result("L1", t.id, 1).unwrap();
    }
    assert_eq!(order, vec![30, 10, 20]);
    assert_eq!((q.queued(), q.in_flight(), q.depth("B1")), (0, 0, 0));
    q.check();
}

#[test]
fn offline_bridge_holds_commands_until_it_reconnects() {
    let mut q = queue();
    q.enqueue(cmd(1, "L1", "B1")).unwrap();
    assert_eq!(q.next_sends(T0, 10), vec![], "never reported: offline");
    online(&mut q, "B1");
    assert_eq!(q.bridge_offline(&bridge("B1"), T0 + 1), Vec::<u64>::new());
    q.enqueue(cmd(2, "L1", "B1")).unwrap();
    assert_eq!(q.next_sends(T0 + 2, 10), vec![]);
    assert_eq!((q.queued(), q.in_flight()), (2, 0));
    assert!(q.bridge_online(&bridge("B1"), T0 + 3));
    assert_eq!(ids(&q.next_sends(T0 + 3, 10)), vec![1]);
    q.check();
}

#[test]
fn in_flight_command_returns_to_the_head_on_offline_and_is_sent_again_after_reconnect() {
    let mut q = queue();
    online(&mut q, "B1");
    q.enqueue(cmd(1, "L1", "B1")).unwrap();
    q.enqueue(cmd(2, "L1", "B1")).unwrap();
    assert_eq!(ids(&q.next_sends(T0, 10)), vec![1]);
    // A timeout and a retry, so the reconnect shows the tries reset.
    assert!(matches!(
        q.poll_timeouts(T0 + TIMEOUT_MS)[..],
        [TimedOut::Retry { tries: 1, .. }]
    ));
    assert_eq!(q.next_sends(T0 + TIMEOUT_MS, 10)[0].try_no, 2);
    assert_eq!(
        q.bridge_offline(&bridge("B1"), T0 + TIMEOUT_MS + 1),
        vec![1]
    );
    assert_eq!((q.queued(), q.in_flight()), (2, 0));
    assert_eq!(q.next_deadline_ms(), None);
    assert_eq!(q.poll_timeouts(T0 + 10 * TIMEOUT_MS), vec![]);
    assert_eq!(q.next_sends(T0 + 10 * TIMEOUT_MS, 10), vec![]);
    q.check();

    let back = T0 + 20 * TIMEOUT_MS;
    assert!(q.bridge_online(&bridge("B1"), back));
    let again = q.next_sends(back, 10);
    assert_eq!(
        again,
        vec![Transmit {
            id: 1,
            attempt: 1,
            lock: LockId::new("L1"),
            bridge: bridge("B1"),
            try_no: 1,
        }]
    );
    assert_eq!(q.on_result("L1", 1, 1).map(|d| d.sends), Some(3));
    assert_eq!(ids(&q.next_sends(back, 10)), vec![2]);
    q.check();
}

#[test]
fn timeout_retries_then_gives_up_after_max_tries_and_the_next_command_goes() {
    let mut q = queue();
    online(&mut q, "B1");
    q.enqueue(cmd(1, "L1", "B1")).unwrap();
    q.enqueue(cmd(2, "L1", "B1")).unwrap();
    let mut now = T0;
    for try_no in 1..=DEFAULT_MAX_TRIES {
        let sent = q.next_sends(now, 10);
        assert_eq!((sent[0].id, sent[0].try_no), (1, try_no));
        assert_eq!(q.poll_timeouts(now + TIMEOUT_MS - 1), vec![]);
        now += TIMEOUT_MS;
        let expected = if try_no < DEFAULT_MAX_TRIES {
            TimedOut::Retry {
                command: cmd(1, "L1", "B1"),
                tries: try_no,
            }
        } else {
            TimedOut::GaveUp {
                command: cmd(1, "L1", "B1"),
                tries: try_no,
            }
        };
        assert_eq!(q.poll_timeouts(now), vec![expected]);
        q.check();
    }
    assert_eq!(q.depth("B1"), 1);
    assert_eq!(
        q.on_result("L1", 1, 1),
        None,
        "a late result after the give-up"
    );
    assert_eq!(ids(&q.next_sends(now, 10)), vec![2]);
}

#[test]
fn stale_and_unknown_results_change_nothing() {
    let mut q = queue();
    online(&mut q, "B1");
    q.enqueue(Command {
        attempt: 2,
        ..cmd(1, "L1", "B1")
    })
    .unwrap();
    q.enqueue(cmd(5, "L2", "B1")).unwrap();
    q.next_sends(T0, 10);
    assert_eq!(q.on_result("L1", 99, 2), None, "unknown job");
    assert_eq!(
        q.on_result("L1", 1, 1),
        None,
        "the attempt before a recreate"
    );
    assert_eq!(q.on_result("L2", 1, 2), None, "another lock's job");
    assert_eq!(q.on_result("L9", 1, 2), None, "unknown lock");
    assert_eq!((q.queued(), q.in_flight()), (0, 2));
    q.check();
    let done = q.on_result("L1", 1, 2).unwrap();
    assert_eq!(
        done,
        Done {
            command: Command {
                attempt: 2,
                ..cmd(1, "L1", "B1")
            },
            sends: 1,
        }
    );
    assert_eq!(q.on_result("L1", 1, 2), None, "a duplicate result");
    assert_eq!((q.queued(), q.in_flight()), (0, 1));
    q.check();
}

#[test]
fn result_for_a_command_not_sent_here_completes_it() {
    // Sent before a restart: the lock's answer proves it was applied.
    let mut q = queue();
    q.enqueue(cmd(1, "L1", "B1")).unwrap();
    q.enqueue(cmd(2, "L1", "B1")).unwrap();
    assert_eq!(q.on_result("L1", 2, 1).map(|d| d.sends), Some(0));
    assert_eq!(q.depth("B1"), 1);
    online(&mut q, "B1");
    assert_eq!(ids(&q.next_sends(T0, 10)), vec![1]);
    q.check();
}

#[test]
fn bridge_with_a_thousand_commands_does_not_block_another_bridge() {
    let mut q = queue();
    online(&mut q, "A");
    online(&mut q, "B");
    for id in 0..1_000 {
        let lock = if id % 2 == 0 { "A1" } else { "A2" };
        q.enqueue(cmd(id, lock, "A")).unwrap();
    }
    q.enqueue(cmd(5_000, "B1", "B")).unwrap();
    let first = q.next_sends(T0, 2);
    assert_eq!(ids(&first), vec![0, 5_000]);
    let rest = q.next_sends(T0, 100);
    assert_eq!(
        ids(&rest),
        vec![1],
        "A's second lock; its first is in flight"
    );
    q.check();
}

#[test]
fn every_ready_bridge_gets_one_send_per_round() {
    let mut q = queue();
    for b in 0..100 {
        let via = format!("B{b}");
        online(&mut q, &via);
        for n in 0..10 {
            let lock = format!("L{b}-{}", n % 2);
            q.enqueue(cmd(b * 100 + n, &lock, &via)).unwrap();
        }
    }
    let round = q.next_sends(T0, 100);
    let bridges: HashSet<&str> = round.iter().map(|t| t.bridge.as_str()).collect();
    assert_eq!(bridges.len(), 100, "each bridge once");
    let round2 = q.next_sends(T0, 1_000);
    assert_eq!(round2.len(), 100, "then each bridge's second lock");
    assert_eq!(q.next_sends(T0, 1_000), vec![], "two locks, two in flight");
    assert!(q.ring.is_empty());
    q.check();
}

#[test]
fn remove_withdraws_a_waiting_command_and_refuses_a_sent_one() {
    let mut q = queue();
    online(&mut q, "B1");
    for id in 1..=3 {
        q.enqueue(cmd(id, "L1", "B1")).unwrap();
    }
    q.next_sends(T0, 10);
    assert_eq!(q.remove(2), Removal::Removed(cmd(2, "L1", "B1")));
    assert_eq!(q.remove(2), Removal::NotQueued);
    assert_eq!(q.remove(1), Removal::InFlight);
    q.bridge_offline(&bridge("B1"), T0 + 1);
    assert_eq!(
        q.remove(1),
        Removal::InFlight,
        "sent, then returned: may be applied"
    );
    assert_eq!(q.remove(42), Removal::NotQueued);
    q.bridge_online(&bridge("B1"), T0 + 2);
    q.next_sends(T0 + 2, 10);
    q.on_result("L1", 1, 1).unwrap();
    assert_eq!(ids(&q.next_sends(T0 + 3, 10)), vec![3]);
    q.check();
}

#[test]
fn unlink_returns_the_lock_commands_in_order_and_relink_sends_them_via_the_new_bridge() {
    let mut q = queue();
    online(&mut q, "B1");
    online(&mut q, "B2");
    for id in 1..=3 {
        q.enqueue(cmd(id, "L1", "B1")).unwrap();
    }
    q.next_sends(T0, 10);
    assert!(matches!(
        q.enqueue(cmd(4, "L1", "B2")),
        Err(EnqueueError::OtherBridge { .. })
    ));
    let moved = q.unlink_lock("L1");
    assert_eq!(ids_of(&moved), vec![1, 2, 3], "the one in flight included");
    assert_eq!((q.queued(), q.in_flight(), q.depth("B1")), (0, 0, 0));
    assert_eq!(q.next_deadline_ms(), None);
    assert_eq!(q.unlink_lock("L1"), vec![]);
    q.check();
    for c in moved {
        q.enqueue(Command {
            bridge: bridge("B2"),
            ..c
        })
        .unwrap();
    }
    let sent = q.next_sends(T0 + 1, 10);
    assert_eq!((sent[0].id, sent[0].bridge.as_str()), (1, "B2"));
    q.check();
}

fn ids_of(cmds: &[Command]) -> Vec<u64> {
    cmds.iter().map(|c| c.id).collect()
}

#[test]
fn enqueue_refuses_a_duplicate_and_a_third_lock_on_a_bridge() {
    let mut q = queue();
    q.enqueue(cmd(1, "L1", "B1")).unwrap();
    q.enqueue(cmd(2, "L2", "B1")).unwrap();
    assert_eq!(
        q.enqueue(cmd(1, "L2", "B1")),
        Err(EnqueueError::Duplicate {
            id: 1,
            lock: LockId::new("L1"),
        })
    );
    let full = q.enqueue(cmd(3, "L3", "B1")).unwrap_err();
    assert_eq!(
        full,
        EnqueueError::BridgeFull {
            bridge: bridge("B1"),
            lock: LockId::new("L3"),
        }
    );
    assert!(full.to_string().contains("unlink one of them"));
    // Once a lock's queue is empty, its place is free.
    q.remove(2);
    q.enqueue(cmd(3, "L3", "B1")).unwrap();
    q.check();
}

#[test]
fn config_refuses_zero_timeout_and_zero_tries() {
    let zero_timeout = BridgeQueueConfig {
        timeout_ms: 0,
        ..BridgeQueueConfig::default()
    };
    assert_eq!(
        BridgeQueue::new(zero_timeout).unwrap_err(),
        ConfigError::ZeroTimeout
    );
    let zero_tries = BridgeQueueConfig {
        max_tries: 0,
        ..BridgeQueueConfig::default()
    };
    assert_eq!(
        BridgeQueue::new(zero_tries).unwrap_err(),
        ConfigError::ZeroTries
    );
}

#[test]
fn status_reports_older_than_the_newest_change_are_ignored() {
    let mut q = queue();
    q.enqueue(cmd(1, "L1", "B1")).unwrap();
    assert!(q.bridge_online(&bridge("B1"), T0 + 10));
    assert!(!q.bridge_online(&bridge("B1"), T0 + 11), "unchanged");
    q.next_sends(T0 + 10, 10);
    assert_eq!(q.bridge_offline(&bridge("B1"), T0 + 5), Vec::<u64>::new());
    assert!(q.is_online("B1"));
    assert_eq!(q.in_flight(), 1);
    assert_eq!(q.bridge_offline(&bridge("B1"), T0 + 12), vec![1]);
    assert!(!q.is_online("B1"));
    q.check();
}

#[test]
fn poll_touches_only_due_commands() {
    let mut q = queue();
    for n in 0..1_000u64 {
        let via = format!("B{n}");
        online(&mut q, &via);
        q.enqueue(cmd(n, &format!("L{n}"), &via)).unwrap();
        assert_eq!(q.next_sends(T0 + n, 1).len(), 1);
    }
    let timed_out = q.poll_timeouts(T0 + TIMEOUT_MS + 9);
    assert_eq!(timed_out.len(), 10);
    assert_eq!(q.deadlines.len(), 990);
    assert_eq!(q.next_deadline_ms(), Some(T0 + TIMEOUT_MS + 10));
    q.check();
}

#[test]
fn idle_locks_leave_no_state() {
    let mut q = queue();
    online(&mut q, "B1");
    for n in 0..100 {
        q.enqueue(cmd(n, &format!("L{}", n % 2), "B1")).unwrap();
    }
    while !q.lock_of.is_empty() {
        for t in q.next_sends(T0, 10) {
            q.on_result(t.lock.as_str(), t.id, 1).unwrap();
        }
    }
    assert!(q.locks.is_empty());
    assert!(q.bridges["B1"].locks.is_empty());
    assert_eq!(q.bridges.len(), 1);
    q.check();
}

/// Deterministic pseudo-random numbers (splitmix64).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the queue should hold, kept the obvious way.
#[derive(Default)]
struct Model {
    link: HashMap<String, String>,
    online: HashSet<String>,
    /// Per lock, `(id, attempt)` in order.
    queue: HashMap<String, VecDeque<(u64, u8)>>,
    /// Per lock: the id in flight and its deadline.
    flying: HashMap<String, (u64, u64)>,
    tries: HashMap<u64, u8>,
    sent: HashSet<u64>,
    ended: HashMap<u64, &'static str>,
}

impl Model {
    fn end(&mut self, lock: &str, id: u64, how: &'static str) {
        let q = self.queue.get_mut(lock).unwrap();
        q.retain(|&(i, _)| i != id);
        if self.flying.get(lock).is_some_and(|f| f.0 == id) {
            self.flying.remove(lock);
        }
        assert!(self.ended.insert(id, how).is_none(), "{id} ended twice");
    }
    fn queued(&self) -> usize {
        self.queue.values().map(VecDeque::len).sum()
    }
    fn can_send(&self) -> bool {
        self.queue.iter().any(|(lock, q)| {
            !q.is_empty()
                && !self.flying.contains_key(lock)
                && self.online.contains(&self.link[lock])
        })
    }
}

/// Random enqueues, status changes, sends, results, timeouts, removals
/// and relinks against a model: never two in flight per lock, never a
/// send to an offline bridge, each lock's order kept, no bridge left
/// waiting while sends are asked for, and every command ends exactly once
/// (done, given up or removed) or is still queued.
#[test]
fn random_operations_keep_the_invariants() {
    let mut rng = Rng(2024);
    let mut q = queue();
    let mut m = Model::default();
    let bridges: Vec<String> = (0..8).map(|b| format!("B{b}")).collect();
    // Locks L0..L11 on B0..B5, two each; B6 and B7 start free.
    for l in 0..12 {
        m.link.insert(format!("L{l}"), format!("B{}", l / 2));
    }
    let locks: Vec<String> = (0..12).map(|l| format!("L{l}")).collect();
    let mut next_id = 0u64;
    let mut now = T0;
    for _ in 0..30_000 {
        now += rng.below(3_000);
        match rng.below(20) {
            0..=2 => {
                let lock = &locks[rng.below(12) as usize];
                let attempt = 1 + rng.below(2) as u8;
                let via = m.link[lock].clone();
                q.enqueue(Command {
                    id: next_id,
                    attempt,
                    lock: LockId::new(lock),
                    bridge: BridgeId::new(&via),
                })
                .unwrap();
                m.queue
                    .entry(lock.clone())
                    .or_default()
                    .push_back((next_id, attempt));
                next_id += 1;
            }
            6 | 7 => {
                let b = &bridges[rng.below(8) as usize];
                if m.online.contains(b) {
                    let mut returned = q.bridge_offline(&BridgeId::new(b), now);
                    returned.sort();
                    let mut expected = Vec::new();
                    for (lock, via) in &m.link {
                        if via == b {
                            if let Some((id, _)) = m.flying.remove(lock) {
                                expected.push(id);
                            }
                            for &(id, _) in m.queue.get(lock).into_iter().flatten() {
                                m.tries.insert(id, 0);
                            }
                        }
                    }
                    expected.sort();
                    assert_eq!(returned, expected);
                    m.online.remove(b);
                } else {
                    assert!(q.bridge_online(&BridgeId::new(b), now));
                    m.online.insert(b.clone());
                }
            }
            8..=11 => {
                let max = rng.below(6) as usize;
                let sent = q.next_sends(now, max);
                assert!(sent.len() <= max);
                for t in &sent {
                    let lock = t.lock.as_str();
                    assert!(m.online.contains(t.bridge.as_str()), "send to offline");
                    assert_eq!(m.link[lock], t.bridge.as_str());
                    assert!(!m.flying.contains_key(lock), "two in flight for {lock}");
                    assert_eq!(m.queue[lock].front(), Some(&(t.id, t.attempt)));
                    let tries = m.tries.entry(t.id).or_default();
                    *tries += 1;
                    assert_eq!(t.try_no, *tries);
                    m.flying.insert(lock.to_string(), (t.id, now + TIMEOUT_MS));
                    m.sent.insert(t.id);
                }
                if sent.len() < max {
                    assert!(!m.can_send(), "a lock could send but was not served");
                }
            }
            3..=5 | 12..=14 => {
                let (lock, id, attempt) = match rng.below(4) {
                    0..=2 if !m.flying.is_empty() => {
                        let (lock, &(id, _)) = m.flying.iter().next().unwrap();
                        let attempt = m.queue[lock].front().unwrap().1;
                        (lock.clone(), id, attempt)
                    }
                    _ => (
                        locks[rng.below(12) as usize].clone(),
                        rng.below(next_id + 1),
                        1 + rng.below(2) as u8,
                    ),
                };
                let known = m
                    .queue
                    .get(&lock)
                    .is_some_and(|q| q.contains(&(id, attempt)));
                let done = q.on_result(&lock, id, attempt);
                assert_eq!(done.is_some(), known, "result {lock} {id} {attempt}");
                if known {
                    m.end(&lock, id, "done");
                }
            }
            15 | 16 => {
                let mut reported: Vec<(u64, bool)> = q
                    .poll_timeouts(now)
                    .into_iter()
                    .map(|t| match t {
                        TimedOut::Retry { command, tries } => {
                            assert!(tries < DEFAULT_MAX_TRIES);
                            (command.id, false)
                        }
                        TimedOut::GaveUp { command, tries } => {
                            assert_eq!(tries, DEFAULT_MAX_TRIES);
                            (command.id, true)
                        }
                    })
                    .collect();
                reported.sort();
                let mut expected: Vec<(u64, bool)> = m
                    .flying
                    .values()
                    .filter(|&&(_, deadline)| deadline <= now)
                    .map(|&(id, _)| (id, m.tries[&id] == DEFAULT_MAX_TRIES))
                    .collect();
                expected.sort();
                assert_eq!(reported, expected);
                m.flying.retain(|_, f| f.1 > now);
                for (id, gave_up) in reported {
                    if gave_up {
                        let lock = q_lock_of(&m, id);
                        m.end(&lock, id, "gave up");
                    }
                }
            }
            17 | 18 => {
                let id = rng.below(next_id + 1);
                let expected = match m.queue.values().flatten().find(|c| c.0 == id) {
                    None => "not queued",
                    Some(_) if m.sent.contains(&id) => "in flight",
                    Some(_) => "removed",
                };
                match q.remove(id) {
                    Removal::Removed(c) => {
                        assert_eq!(expected, "removed");
                        m.end(c.lock.as_str(), id, "removed");
                    }
                    Removal::InFlight => assert_eq!(expected, "in flight"),
                    Removal::NotQueued => assert_eq!(expected, "not queued"),
                }
            }
            _ => {
                // Relink a lock to a bridge with room, carrying its commands.
                let lock = locks[rng.below(12) as usize].clone();
                let free: Vec<&String> = bridges
                    .iter()
                    .filter(|b| m.link.values().filter(|v| v == b).count() < 2)
                    .collect();
                let to = free[rng.below(free.len() as u64) as usize].clone();
                let moved = q.unlink_lock(&lock);
                let expected: Vec<(u64, u8)> =
                    m.queue.get(&lock).into_iter().flatten().copied().collect();
                let got: Vec<(u64, u8)> = moved.iter().map(|c| (c.id, c.attempt)).collect();
                assert_eq!(got, expected);
                m.flying.remove(&lock);
                for &(id, _) in &expected {
                    // Enqueued again, they are new to the queue.
                    m.tries.insert(id, 0);
                    m.sent.remove(&id);
                }
                m.link.insert(lock.clone(), to.clone());
                for c in moved {
                    q.enqueue(Command {
                        bridge: BridgeId::new(&to),
                        ..c
                    })
                    .unwrap();
                }
            }
        }
        q.check();
        assert_eq!(q.in_flight(), m.flying.len());
        assert_eq!(q.queued() + q.in_flight(), m.queued());
        for b in &bridges {
            let depth: usize = m
                .link
                .iter()
                .filter(|(_, v)| *v == b)
                .map(|(l, _)| m.queue.get(l).map_or(0, VecDeque::len))
                .sum();
            assert_eq!(q.depth(b), depth);
        }
    }
    let queued: HashSet<u64> = m.queue.values().flatten().map(|c| c.0).collect();
    for id in 0..next_id {
        assert!(
            queued.contains(&id) != m.ended.contains_key(&id),
            "{id} lost, or ended and still queued"
        );
    }
    let counts = |how| m.ended.values().filter(|h| **h == how).count();
    let (done, gave_up, removed) = (counts("done"), counts("gave up"), counts("removed"));
    assert!(done > 100 && gave_up > 10 && removed > 10);
    // Everything still queued is delivered once every bridge is online.
    let flying: Vec<(String, u64)> = m.flying.iter().map(|(l, f)| (l.clone(), f.0)).collect();
    for (lock, id) in flying {
        let attempt = m.queue[&lock][0].1;
        q.on_result(&lock, id, attempt).unwrap();
        m.end(&lock, id, "done");
    }
    for b in &bridges {
        q.bridge_online(&BridgeId::new(b), now);
    }
    while q.queued() + q.in_flight() > 0 {
        let sent = q.next_sends(now, 4);
        assert!(!sent.is_empty(), "queued commands but nothing to send");
        for t in sent {
            q.on_result(t.lock.as_str(), t.id, t.attempt).unwrap();
            m.end(t.lock.as_str(), t.id, "done");
        }
    }
    assert_eq!(m.ended.len() as u64, next_id);
    q.check();
}

fn q_lock_of(m: &Model, id: u64) -> String {
    m.queue
        .iter()
        .find(|(_, q)| q.iter().any(|c| c.0 == id))
        .map(|(l, _)| l.clone())
        .unwrap()
}
