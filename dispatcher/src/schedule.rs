//! When each NB-IoT lock wakes next, when its activity log is due, and which
//! locks have missed their heartbeat.
//!
//! An NB-IoT lock hears from us only in the answer to its heartbeat, so its
//! heartbeat schedule is also its job-delivery schedule
//! ([`Schedule::expected_delivery_ms`]). The schedule owns only this timing
//! state, in memory: the caller stores heartbeats, answers the lock (putting
//! [`Wake::next_heartbeat_s`] into `Downlink::next_heartbeat_at`), publishes
//! the [`OverdueChange`]s and arms its timer from
//! [`Schedule::next_deadline_ms`]. Like `quinn-proto`, it is driven with the
//! time as an argument and never reads a clock, sleeps or spawns a task.
//!
//! # Wake-up rule
//!
//! Each lock has a phase for its heartbeat interval `I`: a whole number of
//! seconds in `[0, I)`, fixed by a stable hash of its id ([`phase_ms`]). A
//! heartbeat at `t` is answered with the smallest `T >= t + I/2` such that
//! `T ≡ phase (mod I)`, counted from the Unix epoch ([`next_wake_ms`]). So:
//!
//! * every wait `T - t` lies in `[I/2, 3I/2)`;
//! * a fleet that powered on together is spread evenly over the interval by
//!   the first answer, since the phases are uniform;
//! * a lock on its phase that reports up to `I/2` late or early is told to
//!   come back exactly at its next slot, so it keeps its place.
//!
//! # Cost
//!
//! Lock ids are interned to a `u32` slot (56 bytes of state per lock besides
//! the id). The deadlines of locks not yet overdue live in one ordered index
//! of `(due + grace, slot)`; [`Schedule::poll`] pops only the entries that
//! have passed, so a poll costs `O(due · log n)`, never a scan of the fleet.

use crate::presence::ONLINE_GRACE_MS;
use crate::registry::LockId;
use schemas::{ActivityLogInterval, HeartbeatInterval};
use std::collections::{BTreeSet, HashMap};

const MS_PER_S: u64 = 1000;

/// How the schedule judges a lock late.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduleConfig {
    /// How long past the due time it was given a lock may stay silent before
    /// it is reported overdue. Defaults to [`ONLINE_GRACE_MS`], for the same
    /// reasons (NB-IoT attach, CoAP retransmissions).
    pub grace_ms: u64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            grace_ms: ONLINE_GRACE_MS,
        }
    }
}

/// The answer to a heartbeat: when the lock should report next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wake {
    /// Unix milliseconds; always a whole second.
    pub next_heartbeat_ms: u64,
    /// The same instant in Unix seconds, for `Downlink::next_heartbeat_at`.
    pub next_heartbeat_s: u64,
    /// Always an [`OverdueChange::Returned`]: set when this heartbeat ends an
    /// absence that [`Schedule::poll`] reported, so the caller can publish it
    /// beside the changes `poll` returns.
    pub returned: Option<OverdueChange>,
}

impl Wake {
    fn at(next_heartbeat_ms: u64, returned: Option<OverdueChange>) -> Self {
        Wake {
            next_heartbeat_ms,
            next_heartbeat_s: next_heartbeat_ms / MS_PER_S,
            returned,
        }
    }
}

/// A lock started or stopped being overdue. Each absence yields exactly one
/// `Overdue` and, if the lock reports again, one `Returned`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OverdueChange {
    /// No heartbeat by `due_ms` plus the grace.
    Overdue {
        lock: LockId,
        /// The heartbeat time the lock was given.
        due_ms: u64,
        /// When it became overdue: `due_ms` plus the grace.
        since_ms: u64,
    },
    /// An overdue lock sent a heartbeat at `at_ms`.
    Returned {
        lock: LockId,
        at_ms: u64,
        /// From becoming overdue (`since_ms`) to `at_ms`.
        overdue_for_ms: u64,
    },
}

/// One lock's timing state.
#[derive(Debug)]
struct Slot {
    id: LockId,
    last_heartbeat_ms: u64,
    next_heartbeat_ms: u64,
    /// `None`: no upload seen yet; the first is expected one activity-log
    /// interval after the last heartbeat.
    last_activity_ms: Option<u64>,
    heartbeat_interval: HeartbeatInterval,
    activity_log_interval: ActivityLogInterval,
    /// Reported by `poll` and not yet back; its index entry is gone.
    overdue: bool,
}

