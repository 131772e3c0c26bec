//! 2FA access and unlock challenges: the rules, sans I/O.
//!
//! A person with a 2FA grant types their passcode on an NB-IoT 2FA lock;
//! the server checks it, the grant's window, the user and their verified
//! number, and the rate limits and lock-outs, then creates a challenge whose
//! OTP goes to the person's phone. The OTP typed next ends the challenge:
//! allowed, a wrong try (three end it), expired, reused or revoked.
//!
//! Everything here is a pure function of stored facts and the time passed
//! in; the store reads the facts inside one transaction and writes what the
//! decision says. Secrets never reach this module: the store compares keyed
//! hashes, and [`tags_match`] compares them in constant time.

use crate::registry::LockRecord;
use schemas::twofa::{TwoFactorOutcome, TwoFactorResult};
use schemas::LockModel;

/// A fixed-window rate: at most `max` in any window of `window_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub max: u32,
    pub window_ms: u64,
}

/// `max` failures within `window_ms` lock the subject out for `lock_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lockout {
    pub max: u32,
    pub window_ms: u64,
    pub lock_ms: u64,
}

const MINUTE_MS: u64 = 60_000;

/// The limits of the 2FA flow. [`Default`] gives the documented defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// How long an OTP works (default 5 minutes).
    pub otp_ttl_ms: u64,
    /// Wrong OTPs that end a challenge (default 3).
    pub otp_max_tries: u8,
    /// Passcode entries at one lock (default 10 a minute).
    pub lock_requests: Rate,
    /// Rejected passcodes at one lock before its 2FA locks out (default 5
    /// in 15 minutes lock it for 15 minutes).
    pub lock_failures: Lockout,
    /// Challenges (OTPs sent) per user (default 5 in 15 minutes).
    pub user_challenges: Rate,
    /// Wrong OTPs before the user locks out, whichever challenges they were
    /// typed for (default 9, three challenges' worth, in an hour lock them
    /// out for an hour). Counted per OTP, so starting a new challenge after
    /// each wrong guess gains nothing.
    pub user_failures: Lockout,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            otp_ttl_ms: 5 * MINUTE_MS,
            otp_max_tries: 3,
            lock_requests: Rate {
                max: 10,
                window_ms: MINUTE_MS,
            },
            lock_failures: Lockout {
                max: 5,
                window_ms: 15 * MINUTE_MS,
                lock_ms: 15 * MINUTE_MS,
            },
            user_challenges: Rate {
                max: 5,
                window_ms: 15 * MINUTE_MS,
            },
            user_failures: Lockout {
                max: 9,
                window_ms: 60 * MINUTE_MS,
                lock_ms: 60 * MINUTE_MS,
            },
        }
    }
}

/// A fixed-window counter with a lock-out, as stored per (scope, subject,
/// counter). All zero: never used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub window_start_ms: u64,
    pub count: u32,
    /// When a lock-out began (0: none).
    pub locked_since_ms: u64,
    /// Until when it holds (0 or past: none).
    pub locked_until_ms: u64,
}

impl Counter {
    fn in_window(&self, now_ms: u64, window_ms: u64) -> u32 {
        if now_ms < self.window_start_ms.saturating_add(window_ms) {
            self.count
        } else {
            0
        }
    }

    /// Until when the subject is locked out, if it is now.
    pub fn locked(&self, now_ms: u64) -> Option<u64> {
        (self.locked_until_ms > now_ms).then_some(self.locked_until_ms)
    }

    /// `Some(retry at)` when `rate` is used up at `now_ms`.
    pub fn exhausted(&self, rate: Rate, now_ms: u64) -> Option<u64> {
        (self.in_window(now_ms, rate.window_ms) >= rate.max)
            .then(|| self.window_start_ms.saturating_add(rate.window_ms))
    }

