//! The offered load of `loadtest bridges`: a fleet of bridges, each linked
//! to exactly `--locks-per-bridge` Bluetooth locks that reach the gateway
//! only through it, and the simulator speed-up that makes them offer a
//! given number of reports per second.
//!
//! Every lock has a 1 h heartbeat and a 60 min activity log (the guide's
//! default log interval), at independent phases, and people come by at
//! `--visits-per-hour` (simulated), each visit a short run of activity
//! events. So a lock reports, per simulated hour: one heartbeat, one log
//! batch at its log wake (empty if nobody came), and a second batch with
//! its heartbeat when someone came since the log wake
//! ([`reports_per_lock_hour`]): a mix of heartbeats and logs as bridges
//! relay them, both stored (`heartbeats`, `activity_events`) and checked.

use crate::error::{LoadtestError, Result};
use device_sim::fleet::{generate, Fleet, FleetSpec, MAX_LOCKS_PER_BRIDGE};
use schemas::{ActivityLogInterval, HeartbeatInterval};
use std::time::Duration;

/// Organisations the fleet is spread over (as the simulator's default).
pub const ORGS: usize = 8;

/// Every lock's heartbeat interval, hours: the shortest the guide allows.
pub const HEARTBEAT_HOURS: u16 = 1;

/// Every lock's activity-log interval, minutes: the guide's default.
pub const LOG_INTERVAL_MIN: u16 = 60;

/// People per simulated hour at each lock when `--visits-per-hour` is not
/// given: about two in three hours see someone, and most heartbeats
/// carry a log batch with a few events beside them.
pub const DEFAULT_VISITS_PER_HOUR: f64 = 1.0;

/// A fleet of `bridges` bridges, each linked to exactly `locks_per_bridge`
/// Bluetooth locks (1 or 2: the guide's limit), every lock reporting
/// through its bridge, with the intervals above.
pub fn bridge_fleet(bridges: usize, locks_per_bridge: usize, seed: u64) -> Result<Fleet> {
    if !(1..=MAX_LOCKS_PER_BRIDGE).contains(&locks_per_bridge) {
        return Err(LoadtestError::InvalidOption(format!(
            "--locks-per-bridge must be 1 to {MAX_LOCKS_PER_BRIDGE} (the guide's limit), got {locks_per_bridge}"
        )));
    }
    let k = locks_per_bridge;
    // As many one-lock bridges as locks: every lock Bluetooth and bridged,
    // each in its bridge's organisation. Then each run of `k` of them is
    // merged into one bridge (the first one's organisation and departments).
    let mut fleet = generate(&FleetSpec {
        locks: bridges * k,
        bridges: bridges * k,
        orgs: ORGS,
        mqtt_share: 0.0,
        seed,
    })
    .map_err(|e| LoadtestError::Fleet(e.to_string()))?;
    let index: std::collections::HashMap<String, usize> = fleet
        .bridges
        .iter()
        .enumerate()
        .map(|(i, b)| (b.id.clone(), i))
        .collect();
    let old_index = |id: &str| index.get(id).copied();
    let mut lock_of_old = vec![usize::MAX; fleet.bridges.len()];
    for (i, lock) in fleet.locks.iter().enumerate() {
        let b = lock
            .bridge_id
            .as_deref()
            .and_then(old_index)
            .ok_or_else(|| LoadtestError::Fleet(format!("lock {} has no bridge", lock.id)))?;
        lock_of_old[b] = i;
    }
    let heads: Vec<(String, Vec<String>)> = (0..bridges)
        .map(|g| {
            let head = &fleet.locks[lock_of_old[g * k]];
            (head.org.clone(), head.departments.clone())
        })
        .collect();
    let heartbeat = HeartbeatInterval::from_hours(HEARTBEAT_HOURS)
        .map_err(|e| LoadtestError::Fleet(e.to_string()))?;
    let logs = ActivityLogInterval::from_minutes(LOG_INTERVAL_MIN)
        .map_err(|e| LoadtestError::Fleet(e.to_string()))?;
    for (old, &i) in lock_of_old.iter().enumerate() {
        let g = old / k;
        let lock = &mut fleet.locks[i];
        lock.bridge_id = Some(bridge_id(g));
        lock.org = heads[g].0.clone();
        lock.departments = heads[g].1.clone();
        lock.heartbeat_interval = heartbeat;
        lock.activity_log_interval = logs;
    }
    let mut kept = Vec::with_capacity(bridges);
    for (old, mut b) in std::mem::take(&mut fleet.bridges).into_iter().enumerate() {
        if old % k == 0 {
            b.id = bridge_id(old / k);
            b.org = heads[old / k].0.clone();
            kept.push(b);
        }
    }
    fleet.bridges = kept;
    Ok(fleet)
}

