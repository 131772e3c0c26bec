//! The socket task's side of 2FA entries: the exchange of a typed passcode
//! or OTP (`POST /2fa`, `POST /otp`), protected and retransmitted like a
//! report's, and its end handed to the caller waiting in
//! [`crate::control::LockHandle::enter_2fa_passcode`] or
//! [`crate::control::LockHandle::enter_otp`]. Unlike a report, an entry is
//! never kept for later: a 5.03 or an exchange that gives up ends it (the
//! person at the keypad types again). A child module of `coap_socket` so it
//! reaches the task's fields.

use super::*;
use crate::control::ControlError;
use crate::latency::TwoFactorLeg;
use crate::lock::TwoFactorOutgoing;
use schemas::twofa::TwoFactorAnswer;

/// Most characters of a refusal's diagnostic payload kept for the caller:
/// gateway diagnostics are one short sentence.
pub const MAX_DIAGNOSTIC_CHARS: usize = 256;

impl SocketTask {
    /// Starts the exchange of the 2FA entry `out` of lock `i`.
    pub(super) fn start_2fa(&mut self, i: usize, out: TwoFactorOutgoing, now: Instant) {
        let tag = Tag {
            lock: i,
            seq: out.seq,
            sent: Sent::TwoFactor(out.step),
            started: now,
        };
        match self.start_exchange(i, tag, out.step.path(), &out.payload, now) {
            Ok(_) => {
                self.stats.in_flight_add(1);
                self.stats.twofa_in_flight_add(1);
            }
            Err(e) => {
                self.requests[i] = None;
                let reason = match e {
                    NotStarted::Start(StartError::NoMessageId) => "no_message_id",
                    NotStarted::Start(StartError::TooLarge(_)) | NotStarted::Protect(_) => {
                        "unsendable"
                    }
                    NotStarted::Exhausted => "oscore_exhausted",
                };
                tracing::debug!(
                    lock = self.locks[i].id(),
                    seq = out.seq,
                    reason,
                    "cannot send 2FA entry"
                );
                self.fail_2fa(i, out.seq, out.step, reason);
                // The lock is idle again: its reports may go.
                self.pump(i, now);
            }
        }
    }

    /// The answer to a 2FA exchange (`None`: one that did not verify).
    pub(super) fn on_2fa_answer(
        &mut self,
        tag: Tag,
        step: TwoFactorStep,
        answered: Option<Answered>,
        now: Instant,
    ) {
        let Some(answered) = answered else {
            self.stats.error("oscore_response");
            return self.fail_2fa(tag.lock, tag.seq, step, "unverified_answer");
        };
        if !answered.code.is_success() {
            return self.refuse_2fa(tag, step, &answered.code.to_string(), answered.payload);
        }
        let answer = match TwoFactorAnswer::decode(&answered.payload) {
            Ok(a) if a.seq == tag.seq => a,
            Ok(_) => return self.fail_2fa(tag.lock, tag.seq, step, "seq_mismatch"),
            Err(_) => return self.fail_2fa(tag.lock, tag.seq, step, "undecodable_answer"),
        };
        let leg = match step {
            TwoFactorStep::Passcode => TwoFactorLeg::PasscodeAnswer,
            TwoFactorStep::Otp { .. } => TwoFactorLeg::OtpAnswer,
        };
        self.stats
            .twofa_latency_record(leg, now.saturating_duration_since(tag.started));
        self.stats.twofa_answer(answer.result);
        let lock = &mut self.locks[tag.lock];
        lock.on_2fa_answer(tag.seq, &answer, now, &self.clock);
        self.waiters.on_2fa(tag.lock, tag.seq, Ok(answer));
    }

    /// The gateway refused the 2FA entry of `tag` with `code` (or RST).
    pub(super) fn refuse_2fa(
        &mut self,
        tag: Tag,
        step: TwoFactorStep,
        code: &str,
        payload: Vec<u8>,
    ) {
        let diagnostic: String = String::from_utf8_lossy(&payload)
            .chars()
            .take(MAX_DIAGNOSTIC_CHARS)
            .collect();
        tracing::debug!(
            lock = self.locks[tag.lock].id(),
            seq = tag.seq,
            path = step.path(),
            code,
            diagnostic = %diagnostic,
            "2FA entry refused"
        );
        self.locks[tag.lock].on_2fa_failed(tag.seq);
        self.stats.twofa_failed(code);
        let error = ControlError::TwoFactorRefused {
            path: step.path(),
            seq: tag.seq,
            code: code.to_string(),
            diagnostic,
        };
        self.waiters.on_2fa(tag.lock, tag.seq, Err(error));
    }

    /// The 2FA entry `seq` of lock `i` ended without an answer to use.
    pub(super) fn fail_2fa(
        &mut self,
        i: usize,
        seq: u32,
        step: TwoFactorStep,
        reason: &'static str,
    ) {
        self.locks[i].on_2fa_failed(seq);
        self.stats.twofa_failed(reason);
        let error = ControlError::TwoFactorFailed {
            path: step.path(),
            seq,
            reason,
        };
        self.waiters.on_2fa(i, seq, Err(error));
    }
}
