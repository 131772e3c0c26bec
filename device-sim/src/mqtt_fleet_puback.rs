//! PUBACKs of the MQTT task's reports ([`crate::mqtt_lock::MqttAcks`]):
//! which report each PUBACK acknowledges, its first PUBACK recorded, and
//! under [`MqttAcks::Puback`] the end of its exchange.
//!
//! rumqttc gives a publish its packet id only when its event loop takes it
//! from the request queue, and tells nothing but the id
//! ([`crate::mqtt_conn::ConnEvent::Published`]). The queue is FIFO, so the
//! n-th publish this task queued on a connection is the n-th that leaves:
//! [`PubackTracker`] keeps the queued reports in order and pairs each
//! leaving packet id with the oldest. The connection task's own publishes
//! (a bridge's `online` status) leave before it reports the connection up,
//! when this task has queued nothing on it, and are not paired.
//!
//! The pairing holds while the connection does. When it drops, requests
//! queued before may leave after the next CONNACK, mixed with the new
//! `online`, so the tracker stops ([`PubackTracker::lose`]): that
//! connection's reports go back to their ack timeout, and the loss is
//! counted (the error `puback_tracking_lost`, beside `mqtt_connection`), so
//! a measurement shows it.
//!
//! A child module of `mqtt_fleet`, so it reaches the task's fields.

use super::*;
use crate::ledger::PubackedReport;
use crate::lock::Answer;
use crate::mqtt_lock::MqttAcks;
use schemas::device::UplinkKind;
use std::collections::VecDeque;

/// One publish of a report, waiting for its packet id, then its PUBACK.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Tracked {
    pub slot: usize,
    pub seq: u32,
    pub kind: UplinkKind,
    pub due: Instant,
}

/// Pairs a connection's publishes with packet ids and PUBACKs, sans I/O.
#[derive(Debug, Default)]
pub(super) struct PubackTracker {
    /// Publishes queued to rumqttc and not yet given a packet id, in order;
    /// `None` for one that is not a lock's report.
    queued: VecDeque<Option<Tracked>>,
    /// Packet id -> the report it carries, until its PUBACK.
    by_pkid: HashMap<u16, Tracked>,
    /// The connection dropped: nothing is paired any more.
    lost: bool,
}

impl PubackTracker {
    /// This task queued a publish on the connection (`None`: not a report).
    pub fn queued(&mut self, publish: Option<Tracked>) {
        if !self.lost {
            self.queued.push_back(publish);
        }
    }

    /// A publish left with `pkid`: the oldest queued one. Nothing queued
    /// means it is the connection task's own.
    pub fn published(&mut self, pkid: u16) {
        if let Some(Some(tracked)) = self.queued.pop_front() {
            self.by_pkid.insert(pkid, tracked);
        }
    }

    /// The broker acknowledged `pkid`: the report it carried, if paired.
    pub fn puback(&mut self, pkid: u16) -> Option<Tracked> {
        self.by_pkid.remove(&pkid)
    }

    /// The connection dropped or was closed on command: stop pairing, and
    /// say how many reports were waiting for a packet id or a PUBACK.
    pub fn lose(&mut self) -> usize {
        let waiting = self.queued.iter().flatten().count() + self.by_pkid.len();
        self.lost = true;
        self.queued.clear();
        self.by_pkid.clear();
        waiting
    }

    pub fn is_lost(&self) -> bool {
        self.lost
    }
}

impl MqttFleet {
    /// A publish of connection `conn` left with `pkid`.
    pub(super) fn on_published(&mut self, conn: usize, pkid: u16) {
        if let Some(t) = self.conns[conn].pubacks.as_mut() {
            t.published(pkid);
        }
    }