    /// One more in the current window (a new window if the last has passed).
    pub fn bump(self, now_ms: u64, window_ms: u64) -> Counter {
        let count = self.in_window(now_ms, window_ms);
        Counter {
            window_start_ms: if count == 0 {
                now_ms
            } else {
                self.window_start_ms
            },
            count: count + 1,
            ..self
        }
    }

    /// One more failure; `Some(until)` when this one starts a lock-out
    /// (which also starts a fresh window).
    pub fn fail(self, now_ms: u64, rule: Lockout) -> (Counter, Option<u64>) {
        let bumped = self.bump(now_ms, rule.window_ms);
        if bumped.count >= rule.max {
            let until = now_ms.saturating_add(rule.lock_ms);
            let c = Counter {
                window_start_ms: now_ms,
                count: 0,
                locked_since_ms: now_ms,
                locked_until_ms: until,
            };
            (c, Some(until))
        } else {
            (bumped, None)
        }
    }

    /// A dashboard user cleared the lock-out: no lock-out, no failures.
    pub fn cleared(self) -> Counter {
        Counter::default()
    }
}

/// Which counter of which subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CounterKind {
    LockRequests,
    LockFailures,
    UserChallenges,
    UserFailures,
}

impl CounterKind {
    /// (scope, counter) as stored.
    pub fn as_pair(self) -> (&'static str, &'static str) {
        match self {
            CounterKind::LockRequests => ("lock", "requests"),
            CounterKind::LockFailures => ("lock", "failures"),
            CounterKind::UserChallenges => ("user", "challenges"),
            CounterKind::UserFailures => ("user", "failures"),
        }
    }
}

/// Whether a lock model supports 2FA access.
pub fn supports_2fa(model: LockModel) -> bool {
    model == LockModel::Inb1TwoFactor
}

/// A user as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserFacts {
    pub user_id: String,
    pub active: bool,
    pub mobile: Option<String>,
    pub mobile_verified: bool,
}

/// A user's unrevoked grant at the lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantFacts {
    pub grant_id: u64,
    pub department: Option<String>,
    pub start_ms: u64,
    pub end_ms: u64,
}

impl GrantFacts {
    pub fn in_window(&self, now_ms: u64) -> bool {
        self.start_ms <= now_ms && now_ms < self.end_ms
    }
}

/// What a passcode entry is decided on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PasscodeFacts {
    pub lock_supports_2fa: bool,
    pub lock_requests: Counter,
    pub lock_failures: Counter,
    /// The user whose passcode matched, if any.
    pub user: Option<UserFacts>,
    /// That user's unrevoked grants at this lock.
    pub grants: Vec<GrantFacts>,
    pub user_challenges: Counter,
    pub user_failures: Counter,
}

/// A refusal of a passcode entry: what the lock is told, and what the
/// dashboard's event says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub answer: TwoFactorResult,
    pub outcome: TwoFactorOutcome,
    /// Stable detail for the event and the metric.
    pub reason: &'static str,
    /// When the person may try again (rate limits, lock-outs).
    pub retry_at_ms: Option<u64>,
}

/// What to do with a passcode entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PasscodeDecision {
    /// Create a challenge under this grant; its OTP goes to `mobile`.
    Issue {
        grant_id: u64,
        department: Option<String>,
        mobile: String,
        expires_at_ms: u64,
    },
    Refuse(Refused),
}

/// The counters after a decision, and a lock-out it started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effects {
    pub writes: Vec<(CounterKind, Counter)>,
    /// A lock-out this decision started: which counter and until when.
    pub lockout: Option<(CounterKind, u64)>,
}

fn refuse(
    answer: TwoFactorResult,
    outcome: TwoFactorOutcome,
    reason: &'static str,
    retry_at_ms: Option<u64>,
) -> PasscodeDecision {
    PasscodeDecision::Refuse(Refused {
        answer,
        outcome,
        reason,
        retry_at_ms,
    })
}

