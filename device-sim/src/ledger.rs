//! The record of what the server acknowledged (and what it never did), so a
//! test can check that the database holds every acknowledged report exactly
//! once, and where each lock's counters ended (what the state file keeps).
//! Each task keeps its own [`Ledger`]; the run merges them at the end.

use crate::latency::AckLatency;
use crate::lock::{Counters, Lock, Report};
use schemas::device::UplinkKind;
use schemas::event::Transport;
use std::ops::Range;
use std::time::Duration;

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
    /// The round trip of the exchange that acknowledged it, first
    /// transmission to answer, as recorded in [`Ledger::latency`]; `None`
    /// where the transport is not timed (MQTT). With `acked_after` it gives
    /// latency percentiles over any interval of the run, after the run and
    /// without a lock on the answer path.
    pub rtt: Option<Duration>,
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
    /// are not timed).
    pub latency: AckLatency,
}

impl Ledger {
    /// Records `report` as acknowledged `acked_after` the start of the run
    /// by an exchange that took `rtt` (`None`: not timed).
    pub fn record_ack(
        &mut self,
        lock: &Lock,
        report: Report,
        acked_after: Duration,
        rtt: Option<Duration>,
    ) {
        self.acked.push(AckedReport {
            lock_id: lock.id().to_string(),
            transport: lock.transport(),
            kind: report.kind,
            seq: report.seq,
            event_seqs: report.event_seqs,
            attempts: report.attempts,
            acked_after,
            rtt,
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
        self.latency.merge(&other.latency);
    }
}
