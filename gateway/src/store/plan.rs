//! A group commit prepared for either engine: which rows to send (the first
//! occurrence of each key, sorted by key), and how the keys the database
//! returns map back to the caller's per-row flags. No I/O here.

use super::codes::{self, int};
use super::replay::Refused;
use super::{Batch, BridgeChangeRow, BridgeStatus, Change, EventRow, HeartbeatRow};
use schemas::Battery;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

/// A stored row's key: (lock id, heartbeat seq or event seq).
pub(crate) type Key<'a> = (&'a str, i64);

/// Whose registry rows a commit locks before it reads or writes anything:
/// every lock and bridge the batch's rows name, and every device that
/// protected a report in it (a bridge, for the locks it relays), each
/// sorted so that instances committing overlapping batches lock in the same
/// order instead of deadlocking.
pub(crate) struct LockSet<'a> {
    pub lock_ids: Vec<&'a str>,
    pub bridge_ids: Vec<&'a str>,
    /// The protecting locks and bridges alone: whose keys and replay
    /// windows the commit reads.
    pub protecting_locks: Vec<&'a str>,
    pub protecting_bridges: Vec<&'a str>,
}

impl<'a> LockSet<'a> {
    pub fn of(batch: &'a Batch) -> Self {
        let (protecting_locks, protecting_bridges) = super::replay::protecting_ids(batch);
        let lock_ids = sorted(
            batch
                .heartbeats
                .iter()
                .map(|r| r.hb.lock_id.as_str())
                .chain(batch.events.iter().map(|r| r.lock_id.as_str()))
                .chain(protecting_locks.iter().copied())
                .collect(),
        );
        let bridge_ids = sorted(
            batch
                .bridge_statuses
                .iter()
                .map(|s| s.bridge_id.as_str())
                .chain(protecting_bridges.iter().copied())
                .collect(),
        );
        LockSet {
            lock_ids,
            bridge_ids,
            protecting_locks,
            protecting_bridges,
        }
    }
}

fn sorted(mut ids: Vec<&str>) -> Vec<&str> {
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// What one commit sends, in the order it is sent.
pub(crate) struct Plan<'a> {
    /// First occurrences only, sorted by key: the same key twice in one
    /// multi-row insert is ambiguous, and a fixed order means two instances
    /// committing overlapping batches to PostgreSQL lock rows in the same
    /// order instead of deadlocking. Rows of refused reports are left out.
    pub heartbeats: Vec<&'a HeartbeatRow>,
    pub events: Vec<&'a EventRow>,
    /// Locks with a heartbeat sent, sorted: whose stored state is read.
    pub heartbeat_lock_ids: Vec<&'a str>,
    hb_first: Vec<bool>,
    ev_first: Vec<bool>,
}

impl<'a> Plan<'a> {
    /// The rows of `batch` to send, without those `refused` marks.
    pub fn new(batch: &'a Batch, refused: &Refused) -> Self {
        let (heartbeats, hb_first) = first_occurrences(
            &batch.heartbeats,
            |i| refused.heartbeat(i),
            |r| (r.hb.lock_id.as_str(), int(r.hb.seq.into())),
        );
        let (events, ev_first) = first_occurrences(
            &batch.events,
            |i| refused.event(i),
            |r| (r.lock_id.as_str(), int(r.event.seq.into())),
        );
        let heartbeat_lock_ids = sorted(heartbeats.iter().map(|r| r.hb.lock_id.as_str()).collect());
        Plan {
            heartbeats,
            events,
            heartbeat_lock_ids,
            hb_first,
            ev_first,
        }
    }

    /// Per batch row: first occurrence and its key came back from the insert.
    pub fn heartbeat_flags(&self, batch: &Batch, inserted: &HashSet<(String, i64)>) -> Vec<bool> {
        flags(&batch.heartbeats, &self.hb_first, inserted, |r| {
            (r.hb.lock_id.as_str(), int(r.hb.seq.into()))
        })
    }

    pub fn event_flags(&self, batch: &Batch, inserted: &HashSet<(String, i64)>) -> Vec<bool> {
        flags(&batch.events, &self.ev_first, inserted, |r| {
            (r.lock_id.as_str(), int(r.event.seq.into()))
        })
    }

    /// The newly inserted heartbeat with the highest seq of each lock, sorted
    /// by lock id: what `lock_state` is upserted from (one row per lock, as
    /// PostgreSQL's `ON CONFLICT DO UPDATE` requires).
    pub fn newest_inserted(&self, inserted: &HashSet<(String, i64)>) -> Vec<&'a HeartbeatRow> {
        let mut newest: HashMap<&str, &HeartbeatRow> = HashMap::new();
        for r in self.heartbeats.iter().copied() {
            if !inserted.contains(&(r.hb.lock_id.clone(), int(r.hb.seq.into()))) {
                continue;
            }
            let e = newest.entry(r.hb.lock_id.as_str()).or_insert(r);
            if r.hb.seq > e.hb.seq {
                *e = r;
            }
        }
        let mut rows: Vec<_> = newest.into_values().collect();
        rows.sort_by(|a, b| a.hb.lock_id.cmp(&b.hb.lock_id));
        rows
    }
}