/// Decide a passcode entry at `now_ms`.
///
/// Every refusal of a passcode (no such passcode, no access at this lock,
/// outside the window, number not verified, a deactivated user) is
/// answered `denied` alike and counts toward the lock's lock-out, so
/// neither the answer nor the lock-out tells a guesser anything; the event
/// names the reason for the dashboard only.
pub fn decide_passcode(
    facts: &PasscodeFacts,
    limits: &Limits,
    now_ms: u64,
) -> (PasscodeDecision, Effects) {
    use TwoFactorOutcome as O;
    use TwoFactorResult as R;
    let mut effects = Effects {
        writes: Vec::new(),
        lockout: None,
    };
    if !facts.lock_supports_2fa {
        return (refuse(R::Denied, O::Denied, "not_2fa_lock", None), effects);
    }
    if let Some(until) = facts.lock_failures.locked(now_ms) {
        return (
            refuse(R::LockedOut, O::LockedOut, "lock", Some(until)),
            effects,
        );
    }
    if let Some(at) = facts.lock_requests.exhausted(limits.lock_requests, now_ms) {
        return (
            refuse(R::RateLimited, O::RateLimited, "lock_rate", Some(at)),
            effects,
        );
    }
    effects.writes.push((
        CounterKind::LockRequests,
        facts
            .lock_requests
            .bump(now_ms, limits.lock_requests.window_ms),
    ));
    let lock_failure = |effects: &mut Effects, reason: &'static str| {
        let (c, started) = facts.lock_failures.fail(now_ms, limits.lock_failures);
        effects.writes.push((CounterKind::LockFailures, c));
        effects.lockout = started.map(|until| (CounterKind::LockFailures, until));
        refuse(R::Denied, O::Denied, reason, None)
    };
    let Some(user) = &facts.user else {
        let d = lock_failure(&mut effects, "wrong_passcode");
        return (d, effects);
    };
    if !user.active {
        let d = lock_failure(&mut effects, "user_deactivated");
        return (d, effects);
    }
    if facts.grants.is_empty() {
        let d = lock_failure(&mut effects, "no_access");
        return (d, effects);
    }
    let Some(grant) = facts.grants.iter().find(|g| g.in_window(now_ms)) else {
        let reason = if facts.grants.iter().all(|g| now_ms < g.start_ms) {
            "not_started"
        } else {
            "expired"
        };
        // Counted like a wrong passcode: otherwise a guesser could tell a
        // valid passcode by the lock-out it does not cause.
        let d = lock_failure(&mut effects, reason);
        return (d, effects);
    };
    let mobile = match (&user.mobile, user.mobile_verified) {
        (Some(m), true) => m.clone(),
        _ => {
            let d = lock_failure(&mut effects, "mobile_unverified");
            return (d, effects);
        }
    };
    if let Some(until) = facts.user_failures.locked(now_ms) {
        return (
            refuse(R::LockedOut, O::LockedOut, "user", Some(until)),
            effects,
        );
    }
    if let Some(at) = facts
        .user_challenges
        .exhausted(limits.user_challenges, now_ms)
    {
        return (
            refuse(R::RateLimited, O::RateLimited, "user_rate", Some(at)),
            effects,
        );
    }
    effects.writes.push((
        CounterKind::UserChallenges,
        facts
            .user_challenges
            .bump(now_ms, limits.user_challenges.window_ms),
    ));
    (
        PasscodeDecision::Issue {
            grant_id: grant.grant_id,
            department: grant.department.clone(),
            mobile,
            expires_at_ms: now_ms.saturating_add(limits.otp_ttl_ms),
        },
        effects,
    )
}

/// A challenge's state as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChallengeState {
    /// Waiting for the OTP.
    Open,
    /// The right OTP came: used.
    Allowed,
    /// Out of tries.
    Failed,
    Expired,
    /// The grant or the user's access ended while it was open.
    Revoked,
    /// A newer challenge for the same user at the same lock replaced it.
    Superseded,
    /// The OTP could not be sent.
    NotifierFailed,
}

