//! Client-side round-trip time of answered exchanges, per report kind: from
//! an exchange's first transmission to the answer that ended it, as a lock
//! would see it (a lost datagram shows as its retransmission timeout).
//! Each socket task keeps its own [`AckLatency`] in its ledger; the run
//! merges them into [`crate::run::RunReport::ack_latency`].
//!
//! Recording is one histogram increment (hdrhistogram; it allocates only
//! when a value beyond the largest seen so far makes it grow).
//!
//! [`TwoFactorLatency`] times the legs of 2FA unlocks the same way: each
//! request's round trip, and the OTP's way from the `/2fa` request to the
//! phone's inbox ([`crate::phone`]).

use hdrhistogram::Histogram;
use schemas::device::UplinkKind;
use std::time::Duration;

/// Significant decimal digits the histograms keep: 0.1 % resolution, which
/// is finer than anything a scheduler on a shared machine lets us see.
pub const SIGNIFICANT_DIGITS: u8 = 3;

/// Longest round trip recorded, in microseconds; longer ones count as this.
/// An exchange ends within EXCHANGE_LIFETIME (247 s, RFC 7252 §4.8.2), so an
/// hour is never reached, and it bounds how far a histogram can grow.
pub const MAX_RECORDED_US: u64 = 3_600_000_000;

/// Round-trip times in microseconds, one histogram per report kind.
#[derive(Clone, Debug)]
pub struct AckLatency {
    heartbeat: Histogram<u64>,
    activity_log: Histogram<u64>,
    job_report: Histogram<u64>,
}

impl Default for AckLatency {
    fn default() -> Self {
        AckLatency {
            heartbeat: new_histogram(),
            activity_log: new_histogram(),
            job_report: new_histogram(),
        }
    }
}

impl PartialEq for AckLatency {
    fn eq(&self, other: &Self) -> bool {
        self.heartbeat == other.heartbeat
            && self.activity_log == other.activity_log
            && self.job_report == other.job_report
    }
}

impl Eq for AckLatency {}

fn new_histogram() -> Histogram<u64> {
    // Infallible: SIGNIFICANT_DIGITS is within hdrhistogram's 0..=5, and an
    // auto-resizing histogram has no other way to fail.
    Histogram::new(SIGNIFICANT_DIGITS).expect("significant digits within 0..=5")
}

impl AckLatency {
    /// Records one answered exchange of a `kind` report that took `rtt`.
    pub fn record(&mut self, kind: UplinkKind, rtt: Duration) {
        let us = micros(rtt);
        // `record` grows the histogram to fit (`saturating_record` would clamp
        // to its current range instead); growing fails only where usize
        // cannot index the counts, far beyond MAX_RECORDED_US.
        let _ = self.histogram_mut(kind).record(us);
    }

    /// Adds everything `other` recorded.
    pub fn merge(&mut self, other: &AckLatency) {
        // Both auto-resize, so adding cannot run out of range.
        let _ = self.heartbeat.add(&other.heartbeat);
        let _ = self.activity_log.add(&other.activity_log);
        let _ = self.job_report.add(&other.job_report);
    }

    /// The round-trip times of `kind` exchanges, in microseconds.
    pub fn histogram(&self, kind: UplinkKind) -> &Histogram<u64> {
        match kind {
            UplinkKind::Heartbeat => &self.heartbeat,
            UplinkKind::ActivityLog => &self.activity_log,
            UplinkKind::JobReport => &self.job_report,
        }
    }

    fn histogram_mut(&mut self, kind: UplinkKind) -> &mut Histogram<u64> {
        match kind {
            UplinkKind::Heartbeat => &mut self.heartbeat,
            UplinkKind::ActivityLog => &mut self.activity_log,
            UplinkKind::JobReport => &mut self.job_report,
        }
    }

    /// Answered exchanges of `kind`.
    pub fn count(&self, kind: UplinkKind) -> u64 {
        self.histogram(kind).len()
    }

    /// The `q` quantile (0.0..=1.0) of `kind` exchanges; `None` when none
    /// was recorded.
    pub fn quantile(&self, kind: UplinkKind, q: f64) -> Option<Duration> {
        let h = self.histogram(kind);
        (!h.is_empty()).then(|| Duration::from_micros(h.value_at_quantile(q)))
    }
}

/// A timed leg of a 2FA unlock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TwoFactorLeg {
    /// `POST /2fa`: first transmission to the answer that ended it.
    PasscodeAnswer,
    /// From the passcode typed (its request sent at once unless the lock's
    /// previous exchange was still open) to the OTP arriving in the inbox.
    OtpDelivery,
    /// `POST /otp`: first transmission to the answer that ended it.
    OtpAnswer,
}

impl TwoFactorLeg {
    pub const ALL: [TwoFactorLeg; 3] = [
        TwoFactorLeg::PasscodeAnswer,
        TwoFactorLeg::OtpDelivery,
        TwoFactorLeg::OtpAnswer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TwoFactorLeg::PasscodeAnswer => "/2fa answer",
            TwoFactorLeg::OtpDelivery => "OTP delivery",
            TwoFactorLeg::OtpAnswer => "/otp answer",
        }
    }
}

/// 2FA latencies in microseconds, one histogram per [`TwoFactorLeg`].
#[derive(Clone, Debug)]
pub struct TwoFactorLatency {
    passcode_answer: Histogram<u64>,
    otp_delivery: Histogram<u64>,
    otp_answer: Histogram<u64>,
}