    /// The broker's PUBACK of `pkid` on connection `conn`. The report's
    /// first is recorded; under [`MqttAcks::Puback`] it also ends the
    /// exchange, as the gateway's answer would.
    pub(super) fn on_puback(&mut self, conn: usize, pkid: u16, now: Instant) {
        let Some(tracked) = self.conns[conn]
            .pubacks
            .as_mut()
            .and_then(|t| t.puback(pkid))
        else {
            return;
        };
        let slot = &mut self.slots[tracked.slot];
        if slot.pubacked == Some(tracked.seq) {
            // A resent copy's PUBACK: the first one counted.
            return;
        }
        slot.pubacked = Some(tracked.seq);
        let start = self.clock.start();
        self.ledger.pubacked.push(PubackedReport {
            kind: tracked.kind,
            due_after: tracked.due.saturating_duration_since(start),
            pubacked_after: now.saturating_duration_since(start),
        });
        if self.acks == MqttAcks::Puback {
            self.on_ack(tracked.slot, tracked.seq, &Answer::Undecodable, now);
        }
    }

    /// Connection `conn` dropped or was closed: its PUBACKs can no longer
    /// be paired with reports.
    pub(super) fn lose_pubacks(&mut self, conn: usize) {
        let Some(t) = self.conns[conn].pubacks.as_mut() else {
            return;
        };
        if t.is_lost() {
            return;
        }
        let waiting = t.lose();
        tracing::debug!(conn, waiting, "PUBACK tracking lost with the connection");
        self.stats.error("puback_tracking_lost");
    }

    /// Records that slot `i`'s report `seq` was queued on its connection.
    pub(super) fn track_publish(&mut self, i: usize, seq: u32, kind: UplinkKind, due: Instant) {
        let conn = self.slots[i].conn;
        if let Some(t) = self.conns[conn].pubacks.as_mut() {
            t.queued(Some(Tracked {
                slot: i,
                seq,
                kind,
                due,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracked(slot: usize, seq: u32, due: Instant) -> Tracked {
        Tracked {
            slot,
            seq,
            kind: UplinkKind::Heartbeat,
            due,
        }
    }

    #[test]
    fn publishes_pair_with_packet_ids_in_queue_order() {
        let t0 = Instant::now();
        let mut t = PubackTracker::default();
        // The connection's own `online` leaves before anything is queued.
        t.published(1);
        t.queued(Some(tracked(0, 7, t0)));
        t.queued(None);
        t.queued(Some(tracked(1, 3, t0)));
        t.published(2);
        t.published(3);
        t.published(4);
        assert_eq!(t.puback(1), None, "the status publish is not a report");
        assert_eq!(t.puback(4), Some(tracked(1, 3, t0)));
        assert_eq!(t.puback(3), None, "not a report");
        assert_eq!(t.puback(2), Some(tracked(0, 7, t0)));
        assert_eq!(t.puback(2), None, "a PUBACK pairs once");
    }

    #[test]
    fn a_duplicated_publish_pairs_each_copy() {
        let t0 = Instant::now();
        let mut t = PubackTracker::default();
        t.queued(Some(tracked(0, 7, t0)));
        t.queued(Some(tracked(0, 7, t0)));
        t.published(5);
        t.published(6);
        assert_eq!(t.puback(6), Some(tracked(0, 7, t0)));
        assert_eq!(t.puback(5), Some(tracked(0, 7, t0)));
    }

    #[test]
    fn a_lost_connection_stops_pairing_and_counts_what_waited() {
        let t0 = Instant::now();
        let mut t = PubackTracker::default();
        t.queued(Some(tracked(0, 1, t0)));
        t.queued(Some(tracked(1, 1, t0)));
        t.queued(None);
        t.published(1);
        assert_eq!(t.lose(), 2, "one with a packet id, one still queued");
        assert!(t.is_lost());
        t.queued(Some(tracked(0, 2, t0)));
        t.published(2);
        assert_eq!(t.puback(1), None);
        assert_eq!(t.puback(2), None);
        assert_eq!(t.lose(), 0);
    }
}