/// What a batch's bridge status reports do, decided against the stored
/// statuses `before`.
pub(crate) struct BridgePlan {
    /// Per report of the batch, in order: the change it made.
    pub changes: Vec<Option<Change>>,
    /// Every change, in batch order: the history rows.
    pub history: Vec<BridgeChangeRow>,
    /// Each changed bridge's status after the batch, sorted by bridge id.
    pub after: Vec<(String, BridgeStatus)>,
}

impl BridgePlan {
    /// `refused` statuses (of refused protected reports) change nothing.
    pub fn new(batch: &Batch, before: &HashMap<String, BridgeStatus>, refused: &Refused) -> Self {
        let mut current: HashMap<&str, Option<BridgeStatus>> = HashMap::new();
        let mut changes = Vec::with_capacity(batch.bridge_statuses.len());
        let mut history = Vec::new();
        for (i, s) in batch.bridge_statuses.iter().enumerate() {
            if refused.bridge_status(i) {
                changes.push(None);
                continue;
            }
            let status = current
                .entry(&s.bridge_id)
                .or_insert_with(|| before.get(&s.bridge_id).copied());
            let (change, after) = dispatcher::connectivity::apply(*status, [s.report]);
            *status = after;
            let change = change[0];
            if let Some(c) = change {
                history.push(BridgeChangeRow {
                    bridge_id: s.bridge_id.clone(),
                    online: c.online,
                    cause: c.cause,
                    at_ms: c.at_ms,
                });
            }
            changes.push(change);
        }
        let mut after: Vec<(String, BridgeStatus)> = current
            .into_iter()
            .filter_map(|(id, status)| {
                let status = status?;
                (before.get(id) != Some(&status)).then(|| (id.to_string(), status))
            })
            .collect();
        after.sort_by(|a, b| a.0.cmp(&b.0));
        BridgePlan {
            changes,
            history,
            after,
        }
    }
}

/// The rows to send (first occurrence of each key among the rows not
/// `skipped`, sorted by key) and, per row, whether it is one of them.
fn first_occurrences<'a, T>(
    rows: &'a [T],
    skipped: impl Fn(usize) -> bool,
    key: impl Fn(&'a T) -> Key<'a>,
) -> (Vec<&'a T>, Vec<bool>) {
    let mut seen = HashSet::with_capacity(rows.len());
    let first: Vec<bool> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| !skipped(i) && seen.insert(key(r)))
        .collect();
    let mut unique: Vec<&T> = rows
        .iter()
        .zip(&first)
        .filter(|(_, f)| **f)
        .map(|(r, _)| r)
        .collect();
    unique.sort_by(|a, b| key(a).cmp(&key(b)));
    (unique, first)
}

fn flags<'a, T>(
    rows: &'a [T],
    first: &[bool],
    inserted: &HashSet<(String, i64)>,
    key: impl Fn(&'a T) -> Key<'a>,
) -> Vec<bool> {
    rows.iter()
        .zip(first)
        .map(|(r, f)| {
            let (lock, seq) = key(r);
            // Allocation-free look-up would need a borrowed-key set; batches
            // are a few hundred rows, so the clone is not worth avoiding.
            *f && inserted.contains(&(lock.to_string(), seq))
        })
        .collect()
}

/// Appended to a `lock_state` insert on both engines: a heartbeat replaces
/// the stored state only when its seq is higher, so a late report never moves
/// a lock's state backwards. A macro so that `concat!` can build whole
/// `&'static str` statements from it.
macro_rules! lock_state_upsert {
    () => {
        " ON CONFLICT (lock_id) DO UPDATE SET seq = excluded.seq, \
         device_time = excluded.device_time, received_at_ms = excluded.received_at_ms, \
         battery_percent = excluded.battery_percent, battery_level = excluded.battery_level, \
         signal_db = excluded.signal_db, signal_quality = excluded.signal_quality, carrier = excluded.carrier, \
         lock_state = excluded.lock_state, door_state = excluded.door_state, firmware = excluded.firmware, \
         heartbeat_interval_h = excluded.heartbeat_interval_h, \
         activity_log_interval_min = excluded.activity_log_interval_min, \
         online_until_ms = excluded.online_until_ms \
         WHERE excluded.seq > lock_state.seq"
    };
}
pub(crate) use lock_state_upsert;

/// A heartbeat's column values, shared by both engines' statements.
pub(crate) struct HeartbeatValues<'a> {
    pub lock_id: &'a str,
    pub seq: i64,
    pub device_time: i64,
    pub received_at_ms: i64,
    pub transport: &'static str,
    pub bridge_id: Option<&'a str>,
    pub battery_percent: Option<i64>,
    pub battery_level: Option<&'static str>,
    pub signal_db: i64,
    pub signal_quality: &'static str,
    pub carrier: Cow<'a, str>,
    pub channel_earfcn: Option<i64>,
    pub channel_pci: Option<i64>,
    pub channel_cell_id: Option<i64>,
    pub channel_band: Option<i64>,
    pub lock_state: &'static str,
    pub door_state: &'static str,
    pub firmware: Cow<'a, str>,
    pub heartbeat_interval_h: i64,
    pub activity_log_interval_min: i64,
    /// See `dispatcher::presence`: stored with the lock's newest state.
    pub online_until_ms: i64,
}

