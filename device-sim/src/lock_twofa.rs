//! The lock's side of 2FA unlock, sans I/O ([`schemas::twofa`]): someone
//! types a 2FA passcode, then the OTP from their phone, at the keypad of an
//! INB1-2FA lock on CoAP; each entry becomes one request (`POST /2fa` or
//! `POST /otp`) under the lock's next uplink seq, which the transport sends
//! before any queued report, and the gateway's [`TwoFactorAnswer`] decides
//! whether the lock opens. A child module of `lock` so it reaches the
//! lock's fields.
//!
//! One entry at a time, as a keypad has one person at it: an entry typed
//! while another waits for its answer is refused ([`TwoFactorRefusal::Busy`]).
//! An entry is not a report: it is not kept in the outbox, not retried at the
//! next wake and not in the ledger; an entry whose exchange failed is gone
//! and the person types again. Its digits live only in the request payload,
//! wiped when the entry ends, and never in `Debug` output or the log.

use super::*;
use schemas::twofa::{OtpEntry, PasscodeEntry, TwoFactorAnswer, TwoFactorResult};
use schemas::{ActivityKind, LockState};
use std::fmt;
use zeroize::{Zeroize, Zeroizing};

/// Uri-Path of a typed 2FA passcode.
pub const PATH_PASSCODE: &str = "2fa";
/// Uri-Path of a typed OTP.
pub const PATH_OTP: &str = "otp";

/// Which of the two 2FA entries a request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TwoFactorStep {
    /// The person's 2FA passcode ([`PasscodeEntry`]).
    Passcode,
    /// The OTP of challenge `challenge` ([`OtpEntry`]).
    Otp { challenge: u64 },
}

impl TwoFactorStep {
    /// The Uri-Path its request is POSTed to.
    pub fn path(self) -> &'static str {
        match self {
            TwoFactorStep::Passcode => PATH_PASSCODE,
            TwoFactorStep::Otp { .. } => PATH_OTP,
        }
    }
}

/// Why the keypad did not take a 2FA entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TwoFactorRefusal {
    /// Not an INB1-2FA lock on CoAP: it has no 2FA keypad mode (or, on
    /// MQTT, no `/2fa` resource to reach).
    NotTwoFactor {
        model: LockModel,
        transport: Transport,
    },
    /// Another entry is waiting for its answer.
    Busy,
}

/// A 2FA entry waiting to go or in flight.
pub(super) struct PendingEntry {
    step: TwoFactorStep,
    seq: u32,
    /// CBOR of the entry: holds the typed digits, so wiped when dropped.
    payload: Zeroizing<Vec<u8>>,
    in_flight: bool,
}

impl fmt::Debug for PendingEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingEntry")
            .field("step", &self.step)
            .field("seq", &self.seq)
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

/// A 2FA request handed to the transport by [`Lock::poll_send_2fa`].
pub struct TwoFactorOutgoing {
    pub step: TwoFactorStep,
    pub seq: u32,
    /// CBOR [`PasscodeEntry`] or [`OtpEntry`]: secret, wiped when dropped.
    pub payload: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for TwoFactorOutgoing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwoFactorOutgoing")
            .field("step", &self.step)
            .field("seq", &self.seq)
            .field("payload", &"<redacted>")
            .finish()
    }
}

/// The actor of an [`ActivityKind::Unlocked2fa`] event: the challenge, as
/// the lock knows no user (the gateway's SMS reference is the same string).
pub fn unlock_actor(challenge: u64) -> String {
    format!("2fa-{challenge}")
}

impl Lock {
    /// True for the locks that take 2FA entries: INB1-2FA on CoAP.
    pub fn takes_2fa(&self) -> bool {
        self.model == LockModel::Inb1TwoFactor && self.transport == Transport::Coap
    }

