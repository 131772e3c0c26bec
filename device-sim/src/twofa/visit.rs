//! One visit done for real: the [`Visit`]'s decisions carried out at a
//! lock ([`LockHandle`]) and a phone ([`SmsInbox`]), timed and counted.
//! The I/O edge of [`super::person`]; used by the run's people task and by
//! [`PersonHandle::visit`](super::PersonHandle::visit).

use super::person::{Next, Visit, VisitEnd};
use crate::control::{ControlError, LockHandle};
use crate::latency::TwoFactorLeg;
use crate::phone::SmsInbox;
use crate::stats::Stats;
use schemas::twofa::TwoFactorAnswer;
use std::time::{Duration, Instant};

/// What one visit did. Holds no digits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VisitReport {
    pub lock: String,
    pub end: VisitEnd,
    /// Every answer the lock got, in order.
    pub answers: Vec<TwoFactorAnswer>,
    /// Why the last request failed ([`VisitEnd::Failed`]).
    pub error: Option<ControlError>,
    /// From the passcode typed to the OTP arriving in the inbox.
    pub otp_delivery: Option<Duration>,
}

/// Carries out `visit` at `lock` for the person whose phone is `mobile`,
/// waiting at most `otp_timeout` (real time) for the OTP. Counts the visit,
/// its end and the OTP delivery in `stats` (the lock's task counts the
/// answers and their round trips).
pub(crate) async fn run_visit(
    mut visit: Visit,
    lock: &LockHandle,
    inbox: &SmsInbox,
    mobile: &str,
    otp_timeout: Duration,
    stats: &Stats,
) -> VisitReport {
    stats.twofa_visit();
    let mut report = VisitReport {
        lock: visit.lock().to_string(),
        end: VisitEnd::Failed,
        answers: Vec::new(),
        error: None,
        otp_delivery: None,
    };
    let mut typed_at = Instant::now();
    let mut next = visit.begin();
    loop {
        next = match next {
            Next::TypePasscode(digits) => {
                typed_at = Instant::now();
                let answer = lock.enter_2fa_passcode(&digits).await;
                let answer = report.take(answer);
                visit.on_passcode_answer(answer.as_ref())
            }
            Next::WaitOtp { challenge } => {
                let sms = inbox
                    .wait_challenge_otp(mobile, challenge, typed_at, otp_timeout)
                    .await;
                match &sms {
                    Some(sms) => {
                        let took = sms.at.saturating_duration_since(typed_at);
                        stats.twofa_latency_record(TwoFactorLeg::OtpDelivery, took);
                        report.otp_delivery = Some(took);
                    }
                    None => stats.twofa_otp_never_arrived(),
                }
                visit.on_otp(sms.as_ref().map(|s| s.otp.as_str()))
            }
            Next::TypeOtp { challenge, otp } => {
                let answer = lock.enter_otp(challenge, &otp).await;
                let answer = report.take(answer);
                visit.on_otp_answer(answer.as_ref())
            }
            Next::Done(end) => {
                if end == VisitEnd::Opened {
                    stats.twofa_opened();
                }
                report.end = end;
                return report;
            }
        };
    }
}

impl VisitReport {
    /// Keeps an answer (or the error) and hands the answer on.
    fn take(&mut self, answer: Result<TwoFactorAnswer, ControlError>) -> Option<TwoFactorAnswer> {
        match answer {
            Ok(a) => {
                self.answers.push(a.clone());
                Some(a)
            }
            Err(e) => {
                self.error = Some(e);
                None
            }
        }
    }
}
