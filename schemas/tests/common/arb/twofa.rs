//! 2FA: the lock's entries and their answers (CBOR), the 2FA events and the
//! notifier's message (JSON), built the way the gateway builds them.

use super::{id, text};
use proptest::prelude::*;
use proptest::sample::select;
use schemas::twofa::{
    OtpEntry, OtpNotification, PasscodeEntry, TwoFactorAnswer, TwoFactorEvent, TwoFactorOutcome,
    TwoFactorResult,
};

all_variants!(ALL_TWOFA_RESULTS: TwoFactorResult = [
    TwoFactorResult::OtpSent, TwoFactorResult::Denied, TwoFactorResult::RateLimited,
    TwoFactorResult::LockedOut, TwoFactorResult::NotifierFailed, TwoFactorResult::Allowed,
    TwoFactorResult::WrongOtp, TwoFactorResult::ChallengeEnded,
]);
all_variants!(ALL_TWOFA_OUTCOMES: TwoFactorOutcome = [
    TwoFactorOutcome::ChallengeSent, TwoFactorOutcome::Denied, TwoFactorOutcome::RateLimited,
    TwoFactorOutcome::LockedOut, TwoFactorOutcome::NotifierFailed, TwoFactorOutcome::Allowed,
    TwoFactorOutcome::WrongOtp, TwoFactorOutcome::ChallengeEnded,
    TwoFactorOutcome::LockoutStarted, TwoFactorOutcome::LockoutCleared,
]);

/// The `reason` each 2FA outcome carries, as `TwoFactorOutcome`'s docs name
/// them; `None` where they name none (`denied` says why in words the docs
/// do not fix; see [`twofa_event`]).
pub fn twofa_reasons(outcome: TwoFactorOutcome) -> Option<&'static [&'static str]> {
    match outcome {
        TwoFactorOutcome::RateLimited => Some(&["lock_rate", "user_rate"]),
        TwoFactorOutcome::LockedOut => Some(&["lock", "user"]),
        TwoFactorOutcome::ChallengeEnded => Some(&[
            "too_many_tries",
            "expired",
            "reused",
            "revoked",
            "superseded",
            "notifier_failed",
            "unknown",
        ]),
        TwoFactorOutcome::LockoutStarted => Some(&["wrong_passcodes", "failed_challenges"]),
        TwoFactorOutcome::ChallengeSent
        | TwoFactorOutcome::Denied
        | TwoFactorOutcome::NotifierFailed
        | TwoFactorOutcome::Allowed
        | TwoFactorOutcome::WrongOtp
        | TwoFactorOutcome::LockoutCleared => None,
    }
}

/// What a person may type: 1 to 16 ASCII digits.
pub fn typed_digits() -> impl Strategy<Value = String> {
    "[0-9]{1,16}"
}

pub fn passcode_entry() -> impl Strategy<Value = PasscodeEntry> {
    (id(), any::<u32>(), typed_digits()).prop_map(|(lock_id, seq, passcode)| PasscodeEntry {
        lock_id,
        seq,
        passcode,
    })
}

pub fn otp_entry() -> impl Strategy<Value = OtpEntry> {
    (id(), any::<u32>(), any::<u64>(), typed_digits()).prop_map(|(lock_id, seq, challenge, otp)| {
        OtpEntry {
            lock_id,
            seq,
            challenge,
            otp,
        }
    })
}

/// The answer with the keys its result carries (`TwoFactorAnswer`'s field
/// docs): the challenge and its expiry for `otp_sent`, seconds to wait for
/// `rate_limited`, `locked_out` and `notifier_failed`, tries left for
/// `wrong_otp`, nothing more for the others.
pub fn twofa_answer_of(
    result: TwoFactorResult,
    seq: u32,
    server_time: u64,
    challenge: u64,
    expires_at: u64,
    wait_s: u32,
    tries_left: u8,
) -> TwoFactorAnswer {
    let mut a = TwoFactorAnswer::new(seq, result, server_time);
    match result {
        TwoFactorResult::OtpSent => {
            a.challenge = Some(challenge);
            a.expires_at = Some(expires_at);
        }
        TwoFactorResult::RateLimited
        | TwoFactorResult::LockedOut
        | TwoFactorResult::NotifierFailed => a.retry_after_s = Some(wait_s),
        TwoFactorResult::WrongOtp => a.tries_left = Some(tries_left),
        TwoFactorResult::Denied | TwoFactorResult::Allowed | TwoFactorResult::ChallengeEnded => {}
    }
    a
}

pub fn twofa_answer() -> impl Strategy<Value = TwoFactorAnswer> {
    (
        select(ALL_TWOFA_RESULTS),
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        any::<u8>(),
    )
        .prop_map(|(r, seq, now, challenge, expires, wait, tries)| {
            twofa_answer_of(r, seq, now, challenge, expires, wait, tries)
        })
}

/// A machine-readable reason the docs do not enumerate (`denied`).
fn free_reason() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_]{0,31}"
}

pub fn twofa_event() -> impl Strategy<Value = TwoFactorEvent> {
    let ids = (
        proptest::option::of(id()),
        proptest::option::of(id()),
        proptest::option::of(id()),
        proptest::option::of(1..=u64::MAX),
        proptest::option::of(any::<u64>()),
    );
    (
        select(ALL_TWOFA_OUTCOMES),
        any::<prop::sample::Index>(),
        free_reason(),
        ids,
        (id(), any::<u64>(), any::<u8>(), any::<u64>(), any::<u64>()),
    )
        .prop_map(
            |(
                outcome,
                pick,
                free,
                (lock_id, user_id, department, grant_id, challenge_id),
                (org, sequence, tries, until_ms, at_ms),
            )| {
                let reason = match (outcome, twofa_reasons(outcome)) {
                    (_, Some(names)) => Some(pick.get(names).to_string()),
                    (TwoFactorOutcome::Denied, None) => Some(free),
                    _ => None,
                };
                let lockout = matches!(
                    outcome,
                    TwoFactorOutcome::LockedOut | TwoFactorOutcome::LockoutStarted
                );
                TwoFactorEvent {
                    event_id: format!("2fa:{sequence}"),
                    org,
                    outcome,
                    reason,
                    lock_id,
                    user_id,
                    department,
                    grant_id,
                    challenge_id,
                    tries_left: (outcome == TwoFactorOutcome::WrongOtp).then_some(tries),
                    lockout_until_ms: lockout.then_some(until_ms),
                    at_ms,
                }
            },
        )
}

/// A number `valid_mobile` accepts: `+`, 8 to 15 digits, the first not 0.
pub fn mobile() -> impl Strategy<Value = String> {
    "\\+[1-9][0-9]{7,14}"
}

pub fn otp_notification() -> impl Strategy<Value = OtpNotification> {
    (
        any::<u64>(),
        (id(), id(), id()),
        mobile(),
        "[0-9]{6}",
        text(),
        any::<u64>(),
    )
        .prop_map(
            |(challenge, (org, user_id, lock_id), mobile, otp, words, expires_at_ms)| {
                OtpNotification {
                    notification_id: challenge.to_string(),
                    org,
                    user_id,
                    lock_id,
                    mobile,
                    message: format!("{words}{otp}"),
                    otp,
                    expires_at_ms,
                }
            },
        )
}