/// The heartbeat and activity-log schedule of every NB-IoT lock heard since
/// start (or restored). Call it only for locks the registry authorised: each
/// new id takes a slot until [`Schedule::forget`].
#[derive(Debug, Default)]
pub struct Schedule {
    config: ScheduleConfig,
    slot_of: HashMap<LockId, u32>,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    /// `(next_heartbeat_ms + grace_ms, slot)` of every lock not overdue.
    deadlines: BTreeSet<(u64, u32)>,
    overdue: usize,
}

impl Schedule {
    pub fn new(config: ScheduleConfig) -> Self {
        Schedule {
            config,
            ..Schedule::default()
        }
    }

    /// Record a heartbeat from `lock` at `at_ms`, with the intervals the answer
    /// tells it to use from now on; a changed interval applies from this
    /// answer. A heartbeat older than the newest one recorded changes nothing
    /// and gets the current answer again.
    pub fn on_heartbeat(
        &mut self,
        lock: &str,
        at_ms: u64,
        heartbeat_interval: HeartbeatInterval,
        activity_log_interval: ActivityLogInterval,
    ) -> Wake {
        self.record(lock, at_ms, heartbeat_interval, activity_log_interval, true)
    }

    /// Seed a lock after a restart from its stored newest heartbeat, as if it
    /// had just been heard then, without producing [`OverdueChange::Returned`].
    /// A lock whose deadline already passed is reported by the next
    /// [`Schedule::poll`] again (the schedule does not know whether it was
    /// before the restart). A restore older than a heartbeat already
    /// recorded changes nothing.
    pub fn restore(
        &mut self,
        lock: &str,
        last_heartbeat_ms: u64,
        heartbeat_interval: HeartbeatInterval,
        activity_log_interval: ActivityLogInterval,
    ) {
        self.record(
            lock,
            last_heartbeat_ms,
            heartbeat_interval,
            activity_log_interval,
            false,
        );
    }

    /// Record an activity-log upload; returns when the next one is due, or
    /// `None` for a lock not scheduled yet (its first heartbeat schedules it).
    pub fn on_activity_upload(&mut self, lock: &str, at_ms: u64) -> Option<u64> {
        let ix = *self.slot_of.get(lock)?;
        let slot = self.slots[ix as usize].as_mut()?;
        slot.last_activity_ms = Some(slot.last_activity_ms.map_or(at_ms, |t| t.max(at_ms)));
        Some(activity_due_ms(slot))
    }

    /// Report the locks whose deadline (due heartbeat plus the grace) is at or
    /// before `now_ms`, each once per absence. Touches only those entries.
    pub fn poll(&mut self, now_ms: u64) -> Vec<OverdueChange> {
        let mut changes = Vec::new();
        while let Some(&(deadline_ms, ix)) = self.deadlines.first() {
            if deadline_ms > now_ms {
                break;
            }
            self.deadlines.pop_first();
            // Invariant: an index entry names an occupied slot; `forget`
            // removes the entry before freeing the slot.
            let slot = self.slots[ix as usize]
                .as_mut()
                .expect("indexed slot is occupied");
            slot.overdue = true;
            self.overdue += 1;
            changes.push(OverdueChange::Overdue {
                lock: slot.id.clone(),
                due_ms: slot.next_heartbeat_ms,
                since_ms: deadline_ms,
            });
        }
        changes
    }

