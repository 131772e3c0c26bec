//! When a lock counts as online: heard within the heartbeat interval it said
//! is in force, plus a grace. The store keeps each lock's deadline beside its
//! newest state (`lock_state.online_until_ms`, indexed), so counting online
//! locks is one index range scan, the same for every gateway instance.
//! Which locks are overdue, and telling the dashboard, is the scheduler's work.

use schemas::HeartbeatInterval;

/// How late a heartbeat may be before its lock counts as offline. Locks wake
/// on their own clock, and an NB-IoT attach plus CoAP retransmissions
/// (up to 93 s, RFC 7252 §4.8.2) can delay a report by minutes; ten minutes
/// keeps a healthy fleet steady without hiding a lock that missed its slot.
pub const ONLINE_GRACE_MS: u64 = 600_000;

/// Until when (Unix milliseconds) a lock heard at `heard_at_ms` with
/// `interval` in force counts as online.
pub fn online_until_ms(heard_at_ms: u64, interval: HeartbeatInterval) -> u64 {
    heard_at_ms + u64::from(interval.hours()) * 3_600_000 + ONLINE_GRACE_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_is_the_interval_in_force_plus_the_grace() {
        let one_hour = HeartbeatInterval::from_hours(1).unwrap();
        assert_eq!(
            online_until_ms(1_000, one_hour),
            1_000 + 3_600_000 + ONLINE_GRACE_MS
        );
        let day = HeartbeatInterval::from_hours(24).unwrap();
        assert_eq!(online_until_ms(0, day), 86_400_000 + 600_000);
    }
}
