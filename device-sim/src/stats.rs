//! Live counters shared by every task of a run (atomics, no lock on the hot
//! path), their point-in-time [`StatsSnapshot`], and the one-line progress
//! format. Owns no ledger: tasks keep their acknowledged reports and hand
//! them over at the end.

use crate::latency::{TwoFactorLatency, TwoFactorLeg};
use dashmap::DashMap;
use schemas::twofa::TwoFactorResult;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// Every [`TwoFactorResult`], in the order their counters are kept.
const TWO_FACTOR_RESULTS: [TwoFactorResult; 8] = [
    TwoFactorResult::OtpSent,
    TwoFactorResult::Denied,
    TwoFactorResult::RateLimited,
    TwoFactorResult::LockedOut,
    TwoFactorResult::NotifierFailed,
    TwoFactorResult::Allowed,
    TwoFactorResult::WrongOtp,
    TwoFactorResult::ChallengeEnded,
];

/// 2FA counters: the answers locks got, and the visits of the run's people.
#[derive(Debug, Default)]
struct TwoFactorStats {
    results: [AtomicU64; TWO_FACTOR_RESULTS.len()],
    failed: AtomicU64,
    in_flight: AtomicI64,
    visits: AtomicU64,
    opened: AtomicU64,
    otp_never_arrived: AtomicU64,
    /// A few records per unlock: a mutex held for one histogram increment,
    /// never across an await.
    latency: Mutex<TwoFactorLatency>,
}

/// Counters of one run. Create with [`Stats::new`], share as `Arc<Stats>`.
#[derive(Debug)]
pub struct Stats {
    created: AtomicU64,
    sent: AtomicU64,
    resent: AtomicU64,
    retransmitted: AtomicU64,
    acked: AtomicU64,
    answered: AtomicU64,
    rejected: AtomicU64,
    gave_up: AtomicU64,
    abandoned: AtomicU64,
    events_lost: AtomicU64,
    dup_injected: AtomicU64,
    dropped_out: AtomicU64,
    dropped_in: AtomicU64,
    in_flight: AtomicI64,
    mqtt_connected: AtomicI64,
    locks_done: AtomicU64,
    hard_resets: AtomicU64,
    bridge_commands_received: AtomicU64,
    bridge_commands_refused: AtomicU64,
    bridge_commands_applied: AtomicU64,
    errors: DashMap<String, u64>,
    acked_per_lock: Vec<AtomicU32>,
    twofa: TwoFactorStats,
}

impl Stats {
    /// Counters for a fleet of `locks` locks (indexed as in the fleet file).
    pub fn new(locks: usize) -> Self {
        Stats {
            created: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            resent: AtomicU64::new(0),
            retransmitted: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            gave_up: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            events_lost: AtomicU64::new(0),
            dup_injected: AtomicU64::new(0),
            dropped_out: AtomicU64::new(0),
            dropped_in: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            mqtt_connected: AtomicI64::new(0),
            locks_done: AtomicU64::new(0),
            hard_resets: AtomicU64::new(0),
            bridge_commands_received: AtomicU64::new(0),
            bridge_commands_refused: AtomicU64::new(0),
            bridge_commands_applied: AtomicU64::new(0),
            errors: DashMap::new(),
            acked_per_lock: (0..locks).map(|_| AtomicU32::new(0)).collect(),
            twofa: TwoFactorStats::default(),
        }
    }

