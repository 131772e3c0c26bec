//! The record of what the server acknowledged (and what it never did), so a
//! test can check that the database holds every acknowledged report exactly
//! once, and where each lock's counters ended (what the state file keeps).
//! It also keeps when each CoAP exchange got an answer, whatever its code:
//! the request/response rate of a server that answers without storing
//! anything (a raw CoAP baseline such as libcoap's `coap-server`, which
//! answers the locks' requests with 4.xx) counts from those.
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
    /// The round trip of the exchange that acknowledged it, first
    /// transmission to answer, as recorded in [`Ledger::latency`]; `None`
    /// where the transport is not timed (MQTT). With `acked_after` it gives
    /// latency percentiles over any interval of the run, after the run and
    /// without a lock on the answer path.
    pub rtt: Option<Duration>,
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

/// A CoAP exchange of a report that the server answered, with any code
/// (2.xx, 4.xx, 5.xx, an answer that does not verify) or an RST: one
/// request/response round trip. An exchange that got no answer (it gave
/// up) is not one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnsweredExchange {
    pub kind: UplinkKind,
    /// When the answer arrived, from the start of the run.
    pub answered_after: Duration,
}

/// Acknowledged and still-pending reports, the locks' final counters, and
/// the round-trip times of answered exchanges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    pub acked: Vec<AckedReport>,
    pub pending: Vec<PendingReport>,
    /// (lock index in the fleet, its counters when its task stopped).
    pub counters: Vec<(usize, Counters)>,
    /// Acknowledged CoAP exchanges (2.xx), first transmission to answer
    /// (MQTT reports are not timed here: their due and ack times are in
    /// `acked`).
    pub latency: AckLatency,
    /// Every answered CoAP exchange of a report, whatever the answer, in the
    /// order answered (per task).
    pub answered: Vec<AnsweredExchange>,
    /// Their round trips, first transmission to answer: a superset of
    /// `latency`.
    pub answer_latency: AckLatency,
    /// MQTT reports' first PUBACKs, when the run tracks them.
    pub pubacked: Vec<PubackedReport>,
}

impl Ledger {
    /// Records `report` of `lock` acknowledged at `now`, in a run that
    /// started at `start`, by an exchange that took `rtt` (`None`: not
    /// timed).
    pub fn record_ack(
        &mut self,
        lock: &Lock,
        report: Report,
        start: Instant,
        now: Instant,
        rtt: Option<Duration>,
    ) {
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
            rtt,
            due_after,
        });
    }

    /// Records that the server answered an exchange of a `kind` report,
    /// `answered_after` the start of the run, `rtt` after its first
    /// transmission.
    pub fn record_answer(&mut self, kind: UplinkKind, answered_after: Duration, rtt: Duration) {
        self.answered.push(AnsweredExchange {
            kind,
            answered_after,
        });
        self.answer_latency.record(kind, rtt);
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
        self.answered.extend(other.answered);
        self.answer_latency.merge(&other.answer_latency);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_kept_with_their_time_and_merged_with_their_round_trips() {
        let ms = Duration::from_millis;
        let mut a = Ledger::default();
        a.record_answer(UplinkKind::Heartbeat, ms(1500), ms(3));
        let mut b = Ledger::default();
        b.record_answer(UplinkKind::ActivityLog, ms(1600), ms(7));
        b.record_answer(UplinkKind::Heartbeat, ms(2500), ms(5));
        a.merge(b);
        assert_eq!(
            a.answered,
            vec![
                AnsweredExchange {
                    kind: UplinkKind::Heartbeat,
                    answered_after: ms(1500)
                },
                AnsweredExchange {
                    kind: UplinkKind::ActivityLog,
                    answered_after: ms(1600)
                },
                AnsweredExchange {
                    kind: UplinkKind::Heartbeat,
                    answered_after: ms(2500)
                },
            ]
        );
        let l = &a.answer_latency;
        assert_eq!(l.count(UplinkKind::Heartbeat), 2);
        assert_eq!(l.count(UplinkKind::ActivityLog), 1);
        // The slowest heartbeat is the 5 ms one (within the histogram's 0.1 %).
        let slowest = l.quantile(UplinkKind::Heartbeat, 1.0).unwrap();
        assert!(slowest >= ms(5) && slowest < ms(6), "{slowest:?}");
        // Answers are not acknowledgements.
        assert!(a.acked.is_empty());
        assert_eq!(a.latency.count(UplinkKind::Heartbeat), 0);
    }
}
