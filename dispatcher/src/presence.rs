//! Which locks are online: heard within the heartbeat interval they said is
//! in force, plus a grace. Counts only, for the `devices_online` gauge; which
//! locks are overdue, and telling the dashboard, is the scheduler's work.
//!
//! Deadlines are rounded up to whole minutes and kept as a count per minute,
//! so the structure holds at most one entry per minute of the longest
//! interval (about 1 500), whatever the fleet size: a heartbeat and an expiry
//! cost the same for ten locks or ten million. Time is passed in.

use schemas::HeartbeatInterval;
use std::collections::BTreeMap;

/// How late a heartbeat may be before its lock counts as offline. Locks wake
/// on their own clock, and an NB-IoT attach plus CoAP retransmissions
/// (up to 93 s, RFC 7252 §4.8.2) can delay a report by minutes; ten minutes
/// keeps a healthy fleet steady without hiding a lock that missed its slot.
pub const ONLINE_GRACE_SECS: u64 = 600;

/// Granularity of deadlines. A lock may count as online up to this much
/// longer than its deadline, never shorter.
pub const BUCKET_SECS: u64 = 60;

/// Until when a lock heard at `heard_at_s` (Unix seconds) with `interval` in
/// force counts as online.
pub fn online_until(heard_at_s: u64, interval: HeartbeatInterval) -> u64 {
    let due = heard_at_s + u64::from(interval.hours()) * 3_600 + ONLINE_GRACE_SECS;
    due.div_ceil(BUCKET_SECS) * BUCKET_SECS
}

/// Online locks, counted by the minute their deadline falls in.
#[derive(Debug, Default)]
pub struct Presence {
    /// Deadline (Unix seconds, a multiple of [`BUCKET_SECS`]) -> locks due then.
    /// Every key is later than `now`.
    due: BTreeMap<u64, u32>,
    online: usize,
    /// The latest time passed in; time never goes backwards here.
    now: u64,
}

impl Presence {
    pub fn new() -> Self {
        Self::default()
    }

    /// Locks online as of the latest time passed in.
    pub fn online(&self) -> usize {
        self.online
    }

    /// Let time pass: locks whose deadline is at or before `now_s` go offline.
    /// Returns how many are online.
    pub fn advance(&mut self, now_s: u64) -> usize {
        self.now = self.now.max(now_s);
        while let Some(entry) = self.due.first_entry() {
            if *entry.key() > self.now {
                break;
            }
            self.online -= *entry.get() as usize;
            entry.remove();
        }
        self.online
    }

    /// A lock was heard at `now_s`; it was online until `previous` (`None`:
    /// never heard, or not since the server started) and now is until `until`.
    /// Pass the `previous` value this lock was last given, so each lock is
    /// counted once.
    pub fn heard(&mut self, now_s: u64, previous: Option<u64>, until: u64) {
        self.advance(now_s);
        match previous {
            // Still counted: move it to its new minute.
            Some(p) if p > self.now => self.take(p),
            _ => self.online += 1,
        }
        if until > self.now {
            *self.due.entry(until).or_default() += 1;
        } else {
            // Heard, but already past its deadline (a stale state at start).
            self.online -= 1;
        }
    }

    fn take(&mut self, deadline: u64) {
        if let Some(n) = self.due.get_mut(&deadline) {
            *n -= 1;
            if *n == 0 {
                self.due.remove(&deadline);
            }
        }
    }

    /// Entries kept: one per distinct deadline minute.
    pub fn buckets(&self) -> usize {
        self.due.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3_600;

    fn hours(h: u16) -> HeartbeatInterval {
        HeartbeatInterval::from_hours(h).unwrap()
    }

    #[test]
    fn deadline_is_interval_plus_grace_rounded_up_to_the_minute() {
        assert_eq!(online_until(0, hours(1)), H + ONLINE_GRACE_SECS);
        assert_eq!(
            online_until(1, hours(1)),
            H + ONLINE_GRACE_SECS + BUCKET_SECS
        );
        assert_eq!(
            online_until(59, hours(24)),
            24 * H + ONLINE_GRACE_SECS + BUCKET_SECS
        );
    }

    #[test]
    fn a_lock_is_online_until_its_deadline_passes() {
        let mut p = Presence::new();
        let until = online_until(1_000, hours(1));
        p.heard(1_000, None, until);
        assert_eq!(p.online(), 1);
        assert_eq!(p.advance(until - 1), 1);
        assert_eq!(p.advance(until), 0);
        assert_eq!(p.buckets(), 0);
    }

    #[test]
    fn a_heartbeat_in_time_moves_the_lock_without_counting_it_twice() {
        let mut p = Presence::new();
        let first = online_until(0, hours(1));
        p.heard(0, None, first);
        let second = online_until(H, hours(1));
        p.heard(H, Some(first), second);
        assert_eq!(p.online(), 1);
        assert_eq!(p.buckets(), 1);
        assert_eq!(p.advance(first), 1, "the old deadline no longer applies");
        assert_eq!(p.advance(second), 0);
    }

    #[test]
    fn a_late_heartbeat_brings_an_offline_lock_back() {
        let mut p = Presence::new();
        let first = online_until(0, hours(1));
        p.heard(0, None, first);
        assert_eq!(p.advance(first + 5), 0);
        p.heard(first + 5, Some(first), online_until(first + 5, hours(1)));
        assert_eq!(p.online(), 1);
    }

    #[test]
    fn a_state_already_past_its_deadline_counts_as_offline() {
        let mut p = Presence::new();
        p.advance(10 * H);
        p.heard(10 * H, None, online_until(0, hours(1)));
        assert_eq!((p.online(), p.buckets()), (0, 0));
    }

    #[test]
    fn locks_sharing_a_minute_expire_together_and_time_never_goes_back() {
        let mut p = Presence::new();
        for i in 0..1_000 {
            p.heard(i % 30, None, online_until(i % 30, hours(2)));
        }
        assert_eq!(p.online(), 1_000);
        assert!(p.buckets() <= 2, "{} buckets", p.buckets());
        assert_eq!(p.advance(3 * H), 0);
        // An earlier time changes nothing.
        p.heard(0, None, online_until(0, hours(1)));
        assert_eq!(
            p.online(),
            0,
            "a deadline before the latest time is already past"
        );
    }

    #[test]
    fn the_structure_stays_small_whatever_the_fleet() {
        let mut p = Presence::new();
        let mut deadlines = Vec::new();
        for i in 0..100_000u64 {
            let at = i % 86_400;
            let until = online_until(at, hours(24));
            p.heard(at, None, until);
            deadlines.push(until);
        }
        assert_eq!(p.online(), 100_000);
        assert!(
            p.buckets() <= 86_400 / BUCKET_SECS as usize + 1,
            "{}",
            p.buckets()
        );
    }
}