impl Default for TwoFactorLatency {
    fn default() -> Self {
        TwoFactorLatency {
            passcode_answer: new_histogram(),
            otp_delivery: new_histogram(),
            otp_answer: new_histogram(),
        }
    }
}

impl PartialEq for TwoFactorLatency {
    fn eq(&self, other: &Self) -> bool {
        TwoFactorLeg::ALL
            .iter()
            .all(|l| self.histogram(*l) == other.histogram(*l))
    }
}

impl Eq for TwoFactorLatency {}

impl TwoFactorLatency {
    /// Records one `leg` that took `d`.
    pub fn record(&mut self, leg: TwoFactorLeg, d: Duration) {
        // As in AckLatency::record: growing cannot fail within the bound.
        let _ = self.histogram_mut(leg).record(micros(d));
    }

    /// Adds everything `other` recorded.
    pub fn merge(&mut self, other: &TwoFactorLatency) {
        for leg in TwoFactorLeg::ALL {
            let _ = self.histogram_mut(leg).add(other.histogram(leg));
        }
    }

    /// The `leg` times, in microseconds.
    pub fn histogram(&self, leg: TwoFactorLeg) -> &Histogram<u64> {
        match leg {
            TwoFactorLeg::PasscodeAnswer => &self.passcode_answer,
            TwoFactorLeg::OtpDelivery => &self.otp_delivery,
            TwoFactorLeg::OtpAnswer => &self.otp_answer,
        }
    }

    fn histogram_mut(&mut self, leg: TwoFactorLeg) -> &mut Histogram<u64> {
        match leg {
            TwoFactorLeg::PasscodeAnswer => &mut self.passcode_answer,
            TwoFactorLeg::OtpDelivery => &mut self.otp_delivery,
            TwoFactorLeg::OtpAnswer => &mut self.otp_answer,
        }
    }

    pub fn count(&self, leg: TwoFactorLeg) -> u64 {
        self.histogram(leg).len()
    }

    /// The `q` quantile (0.0..=1.0) of `leg`; `None` when none was recorded.
    pub fn quantile(&self, leg: TwoFactorLeg, q: f64) -> Option<Duration> {
        let h = self.histogram(leg);
        (!h.is_empty()).then(|| Duration::from_micros(h.value_at_quantile(q)))
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).map_or(MAX_RECORDED_US, |us| us.min(MAX_RECORDED_US))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_recorded_kind_only() {
        let mut l = AckLatency::default();
        for ms in 1..=100 {
            l.record(UplinkKind::Heartbeat, Duration::from_millis(ms));
        }
        l.record(UplinkKind::ActivityLog, Duration::from_secs(3));
        assert_eq!(l.count(UplinkKind::Heartbeat), 100);
        assert_eq!(l.count(UplinkKind::ActivityLog), 1);
        let p50 = l.quantile(UplinkKind::Heartbeat, 0.5).unwrap();
        let p99 = l.quantile(UplinkKind::Heartbeat, 0.99).unwrap();
        // 0.1 % resolution: 50 ms and 99 ms within 0.1 %.
        assert!(p50.abs_diff(Duration::from_millis(50)) <= Duration::from_micros(50));
        assert!(p99.abs_diff(Duration::from_millis(99)) <= Duration::from_micros(100));
        let log = l.quantile(UplinkKind::ActivityLog, 0.5).unwrap();
        assert!(log.abs_diff(Duration::from_secs(3)) <= Duration::from_millis(3));
    }

    #[test]
    fn merge_adds_counts_and_empty_has_no_quantile() {
        let mut a = AckLatency::default();
        assert_eq!(a.quantile(UplinkKind::Heartbeat, 0.5), None);
        let mut b = AckLatency::default();
        a.record(UplinkKind::Heartbeat, Duration::from_millis(1));
        b.record(UplinkKind::Heartbeat, Duration::from_millis(9));
        b.record(UplinkKind::ActivityLog, Duration::from_millis(2));
        a.merge(&b);
        assert_eq!(a.count(UplinkKind::Heartbeat), 2);
        assert_eq!(a.count(UplinkKind::ActivityLog), 1);
        let max = a.quantile(UplinkKind::Heartbeat, 1.0).unwrap();
        assert!(max >= Duration::from_millis(9) && max < Duration::from_micros(9_010));
        assert_ne!(a, AckLatency::default());
    }

    #[test]
    fn two_factor_legs_are_kept_apart_and_merge() {
        let mut a = TwoFactorLatency::default();
        a.record(TwoFactorLeg::OtpDelivery, Duration::from_millis(800));
        let mut b = TwoFactorLatency::default();
        b.record(TwoFactorLeg::OtpAnswer, Duration::from_millis(30));
        b.record(TwoFactorLeg::OtpDelivery, Duration::from_secs(7200));
        a.merge(&b);
        assert_eq!(a.count(TwoFactorLeg::OtpDelivery), 2);
        assert_eq!(a.count(TwoFactorLeg::OtpAnswer), 1);
        assert_eq!(a.quantile(TwoFactorLeg::PasscodeAnswer, 0.5), None);
        // Beyond the bound counts as the bound.
        let max = a.quantile(TwoFactorLeg::OtpDelivery, 1.0).unwrap();
        assert!(max.abs_diff(Duration::from_micros(MAX_RECORDED_US)) < Duration::from_secs(4));
    }
}
