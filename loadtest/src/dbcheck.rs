//! After each gateway run (`ingest`, `bridges`): is every report the
//! simulator saw acknowledged in the database, once, with the transport it
//! came by?
//!
//! The run's database is fresh, so it holds only this run's reports. A
//! heartbeat is one row of `heartbeats` (primary key `(lock_id, seq)`), a
//! log batch one row of `activity_events` per event (primary key
//! `(lock_id, event_seq)`); an empty batch stores nothing. The keys make a
//! second copy impossible, so "once" is "present": every acknowledged
//! heartbeat's key and every event of every acknowledged batch must be
//! there, with the run's transport (`coap`, `bridge`). Rows the simulator never saw
//! acknowledged (committed, but the answer came after it stopped
//! listening, or the report was still being resent) are counted, not an
//! error.

use crate::database;
use crate::error::Result;
use device_sim::AckedReport;
use schemas::device::UplinkKind;
use std::collections::HashSet;

const HEARTBEAT_KEYS: &str = "SELECT lock_id, seq, transport FROM heartbeats";
const EVENT_KEYS: &str = "SELECT lock_id, event_seq, transport FROM activity_events";

/// One row's key and transport.
type Row = (String, i64, String);

/// What the check found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DbCheck {
    /// Heartbeats the simulator saw acknowledged.
    pub acked_heartbeats: u64,
    /// Rows of `heartbeats`.
    pub heartbeat_rows: u64,
    /// Acknowledged heartbeats with no row.
    pub missing_heartbeats: u64,
    /// Events in the log batches the simulator saw acknowledged.
    pub acked_events: u64,
    /// Rows of `activity_events`.
    pub event_rows: u64,
    /// Events of acknowledged batches with no row.
    pub missing_events: u64,
    /// Rows whose transport is not the run's.
    pub wrong_transport: u64,
}

impl DbCheck {
    /// Every acknowledged report is there, with the run's transport.
    pub fn passed(&self) -> bool {
        self.missing_heartbeats == 0 && self.missing_events == 0 && self.wrong_transport == 0
    }

    /// Rows nobody saw acknowledged (stored, answer not received).
    pub fn unacknowledged_rows(&self) -> u64 {
        (self.heartbeat_rows + self.event_rows)
            .saturating_sub(self.acked_heartbeats - self.missing_heartbeats)
            .saturating_sub(self.acked_events - self.missing_events)
    }
}

/// Compares the acknowledged reports with the rows of the two tables, all
/// of which came by `transport`.
pub fn compare(
    acked: &[AckedReport],
    heartbeats: &[Row],
    events: &[Row],
    transport: &str,
) -> DbCheck {
    let keys = |rows: &[Row]| -> HashSet<(String, i64)> {
        rows.iter().map(|(l, s, _)| (l.clone(), *s)).collect()
    };
    let (hb_keys, event_keys) = (keys(heartbeats), keys(events));
    let mut check = DbCheck {
        heartbeat_rows: heartbeats.len() as u64,
        event_rows: events.len() as u64,
        wrong_transport: heartbeats
            .iter()
            .chain(events)
            .filter(|(_, _, t)| t != transport)
            .count() as u64,
        ..DbCheck::default()
    };
    for a in acked {
        match a.kind {
            UplinkKind::Heartbeat => {
                check.acked_heartbeats += 1;
                if !hb_keys.contains(&(a.lock_id.clone(), i64::from(a.seq))) {
                    check.missing_heartbeats += 1;
                }
            }
            UplinkKind::ActivityLog => {
                for seq in a.event_seqs.clone() {
                    check.acked_events += 1;
                    if !event_keys.contains(&(a.lock_id.clone(), i64::from(seq))) {
                        check.missing_events += 1;
                    }
                }
            }
            UplinkKind::JobReport => {}
        }
    }
    check
}

/// Reads both tables of the database at `url` and compares them with
/// `acked`, which came by `transport`.
pub async fn run(url: &str, acked: &[AckedReport], transport: &str) -> Result<DbCheck> {
    let heartbeats: Vec<Row> = database::fetch_all(url, HEARTBEAT_KEYS).await?;
    let events: Vec<Row> = database::fetch_all(url, EVENT_KEYS).await?;
    Ok(compare(acked, &heartbeats, &events, transport))
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::event::Transport;
    use std::time::Duration;

    fn acked(lock: &str, kind: UplinkKind, seq: u32, events: std::ops::Range<u32>) -> AckedReport {
        AckedReport {
            lock_id: lock.into(),
            transport: Transport::Bridge,
            kind,
            seq,
            event_seqs: events,
            attempts: 1,
            acked_after: Duration::from_secs(1),
            rtt: None,
            due_after: Duration::ZERO,
        }
    }

    fn row(lock: &str, seq: i64) -> Row {
        (lock.into(), seq, "bridge".into())
    }

    #[test]
    fn every_acknowledged_report_found_passes_and_extra_rows_are_counted() {
        let acked = [
            acked("L1", UplinkKind::Heartbeat, 1, 0..0),
            acked("L1", UplinkKind::ActivityLog, 2, 5..8),
            acked("L1", UplinkKind::ActivityLog, 3, 0..0),
            acked("L2", UplinkKind::Heartbeat, 1, 0..0),
        ];
        let hb = [row("L1", 1), row("L2", 1), row("L2", 2)];
        let ev = [row("L1", 5), row("L1", 6), row("L1", 7)];
        let c = compare(&acked, &hb, &ev, "bridge");
        assert!(c.passed(), "{c:?}");
        assert_eq!((c.acked_heartbeats, c.heartbeat_rows), (2, 3));
        assert_eq!((c.acked_events, c.event_rows), (3, 3));
        assert_eq!(c.unacknowledged_rows(), 1, "L2's second heartbeat");
    }

    #[test]
    fn a_missing_row_or_another_transport_fails() {
        let acked = [
            acked("L1", UplinkKind::Heartbeat, 1, 0..0),
            acked("L1", UplinkKind::ActivityLog, 2, 5..7),
        ];
        let c = compare(&acked, &[], &[row("L1", 5), row("L1", 6)], "bridge");
        assert_eq!(c.missing_heartbeats, 1);
        assert!(!c.passed());
        let c = compare(&acked, &[row("L1", 1)], &[row("L1", 6)], "bridge");
        assert_eq!(c.missing_events, 1);
        assert!(!c.passed());
        let coap = ("L1".to_string(), 1, "coap".to_string());
        let c = compare(&acked, &[coap], &[row("L1", 5), row("L1", 6)], "bridge");
        assert_eq!((c.missing_heartbeats, c.wrong_transport), (0, 1));
        assert!(!c.passed());
    }
}