    /// Records what a lock's wake (or an answer, or a command) queued.
    pub fn record(&self, out: &crate::lock::WakeOutcome) {
        self.created(u64::from(out.created));
        self.abandoned(u64::from(out.abandoned));
        self.events_lost(u64::from(out.events_lost));
        if out.finished {
            self.lock_done();
        }
        if out.hard_reset {
            self.hard_reset();
        }
    }
    pub fn created(&self, n: u64) {
        self.created.fetch_add(n, Relaxed);
    }
    /// A report went out for the first time (`first`) or again after an
    /// earlier attempt gave up (new message id, same seq).
    pub fn sent(&self, first: bool) {
        if first {
            self.sent.fetch_add(1, Relaxed);
        } else {
            self.resent.fetch_add(1, Relaxed);
        }
    }
    /// The same message went out again (CoAP retransmission, MQTT resend
    /// after an ack timeout).
    pub fn retransmitted(&self) {
        self.retransmitted.fetch_add(1, Relaxed);
    }
    pub fn acked(&self, lock_index: usize) {
        self.acked.fetch_add(1, Relaxed);
        if let Some(c) = self.acked_per_lock.get(lock_index) {
            c.fetch_add(1, Relaxed);
        }
    }
    /// The server answered a CoAP exchange of a report, with any code or an
    /// RST (acknowledged, refused, 5.03, not verifying alike): one
    /// request/response round trip.
    pub fn answered(&self) {
        self.answered.fetch_add(1, Relaxed);
    }
    /// The server refused a report (4.xx/5.xx, RST, MQTT error topic); it is
    /// not retried. `code` is e.g. `4.00`, `rst`, `mqtt:bad_payload`.
    pub fn rejected(&self, code: &str) {
        self.rejected.fetch_add(1, Relaxed);
        self.error(code);
    }
    /// Counts an error by code without settling a report.
    pub fn error(&self, code: &str) {
        *self.errors.entry(code.to_string()).or_insert(0) += 1;
    }
    /// An exchange exhausted its retransmissions; the report stays queued.
    pub fn gave_up(&self) {
        self.gave_up.fetch_add(1, Relaxed);
    }
    /// Reports discarded because a lock's outbox overflowed.
    pub fn abandoned(&self, n: u64) {
        if n > 0 {
            self.abandoned.fetch_add(n, Relaxed);
        }
    }
    /// Activity events overwritten in a full log buffer before upload.
    pub fn events_lost(&self, n: u64) {
        self.events_lost.fetch_add(n, Relaxed);
    }
    pub fn dup_injected(&self) {
        self.dup_injected.fetch_add(1, Relaxed);
    }
    pub fn dropped_out(&self) {
        self.dropped_out.fetch_add(1, Relaxed);
    }
    pub fn dropped_in(&self) {
        self.dropped_in.fetch_add(1, Relaxed);
    }
    pub fn in_flight_add(&self, delta: i64) {
        self.in_flight.fetch_add(delta, Relaxed);
    }
    pub fn mqtt_connected_add(&self, delta: i64) {
        self.mqtt_connected.fetch_add(delta, Relaxed);
    }
    /// A lock reached `max_reports_per_device` and generates nothing more.
    pub fn lock_done(&self) {
        self.locks_done.fetch_add(1, Relaxed);
    }
    /// A lock was hard reset (by chance or on command).
    pub fn hard_reset(&self) {
        self.hard_resets.fetch_add(1, Relaxed);
    }
    /// A payload arrived on a bridge's command topic.
    pub fn bridge_command_received(&self) {
        self.bridge_commands_received.fetch_add(1, Relaxed);
    }
    /// A bridge dropped a command (see [`crate::bridge_relay::Refused`]);
    /// `reason` is counted as the error `bridge_command:{reason}`.
    pub fn bridge_command_refused(&self, reason: &str) {
        self.bridge_commands_refused.fetch_add(1, Relaxed);
        self.error(&format!("bridge_command:{reason}"));
    }
    /// A bridge carried out a command at a linked lock for the first time.
    pub fn bridge_command_applied(&self) {
        self.bridge_commands_applied.fetch_add(1, Relaxed);
    }
    /// A lock got `result` for a `/2fa` or `/otp` request.
    pub fn twofa_answer(&self, result: TwoFactorResult) {
        if let Some(i) = TWO_FACTOR_RESULTS.iter().position(|r| *r == result) {
            self.twofa.results[i].fetch_add(1, Relaxed);
        }
    }
    /// A `/2fa` or `/otp` request got no answer to use (refused, gave up,
    /// ...); `reason` is counted as the error `2fa:{reason}`.
    pub fn twofa_failed(&self, reason: &str) {
        self.twofa.failed.fetch_add(1, Relaxed);
        self.error(&format!("2fa:{reason}"));
    }
    /// 2FA exchanges started (+1) or ended (-1).
    pub fn twofa_in_flight_add(&self, delta: i64) {
        self.twofa.in_flight.fetch_add(delta, Relaxed);
    }
    /// 2FA exchanges awaiting an answer now: a drain waits for them, as
    /// someone stands at the lock.
    pub fn twofa_in_flight(&self) -> u64 {
        self.twofa.in_flight.load(Relaxed).max(0) as u64
    }
    /// A person began a 2FA visit at a lock.
    pub fn twofa_visit(&self) {
        self.twofa.visits.fetch_add(1, Relaxed);
    }
    /// A person's visit ended with the lock open.
    pub fn twofa_opened(&self) {
        self.twofa.opened.fetch_add(1, Relaxed);
    }
    /// A person waited for an OTP that never came.
    pub fn twofa_otp_never_arrived(&self) {
        self.twofa.otp_never_arrived.fetch_add(1, Relaxed);
    }
    /// Records one 2FA `leg` that took `d`.
    pub fn twofa_latency_record(&self, leg: TwoFactorLeg, d: Duration) {
        // A poisoned lock only means a panic elsewhere mid-increment: the
        // histogram is still usable.
        let mut latency = self.twofa.latency.lock().unwrap_or_else(|e| e.into_inner());
        latency.record(leg, d);
    }
    /// The 2FA latencies so far (a copy).
    pub fn twofa_latency(&self) -> TwoFactorLatency {
        let latency = self.twofa.latency.lock().unwrap_or_else(|e| e.into_inner());
        latency.clone()
    }
    pub fn locks_done(&self) -> u64 {
        self.locks_done.load(Relaxed)
    }
    /// The locks these counters were made for.
    pub fn lock_count(&self) -> usize {
        self.acked_per_lock.len()
    }

