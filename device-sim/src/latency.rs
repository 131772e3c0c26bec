//! Client-side round-trip time of answered exchanges, per report kind: from
//! an exchange's first transmission to the answer that ended it, as a lock
//! would see it (a lost datagram shows as its retransmission timeout).
//! Each socket task keeps its own [`AckLatency`] in its ledger; the run
//! merges them into [`crate::run::RunReport::ack_latency`].
//!
//! Recording is one histogram increment (hdrhistogram; it allocates only
//! when a value beyond the largest seen so far makes it grow).

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
        let us =
            u64::try_from(rtt.as_micros()).map_or(MAX_RECORDED_US, |us| us.min(MAX_RECORDED_US));
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
}