impl ChallengeState {
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeState::Open => "open",
            ChallengeState::Allowed => "allowed",
            ChallengeState::Failed => "failed",
            ChallengeState::Expired => "expired",
            ChallengeState::Revoked => "revoked",
            ChallengeState::Superseded => "superseded",
            ChallengeState::NotifierFailed => "notifier_failed",
        }
    }

    pub fn parse(s: &str) -> Option<ChallengeState> {
        Some(match s {
            "open" => ChallengeState::Open,
            "allowed" => ChallengeState::Allowed,
            "failed" => ChallengeState::Failed,
            "expired" => ChallengeState::Expired,
            "revoked" => ChallengeState::Revoked,
            "superseded" => ChallengeState::Superseded,
            "notifier_failed" => ChallengeState::NotifierFailed,
            _ => return None,
        })
    }
}

/// What an OTP entry is decided on: the challenge it names (at this lock),
/// whether the typed OTP's tag matched the stored one, and whether the
/// grant and the user still allow access.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChallengeFacts {
    pub state: ChallengeState,
    pub expires_at_ms: u64,
    pub tries: u8,
    /// The grant is unrevoked and in its window, the user active with a
    /// verified number.
    pub access_holds: bool,
}

/// What to do with an OTP entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OtpDecision {
    /// Open the lock; the challenge is used.
    Allow,
    /// A wrong OTP; `tries` is the new count.
    Wrong { tries: u8, tries_left: u8 },
    /// The challenge is over (or never was). `new_state` is what to store
    /// (`None`: nothing changes); `user_failure` counts toward the user's
    /// lock-out.
    End {
        reason: &'static str,
        new_state: Option<ChallengeState>,
        tries: u8,
        user_failure: bool,
    },
}

impl OtpDecision {
    /// Whether the entry counts toward the user's lock-out: every wrong OTP.
    pub fn counts_against_user(&self) -> bool {
        matches!(
            self,
            OtpDecision::Wrong { .. }
                | OtpDecision::End {
                    user_failure: true,
                    ..
                }
        )
    }

    /// The lock's answer.
    pub fn answer(&self) -> TwoFactorResult {
        match self {
            OtpDecision::Allow => TwoFactorResult::Allowed,
            OtpDecision::Wrong { .. } => TwoFactorResult::WrongOtp,
            OtpDecision::End { .. } => TwoFactorResult::ChallengeEnded,
        }
    }

    /// The event's outcome.
    pub fn outcome(&self) -> TwoFactorOutcome {
        match self {
            OtpDecision::Allow => TwoFactorOutcome::Allowed,
            OtpDecision::Wrong { .. } => TwoFactorOutcome::WrongOtp,
            OtpDecision::End { .. } => TwoFactorOutcome::ChallengeEnded,
        }
    }
}

/// Decide an OTP entry for `challenge` (`None`: no such challenge at this
/// lock) at `now_ms`; `matches` is whether the typed OTP's keyed hash
/// equals the stored one ([`tags_match`]).
pub fn decide_otp(
    challenge: Option<&ChallengeFacts>,
    matches: bool,
    limits: &Limits,
    now_ms: u64,
) -> OtpDecision {
    let end = |reason, new_state, tries, user_failure| OtpDecision::End {
        reason,
        new_state,
        tries,
        user_failure,
    };
    let Some(c) = challenge else {
        return end("unknown", None, 0, false);
    };
    match c.state {
        ChallengeState::Open => {}
        ChallengeState::Allowed => return end("reused", None, c.tries, false),
        ChallengeState::Failed => return end("too_many_tries", None, c.tries, false),
        other => return end(other.as_str(), None, c.tries, false),
    }
    if now_ms >= c.expires_at_ms {
        return end("expired", Some(ChallengeState::Expired), c.tries, false);
    }
    if !c.access_holds {
        return end("revoked", Some(ChallengeState::Revoked), c.tries, false);
    }
    if matches {
        return OtpDecision::Allow;
    }
    let tries = c.tries.saturating_add(1);
    if tries >= limits.otp_max_tries {
        end("too_many_tries", Some(ChallengeState::Failed), tries, true)
    } else {
        OtpDecision::Wrong {
            tries,
            tries_left: limits.otp_max_tries - tries,
        }
    }
}

