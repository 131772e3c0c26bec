//! The record of what the server acknowledged (and what it never did), so a
//! test can check that the database holds every acknowledged report exactly
//! once, and where each lock's counters ended (what the state file keeps).
//! Each task keeps its own [`Ledger`]; the run merges them at the end.

use crate::latency::AckLatency;
use crate::lock::{Counters, Lock, Report};
use schemas::device::UplinkKind;
use schemas::event::Transport;
use std::ops::Range;
use std::time::{Duration, Instant};

/// One report the server acknowledged. Each (lock, seq) appears at most once
/// per run, however many times the report was sent or answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckedReport {
    pub lock_id: String,
    pub transport: Transport,
    pub kind: UplinkKind,
    pub seq: u32,
    /// The activity-event seqs a log batch carried (empty for heartbeats and
    /// empty batches). Consecutive: events are uploaded in order.
    pub event_seqs: Range<u32>,
    /// How many times the lock handed it to the transport (1 if the first
    /// exchange succeeded; CoAP retransmissions are not counted).
    pub attempts: u32,
    /// When the acknowledgement arrived, from the start of the run.
    pub acked_after: Duration,
    /// When the report was due ([`crate::lock::Report::due`]), from the
    /// start of the run: `acked_after - due_after` is its latency as an
    /// open-loop generator sees it.
    pub due_after: Duration,
}

/// The broker's PUBACK of one MQTT report, the first one it got (a resent
/// report is PUBACKed again; only the first counts). Recorded when the run
/// tracks PUBACKs ([`crate::run::MqttAcks`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PubackedReport {
    pub kind: UplinkKind,
    /// When the report was due, from the start of the run.
    pub due_after: Duration,
    /// When its first PUBACK arrived, from the start of the run.
    pub pubacked_after: Duration,
}

/// A report still waiting for its acknowledgement when the run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingReport {
    pub lock_id: String,
    pub transport: Transport,
    pub kind: UplinkKind,
    pub seq: u32,
    pub event_seqs: Range<u32>,
}

/// Acknowledged and still-pending reports, the locks' final counters, and
/// the round-trip times of answered exchanges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    pub acked: Vec<AckedReport>,
    pub pending: Vec<PendingReport>,
    /// (lock index in the fleet, its counters when its task stopped).
    pub counters: Vec<(usize, Counters)>,
    /// Answered CoAP exchanges, first transmission to answer (MQTT reports
    /// are not timed here: their due and ack times are in `acked`).
    pub latency: AckLatency,
    /// MQTT reports' first PUBACKs, when the run tracks them.
    pub pubacked: Vec<PubackedReport>,
}

impl Ledger {
    /// Records `report` of `lock` acknowledged at `now`, in a run that
    /// started at `start`.
    pub fn record_ack(&mut self, lock: &Lock, report: Report, start: Instant, now: Instant) {
        let acked_after = now.saturating_duration_since(start);
        let due_after = report.due.saturating_duration_since(start);
        self.acked.push(AckedReport {
            lock_id: lock.id().to_string(),
            transport: lock.transport(),
            kind: report.kind,
            seq: report.seq,
            event_seqs: report.event_seqs,
            attempts: report.attempts,
            acked_after,
            due_after,
        });
    }

    /// Records where `lock`'s counters ended.
    pub fn record_counters(&mut self, lock: &Lock) {
        self.counters.push((lock.index(), lock.counters()));
    }

    /// Records what `lock` still holds in its outbox.
    pub fn record_pending(&mut self, lock: &Lock) {
        self.pending.extend(lock.outbox().map(|r| PendingReport {
            lock_id: lock.id().to_string(),
            transport: lock.transport(),
            kind: r.kind,
            seq: r.seq,
            event_seqs: r.event_seqs.clone(),
        }));
    }

    pub fn merge(&mut self, other: Ledger) {
        self.acked.extend(other.acked);
        self.pending.extend(other.pending);
        self.counters.extend(other.counters);
        self.pubacked.extend(other.pubacked);
        self.latency.merge(&other.latency);
    }
}
