//! One 2FA person, sans I/O: when they next come by (random gaps of
//! simulated time, like a lock's visits), which of their locks they go to,
//! whether they mistype, and, during a [`Visit`], what they do with each
//! answer. Time goes in as `now`; the driver (`people`, `visit`) does the
//! typing and the waiting and feeds back what happened.
//!
//! A visit: type the passcode (with probability `p_wrong_passcode` a wrong
//! one of the same length); on `otp_sent`, wait for the OTP; type it (with
//! probability `p_wrong_otp` first a wrong one, then the right one if tries
//! remain). Every other answer ends the visit.

use super::TwoFactorPerson;
use crate::clock::SimClock;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use schemas::twofa::{TwoFactorAnswer, TwoFactorResult};
use std::fmt;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// How people behave.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Knobs {
    /// Mean simulated time between two visits of one person; `None`: they
    /// come only when told.
    pub mean_interval: Option<Duration>,
    pub p_wrong_passcode: f64,
    pub p_wrong_otp: f64,
}

/// When a person comes by and how they type.
#[derive(Debug)]
pub struct Person {
    rng: SmallRng,
    knobs: Knobs,
    next_visit: Option<Instant>,
}

impl Person {
    /// A person whose first visit falls a random gap after `now`.
    pub fn new(seed: u64, knobs: Knobs, now: Instant, clock: &SimClock) -> Self {
        let mut p = Person {
            rng: SmallRng::seed_from_u64(seed),
            knobs,
            next_visit: None,
        };
        p.schedule(now, clock);
        p
    }

    /// When the next visit begins; `None` during a visit, or for people who
    /// come only when told.
    pub fn next_visit(&self) -> Option<Instant> {
        self.next_visit
    }

    /// Begins the visit due at `now`, at one of `person`'s locks; `None` if
    /// none is due (or they have no lock).
    pub fn start_visit(&mut self, person: &TwoFactorPerson, now: Instant) -> Option<Visit> {
        if self.next_visit.is_none_or(|at| at > now) || person.locks.is_empty() {
            return None;
        }
        self.next_visit = None;
        let lock = person.locks[self.rng.random_range(0..person.locks.len())].clone();
        let wrong_passcode = self
            .rng
            .random_bool(self.knobs.p_wrong_passcode)
            .then(|| self.rng.random_range(1..=9));
        let wrong_otp = self
            .rng
            .random_bool(self.knobs.p_wrong_otp)
            .then(|| self.rng.random_range(1..=9));
        Some(Visit::plan(
            lock,
            &person.passcode,
            wrong_passcode,
            wrong_otp,
        ))
    }

    /// The visit ended at `now`: the next one falls a random gap later.
    pub fn visit_over(&mut self, now: Instant, clock: &SimClock) {
        self.schedule(now, clock);
    }

    fn schedule(&mut self, now: Instant, clock: &SimClock) {
        self.next_visit = self.knobs.mean_interval.map(|mean| {
            // Exponential gaps: visits are a Poisson process.
            let u: f64 = self.rng.random_range(f64::EPSILON..1.0);
            now + clock.real_interval(mean.mul_f64(-u.ln()))
        });
    }
}

/// `digits` with every digit moved on by `shift` (1 to 9): the same length,
/// wrong in every place.
pub fn shifted(digits: &str, shift: u8) -> Zeroizing<String> {
    let shift = shift % 10;
    Zeroizing::new(
        digits
            .bytes()
            .map(|b| match b {
                b'0'..=b'9' => char::from(b'0' + (b - b'0' + shift) % 10),
                other => char::from(other),
            })
            .collect(),
    )
}

/// How a visit ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VisitEnd {
    /// The lock opened.
    Opened,
    /// The last answer, when it was not `allowed`: `denied`, `rate_limited`,
    /// `locked_out`, `notifier_failed`, `wrong_otp` (no tries left, or the
    /// right OTP refused), `challenge_ended`, or `otp_sent` without a
    /// challenge.
    Refused(TwoFactorResult),
    /// The OTP did not reach the phone in time.
    OtpNeverArrived,
    /// A request got no answer to use (see the driver's error).
    Failed,
}

/// What the person does next.
pub enum Next {
    TypePasscode(Zeroizing<String>),
    WaitOtp {
        challenge: u64,
    },
    TypeOtp {
        challenge: u64,
        otp: Zeroizing<String>,
    },
    Done(VisitEnd),
}