/// Constant-time equality of two keyed hashes (the time taken does not
/// depend on where they differ).
pub fn tags_match(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Why a 2FA command was refused: the rule, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TwoFactorRefusal {
    #[error("user_id must be 1 to {max} characters of A-Z a-z 0-9 - _ .", max = schemas::device::MAX_ID_LEN)]
    BadUserId,
    #[error(
        "user {0} has no 2FA record in this organisation: send set_user_mobile for them first"
    )]
    UnknownUser(String),
    #[error(
        "a mobile number is + and 8 to 15 digits (E.164, e.g. +6591234567): send it in that form"
    )]
    BadMobile,
    #[error("the number to verify is not user {0}'s number on record: send set_user_mobile with the new number first, then verify it")]
    MobileMismatch(String),
    #[error("user {0}'s mobile number is not verified: verify it (verify_user_mobile) first; 2FA needs a verified number")]
    MobileUnverified(String),
    #[error("user {0} is deactivated: reactivate_user first")]
    UserDeactivated(String),
    #[error("user {0} has a 2FA passcode already: use reset_2fa_passcode to replace it")]
    PasscodeExists(String),
    #[error(
        "lock {lock} is a {model}, not an NB-IoT 2FA lock (INB1-2FA): 2FA access needs a 2FA model"
    )]
    No2faSupport { lock: String, model: &'static str },
    #[error("{field} {value:?} is not a local date and time: send YYYY-MM-DDTHH:MM or YYYY-MM-DDTHH:MM:SS in the lock's time zone")]
    BadTime { field: &'static str, value: String },
    #[error("lock {lock}'s time zone {zone:?} is not known to this server: correct the property's time zone (an IANA name such as Asia/Singapore)")]
    UnknownTimeZone { lock: String, zone: String },
    #[error("the end {end} is not after the start {start}: choose an end after the start")]
    BadWindow { start: String, end: String },
    #[error("the end {end} has already passed in the lock's time zone {zone}: choose an end in the future")]
    EndInPast { end: String, zone: String },
    #[error("user {user} already has 2FA access to lock {lock} (grant {grant_id}): edit its end instead")]
    GrantExists {
        user: String,
        lock: String,
        grant_id: u64,
    },
    #[error("2FA grant {0} does not exist in this organisation")]
    UnknownGrant(u64),
    #[error("2FA grant {0} has expired or was revoked: only the end of a current grant can be edited; grant access again")]
    GrantEnded(u64),
    #[error("name exactly one of lock_id and user_id")]
    LockoutTarget,
}

impl TwoFactorRefusal {
    /// Stable machine-readable rule name.
    pub fn rule(&self) -> &'static str {
        match self {
            TwoFactorRefusal::BadUserId => "bad_user_id",
            TwoFactorRefusal::UnknownUser(_) => "unknown_user",
            TwoFactorRefusal::BadMobile => "bad_mobile",
            TwoFactorRefusal::MobileMismatch(_) => "mobile_mismatch",
            TwoFactorRefusal::MobileUnverified(_) => "mobile_unverified",
            TwoFactorRefusal::UserDeactivated(_) => "user_deactivated",
            TwoFactorRefusal::PasscodeExists(_) => "passcode_exists",
            TwoFactorRefusal::No2faSupport { .. } => "no_2fa_support",
            TwoFactorRefusal::BadTime { .. } => "bad_time",
            TwoFactorRefusal::UnknownTimeZone { .. } => "unknown_time_zone",
            TwoFactorRefusal::BadWindow { .. } => "bad_window",
            TwoFactorRefusal::EndInPast { .. } => "end_in_past",
            TwoFactorRefusal::GrantExists { .. } => "grant_exists",
            TwoFactorRefusal::UnknownGrant(_) => "unknown_grant",
            TwoFactorRefusal::GrantEnded(_) => "grant_ended",
            TwoFactorRefusal::LockoutTarget => "lockout_target",
        }
    }
}

