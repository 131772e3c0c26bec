//! When a lock counts as online: heard within the heartbeat interval it said
//! is in force, plus a grace. The store keeps each lock's deadline beside its
//! newest state (`lock_state.online_until_ms`, indexed), so counting online
//! locks is one index range scan, the same for every gateway instance.
//! A lock whose deadline passed is overdue; the store claims each such lock
//! once (and its return once), whichever instance asks.

use schemas::HeartbeatInterval;

/// How late a heartbeat may be before its lock counts as offline. Locks wake
/// on their own clock, and an NB-IoT attach plus CoAP retransmissions
/// (up to 93 s, RFC 7252 §4.8.2) can delay a report by minutes; ten minutes
/// keeps a healthy fleet steady without hiding a lock that missed its slot.
pub const ONLINE_GRACE_MS: u64 = 600_000;

/// When the next heartbeat of `lock`, heard at `heard_at_ms` with
/// `interval` in force, is due: its wake-up slot
/// ([`crate::schedule::next_wake_ms`], what the heartbeat answer told it) or
/// one interval after it was heard, whichever is later, so that neither a
/// lock that follows its phase nor one that ignores it is taken for late.
pub fn due_ms(lock: &str, heard_at_ms: u64, interval: HeartbeatInterval) -> u64 {
    let plain = heard_at_ms + u64::from(interval.hours()) * 3_600_000;
    crate::schedule::next_wake_ms(lock, heard_at_ms, interval).max(plain)
}

/// Until when (Unix milliseconds) `lock` heard at `heard_at_ms` with
/// `interval` in force counts as online: its due heartbeat plus the grace.
pub fn online_until_ms(lock: &str, heard_at_ms: u64, interval: HeartbeatInterval) -> u64 {
    due_ms(lock, heard_at_ms, interval) + ONLINE_GRACE_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_is_the_due_heartbeat_plus_the_grace() {
        for hours in [1, 2, 5, 12, 24] {
            let interval = HeartbeatInterval::from_hours(hours).unwrap();
            let ms = u64::from(hours) * 3_600_000;
            for lock in ["L1", "L2", "lock-000042"] {
                let due = due_ms(lock, 1_790_000_000_000, interval);
                // Never before one interval, never after the phase slot.
                assert!(due >= 1_790_000_000_000 + ms);
                assert!(due <= 1_790_000_000_000 + ms * 3 / 2);
                assert_eq!(
                    online_until_ms(lock, 1_790_000_000_000, interval),
                    due + ONLINE_GRACE_MS
                );
            }
        }
    }
}