    /// Reports created and not yet acknowledged, refused or abandoned.
    pub fn outstanding(&self) -> u64 {
        let settled =
            self.acked.load(Relaxed) + self.rejected.load(Relaxed) + self.abandoned.load(Relaxed);
        self.created.load(Relaxed).saturating_sub(settled)
    }

    /// Acknowledged reports of the lock at `lock_index`.
    pub fn acked_of(&self, lock_index: usize) -> u32 {
        self.acked_per_lock
            .get(lock_index)
            .map(|c| c.load(Relaxed))
            .unwrap_or(0)
    }

    /// The fewest acknowledged reports of any lock (0 for an empty fleet).
    pub fn min_acked_per_lock(&self) -> u32 {
        self.acked_per_lock
            .iter()
            .map(|c| c.load(Relaxed))
            .min()
            .unwrap_or(0)
    }

    pub fn snapshot(&self, elapsed: Duration) -> StatsSnapshot {
        StatsSnapshot {
            elapsed,
            created: self.created.load(Relaxed),
            sent: self.sent.load(Relaxed),
            resent: self.resent.load(Relaxed),
            retransmitted: self.retransmitted.load(Relaxed),
            acked: self.acked.load(Relaxed),
            answered: self.answered.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            gave_up: self.gave_up.load(Relaxed),
            abandoned: self.abandoned.load(Relaxed),
            events_lost: self.events_lost.load(Relaxed),
            dup_injected: self.dup_injected.load(Relaxed),
            dropped: self.dropped_out.load(Relaxed) + self.dropped_in.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed).max(0) as u64,
            outstanding: self.outstanding(),
            mqtt_connected: self.mqtt_connected.load(Relaxed).max(0) as u64,
            hard_resets: self.hard_resets.load(Relaxed),
            bridge_commands_received: self.bridge_commands_received.load(Relaxed),
            bridge_commands_refused: self.bridge_commands_refused.load(Relaxed),
            bridge_commands_applied: self.bridge_commands_applied.load(Relaxed),
            errors: self
                .errors
                .iter()
                .map(|e| (e.key().clone(), *e.value()))
                .collect(),
            twofa: TwoFactorCounts {
                results: TWO_FACTOR_RESULTS
                    .iter()
                    .zip(&self.twofa.results)
                    .map(|(r, n)| (r.as_str(), n.load(Relaxed)))
                    .filter(|(_, n)| *n > 0)
                    .collect(),
                failed: self.twofa.failed.load(Relaxed),
                visits: self.twofa.visits.load(Relaxed),
                opened: self.twofa.opened.load(Relaxed),
                otp_never_arrived: self.twofa.otp_never_arrived.load(Relaxed),
            },
        }
    }
}

