//! 2FA unlock: what an NB-IoT 2FA lock sends when a person types their 2FA
//! passcode and then the OTP sent to their phone, what the server answers,
//! the dashboard's 2FA events, and the notifier message that carries the OTP.
//!
//! The flow, over protected CoAP (OSCORE):
//!
//! 1. `POST /2fa` [`PasscodeEntry`] -> 2.04 [`TwoFactorAnswer`] with
//!    [`TwoFactorResult::OtpSent`], the challenge id and its expiry (or a
//!    refusal: `denied`, `rate_limited`, `locked_out`, `notifier_failed`).
//! 2. `POST /otp` [`OtpEntry`] -> 2.04 [`TwoFactorAnswer`] with `allowed`,
//!    `wrong_otp` (tries left) or `challenge_ended`.
//!
//! Secrets: a passcode or OTP travels only inside the protected request
//! (and the OTP in the notifier's message to the person's phone). `Debug`
//! of these types never shows them; answers and events never carry them.

use minicbor::{Decode, Encode};
use serde::{Deserialize, Serialize};
use std::fmt;

use crate::device::{valid_id, DecodeError, MAX_UPLINK_BYTES};

/// Digits of a passcode the system generates.
pub const PASSCODE_DIGITS: usize = 8;
/// Digits of an OTP.
pub const OTP_DIGITS: usize = 6;
/// Most digits a lock may send as a typed passcode or OTP (longer is refused
/// as malformed; a wrong length of at most this many is just wrong).
pub const MAX_TYPED_DIGITS: usize = 16;

/// `POST /2fa`: the digits a person typed as their 2FA passcode.
#[derive(Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct PasscodeEntry {
    #[n(0)]
    pub lock_id: String,
    /// Per-device uplink sequence number (same counter as heartbeats).
    #[n(1)]
    pub seq: u32,
    /// Secret: never logged or stored as typed.
    #[n(2)]
    pub passcode: String,
}

/// `POST /otp`: the digits a person typed as the OTP of a challenge.
#[derive(Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct OtpEntry {
    #[n(0)]
    pub lock_id: String,
    #[n(1)]
    pub seq: u32,
    /// The challenge id from the `/2fa` answer.
    #[n(2)]
    pub challenge: u64,
    /// Secret: never logged or stored as typed.
    #[n(3)]
    pub otp: String,
}

impl fmt::Debug for PasscodeEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasscodeEntry")
            .field("lock_id", &self.lock_id)
            .field("seq", &self.seq)
            .field("passcode", &"<redacted>")
            .finish()
    }
}

impl fmt::Debug for OtpEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtpEntry")
            .field("lock_id", &self.lock_id)
            .field("seq", &self.seq)
            .field("challenge", &self.challenge)
            .field("otp", &"<redacted>")
            .finish()
    }
}

fn check_digits(s: &str) -> Result<(), DecodeError> {
    if s.is_empty() || s.len() > MAX_TYPED_DIGITS || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DecodeError::BadDigits {
            max: MAX_TYPED_DIGITS,
        });
    }
    Ok(())
}

fn decode_checked<'b, T: Decode<'b, ()>>(
    bytes: &'b [u8],
    what: &'static str,
) -> Result<T, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if bytes.len() > MAX_UPLINK_BYTES {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: MAX_UPLINK_BYTES,
        });
    }
    let mut d = minicbor::Decoder::new(bytes);
    // The decoder's message names a position and type only, never a value.
    let v = d.decode::<T>().map_err(|e| DecodeError::Cbor {
        what,
        detail: e.to_string(),
    })?;
    let extra = bytes.len() - d.position();
    if extra != 0 {
        return Err(DecodeError::TrailingBytes { extra });
    }
    Ok(v)
}

impl PasscodeEntry {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let e: PasscodeEntry = decode_checked(bytes, "passcode-entry")?;
        if !valid_id(&e.lock_id) {
            return Err(DecodeError::BadLockId);
        }
        check_digits(&e.passcode)?;
        Ok(e)
    }
}

impl OtpEntry {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let e: OtpEntry = decode_checked(bytes, "otp-entry")?;
        if !valid_id(&e.lock_id) {
            return Err(DecodeError::BadLockId);
        }
        check_digits(&e.otp)?;
        Ok(e)
    }
}

/// What the lock shows the person.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[cbor(index_only)]
#[serde(rename_all = "snake_case")]
pub enum TwoFactorResult {
    /// The OTP is on its way to the person's phone: wait for it and type it.
    #[n(0)]
    OtpSent,
    /// Not accepted. The same answer whatever the reason (wrong passcode, no
    /// access at this lock, outside the access window, number not verified,
    /// user deactivated), so the keypad reveals nothing; the dashboard's
    /// event says which.
    #[n(1)]
    Denied,
    /// Too many attempts just now: try again after `retry_after_s`.
    #[n(2)]
    RateLimited,
    /// 2FA at this lock, or for this user, is locked out after repeated
    /// failures until `retry_after_s` passes or an admin clears it.
    #[n(3)]
    LockedOut,
    /// The OTP could not be sent: try again shortly.
    #[n(4)]
    NotifierFailed,
    /// Open the lock.
    #[n(5)]
    Allowed,
    /// Wrong OTP: `tries_left` more tries on this challenge.
    #[n(6)]
    WrongOtp,
    /// The challenge is over (expired, used, out of tries, revoked or
    /// unknown): start again with the passcode.
    #[n(7)]
    ChallengeEnded,
}

