//! OSCORE replay protection and key revocation, decided inside the group
//! commit (RFC 8613 §7.4; issue 3: "rotating or deregistering makes the old
//! key fail on the next message").
//!
//! A transport verifies a protected request against the key ring in memory
//! and hands the writer what it verified ([`ProtectionRow`]): the protecting
//! device, which of its stored keys ([`KeyStamp`]) and the request's
//! sequence number. The commit is the authority. With the protecting
//! devices' registry rows locked (the rows `rotate_key` and `deregister`
//! lock too), it reads their current key (`device_keys`) and stored window
//! (`oscore_replay`), refuses a report whose key is no longer the stored one
//! ([`ProtectionRefusal::KeyRevoked`]) or whose sequence number the window
//! has seen ([`ProtectionRefusal::Replay`]), and writes the advanced window
//! in the same transaction as the report. So neither a restart nor another
//! instance ever accepts a replay, and a rotated or deregistered key fails
//! on the next message whatever any instance's ring still holds.
//!
//! This module is the pure part (what to refuse, which windows to write) and
//! the window load for the ring; the engines (`sqlite`, `postgres`) run the
//! statements. It must not touch anything but `device_keys` (read) and
//! `oscore_replay`.

use super::common::on_pool;
use super::{Batch, Store, StoreError, POSTGRES, SQLITE};
use crate::keys::server_key::WRAP_NONCE_LEN;
use dispatcher::keys::DeviceRef;
use lockfleet_oscore::ReplayWindow;
use std::collections::HashMap;
use std::ops::Range;

/// Which stored key of a device a message was verified with: its generation
/// and the random nonce of its wrap. The generation alone is not unique:
/// deregistering a device and registering it again starts again at
/// generation 1 with a new secret, while every stored key gets a new wrap
/// nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyStamp {
    pub generation: u32,
    pub wrap_nonce: [u8; WRAP_NONCE_LEN],
}

/// A protected report in a [`Batch`]: who protected it, with which key, its
/// OSCORE sequence number (Partial IV), and which rows of the batch it
/// carries (each report's rows are contiguous, in queue order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtectionRow {
    /// The device whose key protected the report: the lock itself on CoAP,
    /// the relaying bridge for a bridged lock.
    pub device: DeviceRef,
    pub key: KeyStamp,
    pub seq: u64,
    pub heartbeats: Range<usize>,
    pub events: Range<usize>,
    pub bridge_statuses: Range<usize>,
}

/// Why the commit refused a protected report. Nothing of it was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtectionRefusal {
    #[error("the key this request was protected with is no longer the device's (rotated, or the device was deregistered): nothing was stored; protect with the device's current key")]
    KeyRevoked,
    #[error("replayed sequence number {seq}: already accepted, or below the stored replay window (RFC 8613 §7.4): nothing was stored; protect every new request with a new sequence number")]
    Replay { seq: u64 },
    #[error("the stored replay window of this device is inconsistent, so nothing can be accepted from it: nothing was stored; the operator must rotate the device's key")]
    ReplayStateCorrupt,
}

impl ProtectionRefusal {
    /// Stable label for the `reason` metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            ProtectionRefusal::KeyRevoked => "key_revoked",
            ProtectionRefusal::Replay { .. } => "replay",
            ProtectionRefusal::ReplayStateCorrupt => "replay_state_corrupt",
        }
    }
}

/// `device_keys` columns the commit reads: kind, id, generation, wrap nonce.
pub(crate) type KeyColumns = (String, String, i64, Vec<u8>);

/// `oscore_replay` columns: kind, id, generation, highest, window_bits.
pub(crate) type ReplayColumns = (String, String, i64, i64, i64);

/// One `oscore_replay` row to upsert. `window_bits` is the `u64` bitmap
/// stored bit for bit in a signed `BIGINT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WindowRow<'a> {
    pub kind: &'static str,
    pub id: &'a str,
    pub generation: i64,
    pub highest: i64,
    pub window_bits: i64,
}