/// The id of bridge number `g` (from 0).
fn bridge_id(g: usize) -> String {
    format!("B{:05}", g + 1)
}

/// Reports one lock offers per simulated hour with `visits` visits per
/// hour: a heartbeat, a log batch at its log wake, and a batch with the
/// heartbeat when a visit fell between the log wake and the heartbeat
/// wake. The phases are independent, so that gap is uniform over the hour
/// and, visits being a Poisson process, a batch comes with the heartbeat
/// with probability `1 - (1 - e^-v) / v` (0 for no visits). Batches split
/// only past 64 events, which an hour of visits never reaches.
pub fn reports_per_lock_hour(visits: f64) -> f64 {
    let with_heartbeat = if visits > 0.0 {
        1.0 - (1.0 - (-visits).exp()) / visits
    } else {
        0.0
    };
    2.0 + with_heartbeat
}

/// The speed-up at which `locks` locks offer `rate` reports per second.
pub fn speedup(rate: f64, locks: usize, visits: f64) -> Option<f64> {
    let s = rate * 3600.0 / (locks as f64 * reports_per_lock_hour(visits));
    (locks > 0 && s.is_finite() && s > 0.0).then_some(s)
}

/// The real time between two heartbeats of one lock at `speedup`.
pub fn real_heartbeat_period(speedup: f64) -> Duration {
    Duration::from_secs(u64::from(HEARTBEAT_HOURS) * 3600).div_f64(speedup)
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::event::Transport;
    use std::collections::HashMap;

    #[test]
    fn every_bridge_links_exactly_k_locks_of_its_own_organisation() {
        for k in [1, 2] {
            let f = bridge_fleet(30, k, 5).unwrap();
            assert_eq!((f.bridges.len(), f.locks.len()), (30, 30 * k));
            assert_eq!(f.count_by_transport(Transport::Bridge), 30 * k);
            let org: HashMap<&str, &str> = f
                .bridges
                .iter()
                .map(|b| (b.id.as_str(), b.org.as_str()))
                .collect();
            let mut linked: HashMap<&str, usize> = HashMap::new();
            for l in &f.locks {
                let b = l.bridge_id.as_deref().unwrap();
                assert_eq!(org[b], l.org, "{}", l.id);
                assert!(!l.model.is_nb_iot(), "{} is a Bluetooth lock", l.id);
                assert_eq!(l.heartbeat_interval.hours(), 1);
                assert_eq!(l.activity_log_interval.minutes(), 60);
                *linked.entry(b).or_default() += 1;
            }
            assert!(linked.values().all(|n| *n == k), "{linked:?}");
            assert_eq!(f.bridges[0].id, "B00001");
            assert_eq!(f.bridges[29].id, "B00030");
        }
    }

    #[test]
    fn the_fleet_file_reads_back_with_its_checks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.csv");
        let f = bridge_fleet(40, 2, 1).unwrap();
        f.write_csv(&path).unwrap();
        assert_eq!(Fleet::read_csv(&path).unwrap(), f);
    }

    #[test]
    fn more_than_two_locks_per_bridge_is_refused() {
        for k in [0, 3] {
            let err = bridge_fleet(2, k, 1).unwrap_err().to_string();
            assert!(err.contains("--locks-per-bridge"), "{err}");
        }
    }

    #[test]
    fn reports_per_hour_and_speedup() {
        assert_eq!(reports_per_lock_hour(0.0), 2.0);
        let one = reports_per_lock_hour(1.0);
        assert!(
            (one - (3.0 - (1.0 - (-1.0f64).exp()))).abs() < 1e-12,
            "{one}"
        );
        assert!(reports_per_lock_hour(100.0) > 2.98);
        // 2 000 locks offering 4 000 reports/s with no visits: 2 per lock
        // and hour, so each hour of simulated time passes in a second.
        assert_eq!(speedup(4000.0, 2000, 0.0), Some(3600.0));
        assert_eq!(real_heartbeat_period(3600.0), Duration::from_secs(1));
        assert_eq!(speedup(1.0, 0, 1.0), None);
        assert_eq!(speedup(0.0, 10, 1.0), None);
    }
}