/// Check a user id (it appears in topics).
pub fn check_user_id(user_id: &str) -> Result<(), TwoFactorRefusal> {
    if schemas::device::valid_id(user_id) {
        Ok(())
    } else {
        Err(TwoFactorRefusal::BadUserId)
    }
}

/// The lock must be a 2FA model.
pub fn check_lock(lock: &LockRecord) -> Result<(), TwoFactorRefusal> {
    if supports_2fa(lock.model) {
        Ok(())
    } else {
        Err(TwoFactorRefusal::No2faSupport {
            lock: lock.id.to_string(),
            model: lock.model.as_str(),
        })
    }
}

/// A local date-time in the lock's time zone, as Unix milliseconds.
pub fn local_to_ms(
    lock: &LockRecord,
    field: &'static str,
    value: &str,
) -> Result<u64, TwoFactorRefusal> {
    local_to_ms_in(lock.id.as_str(), &lock.time_zone, field, value)
}

/// A local date-time in time zone `zone` (lock `lock_id`'s, as stored with
/// a grant), as Unix milliseconds.
pub fn local_to_ms_in(
    lock_id: &str,
    zone: &str,
    field: &'static str,
    value: &str,
) -> Result<u64, TwoFactorRefusal> {
    let bad = || TwoFactorRefusal::BadTime {
        field,
        value: value.chars().take(64).collect(),
    };
    // A zone offset or name would make "in the lock's time zone" ambiguous.
    if value.len() > 19 || value.contains(['Z', 'z', '+', '[']) {
        return Err(bad());
    }
    let dt: jiff::civil::DateTime = value.parse().map_err(|_| bad())?;
    let tz = jiff::tz::TimeZone::get(zone).map_err(|_| TwoFactorRefusal::UnknownTimeZone {
        lock: lock_id.to_string(),
        zone: zone.to_string(),
    })?;
    // A local time skipped or repeated by a DST change takes the
    // "compatible" reading (RFC 5545): later for a gap, earlier for a fold.
    let ts = tz.to_timestamp(dt).map_err(|_| bad())?;
    u64::try_from(ts.as_millisecond()).map_err(|_| bad())
}

/// A grant's window: both ends parsed in the lock's zone, the end after
/// the start and not passed.
pub fn check_window(
    lock: &LockRecord,
    start: &str,
    end: &str,
    now_ms: u64,
) -> Result<(u64, u64), TwoFactorRefusal> {
    let start_ms = local_to_ms(lock, "start", start)?;
    let end_ms = local_to_ms(lock, "end", end)?;
    if end_ms <= start_ms {
        return Err(TwoFactorRefusal::BadWindow {
            start: start.to_string(),
            end: end.to_string(),
        });
    }
    check_end_ahead(lock, end, end_ms, now_ms)?;
    Ok((start_ms, end_ms))
}

/// The end has not passed.
pub fn check_end_ahead(
    lock: &LockRecord,
    end: &str,
    end_ms: u64,
    now_ms: u64,
) -> Result<(), TwoFactorRefusal> {
    if end_ms <= now_ms {
        return Err(TwoFactorRefusal::EndInPast {
            end: end.to_string(),
            zone: lock.time_zone.to_string(),
        });
    }
    Ok(())
}

/// A grant's status on the Access list.
pub fn grant_status(start_ms: u64, end_ms: u64, revoked: bool, now_ms: u64) -> &'static str {
    if revoked {
        "revoked"
    } else if now_ms >= end_ms {
        "expired"
    } else if now_ms < start_ms {
        "scheduled"
    } else {
        "active"
    }
}

#[cfg(test)]
#[path = "twofa_tests.rs"]
mod tests;