/// What the commit decided about a batch's protected reports.
#[derive(Debug, Default)]
pub(crate) struct Verdicts<'a> {
    /// Per [`Batch::protections`] entry, in order.
    pub refusals: Vec<Option<ProtectionRefusal>>,
    /// The windows that advanced, sorted by device.
    pub windows: Vec<WindowRow<'a>>,
}

/// Which rows of a batch belong to refused reports.
#[derive(Debug, Default)]
pub(crate) struct Refused {
    heartbeats: Vec<bool>,
    events: Vec<bool>,
    bridge_statuses: Vec<bool>,
}

impl Refused {
    pub fn heartbeat(&self, i: usize) -> bool {
        self.heartbeats.get(i).copied().unwrap_or(false)
    }
    pub fn event(&self, i: usize) -> bool {
        self.events.get(i).copied().unwrap_or(false)
    }
    pub fn bridge_status(&self, i: usize) -> bool {
        self.bridge_statuses.get(i).copied().unwrap_or(false)
    }
}

impl<'a> Verdicts<'a> {
    /// Decide every protected report of the batch, in order, against the
    /// stored keys and windows of its protecting devices. Reports of one
    /// device advance one working window, so the same sequence number twice
    /// in one batch is accepted once.
    pub fn decide(
        protections: &'a [ProtectionRow],
        keys: &[KeyColumns],
        stored: &[ReplayColumns],
    ) -> Verdicts<'a> {
        let keys: HashMap<(&str, &str), (i64, &[u8])> = keys
            .iter()
            .map(|(k, id, g, n)| ((k.as_str(), id.as_str()), (*g, n.as_slice())))
            .collect();
        let stored: HashMap<(&str, &str), (i64, i64, i64)> = stored
            .iter()
            .map(|(k, id, g, h, b)| ((k.as_str(), id.as_str()), (*g, *h, *b)))
            .collect();
        // Per device: its generation and window; `None` when the stored
        // window cannot be read.
        let mut working: HashMap<(&'static str, &'a str), (i64, Option<ReplayWindow>, bool)> =
            HashMap::new();
        let mut refusals = Vec::with_capacity(protections.len());
        for p in protections {
            let device = (p.device.kind(), p.device.id());
            let generation = i64::from(p.key.generation);
            let current = keys.get(&device);
            if current != Some(&(generation, &p.key.wrap_nonce[..])) {
                refusals.push(Some(ProtectionRefusal::KeyRevoked));
                continue;
            }
            let (_, window, changed) = working.entry(device).or_insert_with(|| {
                let window = match stored.get(&device) {
                    // A window of another key (a rotation deletes it, so this
                    // is defensive) says nothing about this one.
                    Some((g, highest, bits)) if *g == generation => u64::try_from(*highest)
                        .ok()
                        .and_then(|h| ReplayWindow::from_parts(Some(h), *bits as u64).ok()),
                    _ => Some(ReplayWindow::new()),
                };
                (generation, window, false)
            });
            let Some(window) = window else {
                refusals.push(Some(ProtectionRefusal::ReplayStateCorrupt));
                continue;
            };
            match window.accept(p.seq) {
                Ok(()) => {
                    *changed = true;
                    refusals.push(None);
                }
                Err(_) => refusals.push(Some(ProtectionRefusal::Replay { seq: p.seq })),
            }
        }
        let mut windows: Vec<WindowRow<'a>> = working
            .into_iter()
            .filter_map(|((kind, id), (generation, window, changed))| {
                let (highest, bits) = window.filter(|_| changed)?.to_parts();
                Some(WindowRow {
                    kind,
                    id,
                    generation,
                    // An accepted window has a highest number, at most 2^40 - 1.
                    highest: highest.map_or(0, |h| h as i64),
                    window_bits: bits as i64,
                })
            })
            .collect();
        windows.sort_by(|a, b| (a.kind, a.id).cmp(&(b.kind, b.id)));
        Verdicts { refusals, windows }
    }

    /// The rows of `batch` that belong to refused reports.
    pub fn refused_rows(&self, batch: &Batch) -> Refused {
        let mut refused = Refused {
            heartbeats: vec![false; batch.heartbeats.len()],
            events: vec![false; batch.events.len()],
            bridge_statuses: vec![false; batch.bridge_statuses.len()],
        };
        for (p, verdict) in batch.protections.iter().zip(&self.refusals) {
            if verdict.is_none() {
                continue;
            }
            for (mask, range) in [
                (&mut refused.heartbeats, &p.heartbeats),
                (&mut refused.events, &p.events),
                (&mut refused.bridge_statuses, &p.bridge_statuses),
            ] {
                for flag in mask.iter_mut().take(range.end).skip(range.start) {
                    *flag = true;
                }
            }
        }
        refused
    }
}