impl TwoFactorResult {
    pub fn as_str(self) -> &'static str {
        match self {
            TwoFactorResult::OtpSent => "otp_sent",
            TwoFactorResult::Denied => "denied",
            TwoFactorResult::RateLimited => "rate_limited",
            TwoFactorResult::LockedOut => "locked_out",
            TwoFactorResult::NotifierFailed => "notifier_failed",
            TwoFactorResult::Allowed => "allowed",
            TwoFactorResult::WrongOtp => "wrong_otp",
            TwoFactorResult::ChallengeEnded => "challenge_ended",
        }
    }
}

/// The answer to `/2fa` and `/otp`. Optional keys are omitted when absent.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[cbor(map)]
pub struct TwoFactorAnswer {
    /// The `seq` of the request this answers.
    #[n(0)]
    pub seq: u32,
    #[n(1)]
    pub result: TwoFactorResult,
    /// Server clock, Unix seconds.
    #[n(2)]
    pub server_time: u64,
    /// `otp_sent`: the challenge to name in `/otp`.
    #[n(3)]
    pub challenge: Option<u64>,
    /// `otp_sent`: when the OTP stops working, Unix seconds.
    #[n(4)]
    pub expires_at: Option<u64>,
    /// `rate_limited`, `locked_out`, `notifier_failed`: seconds to wait.
    #[n(5)]
    pub retry_after_s: Option<u32>,
    /// `wrong_otp`: tries left on the challenge.
    #[n(6)]
    pub tries_left: Option<u8>,
}

impl TwoFactorAnswer {
    pub fn new(seq: u32, result: TwoFactorResult, server_time: u64) -> Self {
        TwoFactorAnswer {
            seq,
            result,
            server_time,
            challenge: None,
            expires_at: None,
            retry_after_s: None,
            tries_left: None,
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_checked(bytes, "2fa-answer")
    }
}

/// What a 2FA event reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TwoFactorOutcome {
    /// A challenge was created and its OTP goes to the notifier; if that
    /// fails, a `notifier_failed` event for the same challenge follows.
    ChallengeSent,
    /// A passcode was not accepted (`reason` says why).
    Denied,
    /// Refused by a rate limit (`reason`: `lock_rate` or `user_rate`).
    RateLimited,
    /// Refused during a lock-out (`reason`: `lock` or `user`).
    LockedOut,
    /// The notifier could not deliver the OTP; the challenge ended.
    NotifierFailed,
    /// The right OTP: the lock opens.
    Allowed,
    /// A wrong OTP with tries left.
    WrongOtp,
    /// A challenge ended without an unlock (`reason`: `too_many_tries`,
    /// `expired`, `reused`, `revoked`, `superseded`, `notifier_failed`,
    /// `unknown`).
    ChallengeEnded,
    /// A lock-out began (`lockout_until_ms`; `reason`: `wrong_passcodes`
    /// for a lock, `failed_challenges` for a user).
    LockoutStarted,
    /// A dashboard user cleared a lock-out.
    LockoutCleared,
}

impl TwoFactorOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            TwoFactorOutcome::ChallengeSent => "challenge_sent",
            TwoFactorOutcome::Denied => "denied",
            TwoFactorOutcome::RateLimited => "rate_limited",
            TwoFactorOutcome::LockedOut => "locked_out",
            TwoFactorOutcome::NotifierFailed => "notifier_failed",
            TwoFactorOutcome::Allowed => "allowed",
            TwoFactorOutcome::WrongOtp => "wrong_otp",
            TwoFactorOutcome::ChallengeEnded => "challenge_ended",
            TwoFactorOutcome::LockoutStarted => "lockout_started",
            TwoFactorOutcome::LockoutCleared => "lockout_cleared",
        }
    }
}

/// `events/v1/{org}/lock/{lock}/2fa` (lock-scoped) or
/// `events/v1/{org}/user/{user}/2fa` (a user's lock-out): one per 2FA
/// outcome, after it was committed. Never carries a passcode or an OTP.
/// The same record is kept in the server's 2FA activity log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwoFactorEvent {
    /// `2fa:{sequence}`, from the 2FA activity log: stable on redelivery.
    pub event_id: String,
    pub org: String,
    pub outcome: TwoFactorOutcome,
    /// Stable machine-readable detail (see [`TwoFactorOutcome`]).
    pub reason: Option<String>,
    pub lock_id: Option<String>,
    /// Known once a passcode matched a user.
    pub user_id: Option<String>,
    /// The grant's department (absent in a flat organisation).
    pub department: Option<String>,
    pub grant_id: Option<u64>,
    pub challenge_id: Option<u64>,
    /// `wrong_otp`: tries left.
    pub tries_left: Option<u8>,
    /// `lockout_started`, `locked_out`: until when, Unix milliseconds.
    pub lockout_until_ms: Option<u64>,
    pub at_ms: u64,
}