    /// Someone types `digits` at the keypad as `step`: the entry gets the
    /// lock's next uplink seq (returned) and waits for
    /// [`Lock::poll_send_2fa`]. The digits go as typed (a keypad sends what
    /// was pressed; judging them is the gateway's job).
    pub fn type_2fa(&mut self, step: TwoFactorStep, digits: &str) -> Result<u32, TwoFactorRefusal> {
        if !self.takes_2fa() {
            return Err(TwoFactorRefusal::NotTwoFactor {
                model: self.model,
                transport: self.transport,
            });
        }
        if self.twofa.is_some() {
            return Err(TwoFactorRefusal::Busy);
        }
        let seq = self.next_seq;
        let payload = match step {
            TwoFactorStep::Passcode => {
                let mut entry = PasscodeEntry {
                    lock_id: self.id.clone(),
                    seq,
                    passcode: digits.to_string(),
                };
                let bytes = encode(&entry);
                entry.passcode.zeroize();
                bytes
            }
            TwoFactorStep::Otp { challenge } => {
                let mut entry = OtpEntry {
                    lock_id: self.id.clone(),
                    seq,
                    challenge,
                    otp: digits.to_string(),
                };
                let bytes = encode(&entry);
                entry.otp.zeroize();
                bytes
            }
        };
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        self.drain_battery(BATTERY_PER_REPORT);
        self.twofa = Some(PendingEntry {
            step,
            seq,
            payload: Zeroizing::new(payload),
            in_flight: false,
        });
        Ok(seq)
    }

    /// The 2FA request to send now, if one waits and no report is in
    /// flight (NSTART 1). It goes before the outbox: a person is waiting.
    pub fn poll_send_2fa(&mut self) -> Option<TwoFactorOutgoing> {
        if self.in_flight.is_some() {
            return None;
        }
        let entry = self.twofa.as_mut().filter(|e| !e.in_flight)?;
        entry.in_flight = true;
        Some(TwoFactorOutgoing {
            step: entry.step,
            seq: entry.seq,
            payload: entry.payload.clone(),
        })
    }

    /// The seq of the 2FA entry waiting or in flight.
    pub fn pending_2fa(&self) -> Option<u32> {
        self.twofa.as_ref().map(|e| e.seq)
    }

    /// True while the 2FA entry's exchange is open.
    pub fn twofa_in_flight(&self) -> bool {
        self.twofa.as_ref().is_some_and(|e| e.in_flight)
    }

    /// The gateway answered the 2FA entry `seq` with `answer` (verified and
    /// decoded by the transport). [`TwoFactorResult::Allowed`] opens the
    /// lock as a PIN does (locked becomes unlocked; an unlocked lock stays
    /// so) and logs [`ActivityKind::Unlocked2fa`] with [`unlock_actor`] of
    /// the challenge as actor. True if the lock opened; false for any other
    /// result or an answer to no pending entry.
    pub fn on_2fa_answer(
        &mut self,
        seq: u32,
        answer: &TwoFactorAnswer,
        now: Instant,
        clock: &SimClock,
    ) -> bool {
        let Some(entry) = self.take_2fa(seq) else {
            return false;
        };
        if answer.result != TwoFactorResult::Allowed {
            return false;
        }
        if !self.finished() {
            // The unlock follows whatever people did up to now.
            self.simulate_until(clock.sim_elapsed(now), clock);
        }
        if self.physical.lock == LockState::Locked {
            let _ = self.physical.apply(ActivityKind::Unlocked2fa);
        }
        let actor = match entry.step {
            TwoFactorStep::Otp { challenge } => Some(unlock_actor(challenge)),
            // The gateway allows on an OTP; a lock told so for a passcode
            // opens all the same, with nobody to name.
            TwoFactorStep::Passcode => answer.challenge.map(unlock_actor),
        };
        self.record_event(ActivityKind::Unlocked2fa, actor, clock.device_time(now));
        true
    }

    /// The 2FA entry `seq` ended without an answer the lock can use
    /// (refused, no answer, not verifying): it is dropped.
    pub fn on_2fa_failed(&mut self, seq: u32) {
        self.take_2fa(seq);
    }

