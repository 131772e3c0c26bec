//! The simulator's notion of time: real [`Instant`]s drive every timer, and a
//! [`SimClock`] maps them to *simulated* time, which runs `speedup` times
//! faster. Intervals from the guides (24 h heartbeats, 60 min logs) are
//! simulated durations; the tasks sleep for their real equivalent.
//!
//! Device clocks (`device_time`, event times) show simulated time anchored at
//! the real Unix time when the run started, so events are spaced as they would
//! be in the field. With `speedup > 1` they therefore run ahead of the
//! server's clock as the run goes on.
//!
//! This module owns no timers and reads the system clock only in
//! [`SimClock::starting_now`]; everything else takes `now` as an argument.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Shortest real interval a lock timer may have. Keeps a huge `speedup` from
/// turning a 1-minute activity-log interval into a busy loop.
pub const MIN_REAL_INTERVAL: Duration = Duration::from_millis(1);

/// Maps real instants to simulated time.
#[derive(Clone, Copy, Debug)]
pub struct SimClock {
    start: Instant,
    start_unix: u64,
    speedup: f64,
}

impl SimClock {
    /// A clock whose simulated time starts at `start_unix` (Unix seconds) at
    /// the real instant `start`. `speedup` must be finite and positive (the
    /// caller validates configuration; anything else is treated as 1).
    pub fn new(start: Instant, start_unix: u64, speedup: f64) -> Self {
        let speedup = if speedup.is_finite() && speedup > 0.0 {
            speedup
        } else {
            1.0
        };
        SimClock {
            start,
            start_unix,
            speedup,
        }
    }

    /// A clock starting now, anchored at the current Unix time.
    pub fn starting_now(speedup: f64) -> Self {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        SimClock::new(Instant::now(), unix, speedup)
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    pub fn speedup(&self) -> f64 {
        self.speedup
    }

    /// Simulated time elapsed between the start and `now` (zero before the start).
    pub fn sim_elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.start)
            .mul_f64(self.speedup)
    }

    /// The real instant at which `sim` of simulated time will have elapsed.
    pub fn instant_at(&self, sim: Duration) -> Instant {
        self.start + sim.div_f64(self.speedup)
    }

    /// A device's clock (Unix seconds) at simulated offset `sim`.
    pub fn unix_at(&self, sim: Duration) -> u64 {
        self.start_unix + sim.as_secs()
    }

    /// A device's clock (Unix seconds) at the real instant `now`.
    pub fn device_time(&self, now: Instant) -> u64 {
        self.unix_at(self.sim_elapsed(now))
    }

    /// Real Unix seconds at the real instant `now` (the clock a server
    /// keeps, as opposed to the simulated [`SimClock::device_time`]),
    /// assuming the anchor was the real time at the start.
    pub fn real_unix(&self, now: Instant) -> u64 {
        self.start_unix + now.saturating_duration_since(self.start).as_secs()
    }

    /// The real duration of a simulated interval, at least [`MIN_REAL_INTERVAL`].
    pub fn real_interval(&self, sim: Duration) -> Duration {
        sim.div_f64(self.speedup).max(MIN_REAL_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_at_speedup_600_lasts_144_real_seconds() {
        let clock = SimClock::new(Instant::now(), 1_700_000_000, 600.0);
        assert_eq!(
            clock.real_interval(Duration::from_secs(24 * 3600)),
            Duration::from_secs(144)
        );
        assert_eq!(
            clock.real_interval(Duration::from_secs(3600)),
            Duration::from_secs(6)
        );
    }

    #[test]
    fn device_time_runs_at_simulated_speed() {
        let t0 = Instant::now();
        let clock = SimClock::new(t0, 1_700_000_000, 600.0);
        assert_eq!(clock.device_time(t0), 1_700_000_000);
        assert_eq!(
            clock.device_time(t0 + Duration::from_secs(6)),
            1_700_000_000 + 3600
        );
        assert_eq!(
            clock.instant_at(Duration::from_secs(3600)),
            t0 + Duration::from_secs(6)
        );
    }

    #[test]
    fn real_unix_runs_at_real_speed() {
        let t0 = Instant::now();
        let clock = SimClock::new(t0, 1_700_000_000, 600.0);
        assert_eq!(clock.real_unix(t0 + Duration::from_secs(6)), 1_700_000_006);
    }

    #[test]
    fn bad_speedup_falls_back_to_real_time() {
        let clock = SimClock::new(Instant::now(), 0, f64::NAN);
        assert_eq!(clock.speedup(), 1.0);
    }
}
