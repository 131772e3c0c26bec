//! When each NB-IoT lock should wake next: its phase in its heartbeat
//! interval.
//!
//! An NB-IoT lock hears from us only in the answer to its heartbeat, so
//! that answer tells it when to come back (`Downlink::next_heartbeat_at`).
//! The rule is a pure function of the lock's id, its interval and the time
//! it was heard: every instance gives the same answer and nothing is kept
//! in memory. When a lock is next *due* (and so overdue when it is not
//! heard) is [`crate::presence::due_ms`], kept in the database beside the
//! lock's newest state.
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

use schemas::HeartbeatInterval;

const MS_PER_S: u64 = 1000;

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

    const T0: u64 = 1_700_000_000_123;
    const HOUR_MS: u64 = 3_600_000;

    fn hours(h: u16) -> HeartbeatInterval {
        HeartbeatInterval::from_hours(h).unwrap()
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
        let ids: Vec<String> = (0..10_000).map(|n| format!("INB1-{n:06}")).collect();
        // Without phases every lock would come back at T0 + 1 h: one minute.
        let naive: Vec<u64> = ids.iter().map(|_| T0 + HOUR_MS).collect();
        assert_eq!(peak_to_mean(&naive, HOUR_MS), 60.0);

        let first: Vec<u64> = ids
            .iter()
            .map(|id| next_wake_ms(id, T0, hours(1)))
            .collect();
        // One cycle later, each lock reports at its slot, up to 90 s late.
        let mut rng = Rng(7);
        let second: Vec<u64> = ids
            .iter()
            .zip(&first)
            .map(|(id, t)| next_wake_ms(id, t + rng.below(90_000), hours(1)))
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
}