impl fmt::Debug for Next {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Next::TypePasscode(_) => f.write_str("TypePasscode(<redacted>)"),
            Next::WaitOtp { challenge } => write!(f, "WaitOtp {{ challenge: {challenge} }}"),
            Next::TypeOtp { challenge, .. } => {
                write!(f, "TypeOtp {{ challenge: {challenge}, otp: <redacted> }}")
            }
            Next::Done(end) => write!(f, "Done({end:?})"),
        }
    }
}

enum Stage {
    Start,
    AwaitPasscode,
    AwaitOtp {
        challenge: u64,
    },
    AwaitOtpAnswer {
        challenge: u64,
        /// The right OTP, while a wrong one was typed first.
        right: Option<Zeroizing<String>>,
    },
    Over,
}

/// One visit at one lock, sans I/O: [`Visit::begin`], then feed each
/// answer to the matching `on_*` until [`Next::Done`].
pub struct Visit {
    lock: String,
    passcode: Zeroizing<String>,
    /// Type a wrong OTP first, its digits moved on by this much.
    wrong_otp: Option<u8>,
    stage: Stage,
}

impl fmt::Debug for Visit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Visit")
            .field("lock", &self.lock)
            .field("wrong_otp_first", &self.wrong_otp.is_some())
            .finish_non_exhaustive()
    }
}

impl Visit {
    /// A visit at `lock` typing `passcode`, or a wrong one (its digits
    /// moved on by `wrong_passcode`), then, with `wrong_otp`, a wrong OTP
    /// before the right one.
    pub fn plan(
        lock: String,
        passcode: &str,
        wrong_passcode: Option<u8>,
        wrong_otp: Option<u8>,
    ) -> Self {
        let passcode = match wrong_passcode {
            Some(shift) => shifted(passcode, shift),
            None => Zeroizing::new(passcode.to_string()),
        };
        Visit {
            lock,
            passcode,
            wrong_otp,
            stage: Stage::Start,
        }
    }

    /// The lock visited.
    pub fn lock(&self) -> &str {
        &self.lock
    }

    pub fn begin(&mut self) -> Next {
        if !matches!(self.stage, Stage::Start) {
            return self.end(VisitEnd::Failed);
        }
        self.stage = Stage::AwaitPasscode;
        Next::TypePasscode(self.passcode.clone())
    }

    /// The answer to the passcode; `None`: the request failed.
    pub fn on_passcode_answer(&mut self, answer: Option<&TwoFactorAnswer>) -> Next {
        if !matches!(self.stage, Stage::AwaitPasscode) {
            return self.end(VisitEnd::Failed);
        }
        match answer {
            None => self.end(VisitEnd::Failed),
            Some(a) => match (a.result, a.challenge) {
                (TwoFactorResult::OtpSent, Some(challenge)) => {
                    self.stage = Stage::AwaitOtp { challenge };
                    Next::WaitOtp { challenge }
                }
                (result, _) => self.end(VisitEnd::Refused(result)),
            },
        }
    }

    /// The OTP that reached the phone; `None`: it never did.
    pub fn on_otp(&mut self, otp: Option<&str>) -> Next {
        let Stage::AwaitOtp { challenge } = self.stage else {
            return self.end(VisitEnd::Failed);
        };
        let Some(otp) = otp else {
            return self.end(VisitEnd::OtpNeverArrived);
        };
        let right = Zeroizing::new(otp.to_string());
        let (typed, right) = match self.wrong_otp {
            Some(shift) => (shifted(otp, shift), Some(right)),
            None => (right, None),
        };
        self.stage = Stage::AwaitOtpAnswer { challenge, right };
        Next::TypeOtp {
            challenge,
            otp: typed,
        }
    }

    /// The answer to an OTP; `None`: the request failed.
    pub fn on_otp_answer(&mut self, answer: Option<&TwoFactorAnswer>) -> Next {
        let stage = std::mem::replace(&mut self.stage, Stage::Over);
        let Stage::AwaitOtpAnswer { challenge, right } = stage else {
            return self.end(VisitEnd::Failed);
        };
        let Some(answer) = answer else {
            return self.end(VisitEnd::Failed);
        };
        match (answer.result, right) {
            (TwoFactorResult::Allowed, _) => self.end(VisitEnd::Opened),
            (TwoFactorResult::WrongOtp, Some(right)) if answer.tries_left != Some(0) => {
                self.stage = Stage::AwaitOtpAnswer {
                    challenge,
                    right: None,
                };
                Next::TypeOtp {
                    challenge,
                    otp: right,
                }
            }
            (result, _) => self.end(VisitEnd::Refused(result)),
        }
    }