/// 2FA at one moment: what the locks' `/2fa` and `/otp` requests got, and
/// what the run's people ([`crate::twofa`]) went through.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TwoFactorCounts {
    /// Answers by [`TwoFactorResult::as_str`] (only results seen).
    pub results: BTreeMap<&'static str, u64>,
    /// Requests without an answer to use: refused (4.xx, 5.xx, RST) or
    /// failed (no answer, not verifying); by reason in the errors as `2fa:...`.
    pub failed: u64,
    /// Visits people began.
    pub visits: u64,
    /// Visits that ended with the lock open.
    pub opened: u64,
    /// Visits whose OTP never reached the inbox in time.
    pub otp_never_arrived: u64,
}

impl TwoFactorCounts {
    /// Answers with `result`.
    pub fn result(&self, result: TwoFactorResult) -> u64 {
        self.results.get(result.as_str()).copied().unwrap_or(0)
    }

    /// True when no 2FA happened.
    pub fn is_empty(&self) -> bool {
        self.results.is_empty() && self.failed == 0 && self.visits == 0
    }
}

impl fmt::Display for TwoFactorCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "2fa visits {} opened {} otp-never-arrived {} failed {}",
            self.visits, self.opened, self.otp_never_arrived, self.failed
        )?;
        for (result, n) in &self.results {
            write!(f, " {result}={n}")?;
        }
        Ok(())
    }
}

/// The counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub elapsed: Duration,
    /// Reports the locks generated.
    pub created: u64,
    /// First transmissions of reports.
    pub sent: u64,
    /// Later attempts of a report after an earlier one gave up (same seq, new message).
    pub resent: u64,
    /// Retransmissions of the same message (CoAP) or resends after an ack timeout (MQTT).
    pub retransmitted: u64,
    pub acked: u64,
    /// CoAP exchanges of reports the server answered, whatever the answer
    /// (see [`Stats::answered`]).
    pub answered: u64,
    /// Reports the server refused (see `errors`), not retried.
    pub rejected: u64,
    /// Exchanges that exhausted their retransmissions.
    pub gave_up: u64,
    /// Reports discarded because a lock's outbox was full.
    pub abandoned: u64,
    /// Activity events overwritten in a full log buffer before upload.
    pub events_lost: u64,
    /// Extra copies sent by `--dup`.
    pub dup_injected: u64,
    /// Messages dropped by `--loss` (outgoing and incoming).
    pub dropped: u64,
    /// Exchanges awaiting an answer now.
    pub in_flight: u64,
    /// Created and not yet acknowledged, refused or abandoned.
    pub outstanding: u64,
    pub mqtt_connected: u64,
    /// Locks hard reset.
    pub hard_resets: u64,
    /// Payloads on the bridges' command topics.
    pub bridge_commands_received: u64,
    /// Of those, dropped unanswered (not verified, replayed, malformed).
    pub bridge_commands_refused: u64,
    /// Commands carried out at a linked lock (repeats not counted).
    pub bridge_commands_applied: u64,
    /// Errors by code (`4.00`, `5.03`, `rst`, `mqtt:<reason>`, `io`,
    /// `2fa:<reason>`, ...).
    pub errors: BTreeMap<String, u64>,
    pub twofa: TwoFactorCounts,
}