    /// The earliest time at which [`Schedule::poll`] will have something to
    /// report, for the caller's timer; `None` when no lock is pending.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.deadlines.first().map(|&(deadline_ms, _)| deadline_ms)
    }

    /// When a job created now would reach `lock`: its next due heartbeat,
    /// Unix milliseconds. A time in the past means the lock is late and gets
    /// the job whenever it reports. `None` for a lock never heard.
    pub fn expected_delivery_ms(&self, lock: &str) -> Option<u64> {
        self.slot(lock).map(|s| s.next_heartbeat_ms)
    }

    /// When `lock`'s next activity-log upload is due, Unix milliseconds.
    pub fn next_activity_upload_ms(&self, lock: &str) -> Option<u64> {
        self.slot(lock).map(activity_due_ms)
    }

    /// Drop a deregistered lock; false if it was not scheduled.
    pub fn forget(&mut self, lock: &str) -> bool {
        let Some(ix) = self.slot_of.remove(lock) else {
            return false;
        };
        if let Some(slot) = self.slots[ix as usize].take() {
            if slot.overdue {
                self.overdue -= 1;
            } else {
                self.deadlines.remove(&(self.deadline_ms(&slot), ix));
            }
            self.free.push(ix);
        }
        true
    }

    /// How many locks are overdue now (for a gauge).
    pub fn overdue_count(&self) -> usize {
        self.overdue
    }

    /// How many locks are scheduled.
    pub fn len(&self) -> usize {
        self.slot_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slot_of.is_empty()
    }

    fn slot(&self, lock: &str) -> Option<&Slot> {
        let ix = *self.slot_of.get(lock)?;
        self.slots[ix as usize].as_ref()
    }

    fn deadline_ms(&self, slot: &Slot) -> u64 {
        slot.next_heartbeat_ms.saturating_add(self.config.grace_ms)
    }

    fn record(
        &mut self,
        lock: &str,
        at_ms: u64,
        heartbeat_interval: HeartbeatInterval,
        activity_log_interval: ActivityLogInterval,
        announce_return: bool,
    ) -> Wake {
        let next_ms = next_wake_ms(lock, at_ms, heartbeat_interval);
        let grace_ms = self.config.grace_ms;
        let Some(&ix) = self.slot_of.get(lock) else {
            let id = LockId::new(lock);
            let slot = Slot {
                id: id.clone(),
                last_heartbeat_ms: at_ms,
                next_heartbeat_ms: next_ms,
                last_activity_ms: None,
                heartbeat_interval,
                activity_log_interval,
                overdue: false,
            };
            let ix = match self.free.pop() {
                Some(ix) => {
                    self.slots[ix as usize] = Some(slot);
                    ix
                }
                None => {
                    // Invariant: fewer than 2^32 locks (a fleet that size
                    // would not fit in memory anyway).
                    let ix = u32::try_from(self.slots.len()).expect("fewer than 2^32 locks");
                    self.slots.push(Some(slot));
                    ix
                }
            };
            self.slot_of.insert(id, ix);
            self.deadlines
                .insert((next_ms.saturating_add(grace_ms), ix));
            return Wake::at(next_ms, None);
        };
        // Invariant: `slot_of` names only occupied slots.
        let slot = self.slots[ix as usize]
            .as_mut()
            .expect("interned slot is occupied");
        if at_ms < slot.last_heartbeat_ms {
            return Wake::at(slot.next_heartbeat_ms, None);
        }
        let old_deadline_ms = slot.next_heartbeat_ms.saturating_add(grace_ms);
        let returned = if slot.overdue {
            slot.overdue = false;
            self.overdue -= 1;
            announce_return.then(|| OverdueChange::Returned {
                lock: slot.id.clone(),
                at_ms,
                overdue_for_ms: at_ms.saturating_sub(old_deadline_ms),
            })
        } else {
            self.deadlines.remove(&(old_deadline_ms, ix));
            None
        };
        slot.last_heartbeat_ms = at_ms;
        slot.next_heartbeat_ms = next_ms;
        slot.heartbeat_interval = heartbeat_interval;
        slot.activity_log_interval = activity_log_interval;
        self.deadlines
            .insert((next_ms.saturating_add(grace_ms), ix));
        Wake::at(next_ms, returned)
    }
}

fn activity_due_ms(slot: &Slot) -> u64 {
    slot.last_activity_ms
        .unwrap_or(slot.last_heartbeat_ms)
        .saturating_add(slot.activity_log_interval.as_secs() * MS_PER_S)
}

/// `lock`'s wake-up phase for `interval`: milliseconds past each multiple of
/// the interval since the Unix epoch, a whole second in `[0, interval)`.
/// Stable across processes and releases: changing the hash would move every
/// lock's slot at once.
pub fn phase_ms(lock: &str, interval: HeartbeatInterval) -> u64 {
    (stable_hash(lock.as_bytes()) % interval.as_secs()) * MS_PER_S
}

/// When a lock heard at `at_ms` should send its next heartbeat: the smallest
/// `T >= at_ms + interval/2` with `T ≡ phase_ms(lock) (mod interval)`, so
/// `T - at_ms` lies in `[interval/2, 3·interval/2)`.
pub fn next_wake_ms(lock: &str, at_ms: u64, interval: HeartbeatInterval) -> u64 {
    let interval_ms = interval.as_secs() * MS_PER_S;
    let earliest_ms = at_ms.saturating_add(interval_ms / 2);
    let phase = phase_ms(lock, interval);
    let wait_ms = (phase + interval_ms - earliest_ms % interval_ms) % interval_ms;
    earliest_ms.saturating_add(wait_ms)
}