/// The protecting locks and bridges of a batch, each sorted and unique:
/// whose registry rows the commit locks and whose keys and windows it reads.
pub(crate) fn protecting_ids(batch: &Batch) -> (Vec<&str>, Vec<&str>) {
    let (mut locks, mut bridges) = (Vec::new(), Vec::new());
    for p in &batch.protections {
        match &p.device {
            DeviceRef::Lock(l) => locks.push(l.as_str()),
            DeviceRef::Bridge(b) => bridges.push(b.as_str()),
        }
    }
    for ids in [&mut locks, &mut bridges] {
        ids.sort_unstable();
        ids.dedup();
    }
    (locks, bridges)
}

/// A device's stored replay window, for the ring's fast path after a start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredWindow {
    pub device: DeviceRef,
    pub generation: u32,
    pub window: ReplayWindow,
}

/// Every stored window that can be read. One that cannot is left out (the
/// ring then starts that device with an empty window; the commit, which
/// reads the row itself, still refuses everything from it).
pub(crate) async fn load_windows(store: &Store) -> Result<Vec<StoredWindow>, StoreError> {
    let rows: Vec<ReplayColumns> = on_pool!(store, |pool, engine| {
        sqlx::query_as(
            "SELECT device_kind, device_id, generation, highest, window_bits FROM oscore_replay",
        )
        .fetch_all(pool)
        .await
        .map_err(|e| StoreError::from_sqlx(engine, "loading OSCORE replay windows", e))?
    });
    Ok(rows
        .into_iter()
        .filter_map(|(kind, id, generation, highest, bits)| {
            Some(StoredWindow {
                device: DeviceRef::parse(&kind, &id)?,
                generation: u32::try_from(generation).ok()?,
                window: ReplayWindow::from_parts(Some(u64::try_from(highest).ok()?), bits as u64)
                    .ok()?,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispatcher::{BridgeId, LockId};

    const NONCE: [u8; WRAP_NONCE_LEN] = [7; WRAP_NONCE_LEN];

    fn lock(id: &str) -> DeviceRef {
        DeviceRef::Lock(LockId::new(id))
    }

    fn protection(device: DeviceRef, generation: u32, seq: u64, hb: usize) -> ProtectionRow {
        ProtectionRow {
            device,
            key: KeyStamp {
                generation,
                wrap_nonce: NONCE,
            },
            seq,
            heartbeats: hb..hb + 1,
            events: 0..0,
            bridge_statuses: 0..0,
        }
    }

    fn key(kind: &str, id: &str, generation: i64) -> KeyColumns {
        (kind.into(), id.into(), generation, NONCE.to_vec())
    }

    #[test]
    fn a_sequence_number_is_accepted_once_even_within_one_batch() {
        let ps = [
            protection(lock("L1"), 1, 5, 0),
            protection(lock("L1"), 1, 5, 1),
            protection(lock("L1"), 1, 4, 2),
        ];
        let v = Verdicts::decide(&ps, &[key("lock", "L1", 1)], &[]);
        assert_eq!(
            v.refusals,
            [None, Some(ProtectionRefusal::Replay { seq: 5 }), None]
        );
        assert_eq!(
            v.windows,
            [WindowRow {
                kind: "lock",
                id: "L1",
                generation: 1,
                highest: 5,
                window_bits: 0b11,
            }]
        );
    }

    #[test]
    fn the_stored_window_refuses_what_it_accepted_before() {
        let (highest, bits) = {
            let mut w = ReplayWindow::new();
            w.accept(9).unwrap();
            w.to_parts()
        };
        let stored = [(
            "lock".to_string(),
            "L1".to_string(),
            1,
            highest.unwrap() as i64,
            bits as i64,
        )];
        let ps = [
            protection(lock("L1"), 1, 9, 0),
            protection(lock("L1"), 1, 10, 1),
        ];
        let v = Verdicts::decide(&ps, &[key("lock", "L1", 1)], &stored);
        assert_eq!(
            v.refusals,
            [Some(ProtectionRefusal::Replay { seq: 9 }), None]
        );
        assert_eq!(v.windows[0].highest, 10);
    }

    #[test]
    fn a_key_that_is_not_the_stored_one_is_revoked() {
        let ps = [
            // Rotated: the stored generation is 2.
            protection(lock("L1"), 1, 1, 0),
            // Deregistered: no key row.
            protection(lock("L2"), 1, 1, 1),
            // Registered again at generation 1 with a new secret (new wrap).
            protection(lock("L3"), 1, 1, 2),
        ];
        let keys = [
            key("lock", "L1", 2),
            ("lock".into(), "L3".into(), 1, vec![8; WRAP_NONCE_LEN]),
        ];
        let v = Verdicts::decide(&ps, &keys, &[]);
        assert_eq!(v.refusals, [Some(ProtectionRefusal::KeyRevoked); 3]);
        assert!(v.windows.is_empty(), "nothing advanced");
    }

    #[test]
    fn a_corrupt_window_refuses_only_its_device_and_a_window_of_another_key_is_ignored() {
        let stored = [
            ("lock".to_string(), "L1".to_string(), 1, 5, 0b10),
            ("bridge".to_string(), "B1".to_string(), 1, 5, 1),
        ];
        let bridge = DeviceRef::Bridge(BridgeId::new("B1"));
        let ps = [
            protection(lock("L1"), 1, 6, 0),
            protection(bridge.clone(), 2, 5, 1),
        ];
        let keys = [key("lock", "L1", 1), key("bridge", "B1", 2)];
        let v = Verdicts::decide(&ps, &keys, &stored);
        assert_eq!(
            v.refusals,
            [Some(ProtectionRefusal::ReplayStateCorrupt), None]
        );
        assert_eq!(v.windows.len(), 1);
        assert_eq!((v.windows[0].kind, v.windows[0].generation), ("bridge", 2));
    }

    #[test]
    fn refused_reports_mark_their_rows() {
        let mut second = protection(lock("L1"), 1, 3, 1);
        second.events = 1..3;
        let batch = Batch {
            heartbeats: (0..3)
                .map(|s| crate::store::testing::heartbeat_row("L1", s))
                .collect(),
            events: (0..4)
                .map(|s| crate::store::testing::event_row("L1", s))
                .collect(),
            protections: vec![protection(lock("L1"), 1, 3, 0), second],
            ..Batch::default()
        };
        let v = Verdicts::decide(&batch.protections, &[key("lock", "L1", 1)], &[]);
        let refused = v.refused_rows(&batch);
        assert_eq!(
            (0..3).map(|i| refused.heartbeat(i)).collect::<Vec<_>>(),
            [false, true, false]
        );
        assert_eq!(
            (0..4).map(|i| refused.event(i)).collect::<Vec<_>>(),
            [false, true, true, false]
        );
        assert!(!refused.bridge_status(0));
    }

    #[test]
    fn windows_survive_the_signed_bigint_column() {
        let mut w = ReplayWindow::new();
        w.accept(63).unwrap();
        w.accept(0).unwrap();
        let (highest, bits) = w.to_parts();
        assert!((bits as i64) < 0, "the top bit is set: stored negative");
        let back = ReplayWindow::from_parts(highest, (bits as i64) as u64).unwrap();
        assert_eq!(back, w);
    }
}