    fn end(&mut self, end: VisitEnd) -> Next {
        self.stage = Stage::Over;
        Next::Done(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000;

    fn alice() -> TwoFactorPerson {
        TwoFactorPerson {
            user_id: "u-alice".into(),
            mobile: "+6591234567".into(),
            passcode: Zeroizing::new("48291637".into()),
            locks: vec!["L000001".into(), "L000002".into()],
        }
    }

    fn knobs(mean_h: u64, p_pass: f64, p_otp: f64) -> Knobs {
        Knobs {
            mean_interval: Some(Duration::from_secs(mean_h * 3600)),
            p_wrong_passcode: p_pass,
            p_wrong_otp: p_otp,
        }
    }

    fn answer(result: TwoFactorResult) -> TwoFactorAnswer {
        let mut a = TwoFactorAnswer::new(1, result, T0);
        if result == TwoFactorResult::OtpSent {
            a.challenge = Some(77);
        }
        a
    }

    fn digits(next: &Next) -> &str {
        match next {
            Next::TypePasscode(d) | Next::TypeOtp { otp: d, .. } => d,
            other => panic!("not typing: {other:?}"),
        }
    }

    #[test]
    fn visits_come_at_exponential_gaps_of_simulated_time() {
        let t0 = Instant::now();
        // 1 simulated hour = 1 real second.
        let clock = SimClock::new(t0, T0, 3600.0);
        let mut p = Person::new(3, knobs(4, 0.0, 0.0), t0, &clock);
        let (mut now, mut gaps, n) = (t0, Duration::ZERO, 2000);
        for _ in 0..n {
            let at = p.next_visit().unwrap();
            assert!(p
                .start_visit(&alice(), at - Duration::from_millis(1))
                .is_none());
            gaps += at - now;
            let visit = p.start_visit(&alice(), at).unwrap();
            assert!(alice().locks.contains(&visit.lock().to_string()));
            assert_eq!(p.next_visit(), None, "one visit at a time");
            now = at;
            p.visit_over(now, &clock);
        }
        let mean = gaps.as_secs_f64() / f64::from(n);
        assert!((3.6..4.4).contains(&mean), "mean gap {mean} s, want 4");
    }

    #[test]
    fn people_who_come_only_when_told_never_come_by_themselves() {
        let t0 = Instant::now();
        let clock = SimClock::new(t0, T0, 600.0);
        let knobs = Knobs {
            mean_interval: None,
            ..knobs(1, 0.0, 0.0)
        };
        let mut p = Person::new(1, knobs, t0, &clock);
        assert_eq!(p.next_visit(), None);
        assert!(p
            .start_visit(&alice(), t0 + Duration::from_secs(1 << 30))
            .is_none());
    }

    #[test]
    fn a_right_visit_types_the_passcode_then_the_otp_and_opens() {
        let mut v = Visit::plan("L1".into(), "48291637", None, None);
        let next = v.begin();
        assert_eq!(digits(&next), "48291637");
        assert!(!format!("{next:?} {v:?}").contains("48291637"));
        let next = v.on_passcode_answer(Some(&answer(TwoFactorResult::OtpSent)));
        assert!(matches!(next, Next::WaitOtp { challenge: 77 }), "{next:?}");
        let next = v.on_otp(Some("123456"));
        assert!(matches!(next, Next::TypeOtp { challenge: 77, .. }));
        assert_eq!(digits(&next), "123456");
        let next = v.on_otp_answer(Some(&answer(TwoFactorResult::Allowed)));
        assert!(matches!(next, Next::Done(VisitEnd::Opened)), "{next:?}");
    }

    #[test]
    fn a_wrong_passcode_has_the_same_length_and_differs_everywhere() {
        let t0 = Instant::now();
        let clock = SimClock::new(t0, T0, 600.0);
        let mut p = Person::new(9, knobs(1, 1.0, 0.0), t0, &clock);
        let mut v = p.start_visit(&alice(), p.next_visit().unwrap()).unwrap();
        let next = v.begin();
        let typed = digits(&next);
        assert_eq!(typed.len(), 8);
        assert!(typed.bytes().all(|b| b.is_ascii_digit()));
        assert!(
            typed.bytes().zip("48291637".bytes()).all(|(a, b)| a != b),
            "{typed}"
        );
        let next = v.on_passcode_answer(Some(&answer(TwoFactorResult::Denied)));
        assert!(matches!(
            next,
            Next::Done(VisitEnd::Refused(TwoFactorResult::Denied))
        ));
    }

    #[test]
    fn a_wrong_otp_first_is_followed_by_the_right_one_while_tries_remain() {
        let mut v = Visit::plan("L1".into(), "48291637", None, Some(5));
        v.begin();
        v.on_passcode_answer(Some(&answer(TwoFactorResult::OtpSent)));
        let next = v.on_otp(Some("123456"));
        assert_eq!(digits(&next), "678901");
        let mut wrong = answer(TwoFactorResult::WrongOtp);
        wrong.tries_left = Some(2);
        let next = v.on_otp_answer(Some(&wrong));
        assert_eq!(digits(&next), "123456");
        let next = v.on_otp_answer(Some(&answer(TwoFactorResult::Allowed)));
        assert!(matches!(next, Next::Done(VisitEnd::Opened)));

        // No tries left: the visit ends on the wrong one.
        let mut v = Visit::plan("L1".into(), "48291637", None, Some(1));
        v.begin();
        v.on_passcode_answer(Some(&answer(TwoFactorResult::OtpSent)));
        v.on_otp(Some("123456"));
        wrong.tries_left = Some(0);
        let next = v.on_otp_answer(Some(&wrong));
        assert!(matches!(
            next,
            Next::Done(VisitEnd::Refused(TwoFactorResult::WrongOtp))
        ));
    }

    #[test]
    fn the_right_otp_refused_ends_the_visit_instead_of_looping() {
        let mut v = Visit::plan("L1".into(), "48291637", None, None);
        v.begin();
        v.on_passcode_answer(Some(&answer(TwoFactorResult::OtpSent)));
        v.on_otp(Some("123456"));
        let mut wrong = answer(TwoFactorResult::WrongOtp);
        wrong.tries_left = Some(2);
        let next = v.on_otp_answer(Some(&wrong));
        assert!(matches!(
            next,
            Next::Done(VisitEnd::Refused(TwoFactorResult::WrongOtp))
        ));
        let next = v.on_otp_answer(Some(&answer(TwoFactorResult::Allowed)));
        assert!(matches!(next, Next::Done(VisitEnd::Failed)), "out of turn");
    }

    #[test]
    fn refusals_failures_and_a_missing_otp_end_the_visit() {
        for result in [
            TwoFactorResult::RateLimited,
            TwoFactorResult::LockedOut,
            TwoFactorResult::NotifierFailed,
        ] {
            let mut v = Visit::plan("L1".into(), "1", None, None);
            v.begin();
            let next = v.on_passcode_answer(Some(&answer(result)));
            assert!(matches!(next, Next::Done(VisitEnd::Refused(r)) if r == result));
        }
        // otp_sent without a challenge cannot be followed.
        let mut v = Visit::plan("L1".into(), "1", None, None);
        v.begin();
        let bare = TwoFactorAnswer::new(1, TwoFactorResult::OtpSent, T0);
        let next = v.on_passcode_answer(Some(&bare));
        assert!(matches!(
            next,
            Next::Done(VisitEnd::Refused(TwoFactorResult::OtpSent))
        ));

        let mut v = Visit::plan("L1".into(), "1", None, None);
        v.begin();
        assert!(matches!(
            v.on_passcode_answer(None),
            Next::Done(VisitEnd::Failed)
        ));

        let mut v = Visit::plan("L1".into(), "1", None, None);
        v.begin();
        v.on_passcode_answer(Some(&answer(TwoFactorResult::OtpSent)));
        assert!(matches!(
            v.on_otp(None),
            Next::Done(VisitEnd::OtpNeverArrived)
        ));

        let mut v = Visit::plan("L1".into(), "1", None, None);
        v.begin();
        v.on_passcode_answer(Some(&answer(TwoFactorResult::OtpSent)));
        v.on_otp(Some("123456"));
        let ended = answer(TwoFactorResult::ChallengeEnded);
        assert!(matches!(
            v.on_otp_answer(Some(&ended)),
            Next::Done(VisitEnd::Refused(TwoFactorResult::ChallengeEnded))
        ));
    }

    #[test]
    fn shifted_digits_differ_in_every_place() {
        assert_eq!(shifted("0189", 1).as_str(), "1290");
        assert_eq!(shifted("123456", 9).as_str(), "012345");
    }
}
