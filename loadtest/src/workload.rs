//! The offered load: a fleet whose traffic is heartbeats, and the simulator
//! speed-up that makes it offer a given rate.
//!
//! Every lock is an INB1 on CoAP (no MQTT, no bridges) with the shortest
//! heartbeat interval the guide allows (1 h) and the longest activity-log
//! interval (24 h). A lock's heartbeat also uploads the activity logged
//! since the previous one (the guide: a heartbeat "syncs logs"), so most
//! heartbeats come with one log batch just before them: the gateway sees
//! up to two reports per heartbeat, and the report shows both.

use crate::error::{LoadtestError, Result};
use device_sim::fleet::{generate, Fleet, FleetSpec};
use schemas::{ActivityLogInterval, HeartbeatInterval};
use std::path::Path;
use std::time::Duration;

/// Organisations the generated fleet is spread over (as the simulator's
/// default fleet): enough that per-organisation topics vary.
pub const ORGS: usize = 8;

/// The longest activity-log interval the guide allows: 24 h, in minutes.
pub const LONGEST_LOG_INTERVAL_MIN: u16 = 24 * 60;

/// The shortest heartbeat interval the guide allows.
pub fn shortest_heartbeat() -> HeartbeatInterval {
    let hours = HeartbeatInterval::ALLOWED_HOURS
        .iter()
        .copied()
        .min()
        .unwrap_or(1);
    HeartbeatInterval::from_hours(u16::from(hours)).unwrap_or(HeartbeatInterval::DEFAULT)
}

/// A fleet of `locks` CoAP locks, each with the shortest heartbeat interval
/// and the longest activity-log interval. The same `seed` gives the same fleet.
pub fn heartbeat_heavy_fleet(locks: usize, seed: u64) -> Result<Fleet> {
    let mut fleet = generate(&FleetSpec {
        locks,
        bridges: 0,
        orgs: ORGS,
        mqtt_share: 0.0,
        seed,
    })
    .map_err(|e| LoadtestError::Fleet(e.to_string()))?;
    let heartbeat = shortest_heartbeat();
    let logs = ActivityLogInterval::from_minutes(LONGEST_LOG_INTERVAL_MIN)
        .map_err(|e| LoadtestError::Fleet(e.to_string()))?;
    for lock in &mut fleet.locks {
        lock.heartbeat_interval = heartbeat;
        lock.activity_log_interval = logs;
    }
    Ok(fleet)
}

/// Writes `fleet` as the fleet file `gateway devices import` reads.
pub fn write_fleet(fleet: &Fleet, path: &Path) -> Result<()> {
    fleet
        .write_csv(path)
        .map_err(|e| LoadtestError::Fleet(format!("{}: {e}", path.display())))
}

/// The simulator speed-up at which `locks` locks with heartbeat interval
/// `heartbeat` send `rate` heartbeats per second in total:
/// `rate × interval / locks` (each lock sends one per interval of simulated
/// time, which runs `speedup` times faster than real time).
pub fn speedup(rate: f64, locks: usize, heartbeat: Duration) -> Option<f64> {
    let s = rate * heartbeat.as_secs_f64() / locks as f64;
    (locks > 0 && s.is_finite() && s > 0.0).then_some(s)
}

/// The real time between two heartbeats of one lock at `speedup`.
pub fn real_heartbeat_period(heartbeat: Duration, speedup: f64) -> Duration {
    heartbeat.div_f64(speedup)
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::event::Transport;

    #[test]
    fn speedup_turns_a_rate_into_simulated_time() {
        let hour = Duration::from_secs(3600);
        // 1 000 heartbeats/s from 20 000 hourly locks: each every 20 s real.
        assert_eq!(speedup(1000.0, 20_000, hour), Some(180.0));
        assert_eq!(real_heartbeat_period(hour, 180.0), Duration::from_secs(20));
        assert_eq!(speedup(1000.0, 0, hour), None);
        assert_eq!(speedup(0.0, 10, hour), None);
        assert_eq!(speedup(f64::INFINITY, 10, hour), None);
    }

    #[test]
    fn fleet_is_coap_only_with_hourly_heartbeats_and_daily_logs() {
        let f = heartbeat_heavy_fleet(200, 3).unwrap();
        assert_eq!(f.locks.len(), 200);
        assert!(f.bridges.is_empty());
        assert_eq!(f.count_by_transport(Transport::Coap), 200);
        assert!(f.locks.iter().all(
            |l| l.heartbeat_interval.hours() == 1 && l.activity_log_interval.minutes() == 1440
        ));
    }

    #[test]
    fn fleet_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.csv");
        let f = heartbeat_heavy_fleet(20, 1).unwrap();
        write_fleet(&f, &path).unwrap();
        assert_eq!(Fleet::read_csv(&path).unwrap(), f);
    }
}