impl fmt::Display for StatsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{:>6.1}s] sent {} acked {} retx {} resent {} dup {} dropped {} in-flight {} outstanding {} mqtt-up {}",
            self.elapsed.as_secs_f64(),
            self.sent,
            self.acked,
            self.retransmitted,
            self.resent,
            self.dup_injected,
            self.dropped,
            self.in_flight,
            self.outstanding,
            self.mqtt_connected,
        )?;
        if self.gave_up > 0 {
            write!(f, " gave-up {}", self.gave_up)?;
        }
        if self.abandoned > 0 {
            write!(f, " abandoned {}", self.abandoned)?;
        }
        if self.events_lost > 0 {
            write!(f, " events-lost {}", self.events_lost)?;
        }
        if self.hard_resets > 0 {
            write!(f, " hard-resets {}", self.hard_resets)?;
        }
        if self.bridge_commands_received > 0 {
            write!(
                f,
                " bridge-commands {} (applied {} refused {})",
                self.bridge_commands_received,
                self.bridge_commands_applied,
                self.bridge_commands_refused
            )?;
        }
        if !self.twofa.is_empty() {
            write!(f, " {}", self.twofa)?;
        }
        if self.errors.is_empty() {
            write!(f, " errors 0")
        } else {
            write!(f, " errors")?;
            for (code, n) in &self.errors {
                write!(f, " {code}={n}")?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outstanding_is_created_minus_settled() {
        let s = Stats::new(2);
        s.created(5);
        s.acked(0);
        s.acked(1);
        s.rejected("4.00");
        s.abandoned(1);
        for _ in 0..3 {
            s.answered();
        }
        assert_eq!(s.outstanding(), 1, "answers settle nothing by themselves");
        assert_eq!(s.acked_of(1), 1);
        assert_eq!(s.min_acked_per_lock(), 1);
        let snap = s.snapshot(Duration::from_secs(3));
        assert_eq!(snap.errors.get("4.00"), Some(&1));
        assert_eq!((snap.acked, snap.answered, snap.rejected), (2, 3, 1));
        let line = snap.to_string();
        assert!(
            line.contains("acked 2") && line.contains("4.00=1"),
            "{line}"
        );
        assert!(!line.contains("2fa"), "{line}");
    }

    #[test]
    fn two_factor_answers_count_by_result_and_failures_by_reason() {
        let s = Stats::new(1);
        s.twofa_visit();
        s.twofa_answer(TwoFactorResult::OtpSent);
        s.twofa_answer(TwoFactorResult::WrongOtp);
        s.twofa_answer(TwoFactorResult::Allowed);
        s.twofa_opened();
        s.twofa_failed("gave_up");
        s.twofa_latency_record(TwoFactorLeg::OtpDelivery, Duration::from_millis(5));
        let snap = s.snapshot(Duration::from_secs(1));
        let t = &snap.twofa;
        assert_eq!(t.result(TwoFactorResult::Allowed), 1);
        assert_eq!(t.result(TwoFactorResult::Denied), 0);
        assert_eq!((t.visits, t.opened, t.failed), (1, 1, 1));
        assert_eq!(snap.errors.get("2fa:gave_up"), Some(&1));
        assert_eq!(s.outstanding(), 0, "2FA requests are not reports");
        let line = snap.to_string();
        assert!(
            line.contains("2fa visits 1 opened 1") && line.contains("wrong_otp=1"),
            "{line}"
        );
        assert_eq!(s.twofa_latency().count(TwoFactorLeg::OtpDelivery), 1);
    }
}