/// FNV-1a over the id, then splitmix64's finaliser: FNV alone leaves ids that
/// differ in their last digit close together modulo an interval.
fn stable_hash(bytes: &[u8]) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = bytes.iter().fold(FNV_OFFSET, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME)
    });
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const T0: u64 = 1_700_000_000_123;
    const HOUR_MS: u64 = 3_600_000;
    const GRACE_MS: u64 = 600_000;

    fn hours(h: u16) -> HeartbeatInterval {
        HeartbeatInterval::from_hours(h).unwrap()
    }
    fn minutes(m: u16) -> ActivityLogInterval {
        ActivityLogInterval::from_minutes(m).unwrap()
    }
    fn schedule() -> Schedule {
        Schedule::new(ScheduleConfig { grace_ms: GRACE_MS })
    }
    fn beat(s: &mut Schedule, lock: &str, at_ms: u64) -> Wake {
        s.on_heartbeat(lock, at_ms, hours(1), minutes(60))
    }

    /// Deterministic pseudo-random numbers for the sweeps (splitmix64).
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

    fn peak_to_mean(wakes: &[u64], interval_ms: u64) -> f64 {
        let buckets = (interval_ms / 60_000) as usize;
        let mut per_minute = vec![0u32; buckets];
        for t in wakes {
            per_minute[((t % interval_ms) / 60_000) as usize] += 1;
        }
        let peak = f64::from(*per_minute.iter().max().unwrap());
        peak / (wakes.len() as f64 / buckets as f64)
    }

    #[test]
    fn fleet_powered_on_together_spreads_over_the_interval() {
        let mut s = schedule();
        let ids: Vec<String> = (0..10_000).map(|n| format!("INB1-{n:06}")).collect();
        // Without phases every lock would come back at T0 + 1 h: one minute.
        let naive: Vec<u64> = ids.iter().map(|_| T0 + HOUR_MS).collect();
        assert_eq!(peak_to_mean(&naive, HOUR_MS), 60.0);

        let first: Vec<u64> = ids
            .iter()
            .map(|id| beat(&mut s, id, T0).next_heartbeat_ms)
            .collect();
        // One cycle later, each lock reports at its slot, up to 90 s late.
        let mut rng = Rng(7);
        let second: Vec<u64> = ids
            .iter()
            .zip(&first)
            .map(|(id, t)| beat(&mut s, id, t + rng.below(90_000)).next_heartbeat_ms)
            .collect();
        for (a, b) in first.iter().zip(&second) {
            assert_eq!(b - a, HOUR_MS, "a punctual lock keeps its slot");
        }
        let ratio = peak_to_mean(&second, HOUR_MS);
        assert!(ratio < 1.4, "peak-to-mean {ratio}");
    }

    #[test]
    fn every_wake_is_on_phase_within_half_to_one_and_a_half_intervals() {
        let mut rng = Rng(1);
        for n in 0..100_000 {
            let lock = format!("lock-{}", rng.next());
            let interval = hours(HeartbeatInterval::ALLOWED_HOURS[n % 5].into());
            let i = interval.as_secs() * MS_PER_S;
            let at = T0 + rng.below(10 * 24 * HOUR_MS);
            let t = next_wake_ms(&lock, at, interval);
            assert!(t >= at + i / 2 && t < at + i + i / 2, "{lock} {at} {t}");
            assert_eq!(t % i, phase_ms(&lock, interval));
            assert_eq!(t % MS_PER_S, 0);
            assert!(t - i < at + i / 2, "the smallest such time");
        }
    }

    #[test]
    fn phase_is_stable_across_runs() {
        // Pinned: a changed hash would move every lock of a live fleet.
        assert_eq!(stable_hash(b""), 0xf52a_15e9_a9b5_e89b);
        assert_eq!(stable_hash(b"INB1-000001"), 0xec2c_48f3_7c9b_1203);
        assert_eq!(phase_ms("INB1-000001", hours(24)), 53_635_000);
        assert_eq!(phase_ms("INB1-000001", hours(1)), 3_235_000);
    }

    #[test]
    fn overdue_is_reported_once_after_the_grace_and_not_before() {
        let mut s = schedule();
        let due = beat(&mut s, "L1", T0).next_heartbeat_ms;
        assert_eq!(s.next_deadline_ms(), Some(due + GRACE_MS));
        assert_eq!(s.poll(due + GRACE_MS - 1), vec![]);
        assert_eq!(s.overdue_count(), 0);
        assert_eq!(
            s.poll(due + GRACE_MS),
            vec![OverdueChange::Overdue {
                lock: LockId::new("L1"),
                due_ms: due,
                since_ms: due + GRACE_MS,
            }]
        );
        assert_eq!(s.overdue_count(), 1);
        assert_eq!(s.poll(due + 10 * HOUR_MS), vec![]);
        assert_eq!(s.overdue_count(), 1);
        assert_eq!(s.next_deadline_ms(), None);
    }

    #[test]
    fn late_heartbeat_within_the_grace_is_not_overdue() {
        let mut s = schedule();
        let due = beat(&mut s, "L1", T0).next_heartbeat_ms;
        let wake = beat(&mut s, "L1", due + GRACE_MS - 1);
        assert_eq!(wake.returned, None);
        assert_eq!(s.poll(due + GRACE_MS), vec![]);
    }

    #[test]
    fn overdue_lock_returns_on_its_next_heartbeat() {
        let mut s = schedule();
        let due = beat(&mut s, "L1", T0).next_heartbeat_ms;
        assert_eq!(s.poll(due + GRACE_MS).len(), 1);
        let back = due + 3 * HOUR_MS;
        let wake = beat(&mut s, "L1", back);
        assert_eq!(
            wake.returned,
            Some(OverdueChange::Returned {
                lock: LockId::new("L1"),
                at_ms: back,
                overdue_for_ms: 3 * HOUR_MS - GRACE_MS,
            })
        );
        assert_eq!(s.overdue_count(), 0);
        assert_eq!(beat(&mut s, "L1", back + 1).returned, None);
        // A new absence is reported again.
        let due = s.expected_delivery_ms("L1").unwrap();
        assert_eq!(s.poll(due + GRACE_MS).len(), 1);
    }

    #[test]
    fn interval_change_takes_effect_on_the_next_heartbeat() {
        let mut s = schedule();
        let due = beat(&mut s, "L1", T0).next_heartbeat_ms;
        // The lock was told 1 h; the new interval reaches it in this answer.
        let wake = s.on_heartbeat("L1", due, hours(24), minutes(30));
        let day = hours(24).as_secs() * MS_PER_S;
        assert!(wake.next_heartbeat_ms >= due + day / 2);
        assert!(wake.next_heartbeat_ms < due + day + day / 2);
        assert_eq!(wake.next_heartbeat_ms % day, phase_ms("L1", hours(24)));
        assert_eq!(s.expected_delivery_ms("L1"), Some(wake.next_heartbeat_ms));
        assert_eq!(s.next_activity_upload_ms("L1"), Some(due + 30 * 60_000));
        assert_eq!(s.poll(due + HOUR_MS + GRACE_MS), vec![]);
    }

    #[test]
    fn activity_upload_moves_its_due_time() {
        let mut s = schedule();
        assert_eq!(s.on_activity_upload("L1", T0), None);
        s.on_heartbeat("L1", T0, hours(1), minutes(10));
        assert_eq!(s.next_activity_upload_ms("L1"), Some(T0 + 600_000));
        assert_eq!(s.on_activity_upload("L1", T0 + 5), Some(T0 + 5 + 600_000));
        assert_eq!(s.on_activity_upload("L1", T0 + 1), Some(T0 + 5 + 600_000));
    }

    #[test]
    fn older_heartbeat_changes_nothing() {
        let mut s = schedule();
        let wake = beat(&mut s, "L1", T0);
        assert_eq!(beat(&mut s, "L1", T0 - HOUR_MS), wake);
        assert_eq!(s.deadlines.len(), 1);
    }

    #[test]
    fn poll_touches_only_due_entries() {
        let mut s = schedule();
        let mut dues: Vec<(u64, String)> = (0..1_000)
            .map(|n| {
                let id = format!("L{n}");
                (beat(&mut s, &id, T0).next_heartbeat_ms, id)
            })
            .collect();
        dues.sort();
        let (first_due, _) = dues[0];
        let due_now = dues.iter().filter(|(d, _)| *d == first_due).count();
        let changes = s.poll(first_due + GRACE_MS);
        assert_eq!(changes.len(), due_now);
        assert_eq!(s.deadlines.len(), 1_000 - due_now);
        assert_eq!(s.next_deadline_ms(), Some(dues[due_now].0 + GRACE_MS));
    }

    #[test]
    fn restore_seeds_without_returned() {
        let mut s = schedule();
        s.restore("L1", T0, hours(2), minutes(60));
        let due = next_wake_ms("L1", T0, hours(2));
        assert_eq!(s.expected_delivery_ms("L1"), Some(due));
        assert_eq!(s.len(), 1);
        assert_eq!(s.poll(due + GRACE_MS).len(), 1);
        s.restore("L1", due + GRACE_MS, hours(2), minutes(60));
        assert_eq!(s.overdue_count(), 0);
        // A restore older than what was heard is ignored.
        s.on_heartbeat("L1", due + 2 * HOUR_MS, hours(2), minutes(60));
        s.restore("L1", T0, hours(2), minutes(60));
        assert_eq!(
            s.expected_delivery_ms("L1"),
            Some(next_wake_ms("L1", due + 2 * HOUR_MS, hours(2)))
        );
        assert_eq!(s.expected_delivery_ms("never-heard"), None);
    }

    #[test]
    fn forget_drops_the_lock_and_its_deadline() {
        let mut s = schedule();
        let due = beat(&mut s, "L1", T0).next_heartbeat_ms;
        beat(&mut s, "L2", T0);
        assert!(s.forget("L1"));
        assert!(!s.forget("L1"));
        assert_eq!(s.len(), 1);
        assert_eq!(s.expected_delivery_ms("L1"), None);
        assert!(s
            .poll(due + 2 * HOUR_MS)
            .iter()
            .all(|c| matches!(c, OverdueChange::Overdue { lock, .. } if lock.as_str() == "L2")));
        assert!(s.forget("L2"));
        assert_eq!(s.overdue_count(), 0);
        assert!(s.is_empty());
        beat(&mut s, "L3", T0);
        assert_eq!(s.slots.len(), 2, "freed slots are reused");
    }

    #[test]
    fn per_lock_state_is_small() {
        let per_lock = std::mem::size_of::<Option<Slot>>() + std::mem::size_of::<(u64, u32)>();
        assert!(per_lock < 100, "{per_lock} bytes");
    }

    /// Random heartbeats, polls, restores and forgets against a model: each
    /// absence is reported once, each return once, and the counts agree.
    #[test]
    fn random_operations_match_the_model() {
        let mut rng = Rng(42);
        let mut s = schedule();
        // lock -> (due_ms, overdue)
        let mut model: HashMap<String, (u64, bool)> = HashMap::new();
        let mut now = T0;
        for _ in 0..20_000 {
            now += rng.below(20 * 60_000);
            let lock = format!("L{}", rng.below(40));
            match rng.below(10) {
                0..=4 => {
                    let interval =
                        hours(HeartbeatInterval::ALLOWED_HOURS[rng.below(2) as usize].into());
                    let wake = s.on_heartbeat(&lock, now, interval, minutes(60));
                    let was_overdue = model.get(&lock).is_some_and(|m| m.1);
                    assert_eq!(wake.returned.is_some(), was_overdue);
                    model.insert(lock, (wake.next_heartbeat_ms, false));
                }
                5..=7 => {
                    let reported: HashSet<String> = s
                        .poll(now)
                        .into_iter()
                        .map(|c| match c {
                            OverdueChange::Overdue { lock, due_ms, .. } => {
                                assert_eq!(model[lock.as_str()].0, due_ms);
                                lock.to_string()
                            }
                            other => panic!("poll returned {other:?}"),
                        })
                        .collect();
                    let mut expected = HashSet::new();
                    for (id, (due, overdue)) in model.iter_mut() {
                        if !*overdue && *due + GRACE_MS <= now {
                            *overdue = true;
                            expected.insert(id.clone());
                        }
                    }
                    assert_eq!(reported, expected);
                }
                8 => {
                    s.restore(&lock, now, hours(1), minutes(60));
                    model.insert(lock.clone(), (next_wake_ms(&lock, now, hours(1)), false));
                }
                _ => {
                    assert_eq!(s.forget(&lock), model.remove(&lock).is_some());
                }
            }
            let overdue = model.values().filter(|m| m.1).count();
            assert_eq!(s.overdue_count(), overdue);
            assert_eq!(s.len(), model.len());
            assert_eq!(s.deadlines.len(), model.len() - overdue);
        }
    }
}