impl<'a> HeartbeatValues<'a> {
    pub fn of(r: &'a HeartbeatRow) -> Self {
        let hb = &r.hb;
        let (battery_percent, battery_level) = match hb.battery {
            Battery::Percent(p) => (Some(i64::from(p)), None),
            Battery::Level(l) => (None, Some(codes::battery_level(l))),
        };
        let ch = hb.channel.as_ref();
        HeartbeatValues {
            lock_id: &hb.lock_id,
            seq: i64::from(hb.seq),
            device_time: int(hb.device_time),
            received_at_ms: int(r.received_at_ms),
            transport: r.transport.as_str(),
            bridge_id: r.bridge_id.as_deref(),
            battery_percent,
            battery_level,
            signal_db: i64::from(hb.signal_db),
            signal_quality: codes::signal_quality(hb.signal_quality),
            carrier: codes::text(&hb.carrier),
            channel_earfcn: ch.map(|c| i64::from(c.earfcn)),
            channel_pci: ch.map(|c| i64::from(c.pci)),
            channel_cell_id: ch.map(|c| i64::from(c.cell_id)),
            channel_band: ch.map(|c| i64::from(c.band)),
            lock_state: codes::lock_state(hb.lock_state),
            door_state: codes::door_state(hb.door_state),
            firmware: codes::text(&hb.firmware),
            heartbeat_interval_h: i64::from(hb.heartbeat_interval.hours()),
            activity_log_interval_min: i64::from(hb.activity_log_interval.minutes()),
            online_until_ms: int(dispatcher::presence::online_until_ms(
                &hb.lock_id,
                r.received_at_ms,
                hb.heartbeat_interval,
            )),
        }
    }
}

/// An activity event's column values.
pub(crate) struct EventValues<'a> {
    pub lock_id: &'a str,
    pub event_seq: i64,
    pub batch_seq: i64,
    pub time: i64,
    pub kind: &'static str,
    pub actor: Option<Cow<'a, str>>,
    pub received_at_ms: i64,
    pub transport: &'static str,
    pub bridge_id: Option<&'a str>,
}

impl<'a> EventValues<'a> {
    pub fn of(r: &'a EventRow) -> Self {
        EventValues {
            lock_id: &r.lock_id,
            event_seq: i64::from(r.event.seq),
            batch_seq: i64::from(r.batch_seq),
            time: int(r.event.time),
            kind: r.event.kind.as_str(),
            actor: r.event.actor.as_deref().map(codes::text),
            received_at_ms: int(r.received_at_ms),
            transport: r.transport.as_str(),
            bridge_id: r.bridge_id.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{event_row as event, heartbeat_row as heartbeat};

    #[test]
    fn duplicates_are_sent_once_and_only_the_first_can_be_new() {
        let batch = Batch {
            heartbeats: vec![heartbeat("L2", 1), heartbeat("L1", 5), heartbeat("L2", 1)],
            events: vec![event("L1", 3), event("L1", 3), event("L1", 2)],
            ..Batch::default()
        };
        let plan = Plan::new(&batch, &Refused::default());
        let sent: Vec<_> = plan
            .heartbeats
            .iter()
            .map(|r| (r.hb.lock_id.as_str(), r.hb.seq))
            .collect();
        assert_eq!(sent, [("L1", 5), ("L2", 1)]);
        assert_eq!(plan.events.len(), 2);
        let all: HashSet<(String, i64)> = [("L1".to_string(), 5), ("L2".to_string(), 1)].into();
        assert_eq!(plan.heartbeat_flags(&batch, &all), [true, true, false]);
        let ev: HashSet<(String, i64)> = [("L1".to_string(), 3)].into();
        assert_eq!(plan.event_flags(&batch, &ev), [true, false, false]);
    }

    #[test]
    fn newest_inserted_takes_the_highest_new_seq_per_lock() {
        let batch = Batch {
            heartbeats: vec![
                heartbeat("L1", 4),
                heartbeat("L1", 9),
                heartbeat("L1", 7),
                heartbeat("L2", 1),
            ],
            ..Batch::default()
        };
        let plan = Plan::new(&batch, &Refused::default());
        // Seq 9 was already stored (not returned), so 7 is the newest new one.
        let inserted: HashSet<(String, i64)> = [
            ("L1".to_string(), 4),
            ("L1".to_string(), 7),
            ("L2".to_string(), 1),
        ]
        .into();
        let newest: Vec<_> = plan
            .newest_inserted(&inserted)
            .iter()
            .map(|r| (r.hb.lock_id.as_str(), r.hb.seq))
            .collect();
        assert_eq!(newest, [("L1", 7), ("L2", 1)]);
    }
}