/// Prefix of the notifier topics.
pub const NOTIFY_PREFIX: &str = "notify/v1";

/// `notify/v1/{org}/sms`: the MQTT notifier's topic. Only the dashboard
/// backend may subscribe to it; it carries the OTP.
pub fn sms_topic(org: &str) -> String {
    format!("{NOTIFY_PREFIX}/{org}/sms")
}

/// `events/v1/{org}/lock/{lock}/2fa`.
pub fn lock_event_topic(org: &str, lock: &str) -> String {
    format!("{}/{org}/lock/{lock}/2fa", crate::topic::EVENTS_PREFIX)
}

/// `events/v1/{org}/user/{user}/2fa`.
pub fn user_event_topic(org: &str, user: &str) -> String {
    format!("{}/{org}/user/{user}/2fa", crate::topic::EVENTS_PREFIX)
}

/// The MQTT notifier's message (`notify/v1/{org}/sms`, QoS 1): the dashboard
/// backend sends `message` (or its own text with `otp`) to `mobile`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtpNotification {
    /// The challenge id: one message per challenge.
    pub notification_id: String,
    pub org: String,
    pub user_id: String,
    pub lock_id: String,
    /// E.164, e.g. `+6591234567`.
    pub mobile: String,
    /// Secret.
    pub otp: String,
    /// The configured template with the OTP filled in.
    pub message: String,
    pub expires_at_ms: u64,
}

impl fmt::Debug for OtpNotification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtpNotification")
            .field("notification_id", &self.notification_id)
            .field("org", &self.org)
            .field("user_id", &self.user_id)
            .field("lock_id", &self.lock_id)
            .field("otp", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Whether `s` is a mobile number we accept: E.164, `+` and 8 to 15 digits.
pub fn valid_mobile(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// `+65****4567`: a number as answers and logs may show it.
pub fn mask_mobile(s: &str) -> String {
    let n = s.chars().count();
    if n <= 7 {
        return "*".repeat(n);
    }
    let head: String = s.chars().take(3).collect();
    let tail: String = s.chars().skip(n - 4).collect();
    format!("{head}{}{tail}", "*".repeat(n - 7))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::encode;

    #[test]
    fn entries_round_trip_and_hide_their_digits() {
        let e = PasscodeEntry {
            lock_id: "L1".into(),
            seq: 7,
            passcode: "48291637".into(),
        };
        assert_eq!(PasscodeEntry::decode(&encode(&e)).unwrap(), e);
        assert!(!format!("{e:?}").contains("48291637"));
        let o = OtpEntry {
            lock_id: "L1".into(),
            seq: 8,
            challenge: 99,
            otp: "123456".into(),
        };
        assert_eq!(OtpEntry::decode(&encode(&o)).unwrap(), o);
        assert!(!format!("{o:?}").contains("123456"));
    }

    #[test]
    fn typed_digits_are_checked() {
        for bad in ["", "12a4", "12345678901234567"] {
            let e = PasscodeEntry {
                lock_id: "L1".into(),
                seq: 1,
                passcode: bad.into(),
            };
            let err = PasscodeEntry::decode(&encode(&e)).unwrap_err();
            assert_eq!(err.reason(), "bad_digits");
            assert!(!err.to_string().contains("12a4"));
        }
    }

    #[test]
    fn answers_omit_what_is_absent() {
        let a = TwoFactorAnswer::new(3, TwoFactorResult::Denied, 100);
        let bytes = encode(&a);
        assert_eq!(TwoFactorAnswer::decode(&bytes).unwrap(), a);
        // {0: 3, 1: 1, 2: 100}
        assert_eq!(bytes, vec![0xa3, 0x00, 0x03, 0x01, 0x01, 0x02, 0x18, 0x64]);
    }

    #[test]
    fn mobiles() {
        assert!(valid_mobile("+6591234567"));
        assert!(!valid_mobile("6591234567"));
        assert!(!valid_mobile("+65 9123"));
        assert!(!valid_mobile("+0123456789"));
        assert_eq!(mask_mobile("+6591234567"), "+65****4567");
        let n = OtpNotification {
            notification_id: "1".into(),
            org: "o".into(),
            user_id: "u".into(),
            lock_id: "L".into(),
            mobile: "+6591234567".into(),
            otp: "654321".into(),
            message: "code 654321".into(),
            expires_at_ms: 1,
        };
        let dbg = format!("{n:?}");
        assert!(!dbg.contains("654321") && !dbg.contains("91234567"));
    }

    #[test]
    fn topics() {
        assert_eq!(sms_topic("acme"), "notify/v1/acme/sms");
        assert_eq!(lock_event_topic("acme", "L1"), "events/v1/acme/lock/L1/2fa");
        assert_eq!(user_event_topic("acme", "u1"), "events/v1/acme/user/u1/2fa");
    }
}