    fn take_2fa(&mut self, seq: u32) -> Option<PendingEntry> {
        if self.twofa.as_ref().is_some_and(|e| e.seq == seq) {
            self.twofa.take()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{clock, spec};
    use super::*;

    fn two_factor() -> (Lock, SimClock) {
        let c = clock();
        let lock = Lock::new(
            &spec("L000001", LockModel::Inb1TwoFactor, Transport::Coap),
            0,
            7,
            &c,
            None,
        )
        .with_visits_per_hour(0.0);
        (lock, c)
    }

    fn answer(seq: u32, result: TwoFactorResult) -> TwoFactorAnswer {
        TwoFactorAnswer::new(seq, result, 1_700_000_000)
    }

    #[test]
    fn only_an_inb1_2fa_lock_on_coap_takes_entries() {
        let c = clock();
        for (model, transport) in [
            (LockModel::Inb1, Transport::Coap),
            (LockModel::Inb1TwoFactor, Transport::Mqtt),
            (LockModel::Sp2e, Transport::Bridge),
        ] {
            let mut lock = Lock::new(&spec("L1", model, transport), 0, 1, &c, None);
            assert_eq!(
                lock.type_2fa(TwoFactorStep::Passcode, "48291637"),
                Err(TwoFactorRefusal::NotTwoFactor { model, transport })
            );
            assert_eq!(lock.counters().next_seq, 1, "no seq taken");
        }
    }

    #[test]
    fn a_typed_passcode_takes_the_next_uplink_seq_and_goes_before_the_outbox() {
        let (mut lock, c) = two_factor();
        let t = c.start();
        lock.heartbeat_now(t, &c);
        assert_eq!(
            lock.counters().next_seq,
            2,
            "a heartbeat queued (no activity)"
        );
        assert_eq!(lock.type_2fa(TwoFactorStep::Passcode, "48291637"), Ok(2));
        assert_eq!(lock.counters().next_seq, 3);
        assert_eq!(
            lock.type_2fa(TwoFactorStep::Passcode, "1"),
            Err(TwoFactorRefusal::Busy)
        );

        let out = lock.poll_send_2fa().unwrap();
        assert_eq!((out.step, out.seq), (TwoFactorStep::Passcode, 2));
        let entry = PasscodeEntry::decode(&out.payload).unwrap();
        assert_eq!((entry.lock_id.as_str(), entry.seq), ("L000001", 2));
        assert_eq!(entry.passcode, "48291637");
        // NSTART 1: nothing else while it is in flight.
        assert!(lock.poll_send_2fa().is_none());
        assert!(lock.poll_send().is_none());
        assert!(!format!("{lock:?} {out:?}").contains("48291637"));

        assert!(!lock.on_2fa_answer(2, &answer(2, TwoFactorResult::OtpSent), t, &c));
        assert_eq!(lock.pending_2fa(), None);
        assert_eq!(
            lock.poll_send().map(|o| o.seq),
            Some(1),
            "the outbox resumes"
        );
    }

    #[test]
    fn an_entry_waits_while_a_report_is_in_flight() {
        let (mut lock, c) = two_factor();
        lock.heartbeat_now(c.start(), &c);
        let report = lock.poll_send().unwrap();
        lock.type_2fa(TwoFactorStep::Otp { challenge: 9 }, "123456")
            .unwrap();
        assert!(lock.poll_send_2fa().is_none());
        lock.on_gave_up(report.seq);
        let out = lock.poll_send_2fa().unwrap();
        let entry = OtpEntry::decode(&out.payload).unwrap();
        assert_eq!((entry.challenge, entry.otp.as_str()), (9, "123456"));
        lock.on_2fa_failed(out.seq);
        assert_eq!(lock.pending_2fa(), None);
        assert!(lock.type_2fa(TwoFactorStep::Passcode, "1").is_ok());
    }

    #[test]
    fn allowed_opens_the_lock_and_logs_an_unlocked_2fa_with_the_challenge() {
        let (mut lock, c) = two_factor();
        let t = c.start();
        assert_eq!(lock.physical().lock, LockState::Locked);
        let seq = lock
            .type_2fa(TwoFactorStep::Otp { challenge: 42 }, "123456")
            .unwrap();
        lock.poll_send_2fa().unwrap();
        // An answer for another seq changes nothing.
        assert!(!lock.on_2fa_answer(seq + 1, &answer(seq + 1, TwoFactorResult::Allowed), t, &c));
        assert!(lock.on_2fa_answer(seq, &answer(seq, TwoFactorResult::Allowed), t, &c));
        assert_eq!(lock.physical().lock, LockState::Unlocked);
        let events: Vec<_> = lock
            .pending
            .iter()
            .map(|e| (e.kind, e.actor.clone()))
            .collect();
        assert_eq!(
            events,
            vec![(ActivityKind::Unlocked2fa, Some("2fa-42".to_string()))]
        );
    }

    #[test]
    fn wrong_otp_and_refusals_leave_the_lock_locked_and_log_nothing() {
        let (mut lock, c) = two_factor();
        let t = c.start();
        for result in [
            TwoFactorResult::WrongOtp,
            TwoFactorResult::ChallengeEnded,
            TwoFactorResult::Denied,
        ] {
            let seq = lock
                .type_2fa(TwoFactorStep::Otp { challenge: 1 }, "000000")
                .unwrap();
            lock.poll_send_2fa().unwrap();
            assert!(!lock.on_2fa_answer(seq, &answer(seq, result), t, &c));
        }
        assert_eq!(lock.physical().lock, LockState::Locked);
        assert!(lock.pending.is_empty());
    }
}
